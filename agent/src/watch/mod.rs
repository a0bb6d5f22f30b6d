//! The SIP watch: reads the copy of SIP traffic the ruleset sends to NFLOG,
//! judges it, and writes verdicts into the kernel's sets at once.
//!
//! Two threads, both plain blocking code because the work is CPU-bound and
//! latency-critical:
//! * the *reader* owns the NFLOG socket, the TCP reassembly, the transaction
//!   tracker and the judge (all single-owner state, no locks on the packet path);
//! * the *enforcer* owns a long-lived `nft` shell and applies what the reader
//!   decided, batching whatever has queued up meanwhile into one transaction.
//!
//! The daemon talks to both through [`Watch`]: new settings and exemptions
//! when the policy changes. Stopping the agent stops the watch; the bans and
//! rules already in the kernel stay in force.

pub mod grants;
pub mod nflog;
pub mod nfqueue;
pub mod packet;

use crate::bans::{BanBook, BanRecord, Entry};
use crate::ruleset::plan::{element_renew, grant_renew};
use crate::ruleset::render::{LOG_IN, LOG_OUT, LOG_TIER_BAN};
use crate::ruleset::{Nft, NftShell};
use grants::{GrantChange, UserGrants};
use nflog::{Nflog, Read};
use nfqueue::NfQueue;
use packet::{decode, Packet, L4};
use palisade_guard::sip::{self, Limits, Parsed, StreamConfig, Streams, Transport};
use palisade_guard::{Action, Direction, Event, Exempt, Judge, Tracker, Verdict};
use palisade_model::dynamic::clip_comment;
use palisade_model::{DynSet, Grant, Policy, Proto, Responsive, TimedAddr, Zone};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Open SIP transactions remembered at most.
const MAX_TRANSACTIONS: usize = 16_384;
/// TCP connections reassembled at once at most.
const MAX_STREAMS: usize = 4_096;
/// How often the reader looks up from the socket even when nothing arrives.
const TICK: Duration = Duration::from_millis(200);

/// What the daemon tells the reader.
enum Control {
    Reconfigure(Box<Responsive>, Exempt, Box<UserGrants>),
    Forgive(IpAddr),
    /// A ban decided elsewhere (restored from the ban book, or by hand).
    NoteBan(IpAddr, Instant),
    Stop,
}

/// Addresses no detector may ban, from the policy: management, trusted and
/// trunk networks. (Their traffic mostly bypasses the watch in the kernel
/// already; this is the second line.)
pub fn exempt_of(policy: &Policy) -> Exempt {
    let mut nets: Vec<ipnet::IpNet> = policy.management.iter().map(|m| m.value).collect();
    nets.extend(policy.networks(Zone::Trusted).map(|n| n.value));
    nets.extend(policy.trunk_networks());
    Exempt {
        nets,
        addrs: Default::default(),
    }
}

/// A running watch.
pub struct Watch {
    control: Sender<Control>,
    reader: Option<JoinHandle<()>>,
    enforcer: Option<JoinHandle<()>>,
    /// The PBX log follower, when there are logs to follow.
    logs: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    group: u16,
    inline: palisade_model::inline::Inline,
}

