//! Per-user rules: an extension's services open for exactly the address it is
//! registered from, for as long as the registration lives.
//!
//! Registrations come from the watch (a 200 to a REGISTER, with the granted
//! expiry) or from the PBX's log. A grant closes when the extension
//! unregisters, registers from elsewhere, or its registration runs out (the
//! kernel element carries the registration's timeout, so a silent phone's
//! grant closes on its own). Several extensions behind one address share
//! what they need: one unregistering closes only what no other still needs.

use palisade_guard::{Event, Kind};
use palisade_model::{Grant, Policy, Proto};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A service range wider than this is not granted port by port (RTP ranges
/// belong to the known-good path, not to a per-user grant).
const MAX_GRANT_PORTS: u32 = 64;

/// What changes in the kernel's grant set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GrantChange {
    /// Opened, or renewed with a new timeout.
    pub open: Vec<Grant>,
    pub close: Vec<Grant>,
}

impl GrantChange {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.close.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Binding {
    addr: IpAddr,
    until: Instant,
}

type Port = (Proto, u16);

#[derive(Default)]
pub struct UserGrants {
    /// Extension → the ports its rules open.
    rules: BTreeMap<String, BTreeSet<Port>>,
    /// Extension → where it is registered now.
    bound: HashMap<String, Binding>,
    /// What is open per address, so only that is ever closed.
    open: HashMap<IpAddr, BTreeSet<Port>>,
}

impl UserGrants {
    /// The rules of `policy` (`[users]`), resolved to ports through its
    /// service catalogue. Unknown service names were refused when the policy
    /// was parsed; a range too wide to grant is skipped with a warning.
    pub fn new(policy: &Policy) -> UserGrants {
        let mut g = UserGrants::default();
        g.reconfigure(policy);
        g
    }

    pub fn reconfigure(&mut self, policy: &Policy) {
        let mut rules = BTreeMap::new();
        for (user, services) in &policy.users {
            let mut ports = BTreeSet::new();
            for name in services {
                let Some(service) = policy.services.iter().find(|s| &s.name == name) else {
                    warn!(
                        user,
                        service = name,
                        "per-user rule names an unknown service"
                    );
                    continue;
                };
                for spec in &service.ports {
                    let (first, last) = (spec.range.first, spec.range.last);
                    if u32::from(last - first) + 1 > MAX_GRANT_PORTS {
                        warn!(
                            user,
                            service = name,
                            first,
                            last,
                            "port range too wide for a per-user grant; skipped"
                        );
                        continue;
                    }
                    ports.extend((first..=last).map(|p| (spec.proto, p)));
                }
            }
            rules.insert(user.clone(), ports);
        }
        self.rules = rules;
        self.bound.retain(|user, _| self.rules.contains_key(user));
    }

