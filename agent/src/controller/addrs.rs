//! The host's own addresses, which the tenant's other hosts will trust:
//! every interface address except loopback, link-local, multicast and
//! unspecified ones, and the public addresses the PBX's configuration
//! advertises (behind NAT, where its trunks' traffic comes from).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_model::net::is_reportable as reportable;
use palisade_model::{PeerTarget, PublicAddress};

/// The reportable interface addresses of this host (its network namespace).
fn interface_addresses() -> BTreeSet<IpAddr> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return BTreeSet::new();
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
    out
}

/// A name the PBX advertises is looked up again after this long.
const NAME_REFRESH: Duration = Duration::from_secs(60);
/// A name that stops resolving keeps its last answer this long (a DNS
/// outage must not make the tenant's other sites distrust this one).
const NAME_GRACE: Duration = Duration::from_secs(24 * 3600);
/// One lookup's budget.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The public addresses the PBX's configuration advertises as its own
/// (`PbxFacts::public`): literal ones as written, names (a DDNS
/// `externhost`) resolved in the background, each refreshed every minute
/// and kept through a day of failed lookups. Nothing here waits for DNS:
/// the sync loop that asks must keep sharing bans meanwhile.
#[derive(Debug, Default)]
pub struct Advertised {
    literal: BTreeSet<IpAddr>,
    names: Arc<Mutex<BTreeMap<String, Lookup>>>,
}

#[derive(Debug, Default)]
struct Lookup {
    addrs: BTreeSet<IpAddr>,
    /// When the name last resolved (`None`: never).
    resolved: Option<Instant>,
    /// When a lookup last started (`None`: never).
    tried: Option<Instant>,
    running: bool,
}

impl Advertised {
    /// Follows the PBX's advertised addresses: literal ones at once, names
    /// looked up (in the background) when due; names no longer advertised
    /// are forgotten.
    pub fn refresh(&mut self, public: &[PublicAddress]) {
        self.literal.clear();
        let mut wanted = BTreeSet::new();
        for p in public {
            match &p.target {
                PeerTarget::Addr(ip) => {
                    self.literal.insert(*ip);
                }
                PeerTarget::Host { name, .. } => {
                    wanted.insert(name.clone());
                }
                PeerTarget::Net(_) => {}
            }
        }
        let mut names = self.names.lock().expect("advertised names");
        names.retain(|n, _| wanted.contains(n));
        for name in wanted {
            let l = names.entry(name.clone()).or_default();
            if l.running || l.tried.is_some_and(|t| t.elapsed() < NAME_REFRESH) {
                continue;
            }
            l.running = true;
            l.tried = Some(Instant::now());
            tokio::spawn(resolve(name, self.names.clone()));
        }
    }

    /// Every advertised address now.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let names = self.names.lock().expect("advertised names");
        self.literal
            .iter()
            .chain(names.values().flat_map(|l| &l.addrs))
            .copied()
            .collect()
    }
}

/// Looks `name` up and records the answer; a failure keeps the last one
/// for [`NAME_GRACE`].
async fn resolve(name: String, names: Arc<Mutex<BTreeMap<String, Lookup>>>) {
    let found =
        tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(format!("{name}:0"))).await;
    let mut names = names.lock().expect("advertised names");
    // Forgotten meanwhile (no longer advertised): nothing to record.
    let Some(l) = names.get_mut(&name) else {
        return;
    };
    l.running = false;
    match found {
        Ok(Ok(addrs)) => {
            l.addrs = addrs.map(|a| a.ip().to_canonical()).collect();
            l.resolved = Some(Instant::now());
        }
        _ => {
            if l.resolved.is_none_or(|t| t.elapsed() >= NAME_GRACE) {
                l.addrs.clear();
            }
            tracing::debug!(%name, kept = l.addrs.len(), "an advertised name did not resolve");
        }
    }
}

/// What the host reports as its own: its interface addresses and the
/// advertised ones worth reporting, sorted.
pub fn reported(advertised: &Advertised) -> Vec<String> {
    let mut all = interface_addresses();
    all.extend(
        advertised
            .addresses()
            .into_iter()
            .filter(|a| reportable(*a)),
    );
    all.into_iter().map(|a| a.to_string()).collect()
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
        assert!(interface_addresses().iter().all(|a| !a.is_loopback()));
    }

    fn public(target: PeerTarget) -> PublicAddress {
        PublicAddress {
            target,
            provenance: palisade_model::Provenance {
                file: "pjsip.conf".into(),
                line: 3,
                section: "transport-udp".into(),
                what: "external_signaling_address".into(),
            },
        }
    }

    #[tokio::test]
    async fn advertised_addresses_join_the_reported_ones() {
        let mut adv = Advertised::default();
        let advertised = [
            public(PeerTarget::Addr("203.0.113.5".parse().unwrap())),
            public(PeerTarget::Addr("127.0.0.1".parse().unwrap())),
            public(PeerTarget::Host {
                name: "localhost".into(),
                port: None,
                transport: None,
            }),
        ];
        adv.refresh(&advertised);
        // The literal one at once; the name once it has resolved.
        assert!(adv.addresses().contains(&"203.0.113.5".parse().unwrap()));
        let deadline = Instant::now() + LOOKUP_TIMEOUT;
        while adv.names.lock().unwrap()["localhost"].resolved.is_none() {
            assert!(Instant::now() < deadline, "localhost did not resolve");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(adv.addresses().iter().any(IpAddr::is_loopback));
        // Refreshed again at once: not looked up again before it is due.
        adv.refresh(&advertised);
        assert!(!adv.names.lock().unwrap()["localhost"].running);
        // localhost resolves to loopback: advertised, but not reported.
        let now = reported(&adv);
        assert!(now.contains(&"203.0.113.5".to_string()), "{now:?}");
        assert!(
            now.iter().all(|a| a != "127.0.0.1" && a != "::1"),
            "{now:?}"
        );
        // No longer advertised: gone.
        adv.refresh(&[]);
        assert!(adv.addresses().is_empty());
        assert!(!reported(&adv).contains(&"203.0.113.5".to_string()));
    }
}