impl Watch {
    /// Binds the NFLOG group and starts the threads. Bans are written to
    /// `book` as they land; what the PBX logs in `logs` is judged too.
    pub fn start(
        nft: Nft,
        policy: &Policy,
        book: BanBook,
        logs: &palisade_model::pbxlog::PbxLogs,
    ) -> std::io::Result<Watch> {
        let cfg = policy.responsive.clone();
        let group = cfg.nflog_group;
        let nflog = Nflog::open(group, TICK)?;
        let queue = if cfg.inline.enabled {
            let inline = &cfg.inline;
            match NfQueue::open(inline.queue, inline.bypass, TICK) {
                Ok(q) => {
                    info!(
                        queue = inline.queue,
                        bypass = inline.bypass,
                        "inline mode: reading the queue"
                    );
                    Some(q)
                }
                Err(e) if inline.bypass => {
                    error!(error = %e, "inline mode: cannot read the queue; SIP bypasses the agent (copied and judged, not held)");
                    None
                }
                Err(e) => {
                    error!(error = %e, "inline mode: cannot read the queue; it fails closed, SIP from unknown sources is dropped");
                    None
                }
            }
        } else {
            None
        };
        let (control, control_rx) = channel();
        let (actions, actions_rx) = channel();
        let exempt = exempt_of(policy);
        let grants = UserGrants::new(policy);
        // Ready before the first packet is read, so the first ban pays nothing extra.
        let mut shell = NftShell::new(nft);
        if let Err(e) = shell.warm_up() {
            warn!(error = %e, "the nft shell did not start; will retry at the first verdict");
        }
        let (log_tx, log_rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let logs = match crate::pbxlog::sources(logs) {
            Ok(sources) if !sources.is_empty() => {
                let stop = Arc::clone(&stop);
                Some(
                    std::thread::Builder::new()
                        .name("pbx-logs".into())
                        .spawn(move || follow_logs(sources, log_tx, stop))?,
                )
            }
            Ok(_) => None,
            Err(e) => {
                error!(error = %e, "PBX logs are not read");
                None
            }
        };
        let following = logs.is_some();
        let enforcer = std::thread::Builder::new()
            .name("watch-enforcer".into())
            .spawn(move || enforce_loop(shell, actions_rx, book))?;
        let reader = std::thread::Builder::new()
            .name("watch-reader".into())
            .spawn(move || {
                let mut reader = Reader::new(cfg, exempt, actions);
                reader.grants = grants;
                // Without logs to follow, the packet path keeps no record
                // for deduplication.
                reader.logged = following.then_some(log_rx);
                reader.run(nflog, queue, control_rx);
            })?;
        info!(group, "SIP watch started");
        Ok(Watch {
            control,
            reader: Some(reader),
            enforcer: Some(enforcer),
            logs,
            stop,
            group,
            inline: policy.responsive.inline.clone(),
        })
    }

    /// Whether the running threads fit `r`: the NFLOG group and the inline
    /// queue are bound at start, so a change of either needs a new watch.
    pub fn fits(&self, r: &Responsive) -> bool {
        self.group == r.nflog_group && self.inline == r.inline
    }

    /// New settings and exemptions; what was learnt about sources is kept.
    pub fn reconfigure(&self, policy: &Policy) {
        let _ = self.control.send(Control::Reconfigure(
            Box::new(policy.responsive.clone()),
            exempt_of(policy),
            Box::new(UserGrants::new(policy)),
        ));
    }

    /// An operator lifted a ban: the detectors forget what they held against it.
    pub fn forgive(&self, addr: IpAddr) {
        let _ = self.control.send(Control::Forgive(addr));
    }

    /// A ban the judge did not decide (restored, or by hand): escalation and
    /// inline mode know of it.
    pub fn note_ban(&self, addr: IpAddr, remaining: Duration) {
        let _ = self
            .control
            .send(Control::NoteBan(addr, Instant::now() + remaining));
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(l) = self.logs.take() {
            let _ = l.join();
        }
        let _ = self.control.send(Control::Stop);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        // The reader dropped its sender: the enforcer drains and ends.
        if let Some(e) = self.enforcer.take() {
            let _ = e.join();
        }
    }
}

/// One action with the moment its proof arrived, for the latency metric.
struct Timed {
    work: Work,
    seen: Instant,
}

/// What the enforcer applies.
enum Work {
    Act(Action),
    Grants(GrantChange),
}

/// The packet path: copy → IP/UDP/TCP → SIP → events → actions.
pub struct Reader {
    judge: Judge,
    tracker: Tracker,
    streams: Streams<(SocketAddr, SocketAddr)>,
    limits: Limits,
    events: Vec<Event>,
    actions_buf: Vec<Action>,
    actions: Sender<Timed>,
    /// Per-user rules, following registrations.
    grants: UserGrants,
    /// Facts from the PBX's logs, one line's events per message.
    logged: Option<Receiver<Vec<Event>>>,
    /// What the packet path learnt lately, per (source, event, user): a log
    /// line about the same thing is not counted twice.
    wire_seen: lru::LruCache<(IpAddr, &'static str, Box<str>), Instant>,
    grant_buf: GrantChange,
    last_tick: Instant,
}

impl Reader {
    fn new(cfg: Responsive, exempt: Exempt, actions: Sender<Timed>) -> Reader {
        let mut judge = Judge::new(cfg);
        judge.set_exempt(exempt);
        Reader {
            judge,
            tracker: Tracker::new(MAX_TRANSACTIONS),
            streams: Streams::new(MAX_STREAMS, StreamConfig::default()),
            limits: Limits::default(),
            events: Vec::new(),
            actions_buf: Vec::new(),
            grants: UserGrants::default(),
            logged: None,
            wire_seen: lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_TRANSACTIONS).expect("non-zero"),
            ),
            grant_buf: GrantChange::default(),
            actions,
            last_tick: Instant::now(),
        }
    }