    /// These rules, with the registrations `old` knew of (a policy change
    /// must not forget who is where).
    pub fn carry_over(mut self, old: UserGrants) -> UserGrants {
        self.bound = old.bound;
        self.bound.retain(|user, _| self.rules.contains_key(user));
        self.open = old.open;
        self
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Follows one event; what the kernel must change goes to `out`.
    pub fn observe(&mut self, ev: &Event, out: &mut GrantChange) {
        match &ev.kind {
            Kind::Registered { user, expires, .. } if self.rules.contains_key(&**user) => {
                let user = user.to_string();
                let until = ev.at + *expires;
                let before = self.bound.get(&user).map(|b| b.addr);
                self.bound.insert(
                    user.clone(),
                    Binding {
                        addr: ev.source,
                        until,
                    },
                );
                if let Some(old) = before.filter(|a| *a != ev.source) {
                    info!(user, from = %old, to = %ev.source, "extension moved: its grants follow");
                    self.settle(old, ev.at, out);
                } else if before.is_none() {
                    info!(user, addr = %ev.source, "extension registered: its grants open");
                }
                self.settle(ev.source, ev.at, out);
            }
            Kind::Unregistered { user, .. } => {
                let user = user.to_string();
                if self.bound.get(&user).is_some_and(|b| b.addr == ev.source) {
                    self.bound.remove(&user);
                    info!(user, addr = %ev.source, "extension unregistered: its grants close");
                    self.settle(ev.source, ev.at, out);
                }
            }
            _ => {}
        }
    }

    /// Makes `addr`'s grants what its live bindings need: every port some
    /// extension registered there needs stays open until the latest of their
    /// expiries; the rest of what `addr` may have had closes.
    fn settle(&mut self, addr: IpAddr, now: Instant, out: &mut GrantChange) {
        self.bound.retain(|_, b| b.until > now);
        let mut need: BTreeMap<Port, (Instant, Vec<&str>)> = BTreeMap::new();
        for (user, b) in self.bound.iter().filter(|(_, b)| b.addr == addr) {
            for port in self.rules.get(user).into_iter().flatten() {
                let e = need.entry(*port).or_insert((b.until, Vec::new()));
                e.0 = e.0.max(b.until);
                e.1.push(user);
            }
        }
        let was = self.open.remove(&addr).unwrap_or_default();
        for port in was.iter().filter(|p| !need.contains_key(p)) {
            out.close.push(Grant {
                addr,
                proto: port.0,
                port: port.1,
                ttl: None,
                expires: None,
                comment: None,
            });
        }
        for (port, (until, users)) in &need {
            out.open.push(Grant {
                addr,
                proto: port.0,
                port: port.1,
                ttl: Some(
                    until
                        .saturating_duration_since(now)
                        .max(Duration::from_secs(1)),
                ),
                expires: None,
                comment: Some(format!("registered: {}", users.join(","))),
            });
        }
        if !need.is_empty() {
            self.open.insert(addr, need.into_keys().collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::parse_policy;

    fn policy() -> Policy {
        parse_policy(
            "[users]\n300 = [\"ucp\"]\n301 = [\"ucp\", \"webrtc\"]\n333 = [\"admin\", \"ssh\"]\n",
            "t",
        )
        .unwrap()
    }

    fn registered(at: Instant, addr: &str, user: &str, secs: u64) -> Event {
        Event {
            at,
            source: addr.parse().unwrap(),
            kind: Kind::Registered {
                user: user.into(),
                contact: "sip:x@y".into(),
                expires: Duration::from_secs(secs),
            },
            summary: String::new(),
        }
    }

    fn unregistered(at: Instant, addr: &str, user: &str) -> Event {
        Event {
            at,
            source: addr.parse().unwrap(),
            kind: Kind::Unregistered {
                user: user.into(),
                contact: None,
            },
            summary: String::new(),
        }
    }

    fn ports(grants: &[Grant]) -> BTreeSet<u16> {
        grants.iter().map(|g| g.port).collect()
    }

    #[test]
    fn registration_opens_exactly_the_users_services_for_its_address() {
        let p = policy();
        let mut g = UserGrants::new(&p);
        let now = Instant::now();
        let mut out = GrantChange::default();
        g.observe(&registered(now, "192.0.2.33", "333", 120), &mut out);
        let ssh: u16 = 22;
        assert!(ports(&out.open).contains(&ssh), "{out:?}");
        assert!(out.open.iter().all(|o| o.addr.to_string() == "192.0.2.33"));
        assert!(out
            .open
            .iter()
            .all(|o| o.ttl == Some(Duration::from_secs(120))));

        let mut out = GrantChange::default();
        g.observe(&registered(now, "192.0.2.30", "300", 120), &mut out);
        assert!(
            !ports(&out.open).contains(&ssh),
            "300 never gets SSH: {out:?}"
        );
        assert!(!out.open.is_empty());
    }

    #[test]
    fn unregistering_or_moving_closes_and_shared_ports_stay_for_the_others() {
        let p = policy();
        let mut g = UserGrants::new(&p);
        let now = Instant::now();
        let mut out = GrantChange::default();
        g.observe(&registered(now, "192.0.2.1", "300", 120), &mut out);
        g.observe(&registered(now, "192.0.2.1", "301", 120), &mut out);
        let ucp = ports(&out.open);

        // 300 leaves: 301 still needs the portal at the same address.
        let mut out = GrantChange::default();
        g.observe(&unregistered(now, "192.0.2.1", "300"), &mut out);
        assert!(ucp.iter().all(|p| ports(&out.open).contains(p)), "{out:?}");

        // 301 moves: everything closes at the old address, opens at the new.
        let mut out = GrantChange::default();
        g.observe(&registered(now, "198.51.100.7", "301", 60), &mut out);
        assert!(out.close.iter().all(|c| c.addr.to_string() == "192.0.2.1"));
        assert!(!out.close.is_empty());
        assert!(out
            .open
            .iter()
            .all(|o| o.addr.to_string() == "198.51.100.7"));

        // An unregister from an address the user is not at changes nothing.
        let mut out = GrantChange::default();
        g.observe(&unregistered(now, "192.0.2.1", "301"), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn users_without_rules_change_nothing() {
        let mut g = UserGrants::new(&policy());
        let mut out = GrantChange::default();
        g.observe(
            &registered(Instant::now(), "192.0.2.9", "999", 60),
            &mut out,
        );
        assert!(out.is_empty());
    }
}
