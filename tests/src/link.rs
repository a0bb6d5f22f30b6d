//! Links between namespaces.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Netns;

/// Linux limit on interface names (IFNAMSIZ minus the terminating NUL).
const MAX_IFNAME_LEN: usize = 15;
/// How long [`veth`] waits for IPv6 addresses to become usable.
const IPV6_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects namespaces `a` and `b` with a veth pair — interface `a_if` in
/// `a`, `b_if` in `b` — adds the given addresses (CIDR strings such as
/// `"10.200.1.1/24"` or `"fd00:200:1::1/64"`) to each end, brings both ends
/// up and returns once every IPv6 address is usable.
///
/// The pair is created from inside `a` with its peer placed directly into
/// `b`, so neither end ever exists in the machine's own namespace (where the
/// names could clash with real interfaces). It disappears with either
/// namespace.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
) -> Result<()> {
    for ifname in [a_if, b_if] {
        validate_ifname(ifname)?;
    }
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])
    .with_context(|| {
        format!(
            "cannot create veth {}:{a_if} <-> {}:{b_if}",
            a.name(),
            b.name()
        )
    })?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for cidr in addrs {
            add_address(ns, ifname, cidr)?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        if addrs.iter().any(|cidr| cidr.contains(':')) {
            wait_ipv6_ready(ns, ifname, IPV6_READY_TIMEOUT)?;
        }
    }
    Ok(())
}

/// Adds an address in CIDR notation to interface `ifname` of `ns`.
///
/// IPv6 addresses are added with `nodad`: duplicate address detection would
/// keep them "tentative" — unusable as a source or destination — for about a
/// second, and no duplicate can exist on a harness-made link.
pub fn add_address(ns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
    let result = if cidr.contains(':') {
        ns.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
    } else {
        ns.ip(&["-4", "addr", "add", cidr, "dev", ifname])
    };
    result
        .map(drop)
        .with_context(|| format!("cannot add {cidr} to {ifname} in {}", ns.name()))
}

/// Waits until no IPv6 address on `ifname` in `ns` is tentative any more.
///
/// With DAD off this is normally true at once; the wait is a cheap guard
/// against kernels or interfaces that still run DAD, which would otherwise
/// make the first probes of a test fail at random.
pub fn wait_ipv6_ready(ns: &Netns, ifname: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let tentative = ns.ip(&["-6", "addr", "show", "dev", ifname, "tentative"])?;
        if tentative.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "IPv6 addresses on {ifname} in {} still tentative after {timeout:?}:\n{tentative}",
                ns.name()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn validate_ifname(ifname: &str) -> Result<()> {
    if ifname.is_empty()
        || ifname.len() > MAX_IFNAME_LEN
        || ifname.contains(['/', ':'])
        || ifname.contains(char::is_whitespace)
    {
        bail!(
            "interface name {ifname:?} must be 1 to {MAX_IFNAME_LEN} characters \
             without '/', ':' or whitespace"
        );
    }
    Ok(())
}