    fn run(&mut self, mut nflog: Nflog, mut queue: Option<NfQueue>, control: Receiver<Control>) {
        // While the queue keeps delivering, it is read again without a poll
        // (a syscall per batch saved); the copies are looked at every few
        // batches all the same.
        let mut busy: u32 = 0;
        loop {
            let (copies, held) = match &queue {
                None => (true, false),
                Some(_) if !busy.is_multiple_of(8) => (false, true),
                Some(q) => ready(&nflog, q),
            };
            if copies {
                match nflog.read(|copied| {
                    let at = Instant::now();
                    self.packet(at, copied.prefix, copied.payload);
                }) {
                    Ok(Read::Packets(n)) => {
                        metrics::counter!("palisade_watch_packets_total").increment(n as u64)
                    }
                    Ok(Read::Idle) => {}
                    Ok(Read::Overrun) => {
                        metrics::counter!("palisade_watch_overruns_total").increment(1);
                        debug!("NFLOG overrun: the kernel dropped copies");
                    }
                    Err(e) => {
                        error!(error = %e, "NFLOG read failed; the watch stops (rules and bans stay)");
                        return;
                    }
                }
            }
            if held {
                let q = queue.as_mut().expect("held implies a queue");
                let wait = busy == 0;
                match q.read(wait, |payload| self.inline_packet(Instant::now(), payload)) {
                    Ok(Some(b)) => {
                        busy = busy.wrapping_add(1);
                        metrics::counter!("palisade_inline_packets_total")
                            .increment(b.packets as u64);
                        metrics::counter!("palisade_inline_dropped_total")
                            .increment(b.dropped as u64);
                        if b.stale > 0 {
                            metrics::counter!("palisade_inline_stale_verdicts_total")
                                .increment(b.stale as u64);
                            debug!(
                                stale = b.stale,
                                "verdicts for packets the kernel no longer held"
                            );
                        }
                    }
                    Ok(None) => busy = 0,
                    Err(e) => {
                        // The rule's bypass (or fail-closed) takes over.
                        error!(error = %e, "NFQUEUE read failed; inline mode stops");
                        queue = None;
                    }
                }
            }
            self.take_logged();
            if self.last_tick.elapsed() >= TICK {
                self.last_tick = Instant::now();
                metrics::gauge!("palisade_watch_sources").set(self.judge.sources() as f64);
                loop {
                    match control.try_recv() {
                        Ok(Control::Reconfigure(cfg, exempt, grants)) => {
                            let bound = std::mem::take(&mut self.grants);
                            self.grants = grants.carry_over(bound);
                            self.judge.reconfigure(*cfg);
                            self.judge.set_exempt(exempt);
                        }
                        Ok(Control::Forgive(addr)) => self.judge.forgive(addr),
                        Ok(Control::NoteBan(addr, until)) => {
                            self.judge.note_ban(addr, until, Instant::now())
                        }
                        Ok(Control::Stop) | Err(TryRecvError::Disconnected) => return,
                        Err(TryRecvError::Empty) => break,
                    }
                }
            }
        }
    }

