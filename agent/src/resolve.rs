//! Host names → addresses in the trust sets.
//!
//! Names come from the policy (DDNS branch offices, trunk hosts) and from
//! discovered PBX peers ([`PeerTarget::Host`]). They are resolved for A and
//! AAAA — and, for a SIP peer written without a port, for SRV first, as
//! RFC 3263 says — and the kernel sets follow the answers by **element add and
//! delete only**; the ruleset is never re-applied for a DNS change.
//!
//! Two halves, so the logic is testable without DNS:
//!
//! - [`Resolver`]: the I/O. One lookup of one [`HostKey`] → an [`Answer`]
//!   (deduplicated, sorted addresses, the smallest TTL of the records used,
//!   clamped, and the chain of records for `explain`) or a [`ResolveError`].
//! - [`Tracker`]: a pure state machine, driven by `now` and lookup results.
//!   It knows which names are due for a refresh and turns results into a
//!   [`Delta`] of set elements to add, refresh and remove, plus the [`Event`]s
//!   worth one log line each.
//!
//! [`refresh_due`] glues the two: it looks up every due name and records the
//! results, returning one [`Delta`] for one nft transaction.
//!
//! # Timing
//!
//! - A good answer is refreshed after its TTL, clamped to
//!   `[min_ttl, max_ttl]` (defaults 30 s and 1 h).
//! - A failed lookup is retried every `min_ttl`. The last good answer stays
//!   valid for its TTL plus the `grace` period (default 24 h) after the last
//!   success; only then are its addresses removed. The failure is reported
//!   once per streak ([`Event::Failed`]), the recovery once
//!   ([`Event::Recovered`]), the removal once ([`Event::Expired`]).
//! - The kernel element timeout is `ttl + grace` + [`ELEMENT_TIMEOUT_MARGIN`],
//!   counted from the last successful lookup, and is renewed on every
//!   successful lookup ([`Delta::refresh`]). So an element outlives failed
//!   refreshes for the whole grace period without any help from the agent,
//!   the agent's own delete at `ttl + grace` comes before the kernel's
//!   expiry (no race with a vanishing element), and an agent that died
//!   leaves nothing behind for longer than the margin.
//!
//! One [`Tracker`] per kernel set: addresses shared by two names of the same
//! tracker stay while either name still resolves to them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use palisade_model::dynamic::clip_comment;
use palisade_model::{PeerTarget, Transport};
use serde::Deserialize;
use tracing::{info, warn};

/// Default floor of the refresh interval.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(30);
/// Default ceiling of the refresh interval.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
/// Default time a last good answer stays valid after failed refreshes.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Default timeout of one DNS query.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than the agent's own deadline a kernel element lives: the
/// agent deletes an expired address before the kernel drops it by itself.
pub const ELEMENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);
/// At most this many names are looked up at once by [`refresh_due`].
const MAX_CONCURRENT_LOOKUPS: usize = 16;

/// `[agent.resolver]`: how names are resolved and kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// DNS servers to ask (UDP, TCP on truncation); empty = the system's
    /// `/etc/resolv.conf` (and `/etc/hosts`).
    pub nameservers: Vec<SocketAddr>,
    /// Floor of the refresh interval (a record's TTL below it is raised).
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Ceiling of the refresh interval (a record's TTL above it is lowered).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long the last good answer stays valid, after its TTL, while
    /// lookups fail.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Timeout of one DNS query (each query is tried twice).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            grace: DEFAULT_GRACE,
            timeout: DEFAULT_QUERY_TIMEOUT,
        }
    }
}

impl ResolverConfig {
    /// Rejects settings the refresh loop cannot work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.min_ttl < Duration::from_secs(1) {
            anyhow::bail!("[agent.resolver] min_ttl must be at least 1s");
        }
        if self.max_ttl < self.min_ttl {
            anyhow::bail!("[agent.resolver] max_ttl must not be below min_ttl");
        }
        if self.timeout.is_zero() {
            anyhow::bail!("[agent.resolver] timeout must not be zero");
        }
        Ok(())
    }

    /// `ttl` clamped to `[min_ttl, max_ttl]` (tolerating a config that
    /// [`ResolverConfig::validate`] would reject).
    pub fn clamp_ttl(&self, ttl: Duration) -> Duration {
        let min = self.min_ttl.max(Duration::from_secs(1));
        ttl.clamp(min, self.max_ttl.max(min))
    }
}

/// What is tracked: a name as the configuration writes it. The same name with
/// another port or transport is another key (its SRV lookups differ).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostKey {
    /// Lower case, without a trailing dot.
    pub name: String,
    /// An explicit port turns SRV lookups off (RFC 3263 §4.2).
    pub port: Option<u16>,
    /// Which SRV service is asked for when there is no port.
    pub transport: Option<Transport>,
}

impl HostKey {
    pub fn new(name: &str, port: Option<u16>, transport: Option<Transport>) -> HostKey {
        HostKey {
            name: normalize_name(name),
            port,
            transport,
        }
    }

    /// The key of a peer written as a host name; `None` for addresses and
    /// networks, which need no resolving.
    pub fn from_peer(target: &PeerTarget) -> Option<HostKey> {
        match target {
            PeerTarget::Host {
                name,
                port,
                transport,
            } => Some(HostKey::new(name, *port, *transport)),
            PeerTarget::Addr(_) | PeerTarget::Net(_) => None,
        }
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(transport) = self.transport {
            write!(f, ";transport={transport}")?;
        }
        Ok(())
    }
}

