//! Per-source memory, known-good registrations and verdicts.
//!
//! The judge turns events into actions: ban this address (with a reason, the
//! evidence and an escalating duration), mark that one known-good for the life
//! of its registration, tell the operator which extension is failing from
//! where. It never bans an exempt address (management, trusted, trunks) nor
//! one on the policy's allow-list, and it is lenient with an address that has
//! a live registration, because an office NAT address carries many phones and
//! one bad phone must not take the others down. Toll fraud is not judged at
//! all for such an address: its phones call abroad every day.
//!
//! Memory is capped: sources, offences and registrations are each kept in a
//! least-recently-used map of at most `max_sources` entries, so a flood from a
//! million spoofed addresses costs a bounded amount.

use crate::detect::enumeration::Enumeration;
use crate::detect::flood::Flood;
use crate::detect::guessing::Guessing;
use crate::detect::scanner::Fingerprints;
use crate::detect::tollfraud::{Prefixes, TollFraud};
use crate::detect::{Finding, Reason};
use crate::event::{Event, Kind};
use ipnet::IpNet;
use lru::LruCache;
use palisade_model::Responsive;
use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Evidence lines kept per source.
const EVIDENCE: usize = 5;
/// Bindings kept per address (an office NAT address carries many phones).
const MAX_BINDINGS: usize = 512;

/// A decision to ban one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub addr: IpAddr,
    pub reason: Reason,
    /// The numbers behind the reason, in a sentence.
    pub detail: String,
    /// The last messages from the source, oldest first.
    pub evidence: Vec<String>,
    pub duration: Duration,
    /// 1 for a first offence; escalates the duration.
    pub offence: u32,
    pub at: Instant,
}

impl Verdict {
    /// The kernel element's comment: reason first, so a clipped comment still says why.
    pub fn comment(&self) -> String {
        // nft prints comments in double quotes without escaping them.
        format!(
            "{}: {} (offence {})",
            self.reason, self.detail, self.offence
        )
        .replace('"', "'")
    }
}

/// What the agent should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Ban(Verdict),
    /// `addr` has live registrations: bypass the tiers for `ttl`.
    KnownGood {
        addr: IpAddr,
        ttl: Duration,
        users: Vec<Box<str>>,
    },
    /// The last registration from `addr` ended.
    KnownGoodEnd {
        addr: IpAddr,
    },
    /// For the operator: an extension failing to authenticate, and from where.
    Notice {
        addr: IpAddr,
        user: Box<str>,
        failures: usize,
    },
}

/// Addresses no detector may ban: the agent lists management, trusted and
/// trunk networks here (trunks bypass the watch in the kernel already; this is
/// the second line). The policy's `[responsive] allow` list is consulted by
/// the judge itself, on top of this.
#[derive(Debug, Clone, Default)]
pub struct Exempt {
    pub nets: Vec<IpNet>,
    pub addrs: HashSet<IpAddr>,
}

impl Exempt {
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.addrs.contains(&addr) || self.nets.iter().any(|n| n.contains(&addr))
    }
}

#[derive(Debug, Default)]
struct SourceState {
    guessing: Guessing,
    enumeration: Enumeration,
    flood: Flood,
    toll_fraud: TollFraud,
    evidence: VecDeque<String>,
    banned_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Offences {
    count: u32,
    last: Instant,
}

#[derive(Debug, Clone)]
struct Binding {
    user: Box<str>,
    contact: Box<str>,
    until: Instant,
}

pub struct Judge {
    cfg: Responsive,
    fingerprints: Fingerprints,
    prefixes: Prefixes,
    sources: LruCache<IpAddr, SourceState>,
    offences: LruCache<IpAddr, Offences>,
    bindings: LruCache<IpAddr, Vec<Binding>>,
    exempt: Exempt,
}

impl Judge {
    pub fn new(cfg: Responsive) -> Judge {
        let cap = NonZeroUsize::new(cfg.max_sources.max(1)).expect("max(1)");
        Judge {
            fingerprints: Fingerprints::new(cfg.scanner_fragments()),
            prefixes: Prefixes::new(&cfg.toll_fraud),
            sources: LruCache::new(cap),
            offences: LruCache::new(cap),
            bindings: LruCache::new(cap),
            exempt: Exempt::default(),
            cfg,
        }
    }