    /// Judges one packet held in the queue (inline mode) and says its fate:
    /// dropped when it, or an earlier packet, proved its source an attacker.
    /// Packets the agent cannot decode are not its business: accepted.
    pub fn inline_packet(&mut self, at: Instant, payload: &[u8]) -> nfqueue::Verdict {
        let Ok(p) = decode(payload) else {
            metrics::counter!("palisade_watch_undecodable_total").increment(1);
            return nfqueue::Verdict::Accept;
        };
        let src = p.src.ip();
        self.take(at, Direction::In, p);
        self.judge_pending();
        let banned = self
            .actions_buf
            .iter()
            .any(|a| matches!(a, Action::Ban(v) if v.addr == src))
            || self.judge.is_banned(src, at);
        self.flush(at);
        if banned {
            nfqueue::Verdict::Drop
        } else {
            nfqueue::Verdict::Accept
        }
    }

    /// Judges one copied packet (public for the benchmark).
    pub fn packet(&mut self, at: Instant, prefix: &[u8], payload: &[u8]) {
        let dir = if prefix == LOG_IN.as_bytes() {
            Direction::In
        } else if prefix == LOG_OUT.as_bytes() {
            Direction::Out
        } else if prefix == LOG_TIER_BAN.as_bytes() {
            if let Ok(p) = decode(payload) {
                self.judge.tier_ban(p.src.ip(), at, &mut self.actions_buf);
                self.flush(at);
            }
            return;
        } else {
            return;
        };
        let Ok(p) = decode(payload) else {
            metrics::counter!("palisade_watch_undecodable_total").increment(1);
            return;
        };
        self.take(at, dir, p);
        self.judge_pending();
        self.flush(at);
    }

    /// Parses and tracks one decoded packet; its events wait in `events`.
    fn take(&mut self, at: Instant, dir: Direction, p: Packet<'_>) {
        let peer = match dir {
            Direction::In => p.src.ip(),
            Direction::Out => p.dst.ip(),
        };
        match p.l4 {
            L4::Udp => self.datagram(at, dir, peer, p.payload),
            L4::Tcp { seq, syn, fin, rst } => {
                let key = (p.src, p.dst);
                if syn {
                    // The SYN takes one sequence number; data starts after it.
                    self.streams.open(key, seq.wrapping_add(1));
                }
                if !p.payload.is_empty() {
                    let Reader {
                        streams,
                        tracker,
                        limits,
                        events,
                        ..
                    } = self;
                    // The stream hands out only messages it could frame (that
                    // is, parse); what it could not is in its report.
                    let report = streams.push(key, seq, p.payload, |msg| {
                        observe(
                            tracker,
                            events,
                            limits,
                            at,
                            dir,
                            peer,
                            msg,
                            Transport::Stream,
                        )
                    });
                    if let Some(e) = report.malformed {
                        garbage(tracker, events, at, dir, peer, &e);
                    }
                }
                if fin || rst {
                    self.streams.close(&key);
                }
            }
        }
    }

    fn datagram(&mut self, at: Instant, dir: Direction, peer: IpAddr, payload: &[u8]) {
        let Reader {
            tracker,
            events,
            limits,
            ..
        } = self;
        observe(
            tracker,
            events,
            limits,
            at,
            dir,
            peer,
            payload,
            Transport::Datagram,
        );
    }

    /// Judges what the PBX logged since the last look, except what the packet
    /// path already reported (the same failure seen twice is one failure).
    fn take_logged(&mut self) {
        let Some(rx) = &self.logged else { return };
        let mut fresh = Vec::new();
        while let Ok(events) = rx.try_recv() {
            fresh.push(events);
        }
        if fresh.is_empty() {
            return;
        }
        let now = Instant::now();
        for events in fresh {
            let seen_on_wire = events.last().and_then(dedupe_key).is_some_and(|k| {
                self.wire_seen
                    .peek(&k)
                    .is_some_and(|t| now.saturating_duration_since(*t) < LOG_DEDUPE)
            });
            if seen_on_wire {
                metrics::counter!("palisade_pbxlog_duplicates_total").increment(1);
                continue;
            }
            for ev in events {
                if self.grants.has_rules() {
                    self.grants.observe(&ev, &mut self.grant_buf);
                }
                self.judge.observe(ev, &mut self.actions_buf);
            }
        }
        self.flush(now);
    }