fn normalize_name(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The SRV services looked up for a name without a port (RFC 3263 §4.2):
/// the one matching the transport hint, all three SIP ones without a hint.
/// WebSocket transports have no SRV convention and IAX2 is not SIP: those
/// go to A/AAAA directly.
pub fn srv_services(transport: Option<Transport>) -> &'static [&'static str] {
    match transport {
        None => &["_sip._udp", "_sip._tcp", "_sips._tcp"],
        Some(Transport::Udp) => &["_sip._udp"],
        Some(Transport::Tcp) => &["_sip._tcp"],
        Some(Transport::Tls) => &["_sips._tcp"],
        Some(Transport::Ws | Transport::Wss | Transport::Iax) => &[],
    }
}

/// A successful lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Deduplicated and sorted; never empty.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the records used (SRV, CNAME, A, AAAA), clamped to
    /// `[min_ttl, max_ttl]`.
    pub ttl: Duration,
    /// The records that led to the addresses, for `explain`, e.g.
    /// `SRV _sip._udp.example.net -> sip1.example.net:5060` and
    /// `A sip1.example.net -> 192.0.2.10`.
    pub via: Vec<String>,
}

/// A failed lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// NXDOMAIN, or the name (or every SRV target) has neither A nor AAAA.
    #[error("{name}: no such name, or no A/AAAA records")]
    NotFound { name: String },
    /// Timeout, refused, SERVFAIL, unreachable server, ...
    #[error("{name}: lookup failed: {reason}")]
    Failed { name: String, reason: String },
    #[error("{name}: not a valid DNS name: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