    /// New settings (a policy change) keep what was learnt about sources.
    pub fn reconfigure(&mut self, cfg: Responsive) {
        if cfg == self.cfg {
            return;
        }
        self.fingerprints = Fingerprints::new(cfg.scanner_fragments());
        self.prefixes = Prefixes::new(&cfg.toll_fraud);
        if let Some(cap) = NonZeroUsize::new(cfg.max_sources.max(1)) {
            self.sources.resize(cap);
            self.offences.resize(cap);
            self.bindings.resize(cap);
        }
        self.cfg = cfg;
    }

    pub fn set_exempt(&mut self, exempt: Exempt) {
        self.exempt = exempt;
    }

    /// Whether no detector may ban `addr`: it is exempt (management, trusted,
    /// trunks) or on the policy's allow-list.
    pub fn is_exempt(&self, addr: IpAddr) -> bool {
        self.exempt.contains(addr) || self.cfg.allows(addr)
    }

    pub fn config(&self) -> &Responsive {
        &self.cfg
    }

    /// Sources currently remembered (bounded by `max_sources`).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Addresses with a live registration at `now`.
    pub fn is_known_good(&self, addr: IpAddr, now: Instant) -> bool {
        self.bindings
            .peek(&addr)
            .is_some_and(|b| b.iter().any(|b| b.until > now))
    }