    fn judge_pending(&mut self) {
        for ev in self.events.drain(..) {
            if self.logged.is_some() {
                if let Some(k) = dedupe_key(&ev) {
                    self.wire_seen.put(k, ev.at);
                }
            }
            if self.grants.has_rules() {
                self.grants.observe(&ev, &mut self.grant_buf);
            }
            self.judge.observe(ev, &mut self.actions_buf);
        }
    }

    fn flush(&mut self, seen: Instant) {
        if !self.grant_buf.is_empty() {
            let work = Work::Grants(std::mem::take(&mut self.grant_buf));
            let _ = self.actions.send(Timed { work, seen });
        }
        for action in self.actions_buf.drain(..) {
            let work = Work::Act(action);
            let _ = self.actions.send(Timed { work, seen });
        }
    }

    /// For the benchmark: a reader whose actions go to `sink`.
    pub fn for_bench(cfg: Responsive) -> (Reader, Receiver<Action>) {
        let (tx, rx) = channel::<Timed>();
        let (out_tx, out_rx) = channel();
        std::thread::spawn(move || {
            for t in rx {
                let Work::Act(action) = t.work else { continue };
                if out_tx.send(action).is_err() {
                    return;
                }
            }
        });
        (Reader::new(cfg, Exempt::default(), tx), out_rx)
    }
}

/// How long a fact seen on the wire makes the same fact from a log a duplicate
/// (logs are read every 200 ms and written after the PBX answered).
const LOG_DEDUPE: Duration = Duration::from_secs(5);

/// What makes a log fact the same as a packet-path one: source, outcome, user.
fn dedupe_key(ev: &Event) -> Option<(IpAddr, &'static str, Box<str>)> {
    let user = match &ev.kind {
        palisade_guard::Kind::AuthFailed { user, .. }
        | palisade_guard::Kind::Challenged { user }
        | palisade_guard::Kind::UnknownUser { user, .. }
        | palisade_guard::Kind::Registered { user, .. }
        | palisade_guard::Kind::Unregistered { user, .. } => user.clone(),
        _ => return None,
    };
    Some((ev.source, ev.kind.name(), user))
}

/// Follows the PBX's logs until `stop`: each line's facts go to the reader as
/// one message. Lines about SIP over UDP/TCP, which the packet path reads
/// itself, are left out where the log says the transport (Asterisk's security
/// log); the reader drops the other duplicates.
fn follow_logs(
    mut sources: Vec<crate::pbxlog::LogSource>,
    tx: Sender<Vec<Event>>,
    stop: Arc<AtomicBool>,
) {
    info!(files = sources.len(), "following PBX logs");
    let mut facts = Vec::new();
    let mut failing: std::collections::HashSet<std::path::PathBuf> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        for source in &mut sources {
            match source.poll(&mut facts) {
                Ok(_) => {
                    failing.remove(source.path());
                }
                Err(e) => {
                    if failing.insert(source.path().to_path_buf()) {
                        warn!(file = %source.path().display(), error = %e, "cannot read PBX log");
                    }
                }
            }
        }
        let now = Instant::now();
        for fact in facts.drain(..) {
            if fact.seen_by_packet_path() == Some(true) {
                continue;
            }
            if tx.send(fact.events(now)).is_err() {
                return;
            }
        }
        std::thread::sleep(crate::pbxlog::POLL_INTERVAL);
    }
}

/// Which of the two sockets has something, waiting up to [`TICK`].
fn ready(nflog: &Nflog, queue: &NfQueue) -> (bool, bool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [
        PollFd::new(nflog.fd(), PollFlags::POLLIN),
        PollFd::new(queue.fd(), PollFlags::POLLIN),
    ];
    let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, timeout).is_err() {
        return (false, false);
    }
    let has = |f: &PollFd<'_>| {
        f.revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
    };
    (has(&fds[0]), has(&fds[1]))
}