/// The DNS side: hickory's Tokio resolver, without a response cache (the
/// [`Tracker`] decides when to ask again, and a cache would hide changes
/// until the record's own TTL has run out).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    config: ResolverConfig,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Builds the resolver. With `nameservers` set only those are asked (over
    /// UDP, and TCP for truncated answers) and `/etc/hosts` is not read;
    /// otherwise the system's resolv.conf and hosts file are used.
    pub fn new(config: &ResolverConfig) -> Result<Resolver, ResolveError> {
        let setup = |e: NetError| ResolveError::Setup(e.to_string());
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(setup)?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                hickory_resolver::config::ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options = builder.options_mut();
        options.cache_size = 0;
        options.timeout = config.timeout;
        options.preserve_intermediates = true;
        let inner = builder.build().map_err(setup)?;
        Ok(Resolver {
            inner,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Looks up a tracked key.
    pub async fn lookup_key(&self, key: &HostKey) -> Result<Answer, ResolveError> {
        self.lookup(&key.name, key.port, key.transport).await
    }

    /// Resolves `name` to addresses. Without a `port`, the SRV records of
    /// [`srv_services`]`(transport)` come first and their targets' A/AAAA
    /// records are the answer; when there are no SRV records (or with a
    /// port), the name's own A and AAAA records are.
    ///
    /// Any error other than "no such record" (timeout, SERVFAIL, refused)
    /// fails the whole lookup, so that a half answer never replaces a good
    /// one; the [`Tracker`] then keeps the last good answer.
    pub async fn lookup(
        &self,
        name: &str,
        port: Option<u16>,
        transport: Option<Transport>,
    ) -> Result<Answer, ResolveError> {
        let name = normalize_name(name);
        if let Ok(addr) = name.parse::<IpAddr>() {
            return Ok(Answer {
                addrs: vec![addr],
                ttl: self.config.clamp_ttl(self.config.max_ttl),
                via: vec![format!("{addr} is an address")],
            });
        }
        let host = Name::from_utf8(&name).map_err(|e| ResolveError::InvalidName {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let mut acc = Accumulator::default();

        if port.is_none() {
            let mut targets: Vec<Name> = Vec::new();
            let mut srv_found = false;
            for service in srv_services(transport) {
                let qname = format!("{service}.{name}");
                let records = match self.inner.srv_lookup(qname.as_str()).await {
                    Ok(lookup) => lookup.answers().to_vec(),
                    Err(e) if e.is_no_records_found() => continue,
                    Err(e) => return Err(failed(&qname, &e)),
                };
                for record in &records {
                    match &record.data {
                        RData::SRV(srv) => {
                            srv_found = true;
                            acc.ttl(record);
                            if srv.target.is_root() {
                                acc.via
                                    .push(format!("SRV {qname} -> . (service not offered)"));
                                continue;
                            }
                            acc.via.push(format!(
                                "SRV {qname} -> {}:{} (priority {}, weight {})",
                                show(&srv.target),
                                srv.port,
                                srv.priority,
                                srv.weight
                            ));
                            if !targets.contains(&srv.target) {
                                targets.push(srv.target.clone());
                            }
                        }
                        RData::CNAME(cname) => {
                            acc.ttl(record);
                            acc.via.push(format!(
                                "CNAME {} -> {}",
                                show(&record.name),
                                show(&cname.0)
                            ));
                        }
                        _ => {}
                    }
                }
            }
            if srv_found {
                // Every target of every priority: a failover target sends
                // traffic too.
                for target in &targets {
                    if !self.addresses(target, &mut acc).await? {
                        acc.via.push(format!("{} has no A/AAAA", show(target)));
                    }
                }
                return acc.finish(&name, &self.config);
            }
        }

        self.addresses(&host, &mut acc).await?;
        acc.finish(&name, &self.config)
    }

    /// Adds `host`'s A and AAAA records to `acc`; `Ok(false)` when it has
    /// neither.
    async fn addresses(&self, host: &Name, acc: &mut Accumulator) -> Result<bool, ResolveError> {
        let (v4, v6) = tokio::join!(
            self.inner.lookup(host.clone(), RecordType::A),
            self.inner.lookup(host.clone(), RecordType::AAAA)
        );
        let mut found = false;
        for result in [v4, v6] {
            let records = match result {
                Ok(lookup) => lookup.answers().to_vec(),
                Err(e) if e.is_no_records_found() => continue,
                Err(e) => return Err(failed(&show(host), &e)),
            };
            for record in &records {
                let addr = match &record.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                    RData::CNAME(cname) => {
                        acc.ttl(record);
                        let line = format!("CNAME {} -> {}", show(&record.name), show(&cname.0));
                        if !acc.via.contains(&line) {
                            acc.via.push(line);
                        }
                        continue;
                    }
                    _ => continue,
                };
                found = true;
                acc.ttl(record);
                acc.addrs.insert(addr);
                let kind = if addr.is_ipv4() { "A" } else { "AAAA" };
                acc.via
                    .push(format!("{kind} {} -> {addr}", show(&record.name)));
            }
        }
        Ok(found)
    }
}

fn failed(name: &str, e: &NetError) -> ResolveError {
    ResolveError::Failed {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

/// A DNS name without its trailing dot.
fn show(name: &Name) -> String {
    let s = name.to_utf8();
    match s.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
        _ => s,
    }
}

#[derive(Default)]
struct Accumulator {
    addrs: BTreeSet<IpAddr>,
    min_ttl: Option<u32>,
    via: Vec<String>,
}

impl Accumulator {
    fn ttl(&mut self, record: &Record) {
        self.min_ttl = Some(self.min_ttl.map_or(record.ttl, |t| t.min(record.ttl)));
    }

    fn finish(self, name: &str, config: &ResolverConfig) -> Result<Answer, ResolveError> {
        if self.addrs.is_empty() {
            return Err(ResolveError::NotFound {
                name: name.to_owned(),
            });
        }
        let ttl = self
            .min_ttl
            .map_or(config.max_ttl, |t| Duration::from_secs(t.into()));
        Ok(Answer {
            addrs: self.addrs.into_iter().collect(),
            ttl: config.clamp_ttl(ttl),
            via: self.via,
        })
    }
}

/// One set element to add or to renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub addr: IpAddr,
    /// The element's kernel timeout: until the latest deadline among the
    /// names resolving to it, plus [`ELEMENT_TIMEOUT_MARGIN`].
    pub timeout: Duration,
    /// The names resolving to it, comma separated (clipped to what the
    /// kernel keeps).
    pub comment: String,
}

/// Something to log, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first failed lookup of a streak (later failures of the same
    /// streak are silent). `kept` are the name's addresses that stay for
    /// `keep_for` more unless a lookup succeeds.
    Failed {
        key: HostKey,
        error: ResolveError,
        kept: Vec<IpAddr>,
        keep_for: Option<Duration>,
    },
    /// A lookup succeeded after `failures` failed ones.
    Recovered {
        key: HostKey,
        failures: u32,
        down_for: Duration,
    },
    /// The grace period ran out: the name's addresses are no longer trusted
    /// (those also held by another name stay in the set).
    Expired { key: HostKey, dropped: Vec<IpAddr> },
    /// A successful lookup gave other addresses than the last one (the first
    /// answer included).
    Changed {
        key: HostKey,
        addrs: Vec<IpAddr>,
        added: Vec<IpAddr>,
        removed: Vec<IpAddr>,
    },
}

impl Event {
    /// Writes the event to the log: failures and expiries as warnings,
    /// changes and recoveries as information.
    pub fn log(&self) {
        match self {
            Event::Failed {
                key,
                error,
                kept,
                keep_for,
            } => match keep_for {
                Some(keep_for) if !kept.is_empty() => warn!(
                    name = %key,
                    error = %error,
                    kept = ?kept,
                    "DNS lookup failed; keeping the last answer for {}",
                    humantime::format_duration(*keep_for)
                ),
                _ => warn!(name = %key, error = %error, "DNS lookup failed"),
            },
            Event::Recovered {
                key,
                failures,
                down_for,
            } => info!(
                name = %key,
                failures,
                "DNS lookup works again after {}",
                humantime::format_duration(*down_for)
            ),
            Event::Expired { key, dropped } => warn!(
                name = %key,
                dropped = ?dropped,
                "DNS lookups kept failing past the grace period; addresses no longer trusted"
            ),
            Event::Changed {
                key,
                addrs,
                added,
                removed,
            } => info!(
                name = %key,
                addrs = ?addrs,
                added = ?added,
                removed = ?removed,
                "resolved addresses changed"
            ),
        }
    }
}

/// Set element changes for one nft transaction, plus what to log.
///
/// Apply in one transaction: `remove` (delete element), `refresh` (elements
/// that exist and get a fresh timeout: on kernels before 6.10 a plain
/// `add element` leaves an existing element's timeout alone, so delete and
/// add them), `add` (new elements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Addresses not in the set before.
    pub add: Vec<Element>,
    /// Addresses in the set before and after, whose timeout is renewed.
    pub refresh: Vec<Element>,
    /// Addresses to delete from the set.
    pub remove: Vec<IpAddr>,
    pub events: Vec<Event>,
}

impl Delta {
    /// Whether there is no set change (there may still be events).
    pub fn is_noop(&self) -> bool {
        self.add.is_empty() && self.refresh.is_empty() && self.remove.is_empty()
    }

    /// Logs every event.
    pub fn log_events(&self) {
        for event in &self.events {
            event.log();
        }
    }
}

#[derive(Debug, Clone)]
struct Streak {
    since: Instant,
    count: u32,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    /// The last good answer, until it expires.
    answer: Option<Answer>,
    /// Last success + ttl + grace.
    expires: Option<Instant>,
    /// `None` = due now (never looked up).
    next_refresh: Option<Instant>,
    /// The failure streak in progress.
    failing: Option<Streak>,
}

/// Which names are tracked, their last good answers and when to ask again.
/// No I/O: every call takes `now`.
#[derive(Debug, Clone)]
pub struct Tracker {
    config: ResolverConfig,
    entries: BTreeMap<HostKey, Entry>,
}

impl Tracker {
    /// Only `min_ttl`, `max_ttl` and `grace` of `config` matter here.
    pub fn new(config: &ResolverConfig) -> Tracker {
        Tracker {
            config: config.clone(),
            entries: BTreeMap::new(),
        }
    }

    /// Starts tracking `key`; it is due at once. `false` if it already was
    /// tracked (nothing changes then).
    pub fn track(&mut self, key: HostKey) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key, Entry::default());
        true
    }

    /// Stops tracking `key` (it left the configuration): its addresses are
    /// removed unless another tracked name resolves to them.
    pub fn untrack(&mut self, key: &HostKey, now: Instant) -> Delta {
        let before = self.installed();
        if self.entries.remove(key).is_none() {
            return Delta::default();
        }
        self.delta(before, &BTreeSet::new(), Vec::new(), now)
    }

    /// Makes the tracked keys exactly `keys` (track the new, untrack the
    /// gone), for a configuration reload.
    pub fn set_keys(&mut self, keys: impl IntoIterator<Item = HostKey>, now: Instant) -> Delta {
        let wanted: BTreeSet<HostKey> = keys.into_iter().collect();
        let before = self.installed();
        self.entries.retain(|key, _| wanted.contains(key));
        for key in wanted {
            self.entries.entry(key).or_default();
        }
        self.delta(before, &BTreeSet::new(), Vec::new(), now)
    }

    pub fn is_tracked(&self, key: &HostKey) -> bool {
        self.entries.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &HostKey> {
        self.entries.keys()
    }

    /// The last good answer for `key`, while it is valid.
    pub fn answer(&self, key: &HostKey) -> Option<&Answer> {
        self.entries.get(key)?.answer.as_ref()
    }

    /// The keys whose refresh time has come (new keys at once).
    pub fn due(&self, now: Instant) -> Vec<HostKey> {
        self.entries
            .iter()
            .filter(|(_, e)| e.next_refresh.is_none_or(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// When the next key is due or an answer expires (`now` if one is due
    /// already), `None` when nothing is tracked: how long the refresh loop
    /// may sleep.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .flat_map(|e| {
                let refresh = e.next_refresh.unwrap_or(now);
                let expiry = e.answer.as_ref().and(e.expires);
                [Some(refresh), expiry]
            })
            .flatten()
            .min()
            .map(|t| t.max(now))
    }

    /// Every element the set should hold now, with its timeout: to fill a
    /// set that was created afresh.
    pub fn elements(&self, now: Instant) -> Vec<Element> {
        self.installed()
            .into_iter()
            .map(|addr| self.element(addr, now))
            .collect()
    }

    /// Records the result of one lookup of `key` made at `now`. A key that
    /// is not tracked (untracked while its lookup ran) is ignored.
    pub fn record(
        &mut self,
        key: &HostKey,
        result: Result<Answer, ResolveError>,
        now: Instant,
    ) -> Delta {
        self.record_all([(key.clone(), result)], now)
    }

    /// Drops the answers whose grace period has run out, without a lookup.
    pub fn expire(&mut self, now: Instant) -> Delta {
        self.record_all([], now)
    }

    /// Records many lookup results at once and expires what has run out:
    /// one [`Delta`] for one transaction.
    pub fn record_all(
        &mut self,
        results: impl IntoIterator<Item = (HostKey, Result<Answer, ResolveError>)>,
        now: Instant,
    ) -> Delta {
        let before = self.installed();
        let mut events = Vec::new();
        let mut renewed = BTreeSet::new();
        let config = self.config.clone();
        for (key, result) in results {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            let result = match result {
                Ok(answer) if answer.addrs.is_empty() => Err(ResolveError::NotFound {
                    name: key.name.clone(),
                }),
                other => other,
            };
            match result {
                Ok(mut answer) => {
                    answer.addrs.sort();
                    answer.addrs.dedup();
                    answer.ttl = config.clamp_ttl(answer.ttl);
                    if let Some(streak) = entry.failing.take() {
                        events.push(Event::Recovered {
                            key: key.clone(),
                            failures: streak.count,
                            down_for: now.saturating_duration_since(streak.since),
                        });
                    }
                    let old: Vec<IpAddr> = entry
                        .answer
                        .as_ref()
                        .map(|a| a.addrs.clone())
                        .unwrap_or_default();
                    if old != answer.addrs {
                        events.push(Event::Changed {
                            key: key.clone(),
                            addrs: answer.addrs.clone(),
                            added: difference(&answer.addrs, &old),
                            removed: difference(&old, &answer.addrs),
                        });
                    }
                    entry.expires = Some(now + answer.ttl + config.grace);
                    entry.next_refresh = Some(now + answer.ttl);
                    renewed.extend(answer.addrs.iter().copied());
                    entry.answer = Some(answer);
                }
                Err(error) => {
                    match &mut entry.failing {
                        Some(streak) => streak.count += 1,
                        None => {
                            let kept = entry
                                .answer
                                .as_ref()
                                .map(|a| a.addrs.clone())
                                .unwrap_or_default();
                            let keep_for = entry
                                .answer
                                .as_ref()
                                .and(entry.expires)
                                .map(|t| t.saturating_duration_since(now));
                            events.push(Event::Failed {
                                key: key.clone(),
                                error,
                                kept,
                                keep_for,
                            });
                            entry.failing = Some(Streak {
                                since: now,
                                count: 1,
                            });
                        }
                    }
                    // Retry at the floor interval, but not after the answer
                    // expires, so the removal is not late.
                    let retry = now + config.clamp_ttl(config.min_ttl);
                    entry.next_refresh = Some(match entry.expires {
                        Some(expires) if entry.answer.is_some() && expires > now => {
                            retry.min(expires)
                        }
                        _ => retry,
                    });
                }
            }
        }
        for (key, entry) in &mut self.entries {
            let expired = entry.answer.is_some() && entry.expires.is_some_and(|t| t <= now);
            if expired {
                let answer = entry.answer.take().expect("checked above");
                entry.expires = None;
                events.push(Event::Expired {
                    key: key.clone(),
                    dropped: answer.addrs,
                });
            }
        }
        self.delta(before, &renewed, events, now)
    }

    /// Every address some valid answer holds.
    fn installed(&self) -> BTreeSet<IpAddr> {
        self.entries
            .values()
            .filter_map(|e| e.answer.as_ref())
            .flat_map(|a| a.addrs.iter().copied())
            .collect()
    }

    fn delta(
        &self,
        before: BTreeSet<IpAddr>,
        renewed: &BTreeSet<IpAddr>,
        events: Vec<Event>,
        now: Instant,
    ) -> Delta {
        let after = self.installed();
        Delta {
            add: after
                .difference(&before)
                .map(|&addr| self.element(addr, now))
                .collect(),
            refresh: renewed
                .iter()
                .filter(|addr| before.contains(addr) && after.contains(addr))
                .map(|&addr| self.element(addr, now))
                .collect(),
            remove: before.difference(&after).copied().collect(),
            events,
        }
    }

    fn element(&self, addr: IpAddr, now: Instant) -> Element {
        let holders = self
            .entries
            .iter()
            .filter(|(_, e)| e.answer.as_ref().is_some_and(|a| a.addrs.contains(&addr)));
        let mut names = BTreeSet::new();
        let mut until = now;
        for (key, entry) in holders {
            names.insert(key.name.as_str());
            if let Some(expires) = entry.expires {
                until = until.max(expires);
            }
        }
        let names: Vec<&str> = names.into_iter().collect();
        Element {
            addr,
            timeout: until.saturating_duration_since(now) + ELEMENT_TIMEOUT_MARGIN,
            comment: clip_comment(&names.join(", ")),
        }
    }
}