    /// Users registered from `addr` at `now`.
    pub fn registered_users(&self, addr: IpAddr, now: Instant) -> Vec<Box<str>> {
        let mut users: Vec<Box<str>> = self
            .bindings
            .peek(&addr)
            .into_iter()
            .flatten()
            .filter(|b| b.until > now)
            .map(|b| b.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    fn factor(&self, addr: IpAddr, now: Instant) -> u32 {
        if self.is_known_good(addr, now) {
            self.cfg.detect.known_good_factor.max(1)
        } else {
            1
        }
    }

    /// Judges one event.
    pub fn observe(&mut self, ev: Event, out: &mut Vec<Action>) {
        let now = ev.at;
        let addr = ev.source;
        match &ev.kind {
            Kind::Registered {
                user,
                contact,
                expires,
            } => {
                self.register(addr, user, contact, now + *expires, now, out);
                if let Some(state) = self.sources.get_mut(&addr) {
                    state.guessing.success(user);
                }
                return;
            }
            Kind::Unregistered { user, contact } => {
                self.unregister(addr, user, contact.as_deref(), now, out);
                return;
            }
            _ => {}
        }
        if self.is_exempt(addr) {
            return;
        }
        let factor = self.factor(addr, now);
        // Phones of a live registration place calls abroad every day; trunks
        // and exempt addresses never got this far.
        let toll = (self.cfg.toll_fraud.enabled && !self.is_known_good(addr, now))
            .then_some(&self.cfg.toll_fraud);
        let prefixes = &self.prefixes;
        let cfg = &self.cfg.detect;
        let state = self.sources.get_or_insert_mut(addr, SourceState::default);
        if state.banned_until.is_some_and(|until| until > now) {
            return;
        }
        if state.evidence.len() >= EVIDENCE {
            state.evidence.pop_front();
        }
        state.evidence.push_back(ev.summary.clone());
        let finding: Option<Finding> = match &ev.kind {
            Kind::Request {
                user,
                user_agent,
                from_user,
                credentials,
                destination,
                ..
            } => {
                if let (true, Some(dest)) = (*credentials, destination) {
                    state.enumeration.answered(dest);
                }
                match (toll, destination) {
                    // First, so a call abroad is named for what it is even when
                    // the tool also announces itself.
                    (Some(toll), Some(dest)) => {
                        state
                            .toll_fraud
                            .invite(toll, prefixes, dest, *credentials, now)
                    }
                    _ => None,
                }
                .or_else(|| {
                    self.fingerprints
                        .judge(user_agent.as_deref(), from_user.as_deref())
                })
                .or_else(|| state.flood.message(cfg, now, factor))
                .or_else(|| {
                    state
                        .enumeration
                        .request(cfg, user.as_deref(), *credentials, now, factor)
                })
            }
            Kind::AuthFailed { user, destination } => {
                let (guessing, failures) = state.guessing.failure(cfg, user, now, factor);
                let finding = match (toll, destination) {
                    (Some(toll), Some(dest)) => {
                        state.toll_fraud.refused(toll, prefixes, dest, user, now)
                    }
                    _ => None,
                }
                .or(guessing);
                // The operator hears of a failing extension at the first failure
                // and every tenth after, not at every packet.
                if finding.is_none() && (failures.count == 1 || failures.count % 10 == 0) {
                    out.push(Action::Notice {
                        addr,
                        user: user.clone(),
                        failures: failures.count,
                    });
                }
                finding
            }
            Kind::Challenged { user } => state.enumeration.challenged(cfg, user, now, factor),
            Kind::UnknownUser { user, status } => state
                .enumeration
                .unknown_user(cfg, user, *status, now, factor),
            Kind::Garbage { error } => state.flood.garbage(cfg, error, now, factor),
            Kind::Registered { .. } | Kind::Unregistered { .. } => None,
        };
        if let Some(finding) = finding {
            self.ban(addr, finding, now, out);
        }
    }

    /// Whether a verdict against `addr` is still running: inline mode drops its
    /// packets before the kernel's ban set has the element.
    pub fn is_banned(&self, addr: IpAddr, now: Instant) -> bool {
        self.sources
            .peek(&addr)
            .is_some_and(|s| s.banned_until.is_some_and(|u| u > now))
    }

    /// The kernel's tier banned `addr` on its own; record it as a verdict so it
    /// gets its reason, evidence and escalated duration.
    pub fn tier_ban(&mut self, addr: IpAddr, now: Instant, out: &mut Vec<Action>) {
        if self.is_exempt(addr) {
            return;
        }
        let tiers = &self.cfg.tiers;
        let finding = Finding {
            reason: Reason::TierFlood,
            detail: format!(
                "kept sending over {}/s (burst {}) past {} dropped packets",
                tiers.rate, tiers.burst, tiers.strikes
            ),
        };
        if self
            .sources
            .peek(&addr)
            .is_some_and(|s| s.banned_until.is_some_and(|u| u > now))
        {
            return;
        }
        self.ban(addr, finding, now, out);
    }

    /// Records a ban decided elsewhere (by hand, or restored at start) so
    /// escalation and in-flight suppression know of it.
    pub fn note_ban(&mut self, addr: IpAddr, until: Instant, now: Instant) {
        self.sources
            .get_or_insert_mut(addr, SourceState::default)
            .banned_until = Some(until);
        self.offend(addr, now);
    }

    /// Counts one more offence of `addr` (offences older than the memory are
    /// forgotten first) and returns its number.
    fn offend(&mut self, addr: IpAddr, now: Instant) -> u32 {
        let memory = self.cfg.offence_memory;
        let offences = self.offences.get_or_insert_mut(addr, || Offences {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(offences.last) > memory {
            offences.count = 0;
        }
        offences.count += 1;
        offences.last = now;
        offences.count
    }

    /// An operator lifted the ban: forget what the detectors held against it,
    /// but not its offences (escalation stays honest).
    pub fn forgive(&mut self, addr: IpAddr) {
        self.sources.pop(&addr);
    }

    fn ban(&mut self, addr: IpAddr, finding: Finding, now: Instant, out: &mut Vec<Action>) {
        let offence = self.offend(addr, now);
        let duration = self.cfg.ban_duration(offence);
        let state = self.sources.get_or_insert_mut(addr, SourceState::default);
        state.banned_until = Some(now + duration);
        out.push(Action::Ban(Verdict {
            addr,
            reason: finding.reason,
            detail: finding.detail,
            evidence: state.evidence.iter().cloned().collect(),
            duration,
            offence,
            at: now,
        }));
    }

    fn register(
        &mut self,
        addr: IpAddr,
        user: &str,
        contact: &str,
        until: Instant,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let bindings = self.bindings.get_or_insert_mut(addr, Vec::new);
        bindings.retain(|b| b.until > now);
        match bindings
            .iter_mut()
            .find(|b| &*b.user == user && &*b.contact == contact)
        {
            Some(b) => b.until = until,
            None => {
                if bindings.len() >= MAX_BINDINGS {
                    bindings.remove(0);
                }
                bindings.push(Binding {
                    user: user.into(),
                    contact: contact.into(),
                    until,
                });
            }
        }
        self.push_known_good(addr, now, out);
    }

    fn unregister(
        &mut self,
        addr: IpAddr,
        user: &str,
        contact: Option<&str>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(bindings) = self.bindings.get_mut(&addr) else {
            return;
        };
        bindings.retain(|b| {
            b.until > now && !(&*b.user == user && contact.is_none_or(|c| &*b.contact == c))
        });
        self.push_known_good(addr, now, out);
    }

    fn push_known_good(&mut self, addr: IpAddr, now: Instant, out: &mut Vec<Action>) {
        let last = self
            .bindings
            .peek(&addr)
            .and_then(|b| b.iter().map(|b| b.until).max())
            .filter(|until| *until > now);
        match last {
            Some(until) => out.push(Action::KnownGood {
                addr,
                ttl: until - now,
                users: self.registered_users(addr, now),
            }),
            None => {
                self.bindings.pop(&addr);
                out.push(Action::KnownGoodEnd { addr });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: Instant, source: &str, kind: Kind) -> Event {
        Event {
            at,
            source: source.parse().unwrap(),
            kind,
            summary: "test".into(),
        }
    }

    fn request(ua: &str) -> Kind {
        Kind::Request {
            method: "REGISTER".into(),
            user: Some("300".into()),
            user_agent: Some(ua.into()),
            from_user: Some("300".into()),
            credentials: false,
            destination: None,
        }
    }

    fn failed(user: &str) -> Kind {
        Kind::AuthFailed {
            user: user.into(),
            destination: None,
        }
    }

    /// An INVITE starting a call to `dest`.
    fn invite(dest: &str, credentials: bool) -> Kind {
        Kind::Request {
            method: "INVITE".into(),
            user: Some(if credentials { "201" } else { dest }.into()),
            user_agent: Some("Yealink SIP-T46S 66.86.0.15".into()),
            from_user: Some("201".into()),
            credentials,
            destination: Some(dest.into()),
        }
    }

    fn call_refused(user: &str, dest: &str) -> Kind {
        Kind::AuthFailed {
            user: user.into(),
            destination: Some(dest.into()),
        }
    }

    fn registered(user: &str) -> Kind {
        Kind::Registered {
            user: user.into(),
            contact: format!("sip:{user}@10.0.0.2:5062").into(),
            expires: Duration::from_secs(3600),
        }
    }

    fn bans(actions: &[Action]) -> Vec<&Verdict> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Ban(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_scanner_is_banned_at_its_first_request_with_evidence() {
        let mut j = Judge::new(Responsive::default());
        let mut out = Vec::new();
        j.observe(
            ev(Instant::now(), "203.0.113.9", request("friendly-scanner")),
            &mut out,
        );
        let v = bans(&out)[0];
        assert_eq!(v.reason, Reason::Scanner);
        assert_eq!(v.duration, Duration::from_secs(600));
        assert_eq!(v.evidence, vec!["test".to_string()]);
        assert!(v.comment().starts_with("scanner: "), "{}", v.comment());
    }

    #[test]
    fn exempt_addresses_are_never_banned() {
        let mut j = Judge::new(Responsive::default());
        j.set_exempt(Exempt {
            nets: vec!["203.0.113.0/24".parse().unwrap()],
            addrs: HashSet::new(),
        });
        let mut out = Vec::new();
        let t0 = Instant::now();
        j.observe(ev(t0, "203.0.113.9", request("friendly-scanner")), &mut out);
        for i in 0..100 {
            j.observe(
                ev(t0 + Duration::from_millis(i), "203.0.113.9", failed("300")),
                &mut out,
            );
        }
        j.tier_ban("203.0.113.9".parse().unwrap(), t0, &mut out);
        assert!(bans(&out).is_empty());
    }

    #[test]
    fn repeat_offenders_get_longer_bans() {
        let mut j = Judge::new(Responsive::default());
        let t0 = Instant::now();
        let mut durations = Vec::new();
        for round in 0..3u64 {
            let mut out = Vec::new();
            // After each ban has run out, the tool comes back.
            let at = t0 + Duration::from_secs(round * 100_000);
            j.observe(ev(at, "198.51.100.7", request("sipcli/v1")), &mut out);
            durations.push(bans(&out)[0].duration);
        }
        assert_eq!(
            durations,
            [600, 3600, 86_400].map(Duration::from_secs).to_vec()
        );
    }

    #[test]
    fn a_banned_source_is_not_banned_twice_for_packets_in_flight() {
        let mut j = Judge::new(Responsive::default());
        let mut out = Vec::new();
        let t0 = Instant::now();
        for i in 0..10 {
            j.observe(
                ev(
                    t0 + Duration::from_millis(i),
                    "198.51.100.7",
                    request("friendly-scanner"),
                ),
                &mut out,
            );
        }
        assert_eq!(bans(&out).len(), 1);
    }

    #[test]
    fn registration_makes_known_good_until_it_expires_or_ends() {
        let mut j = Judge::new(Responsive::default());
        let mut out = Vec::new();
        let t0 = Instant::now();
        let reg = |user: &str, contact: &str, secs| Kind::Registered {
            user: user.into(),
            contact: contact.into(),
            expires: Duration::from_secs(secs),
        };
        j.observe(
            ev(t0, "192.0.2.50", reg("301", "sip:301@10.0.0.2:5062", 120)),
            &mut out,
        );
        j.observe(
            ev(t0, "192.0.2.50", reg("302", "sip:302@10.0.0.3:5062", 60)),
            &mut out,
        );
        let addr: IpAddr = "192.0.2.50".parse().unwrap();
        assert!(j.is_known_good(addr, t0 + Duration::from_secs(100)));
        assert!(!j.is_known_good(addr, t0 + Duration::from_secs(121)));
        match out.last().unwrap() {
            Action::KnownGood { ttl, users, .. } => {
                assert_eq!(*ttl, Duration::from_secs(120));
                assert_eq!(users.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        out.clear();
        let unreg = |user: &str| Kind::Unregistered {
            user: user.into(),
            contact: None,
        };
        j.observe(ev(t0, "192.0.2.50", unreg("301")), &mut out);
        assert!(matches!(out.last(), Some(Action::KnownGood { .. })));
        j.observe(ev(t0, "192.0.2.50", unreg("302")), &mut out);
        assert_eq!(out.last(), Some(&Action::KnownGoodEnd { addr }));
    }

    #[test]
    fn one_bad_phone_behind_a_registered_office_address_does_not_ban_it() {
        let mut j = Judge::new(Responsive::default());
        let mut out = Vec::new();
        let t0 = Instant::now();
        j.observe(
            ev(
                t0,
                "192.0.2.50",
                Kind::Registered {
                    user: "301".into(),
                    contact: "sip:301@10.0.0.2".into(),
                    expires: Duration::from_secs(3600),
                },
            ),
            &mut out,
        );
        // 300 retries a wrong password every 10 s, twice per attempt, for 3 minutes.
        for i in 0..18u64 {
            for extra in [0, 300] {
                let at = t0 + Duration::from_millis(i * 10_000 + extra);
                j.observe(ev(at, "192.0.2.50", failed("300")), &mut out);
            }
        }
        assert!(bans(&out).is_empty());
        let notices = out
            .iter()
            .filter(|a| matches!(a, Action::Notice { user, .. } if &**user == "300"))
            .count();
        assert!(notices >= 2, "the operator hears which extension fails");
    }

    #[test]
    fn a_call_abroad_without_credentials_is_banned_at_the_first_invite() {
        let mut j = Judge::new(Responsive::default());
        let mut out = Vec::new();
        j.observe(
            ev(
                Instant::now(),
                "203.0.113.9",
                invite("011447911123456", false),
            ),
            &mut out,
        );
        let v = bans(&out)[0];
        assert_eq!(v.reason, Reason::TollFraud);
        assert_eq!(
            v.detail,
            "INVITE to 011447911123456 (international prefix 011) without credentials"
        );
        assert_eq!(v.evidence, vec!["test".to_string()]);
        assert!(v.comment().starts_with("toll-fraud: "), "{}", v.comment());
        assert_eq!(Reason::parse("toll-fraud"), Some(Reason::TollFraud));
    }

    #[test]
    fn a_known_good_source_calling_abroad_is_not_touched() {
        let mut j = Judge::new(Responsive::default());
        let mut out = Vec::new();
        let t0 = Instant::now();
        j.observe(ev(t0, "192.0.2.50", registered("201")), &mut out);
        for (i, dest) in [
            "011447911123456",
            "0900123456",
            "1000",
            "1001",
            "1002",
            "1003",
        ]
        .iter()
        .enumerate()
        {
            let at = t0 + Duration::from_secs(i as u64);
            j.observe(ev(at, "192.0.2.50", invite(dest, false)), &mut out);
            j.observe(ev(at, "192.0.2.50", call_refused("201", dest)), &mut out);
        }
        assert!(bans(&out).is_empty(), "{:?}", bans(&out));
    }

    #[test]
    fn an_exempt_source_calling_abroad_is_not_touched() {
        let mut j = Judge::new(Responsive::default());
        j.set_exempt(Exempt {
            nets: Vec::new(),
            addrs: ["198.51.100.20".parse().unwrap()].into_iter().collect(),
        });
        let mut out = Vec::new();
        j.observe(
            ev(
                Instant::now(),
                "198.51.100.20",
                invite("0044791112345", false),
            ),
            &mut out,
        );
        assert!(bans(&out).is_empty());
    }

    #[test]
    fn a_phone_calling_an_extension_and_being_challenged_is_not_banned() {
        let mut j = Judge::new(Responsive::default());
        let mut out = Vec::new();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        j.observe(ev(ms(0), "203.0.113.9", invite("301", false)), &mut out);
        j.observe(
            ev(
                ms(10),
                "203.0.113.9",
                Kind::Challenged { user: "301".into() },
            ),
            &mut out,
        );
        j.observe(ev(ms(30), "203.0.113.9", invite("301", true)), &mut out);
        assert!(bans(&out).is_empty(), "{:?}", bans(&out));
    }

    #[test]
    fn five_destinations_refused_are_a_sweep() {
        let mut j = Judge::new(Responsive {
            // Out of the way, to see the toll-fraud verdict rather than guessing's.
            detect: palisade_model::Detect {
                burst_failures: 100,
                distinct_failing_users: 100,
                ..Default::default()
            },
            ..Default::default()
        });
        let mut out = Vec::new();
        let t0 = Instant::now();
        for (i, dest) in ["1000", "1001", "1002", "1003", "1004"].iter().enumerate() {
            let at = t0 + Duration::from_secs(i as u64 * 2);
            j.observe(ev(at, "203.0.113.9", invite(dest, true)), &mut out);
            assert!(bans(&out).is_empty(), "banned before {dest}");
            j.observe(ev(at, "203.0.113.9", call_refused("201", dest)), &mut out);
        }
        let b = bans(&out);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(b[0].reason, Reason::TollFraud);
        assert!(
            b[0].detail.contains("5 different destinations"),
            "{}",
            b[0].detail
        );
    }

    #[test]
    fn toll_fraud_can_be_turned_off() {
        let mut cfg = Responsive::default();
        cfg.toll_fraud.enabled = false;
        let mut j = Judge::new(cfg);
        let mut out = Vec::new();
        j.observe(
            ev(
                Instant::now(),
                "203.0.113.9",
                invite("011447911123456", false),
            ),
            &mut out,
        );
        assert!(bans(&out).is_empty());
    }

    #[test]
    fn an_allow_listed_address_is_never_banned_whatever_it_does() {
        let mut j = Judge::new(Responsive {
            allow: vec![
                "198.51.100.0/24".parse().unwrap(),
                "2001:db8::/48".parse().unwrap(),
            ],
            ..Default::default()
        });
        let mut out = Vec::new();
        let t0 = Instant::now();
        for source in ["198.51.100.7", "2001:db8::7", "::ffff:198.51.100.8"] {
            j.observe(ev(t0, source, request("friendly-scanner")), &mut out);
            for i in 0..100 {
                let at = t0 + Duration::from_millis(i);
                j.observe(
                    ev(at, source, failed(&format!("{}", 100 + i % 7))),
                    &mut out,
                );
                j.observe(ev(at, source, invite("011447911123456", false)), &mut out);
                j.observe(
                    ev(at, source, Kind::Garbage { error: "x".into() }),
                    &mut out,
                );
            }
            j.tier_ban(source.parse().unwrap(), t0, &mut out);
            assert!(j.is_exempt(source.parse().unwrap()));
        }
        assert!(bans(&out).is_empty(), "{:?}", bans(&out));
        // Next door is judged as usual.
        j.tier_ban("198.51.101.7".parse().unwrap(), t0, &mut out);
        assert_eq!(bans(&out).len(), 1);
    }

    #[test]
    fn memory_is_capped() {
        let mut j = Judge::new(Responsive {
            max_sources: 1000,
            ..Default::default()
        });
        let mut out = Vec::new();
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            j.observe(
                Event {
                    at: t0,
                    source: addr,
                    kind: request("Yealink"),
                    summary: String::new(),
                },
                &mut out,
            );
        }
        assert_eq!(j.sources(), 1000);
    }
}