/// Parses one message (a datagram, or one framed out of a stream) and hands it
/// to the tracker; what does not parse is garbage.
#[allow(clippy::too_many_arguments)]
fn observe(
    tracker: &mut Tracker,
    events: &mut Vec<Event>,
    limits: &Limits,
    at: Instant,
    dir: Direction,
    peer: IpAddr,
    bytes: &[u8],
    transport: Transport,
) {
    match sip::parse(bytes, transport, limits) {
        Ok(Parsed::Message(m, _)) => tracker.observe(at, dir, peer, &m, events),
        Ok(_) => {}
        Err(e) => garbage(tracker, events, at, dir, peer, &e),
    }
}

/// Garbage from a remote source counts against it; the PBX's own is not judged.
fn garbage(
    tracker: &mut Tracker,
    events: &mut Vec<Event>,
    at: Instant,
    dir: Direction,
    peer: IpAddr,
    error: &sip::ParseError,
) {
    if dir == Direction::In {
        metrics::counter!("palisade_watch_garbage_total").increment(1);
        tracker.garbage(at, peer, &error.to_string(), events);
    }
}

fn log_verdict(v: &Verdict) {
    warn!(
        addr = %v.addr,
        reason = %v.reason,
        detail = %v.detail,
        evidence = ?v.evidence,
        duration = %humantime::format_duration(v.duration),
        offence = v.offence,
        "banned"
    );
}

/// What holds until a deadline (a registration, a grant): tells a start
/// from a renewal and a real end from a late one, so only changes become
/// events.
struct Lasting<K> {
    until: HashMap<K, Instant>,
}

