//! The host's own addresses, which the tenant's other hosts will trust:
//! every interface address except loopback, link-local, multicast and
//! unspecified ones.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// Worth telling the controller about: an address another host could see
/// this one's traffic come from.
pub fn reportable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                // fe80::/10
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some())
        }
    }
}

/// The interface addresses of this host (its network namespace), sorted.
pub fn host_addresses() -> Vec<String> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for ifa in ifaddrs {
        let Some(storage) = ifa.address else { continue };
        let addr = if let Some(v4) = storage.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = storage.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if reportable(addr) {
            out.insert(addr);
        }
    }
    out.into_iter().map(|a| a.to_string()).collect()
}

/// The controller's addresses: its URL's host, resolved (empty when it
/// cannot be resolved now). They go in the `controller` set, accepted
/// before bans and zones: only the controller can lift a shared ban.
pub async fn controller_addresses(url: &str) -> Vec<IpAddr> {
    let Ok((host, port)) = super::tls::split_url(url) else {
        return Vec::new();
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    let lookup = tokio::net::lookup_host(format!("{host}:{port}"));
    let found = tokio::time::timeout(std::time::Duration::from_secs(3), lookup).await;
    match found {
        Ok(Ok(addrs)) => addrs
            .map(|a| a.ip())
            .collect::<BTreeSet<IpAddr>>()
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// The addresses last resolved for the controller (see
/// [`controller_addresses`]), as the sync task keeps them for the CLI.
pub fn known_controller_addresses(state_dir: &std::path::Path) -> Vec<IpAddr> {
    std::fs::read_to_string(super::identity::dir(state_dir).join(CONTROLLER_ADDRESSES))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Where the sync task keeps the controller's resolved addresses.
pub const CONTROLLER_ADDRESSES: &str = "controller-addresses.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_others_can_see() {
        for yes in ["192.0.2.1", "10.200.1.1", "2001:db8::1", "fd00:200:1::1"] {
            assert!(reportable(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "127.0.0.1",
            "169.254.3.4",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::",
            "::ffff:192.0.2.1",
        ] {
            assert!(!reportable(no.parse().unwrap()), "{no}");
        }
        // Whatever the machine has, none of it is loopback.
        assert!(host_addresses()
            .iter()
            .all(|a| a != "127.0.0.1" && a != "::1"));
    }
}