fn difference(a: &[IpAddr], b: &[IpAddr]) -> Vec<IpAddr> {
    a.iter().filter(|x| !b.contains(x)).copied().collect()
}

/// Looks up every key that is due (at most 16 at once), records the results
/// at `now` and expires what has run out: one [`Delta`] to apply.
///
/// The refresh loop is: apply `refresh_due(..)`, log its events, sleep until
/// [`Tracker::next_due`] (or a configuration change), repeat.
pub async fn refresh_due(tracker: &mut Tracker, resolver: &Resolver, now: Instant) -> Delta {
    let keys = tracker.due(now);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS));
    let mut lookups = tokio::task::JoinSet::new();
    for key in keys {
        let resolver = resolver.clone();
        let limit = Arc::clone(&limit);
        lookups.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = resolver.lookup_key(&key).await;
            (key, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            // The key stays due and is tried again next round.
            Err(e) => warn!(error = %e, "DNS lookup task failed"),
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    tracker.record_all(results, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(name: &str) -> HostKey {
        HostKey::new(name, None, None)
    }

    fn answer(addrs: &[&str], ttl: Duration) -> Result<Answer, ResolveError> {
        Ok(Answer {
            addrs: addrs.iter().map(|a| ip(a)).collect(),
            ttl,
            via: Vec::new(),
        })
    }

    fn fail(name: &str) -> Result<Answer, ResolveError> {
        Err(ResolveError::Failed {
            name: name.into(),
            reason: "request timed out".into(),
        })
    }

    fn added(d: &Delta) -> Vec<IpAddr> {
        d.add.iter().map(|e| e.addr).collect()
    }

    fn refreshed(d: &Delta) -> Vec<IpAddr> {
        d.refresh.iter().map(|e| e.addr).collect()
    }

    fn tracker() -> Tracker {
        Tracker::new(&ResolverConfig::default())
    }

    fn grace() -> Duration {
        DEFAULT_GRACE
    }

    #[test]
    fn config_defaults_and_toml() {
        let c = ResolverConfig::default();
        assert_eq!(c.min_ttl, 30 * S);
        assert_eq!(c.max_ttl, 3600 * S);
        assert_eq!(c.grace, 24 * 3600 * S);
        assert!(c.nameservers.is_empty());
        c.validate().unwrap();

        let c: ResolverConfig = toml::from_str(
            "nameservers = [\"192.0.2.53:53\", \"[2001:db8::53]:5353\"]\n\
             min_ttl = \"1m\"\nmax_ttl = \"2h\"\ngrace = \"12h\"\n",
        )
        .unwrap();
        assert_eq!(c.nameservers.len(), 2);
        assert_eq!(c.nameservers[1].port(), 5353);
        assert_eq!(c.min_ttl, 60 * S);
        assert_eq!(c.max_ttl, 7200 * S);
        assert_eq!(c.grace, 12 * 3600 * S);
        assert_eq!(c.timeout, DEFAULT_QUERY_TIMEOUT);

        assert!(toml::from_str::<ResolverConfig>("ttl = \"1m\"").is_err());
        let bad: ResolverConfig = toml::from_str("min_ttl = \"2h\"").unwrap();
        assert!(bad.validate().is_err());
        let bad: ResolverConfig = toml::from_str("min_ttl = \"0s\"").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn host_keys() {
        assert_eq!(key("Trunk.Example.NET.").name, "trunk.example.net");
        let peer = PeerTarget::Host {
            name: "sip.example.net".into(),
            port: Some(5061),
            transport: Some(Transport::Tls),
        };
        let k = HostKey::from_peer(&peer).unwrap();
        assert_eq!(k.to_string(), "sip.example.net:5061;transport=tls");
        assert!(HostKey::from_peer(&PeerTarget::Addr(ip("192.0.2.1"))).is_none());
    }

    #[test]
    fn srv_services_follow_the_transport_hint() {
        assert_eq!(srv_services(None), ["_sip._udp", "_sip._tcp", "_sips._tcp"]);
        assert_eq!(srv_services(Some(Transport::Udp)), ["_sip._udp"]);
        assert_eq!(srv_services(Some(Transport::Tcp)), ["_sip._tcp"]);
        assert_eq!(srv_services(Some(Transport::Tls)), ["_sips._tcp"]);
        assert!(srv_services(Some(Transport::Wss)).is_empty());
        assert!(srv_services(Some(Transport::Iax)).is_empty());
    }

    #[test]
    fn new_keys_are_due_at_once() {
        let mut t = tracker();
        let now = Instant::now();
        assert_eq!(t.next_due(now), None);
        assert!(t.track(key("a.example")));
        assert!(!t.track(key("a.example")));
        assert_eq!(t.due(now), vec![key("a.example")]);
        assert_eq!(t.next_due(now), Some(now));
    }

    #[test]
    fn ttl_is_clamped() {
        let now = Instant::now();
        let mut t = tracker();
        t.track(key("short.example"));
        t.track(key("long.example"));
        t.record(&key("short.example"), answer(&["192.0.2.1"], 5 * S), now);
        t.record(&key("long.example"), answer(&["192.0.2.2"], 7200 * S), now);
        assert_eq!(t.answer(&key("short.example")).unwrap().ttl, 30 * S);
        assert_eq!(t.answer(&key("long.example")).unwrap().ttl, 3600 * S);
        // Refreshed at the clamped TTL.
        assert!(t.due(now + 29 * S).is_empty());
        assert_eq!(t.due(now + 30 * S), vec![key("short.example")]);
        assert_eq!(t.due(now + 3599 * S), vec![key("short.example")]);
        assert_eq!(t.due(now + 3600 * S).len(), 2);
        assert_eq!(t.next_due(now), Some(now + 30 * S));

        let c = ResolverConfig::default();
        assert_eq!(c.clamp_ttl(Duration::ZERO), 30 * S);
        assert_eq!(c.clamp_ttl(300 * S), 300 * S);
    }

    #[test]
    fn first_answer_adds_with_ttl_plus_grace_timeout() {
        let now = Instant::now();
        let mut t = tracker();
        t.track(key("trunk.example"));
        let d = t.record(
            &key("trunk.example"),
            answer(&["2001:db8::1", "192.0.2.1", "192.0.2.1"], 300 * S),
            now,
        );
        assert_eq!(added(&d), [ip("192.0.2.1"), ip("2001:db8::1")]);
        assert!(d.refresh.is_empty() && d.remove.is_empty());
        for e in &d.add {
            assert_eq!(e.timeout, 300 * S + grace() + ELEMENT_TIMEOUT_MARGIN);
            assert_eq!(e.comment, "trunk.example");
        }
        assert!(
            matches!(&d.events[..], [Event::Changed { added, removed, .. }]
            if added.len() == 2 && removed.is_empty())
        );
        assert_eq!(t.due(now + 299 * S), Vec::<HostKey>::new());
        assert_eq!(t.due(now + 300 * S), vec![key("trunk.example")]);
    }

    #[test]
    fn refresh_renews_changes_add_and_remove() {
        let now = Instant::now();
        let k = key("trunk.example");
        let mut t = tracker();
        t.track(k.clone());
        t.record(&k, answer(&["192.0.2.1", "192.0.2.2"], 60 * S), now);

        // Same answer: nothing added or removed, the timeouts are renewed.
        let later = now + 60 * S;
        let d = t.record(&k, answer(&["192.0.2.1", "192.0.2.2"], 60 * S), later);
        assert!(d.add.is_empty() && d.remove.is_empty() && d.events.is_empty());
        assert_eq!(refreshed(&d), [ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(
            d.refresh[0].timeout,
            60 * S + grace() + ELEMENT_TIMEOUT_MARGIN
        );

        // The record changed: .2 goes, .3 comes, .1 is renewed.
        let later = later + 60 * S;
        let d = t.record(&k, answer(&["192.0.2.3", "192.0.2.1"], 60 * S), later);
        assert_eq!(added(&d), [ip("192.0.2.3")]);
        assert_eq!(d.remove, [ip("192.0.2.2")]);
        assert_eq!(refreshed(&d), [ip("192.0.2.1")]);
        assert_eq!(
            d.events,
            [Event::Changed {
                key: k.clone(),
                addrs: vec![ip("192.0.2.1"), ip("192.0.2.3")],
                added: vec![ip("192.0.2.3")],
                removed: vec![ip("192.0.2.2")],
            }]
        );
    }

    #[test]
    fn shared_addresses_stay_while_a_name_holds_them() {
        let now = Instant::now();
        let (a, b) = (key("a.example"), key("b.example"));
        let mut t = tracker();
        t.track(a.clone());
        t.track(b.clone());
        let d = t.record_all(
            [
                (a.clone(), answer(&["192.0.2.1", "192.0.2.9"], 60 * S)),
                (b.clone(), answer(&["192.0.2.9"], 600 * S)),
            ],
            now,
        );
        assert_eq!(added(&d), [ip("192.0.2.1"), ip("192.0.2.9")]);
        let shared = d.add.iter().find(|e| e.addr == ip("192.0.2.9")).unwrap();
        assert_eq!(shared.comment, "a.example, b.example");
        // The longest deadline of its holders.
        assert_eq!(shared.timeout, 600 * S + grace() + ELEMENT_TIMEOUT_MARGIN);

        // a no longer resolves to .9: b still does, so it stays.
        let d = t.record(&a, answer(&["192.0.2.1"], 60 * S), now + 60 * S);
        assert!(d.remove.is_empty() && d.add.is_empty());
        assert_eq!(refreshed(&d), [ip("192.0.2.1")]);

        // b moves away from .9: now it goes.
        let d = t.record(&b, answer(&["192.0.2.8"], 600 * S), now + 600 * S);
        assert_eq!(d.remove, [ip("192.0.2.9")]);
        assert_eq!(added(&d), [ip("192.0.2.8")]);

        // Untracking a: .1 goes, .8 (b's) stays.
        let d = t.untrack(&a, now + 601 * S);
        assert_eq!(d.remove, [ip("192.0.2.1")]);
        assert!(d.add.is_empty());
        assert!(t.untrack(&a, now + 602 * S).is_noop());
    }

    #[test]
    fn failures_keep_addresses_for_the_grace_period_and_log_once() {
        let now = Instant::now();
        let k = key("branch.example");
        let mut t = tracker();
        t.track(k.clone());
        t.record(&k, answer(&["192.0.2.7"], 300 * S), now);

        // First failure: one event, nothing removed, retry at min_ttl.
        let at = now + 300 * S;
        let d = t.record(&k, fail("branch.example"), at);
        assert!(d.is_noop());
        match &d.events[..] {
            [Event::Failed { kept, keep_for, .. }] => {
                assert_eq!(kept, &[ip("192.0.2.7")]);
                assert_eq!(*keep_for, Some(grace()));
            }
            other => panic!("unexpected events {other:?}"),
        }
        assert!(t.due(at + 29 * S).is_empty());
        assert_eq!(t.due(at + 30 * S), vec![k.clone()]);
        assert_eq!(t.answer(&k).unwrap().addrs, [ip("192.0.2.7")]);

        // Later failures of the streak: silent, still nothing removed.
        let mut at = at;
        for _ in 0..100 {
            at += 30 * S;
            let d = t.record(&k, fail("branch.example"), at);
            assert!(d.is_noop() && d.events.is_empty(), "{d:?}");
        }
        assert_eq!(t.answer(&k).unwrap().addrs, [ip("192.0.2.7")]);
    }

    #[test]
    fn addresses_go_when_the_grace_period_ends() {
        let now = Instant::now();
        let k = key("branch.example");
        let mut t = tracker();
        t.track(k.clone());
        t.record(&k, answer(&["192.0.2.7"], 300 * S), now);
        let expires = now + 300 * S + grace();

        t.record(&k, fail("branch.example"), now + 300 * S);
        // The retry right before the deadline is capped at the deadline.
        let d = t.record(&k, fail("branch.example"), expires - 10 * S);
        assert!(d.is_noop());
        assert_eq!(t.next_due(expires - 10 * S), Some(expires));
        assert!(t.expire(expires - S).is_noop());

        let d = t.record(&k, fail("branch.example"), expires);
        assert_eq!(d.remove, [ip("192.0.2.7")]);
        assert_eq!(
            d.events,
            [Event::Expired {
                key: k.clone(),
                dropped: vec![ip("192.0.2.7")],
            }]
        );
        assert!(t.answer(&k).is_none());
        // Still retried, silently.
        let d = t.record(&k, fail("branch.example"), expires + 30 * S);
        assert!(d.is_noop() && d.events.is_empty());
        assert_eq!(t.due(expires + 60 * S), vec![k.clone()]);
    }

    #[test]
    fn expiry_without_a_lookup_and_shared_addresses() {
        let now = Instant::now();
        let (a, b) = (key("a.example"), key("b.example"));
        let mut t = tracker();
        t.track(a.clone());
        t.track(b.clone());
        t.record(&a, answer(&["192.0.2.1", "192.0.2.2"], 30 * S), now);
        t.record(&b, answer(&["192.0.2.2"], 30 * S), now);
        t.record(&a, fail("a.example"), now + 30 * S);
        // b keeps working; a's grace runs out with no lookup recorded.
        let at = now + 30 * S + grace();
        t.record(&b, answer(&["192.0.2.2"], 30 * S), at - S);
        let d = t.expire(at);
        assert_eq!(d.remove, [ip("192.0.2.1")]);
        assert_eq!(d.events.len(), 1);
        assert!(matches!(&d.events[0], Event::Expired { key, .. } if *key == a));
        assert_eq!(t.elements(at).len(), 1);
    }

    #[test]
    fn recovery_is_logged_once_and_renews() {
        let now = Instant::now();
        let k = key("trunk.example");
        let mut t = tracker();
        t.track(k.clone());
        t.record(&k, answer(&["192.0.2.1"], 60 * S), now);
        t.record(&k, fail("trunk.example"), now + 60 * S);
        t.record(&k, fail("trunk.example"), now + 90 * S);

        let d = t.record(&k, answer(&["192.0.2.1"], 60 * S), now + 120 * S);
        assert_eq!(
            d.events,
            [Event::Recovered {
                key: k.clone(),
                failures: 2,
                down_for: 60 * S,
            }]
        );
        assert_eq!(refreshed(&d), [ip("192.0.2.1")]);
        assert_eq!(
            d.refresh[0].timeout,
            60 * S + grace() + ELEMENT_TIMEOUT_MARGIN
        );

        // A new streak is reported again.
        let d = t.record(&k, fail("trunk.example"), now + 180 * S);
        assert!(matches!(&d.events[..], [Event::Failed { .. }]));
        // Recovery after the grace period ran out re-adds.
        let late = now + 180 * S + grace() + 60 * S;
        let d = t.expire(late);
        assert_eq!(d.remove, [ip("192.0.2.1")]);
        let d = t.record(&k, answer(&["192.0.2.1"], 60 * S), late + S);
        assert_eq!(added(&d), [ip("192.0.2.1")]);
        assert!(matches!(
            &d.events[..],
            [Event::Recovered { .. }, Event::Changed { .. }]
        ));
    }

    #[test]
    fn a_name_that_never_resolved_logs_once_and_adds_nothing() {
        let now = Instant::now();
        let k = key("typo.example");
        let mut t = tracker();
        t.track(k.clone());
        let nx = || {
            Err(ResolveError::NotFound {
                name: "typo.example".into(),
            })
        };
        let d = t.record(&k, nx(), now);
        assert!(d.is_noop());
        assert!(matches!(&d.events[..],
            [Event::Failed { kept, keep_for: None, .. }] if kept.is_empty()));
        assert!(t.record(&k, nx(), now + 30 * S).events.is_empty());
        // An empty success counts as "not found".
        let d = t.record(&k, answer(&[], 60 * S), now + 60 * S);
        assert!(d.is_noop() && d.events.is_empty());
    }

    #[test]
    fn untracked_results_are_ignored_and_set_keys_reconciles() {
        let now = Instant::now();
        let mut t = tracker();
        let d = t.record(&key("x.example"), answer(&["192.0.2.1"], 60 * S), now);
        assert_eq!(d, Delta::default());

        t.track(key("a.example"));
        t.track(key("b.example"));
        t.record(&key("a.example"), answer(&["192.0.2.1"], 60 * S), now);
        t.record(&key("b.example"), answer(&["192.0.2.2"], 60 * S), now);
        let d = t.set_keys([key("b.example"), key("c.example")], now);
        assert_eq!(d.remove, [ip("192.0.2.1")]);
        assert!(!t.is_tracked(&key("a.example")));
        assert_eq!(t.due(now), vec![key("c.example")]);
    }

    #[test]
    fn comments_are_clipped() {
        let now = Instant::now();
        let mut t = tracker();
        let long = format!("{}.example", "x".repeat(200));
        t.track(key(&long));
        let d = t.record(&key(&long), answer(&["192.0.2.1"], 60 * S), now);
        assert!(d.add[0].comment.len() <= palisade_model::dynamic::MAX_COMMENT);
    }
}