impl<K> Default for Lasting<K> {
    fn default() -> Self {
        Lasting {
            until: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Lasting<K> {
    /// Bounds the memory of a host that sees many sources.
    const MAX: usize = 65_536;

    /// True when `key` was not in force.
    fn start(&mut self, key: K, ttl: Option<Duration>) -> bool {
        let now = Instant::now();
        let until = now + ttl.unwrap_or(Duration::from_secs(3600));
        let was = self.until.insert(key, until).is_some_and(|t| t > now);
        if self.until.len() > Self::MAX {
            self.until.retain(|_, t| *t > now);
        }
        !was
    }

    /// True when `key` was in force.
    fn end(&mut self, key: &K) -> bool {
        self.until.remove(key).is_some_and(|t| t > Instant::now())
    }
}

/// Applies actions as they come, in batches: everything that queued up while
/// the previous transaction ran goes into the next one.
fn enforce_loop(mut shell: NftShell, actions: Receiver<Timed>, book: BanBook) {
    // What is known-good and granted now, so only changes become events.
    let mut known_good: Lasting<IpAddr> = Lasting::default();
    let mut granted: Lasting<(IpAddr, Proto, u16)> = Lasting::default();
    while let Ok(first) = actions.recv() {
        let mut batch = vec![first];
        while let Ok(more) = actions.try_recv() {
            batch.push(more);
        }
        // Last word per (set, address) wins.
        let mut renew: BTreeMap<(DynSet, IpAddr), Option<TimedAddr>> = BTreeMap::new();
        let mut booked = Vec::new();
        let mut grants: BTreeMap<(IpAddr, Proto, u16), (bool, Grant)> = BTreeMap::new();
        let mut oldest = Instant::now();
        for t in &batch {
            oldest = oldest.min(t.seen);
            let action = match &t.work {
                Work::Act(a) => a,
                Work::Grants(change) => {
                    for (open, list) in [(true, &change.open), (false, &change.close)] {
                        for g in list {
                            let key = (g.addr, g.proto, g.port);
                            let changed = if open {
                                granted.start(key, g.ttl)
                            } else {
                                granted.end(&key)
                            };
                            if changed {
                                crate::events::emit(
                                    if open { "grant-open" } else { "grant-close" },
                                    g.addr,
                                    format!(
                                        "{}/{} {}{}",
                                        g.port,
                                        g.proto,
                                        if open { "opened" } else { "closed" },
                                        g.comment
                                            .as_deref()
                                            .map(|c| format!(" ({c})"))
                                            .unwrap_or_default()
                                    ),
                                );
                            }
                            grants.insert(key, (open, g.clone()));
                        }
                    }
                    continue;
                }
            };
            match action {
                Action::Ban(v) => {
                    log_verdict(v);
                    let now = crate::state::now_unix();
                    booked.push(Entry::Ban(BanRecord {
                        addr: v.addr,
                        at: now,
                        until: now + v.duration.as_secs(),
                        reason: v.reason.as_str().to_string(),
                        comment: clip_comment(&v.comment()),
                        offence: v.offence,
                        evidence: v.evidence.clone(),
                    }));
                    metrics::counter!("palisade_bans_total", "reason" => v.reason.as_str())
                        .increment(1);
                    renew.insert(
                        (DynSet::Ban, v.addr),
                        Some(TimedAddr {
                            addr: v.addr,
                            ttl: Some(v.duration),
                            expires: None,
                            comment: Some(clip_comment(&v.comment())),
                        }),
                    );
                }
                Action::KnownGood { addr, ttl, users } => {
                    debug!(%addr, ttl = ?ttl, ?users, "known-good");
                    let users: Vec<&str> = users.iter().map(|u| &**u).collect();
                    if known_good.start(*addr, Some(*ttl)) {
                        crate::events::emit(
                            "known-good",
                            *addr,
                            format!("registered: {}", users.join(",")),
                        );
                    }
                    renew.insert(
                        (DynSet::KnownGood, *addr),
                        Some(TimedAddr {
                            addr: *addr,
                            ttl: Some((*ttl).max(Duration::from_secs(1))),
                            expires: None,
                            comment: Some(clip_comment(&format!(
                                "registered: {}",
                                users.join(",")
                            ))),
                        }),
                    );
                }
                Action::KnownGoodEnd { addr } => {
                    debug!(%addr, "no longer known-good");
                    if known_good.end(addr) {
                        crate::events::emit(
                            "known-good-end",
                            *addr,
                            "its last registration ended".into(),
                        );
                    }
                    renew.insert((DynSet::KnownGood, *addr), None);
                }
                Action::Notice {
                    addr,
                    user,
                    failures,
                } => {
                    metrics::counter!("palisade_auth_failures_noticed_total").increment(1);
                    warn!(%addr, user = %user, failures, "extension failing to authenticate");
                    crate::events::emit(
                        "auth-failing",
                        *addr,
                        format!("extension {user}: {failures} failed authentications (tolerated: a phone's pace)"),
                    );
                }
            }
        }
        if !grants.is_empty() {
            let (open, close): (Vec<_>, Vec<_>) = grants.into_values().partition(|(o, _)| *o);
            let open: Vec<Grant> = open.into_iter().map(|(_, g)| g).collect();
            let close: Vec<Grant> = close.into_iter().map(|(_, g)| g).collect();
            debug!(open = open.len(), close = close.len(), "per-user grants");
            if let Err(e) = shell.apply(&grant_renew(&open, &close)) {
                error!(error = %e, "cannot update the per-user grants");
            }
        }
        for set in [DynSet::Ban, DynSet::KnownGood] {
            let mut add = Vec::new();
            let mut end = Vec::new();
            for ((s, addr), elem) in &renew {
                if *s != set {
                    continue;
                }
                match elem {
                    Some(e) => add.push(e.clone()),
                    None => end.push(*addr),
                }
            }
            if add.is_empty() && end.is_empty() {
                continue;
            }
            match shell.apply(&element_renew(set, &add, &end)) {
                Ok(()) => {
                    if set == DynSet::Ban {
                        metrics::histogram!("palisade_ban_seconds")
                            .record(oldest.elapsed().as_secs_f64());
                    }
                }
                Err(e) => error!(%set, error = %e, "cannot update the kernel set"),
            }
        }
        // After the kernel: the ban is in force first, then remembered.
        if let Err(e) = book.append(&booked) {
            error!(error = %e, "cannot record bans; they hold until the next reboot only");
        }
    }
}
