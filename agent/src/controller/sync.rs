//! The sync task: one bidirectional `AgentService.Sync` stream over mutual
//! TLS, kept up for as long as the daemon runs (in the manner of linkerd's
//! tonic watches: a stream, and on any end of it a reconnection after an
//! exponential, jittered, capped delay).
//!
//! Up: `Hello` (protocol version, agent version, the revision the host is
//! at, its addresses: interfaces and the public ones its PBX advertises), a
//! `Heartbeat` every `heartbeat` and at once when the host's addresses
//! change, a `BanReport` for every ban the host makes (the
//! ban book is tailed; a ban the controller shared is never reported back),
//! `PolicyResult`s.
//!
//! Down: `Welcome` (a snapshot replaces the shared bans and the tenant's
//! peers), `BanDelta` → set `ban_shared`, `TrustDelta` → set `tenant_peer`,
//! `PolicyUpdate` → applied with confirm-or-rollback, confirmed once a fresh
//! mutual-TLS connection to the controller succeeds through the new ruleset
//! (else the deadline rolls it back and the controller is told why),
//! `UserRules` → stored. The revision is recorded after each message, so a
//! reconnecting host is sent only what it missed.
//!
//! Losing the controller removes nothing: the host keeps its policy, its
//! bans and the shared ones until they expire.

use super::backoff::Backoff;
use super::identity::{self, Enrolled};
use super::mirror::{Changes, Journal, Mirror};
use super::{addrs, tls, ControllerSettings, SHARED_REASON};
use crate::bans::{BanBook, BanRecord, Entry};
use crate::engine::Agent;
use crate::ruleset::plan::element_renew;
use crate::ruleset::render::dyn_set_name;
use crate::state::now_unix;
use palisade_model::{DynSet, Family, TimedAddr};
use palisade_proto::v1::agent_message::Body as Up;
use palisade_proto::v1::agent_service_client::AgentServiceClient;
use palisade_proto::v1::controller_message::Body as Down;
use palisade_proto::v1::{
    AgentEvent, AgentMessage, Ban, BanDelta, BanReport, ControllerMessage, ExplainAnswer,
    ExplainQuery, Heartbeat, Hello, HostVerdict, PolicyResult, PolicyUpdate, UserRules,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn, Instrument};

/// How often the ban book is read for new bans (the fan-out budget is 1 s).
const POLL: Duration = Duration::from_millis(100);
/// How often the host's addresses are looked at (a change is to reach the
/// tenant's other hosts within 1 s; a look costs one netlink dump).
const ADDRESS_CHECK: Duration = Duration::from_millis(250);
/// A snapshot whose stream went quiet this long is complete.
const SNAPSHOT_SETTLE: Duration = Duration::from_secs(2);
/// How often a host that is not enrolled looks again.
const NOT_ENROLLED_RECHECK: Duration = Duration::from_secs(5);
/// Largest message accepted from the controller (a snapshot of many bans).
const MAX_MESSAGE: usize = 64 << 20;
/// The sync journal is compacted past this size.
const JOURNAL_COMPACT_AT: u64 = 4 << 20;
pub const POLICY_FILE: &str = "policy.json";
pub const USER_RULES_FILE: &str = "user-rules.json";
pub const REPORTED_FILE: &str = "reported";

/// The running sync task; dropping it stops the task (nothing it put in the
/// kernel is removed).
pub struct SyncHandle {
    task: tokio::task::JoinHandle<()>,
    policy: mpsc::Receiver<()>,
}

impl SyncHandle {
    /// Resolves each time a policy from the controller was put in force or
    /// rolled back (the daemon then follows it: discovery, the SIP watch).
    pub async fn policy_changed(&mut self) {
        if self.policy.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the controller has put a policy in force on this host: then it,
/// not the config file's, is the policy the daemon keeps.
pub fn manages_policy(state_dir: &Path) -> bool {
    std::fs::read_to_string(identity::dir(state_dir).join(POLICY_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<PolicyState>(&t).ok())
        .is_some_and(|s| s.toml.is_some())
}

/// Starts the sync task. It waits quietly while the host is not enrolled, and
/// follows a new enrolment by itself.
pub fn start(agent: &Agent, settings: ControllerSettings) -> SyncHandle {
    let (tx, rx) = mpsc::channel(4);
    let ctx = Ctx {
        agent: Arc::new(Agent::new(agent.nft.clone(), agent.state.clone())),
        state_dir: agent.state.path().to_path_buf(),
        settings,
        policy_tx: tx,
    };
    SyncHandle {
        task: tokio::spawn(run(ctx)),
        policy: rx,
    }
}

struct Ctx {
    agent: Arc<Agent>,
    state_dir: PathBuf,
    settings: ControllerSettings,
    policy_tx: mpsc::Sender<()>,
}

impl Ctx {
    /// Runs an engine call (nft, state files, locks) off the async workers.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Agent) -> T + Send + 'static) -> T {
        let agent = self.agent.clone();
        match tokio::task::spawn_blocking(move || f(&agent)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// The error with its causes, `a: b: c`.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        next = c.source();
    }
    s
}

async fn run(ctx: Ctx) {
    let mut backoff = Backoff::new(Duration::from_millis(500), ctx.settings.max_backoff);
    let mut local: Option<Local> = None;
    let mut said_not_enrolled = false;
    loop {
        let enrolled = match identity::load(&ctx.state_dir) {
            Ok(Some(e)) => e,
            Ok(None) => {
                if !said_not_enrolled {
                    info!("not enrolled with a controller (palisade-agent enroll); running alone");
                    said_not_enrolled = true;
                }
                tokio::time::sleep(NOT_ENROLLED_RECHECK).await;
                continue;
            }
            Err(e) => {
                error!(error = %e, "cannot read the controller enrolment");
                tokio::time::sleep(ctx.settings.max_backoff).await;
                continue;
            }
        };
        if local.as_ref().map(|l| l.generation) != Some(enrolled.generation) {
            local = Some(Local::open(&ctx, &enrolled).await);
        }
        let local = local.as_mut().expect("opened above");
        let span = tracing::info_span!(
            "controller_sync",
            host = %enrolled.identity.name(),
            url = %enrolled.identity.url
        );
        let end = session(&ctx, &enrolled, local).instrument(span).await;
        metrics::gauge!("palisade_controller_connected").set(0.0);
        match end {
            End::Again => backoff.reset(),
            End::Lost { welcomed, why } => {
                if welcomed {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(
                    controller = %enrolled.identity.url,
                    error = %why,
                    retry_in = ?delay,
                    "controller unreachable; everything in force stays in force"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// What one enrolment keeps in `controller/`, loaded once per enrolment.
struct Local {
    generation: u64,
    dir: PathBuf,
    mirror: Mirror,
    journal: Journal,
    reporter: Reporter,
    /// Some of the mirror may be missing from the kernel (an nft failure).
    dirty: bool,
    /// The controller's addresses, in the `controller` set.
    controller: Vec<IpAddr>,
    /// The public addresses the PBX's configuration advertises, reported
    /// with the interfaces', as of the facts stored at `facts_stamp`.
    advertised: addrs::Advertised,
    public: Vec<palisade_model::PublicAddress>,
    facts_stamp: Option<std::time::SystemTime>,
}

impl Local {
    /// Loads the journal and puts what it holds back in the kernel (after a
    /// reboot the sets are empty; elements present stay as they are).
    async fn open(ctx: &Ctx, enrolled: &Enrolled) -> Local {
        let dir = identity::dir(&ctx.state_dir);
        let journal = Journal::new(&dir);
        let mut mirror = journal.load().unwrap_or_else(|e| {
            error!(error = %e, "cannot read the sync journal; asking the controller for everything");
            Mirror::default()
        });
        mirror.expire(now_unix());
        if let Err(e) = journal.compact(&mirror) {
            warn!(error = %e, "cannot compact the sync journal");
        }
        let mut local = Local {
            generation: enrolled.generation,
            reporter: Reporter::new(&ctx.state_dir, &dir),
            dir,
            mirror,
            journal,
            dirty: false,
            controller: addrs::known_controller_addresses(&ctx.state_dir),
            advertised: addrs::Advertised::default(),
            public: Vec::new(),
            facts_stamp: None,
        };
        if !local.mirror.bans.is_empty() || !local.mirror.peers.is_empty() {
            info!(
                shared_bans = local.mirror.bans.len(),
                peers = local.mirror.peers.len(),
                revision = local.mirror.revision(),
                "shared bans and tenant peers restored from the sync journal"
            );
        }
        local.install(ctx, local.mirror.all()).await;
        local
    }

    /// What the host reports as its addresses: its interfaces' and those
    /// its PBX advertises, followed as discovery stores new facts (their
    /// file's mtime is checked, a stat) and as their names come due.
    async fn addresses(&mut self, ctx: &Ctx) -> Vec<String> {
        let stamp = std::fs::metadata(ctx.agent.state.path().join(crate::state::FACTS_FILE))
            .and_then(|m| m.modified())
            .ok();
        if stamp != self.facts_stamp {
            self.facts_stamp = stamp;
            self.public = ctx
                .blocking(|a| a.state.facts().ok().flatten().map(|f| f.public))
                .await
                .unwrap_or_default();
        }
        self.advertised.refresh(&self.public);
        addrs::reported(&self.advertised)
    }

    /// Puts `changes` in the kernel; a failure is retried with the whole
    /// mirror at the next heartbeat.
    async fn install(&mut self, ctx: &Ctx, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let result = ctx
            .blocking(move |a| apply_changes(a, &changes, now_unix()))
            .await;
        if let Err(e) = result {
            error!(error = %e, "cannot update the shared sets; retrying at the next heartbeat");
            self.dirty = true;
        }
    }

    /// Whether the kernel lost the shared sets (the table was recreated,
    /// someone flushed the ruleset): the tenant's peers, a small set, are
    /// the canary — there are shared bans only where there are peers.
    async fn emptied(&self, ctx: &Ctx) -> bool {
        if self.mirror.peers.is_empty() {
            return false;
        }
        let want: BTreeSet<IpAddr> = self.mirror.peers.keys().copied().collect();
        let emptied = ctx
            .blocking(move |a| {
                let mut have = BTreeSet::new();
                for family in Family::ALL {
                    let Ok(elems) = a.nft.list_set(&dyn_set_name(DynSet::Peer, family)) else {
                        return false;
                    };
                    have.extend(
                        elems
                            .iter()
                            .filter_map(crate::ruleset::live::element_key)
                            .filter_map(|k| k.parse::<IpAddr>().ok()),
                    );
                }
                !want.is_subset(&have)
            })
            .await;
        if emptied {
            warn!("the shared sets were emptied (table recreated?); putting them back");
        }
        emptied
    }

    /// Resolves the controller's addresses again and puts them in the
    /// `controller` set, accepted before bans and zones (the old ones that
    /// are gone leave it). Kept when the name does not resolve now.
    async fn follow_controller(&mut self, ctx: &Ctx, url: &str) {
        let now = addrs::controller_addresses(url).await;
        if !now.is_empty() && now != self.controller {
            info!(addresses = ?now, "the controller's addresses, accepted before bans and zones");
            let gone: Vec<IpAddr> = self
                .controller
                .iter()
                .filter(|a| !now.contains(a))
                .copied()
                .collect();
            self.write_json(addrs::CONTROLLER_ADDRESSES, &now);
            self.controller = now;
            if let Err(e) = ctx
                .blocking(move |a| a.remove_elements(DynSet::Controller, &gone))
                .await
            {
                warn!(error = %e, "cannot remove the controller's old addresses");
            }
        }
        self.ensure_controller(ctx, url).await;
    }

    /// (Re)adds the controller's addresses to its set: an element already
    /// there is left as it is, one lost with a recreated table comes back.
    async fn ensure_controller(&self, ctx: &Ctx, url: &str) {
        let elems: Vec<TimedAddr> = self
            .controller
            .iter()
            .map(|a| TimedAddr {
                addr: *a,
                ttl: None,
                expires: None,
                comment: Some(palisade_model::dynamic::clip_comment(&format!(
                    "controller {url}"
                ))),
            })
            .collect();
        if elems.is_empty() {
            return;
        }
        if let Err(e) = ctx
            .blocking(move |a| a.nft.apply(&element_renew(DynSet::Controller, &elems, &[])))
            .await
        {
            warn!(error = %e, "cannot put the controller's addresses in its set");
        }
    }

    fn record(&mut self, changes: &Changes) {
        if let Err(e) = self.journal.append(changes, self.mirror.revision()) {
            error!(error = %e, "cannot write the sync journal; a restart asks for a snapshot");
        }
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec_pretty(value).expect("serializes");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            error!(file = %path.display(), error = %e, "cannot write controller state");
        }
    }

    fn policy_state(&self) -> Option<PolicyState> {
        let text = std::fs::read_to_string(self.dir.join(POLICY_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn update_policy_state(&self, f: impl FnOnce(&mut PolicyState)) {
        let mut state = self.policy_state().unwrap_or_default();
        f(&mut state);
        self.write_json(POLICY_FILE, &state);
    }
}

/// Kernel elements for the changes: `ban_shared` with the ban's time left,
/// `tenant_peer` without a timeout. Each set in one transaction that never
/// fails on a present or missing element.
fn apply_changes(agent: &Agent, c: &Changes, now: u64) -> Result<(), crate::ruleset::NftError> {
    let bans: Vec<TimedAddr> = c
        .ban
        .iter()
        .filter(|(_, b)| b.expires_at == 0 || b.expires_at > now)
        .map(|(addr, b)| TimedAddr {
            addr: *addr,
            ttl: (b.expires_at != 0).then(|| Duration::from_secs(b.expires_at - now)),
            expires: None,
            comment: Some(b.comment.clone()),
        })
        .collect();
    if !bans.is_empty() || !c.unban.is_empty() {
        agent
            .nft
            .apply(&element_renew(DynSet::SharedBan, &bans, &c.unban))?;
    }
    let peers: Vec<TimedAddr> = c
        .trust
        .iter()
        .map(|(addr, host)| TimedAddr {
            addr: *addr,
            ttl: None,
            expires: None,
            comment: Some(palisade_model::dynamic::clip_comment(&format!(
                "peer: {host}"
            ))),
        })
        .collect();
    if !peers.is_empty() || !c.untrust.is_empty() {
        agent
            .nft
            .apply(&element_renew(DynSet::Peer, &peers, &c.untrust))?;
    }
    Ok(())
}

/// After a snapshot: removes from the kernel's shared sets what the mirror
/// does not hold (left by an earlier enrolment, or by hand).
fn reconcile(
    agent: &Agent,
    bans: BTreeSet<IpAddr>,
    peers: BTreeSet<IpAddr>,
) -> Result<usize, crate::ruleset::NftError> {
    let mut removed = 0;
    for (set, keep) in [(DynSet::SharedBan, bans), (DynSet::Peer, peers)] {
        let mut stale = Vec::new();
        for family in Family::ALL {
            for e in agent.nft.list_set(&dyn_set_name(set, family))? {
                let addr = crate::ruleset::live::element_key(&e).and_then(|k| k.parse().ok());
                if let Some(addr) = addr {
                    if !keep.contains(&addr) {
                        stale.push(addr);
                    }
                }
            }
        }
        if !stale.is_empty() {
            removed += stale.len();
            agent.nft.apply(&element_renew(set, &[], &stale))?;
        }
    }
    Ok(removed)
}

/// The controller's last policy, and the change waiting for its confirmation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PolicyState {
    revision: u64,
    /// The controller's last policy put in force (`None`: never one).
    toml: Option<String>,
    /// The pending change's id while it waits for the controller to be
    /// reached again through it.
    pending: Option<String>,
    /// The last result, until it has surely reached the controller.
    #[serde(default)]
    unsent: Option<Outcome>,
    /// A policy that was rolled back here: sent again as it is (a
    /// snapshot, a reconnection), it is not applied again, or every resend
    /// would cut the host off for another confirmation window.
    #[serde(default)]
    rolled_back: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    revision: u64,
    applied: bool,
    error: String,
}

enum End {
    /// Reconnect at once (the host enrolled again meanwhile).
    Again,
    /// The stream ended; `welcomed` when it had worked.
    Lost { welcomed: bool, why: String },
}

/// A policy change waiting for proof that the controller is still reachable.
struct Confirming {
    revision: u64,
    probe: tokio::task::JoinHandle<Probe>,
}

impl Drop for Confirming {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

async fn session(ctx: &Ctx, enrolled: &Enrolled, local: &mut Local) -> End {
    let lost = |why: String| End::Lost {
        welcomed: false,
        why,
    };
    local.follow_controller(ctx, &enrolled.identity.url).await;
    let config = match tls::mutual_config(&enrolled.ca_pem, &enrolled.cert_pem, &enrolled.key_pem) {
        Ok(c) => c,
        Err(e) => return lost(causes(&e)),
    };
    let channel = match tls::connect(&enrolled.identity.url, config).await {
        Ok(c) => c,
        Err(e) => return lost(causes(&e)),
    };
    let mut client = AgentServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    let mut addresses = local.addresses(ctx).await;
    let hello = Up::Hello(Hello {
        protocol_version: palisade_proto::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        last_revision: local.mirror.revision(),
        addresses: addresses.clone(),
    });
    tx.send(AgentMessage { body: Some(hello) })
        .await
        .expect("the receiver is ours");
    debug!(revision = local.mirror.revision(), "hello sent");
    let mut inbound = match client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return lost(format!(
                "the controller refused the stream ({:?}): {}",
                status.code(),
                status.message()
            ))
        }
    };

    let mut s = Session {
        ctx,
        enrolled,
        tx,
        welcomed: false,
        last_message: Instant::now(),
        confirming: None,
        unsent_heartbeats: 0,
    };
    let mut heartbeat = tokio::time::interval(ctx.settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut addresses_checked = Instant::now();
    let mut events = crate::events::subscribe();
    loop {
        tokio::select! {
            ev = events.recv(), if s.welcomed => {
                let ev = match ev {
                    Ok(e) => AgentEvent {
                        at: now_unix(),
                        kind: e.kind.to_string(),
                        address: e.addr.map(|a| a.to_string()).unwrap_or_default(),
                        summary: e.summary,
                        ..AgentEvent::default()
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => AgentEvent {
                        at: now_unix(),
                        kind: "lagged".into(),
                        summary: format!("{n} of this host's events were dropped"),
                        ..AgentEvent::default()
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => continue,
                };
                if let Err(why) = s.send(Up::Event(ev)).await {
                    return s.lost(why);
                }
            }
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return s.lost("the controller closed the stream".into()),
                    Err(e) => return s.lost(format!("{:?}: {}", e.code(), e.message())),
                };
                if identity::generation(&ctx.state_dir) != Some(local.generation) {
                    info!("enrolled again: reconnecting with the new identity");
                    return End::Again;
                }
                if let Err(why) = s.handle(local, msg).await {
                    return s.lost(why);
                }
            }
            done = async { (&mut s.confirming.as_mut().expect("guarded").probe).await }, if s.confirming.is_some() => {
                let c = s.confirming.take().expect("guarded");
                let probe = done.unwrap_or_else(|e| Probe::failed(format!("probe task: {e}")));
                if let Err(why) = s.settle_policy(local, c.revision, probe).await {
                    return s.lost(why);
                }
            }
            _ = heartbeat.tick() => {
                if identity::generation(&ctx.state_dir) != Some(local.generation) {
                    info!("enrolled again: reconnecting with the new identity");
                    return End::Again;
                }
                addresses = local.addresses(ctx).await;
                if let Err(why) = s.heartbeat(&addresses).await {
                    return s.lost(why);
                }
                local.reporter.heartbeat();
                local.ensure_controller(ctx, &enrolled.identity.url).await;
                s.heartbeat_policy(local);
                local.mirror.expire(now_unix());
                if local.journal.size() > JOURNAL_COMPACT_AT {
                    if let Err(e) = local.journal.compact(&local.mirror) {
                        warn!(error = %e, "cannot compact the sync journal");
                    }
                }
                if local.dirty || local.emptied(ctx).await {
                    local.dirty = false;
                    local.install(ctx, local.mirror.all()).await;
                }
            }
            _ = poll.tick() => {
                if !s.welcomed {
                    continue;
                }
                if let Err(why) = s.report(local).await {
                    return s.lost(why);
                }
                if local.mirror.in_snapshot() && s.last_message.elapsed() >= SNAPSHOT_SETTLE {
                    let changes = local.mirror.finish_snapshot();
                    s.apply(local, changes).await;
                    s.after_snapshot(local).await;
                }
                if addresses_checked.elapsed() >= ADDRESS_CHECK {
                    addresses_checked = Instant::now();
                    let now = local.addresses(ctx).await;
                    if now != addresses {
                        info!(?now, before = ?addresses, "the host's addresses changed");
                        addresses = now;
                        if let Err(why) = s.heartbeat(&addresses).await {
                            return s.lost(why);
                        }
                    }
                }
            }
        }
    }
}

struct Session<'a> {
    ctx: &'a Ctx,
    enrolled: &'a Enrolled,
    tx: mpsc::Sender<AgentMessage>,
    welcomed: bool,
    last_message: Instant,
    confirming: Option<Confirming>,
    /// Heartbeats since the last policy result was sent.
    unsent_heartbeats: u32,
}

impl Session<'_> {
    fn lost(&self, why: String) -> End {
        End::Lost {
            welcomed: self.welcomed,
            why,
        }
    }

    async fn heartbeat(&self, addresses: &[String]) -> Result<(), String> {
        self.send(Up::Heartbeat(Heartbeat {
            at: now_unix(),
            addresses: addresses.to_vec(),
        }))
        .await
    }

    async fn send(&self, body: Up) -> Result<(), String> {
        self.tx
            .send(AgentMessage { body: Some(body) })
            .await
            .map_err(|_| "the stream to the controller closed".to_string())
    }

    async fn handle(&mut self, local: &mut Local, msg: ControllerMessage) -> Result<(), String> {
        let Some(body) = msg.body else {
            debug!(revision = msg.revision, "empty message from the controller");
            return Ok(());
        };
        let kind = super::kind(&body);
        metrics::counter!("palisade_controller_messages_total", "kind" => kind).increment(1);
        // A question changes nothing: no revision, no journal.
        let body = match body {
            Down::Explain(q) => return self.explain(q).await,
            other => other,
        };
        self.last_message = Instant::now();
        let revision = msg.revision;
        let span = tracing::info_span!("controller_message", kind, revision);
        let in_snapshot = local.mirror.in_snapshot();
        async {
            match body {
                Down::Welcome(w) => {
                    let me = &self.enrolled.identity;
                    if (w.tenant.as_str(), w.site.as_str(), w.host.as_str())
                        != (me.tenant.as_str(), me.site.as_str(), me.host.as_str())
                    {
                        warn!(
                            tenant = %w.tenant, site = %w.site, host = %w.host,
                            "the controller names this host differently from its enrolment"
                        );
                    }
                    info!(
                        snapshot = w.snapshot,
                        revision, "connected to the controller"
                    );
                    metrics::gauge!("palisade_controller_connected").set(1.0);
                    self.welcomed = true;
                    let changes = local.mirror.welcome(revision, w.snapshot);
                    if w.snapshot {
                        local.record(&changes);
                    }
                    self.resume_policy(local).await?;
                    let bans = local.reporter.resume(now_unix());
                    if !bans.is_empty() {
                        info!(bans = bans.len(), "reporting the host's bans");
                    }
                    for b in bans {
                        self.send(report(&b)).await?;
                    }
                }
                Down::Bans(delta) => {
                    let changes = local.mirror.ban_delta(revision, &delta, now_unix());
                    self.apply(local, changes).await;
                    self.lift_own(&delta).await;
                }
                Down::Trust(delta) => {
                    let changes = local.mirror.trust_delta(revision, &delta);
                    self.apply(local, changes).await;
                }
                Down::Policy(p) => {
                    let changes = local.mirror.other(revision);
                    self.apply(local, changes).await;
                    self.policy(local, revision, p).await?;
                }
                Down::UserRules(rules) => {
                    let changes = local.mirror.other(revision);
                    self.apply(local, changes).await;
                    if user_rules(local, &rules) {
                        // The daemon follows: the SIP watch's grants change.
                        let _ = self.ctx.policy_tx.try_send(());
                    }
                }
                Down::Explain(_) => unreachable!("answered above"),
            }
            if in_snapshot && !local.mirror.in_snapshot() {
                self.after_snapshot(local).await;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Answers an explain question from what this host's kernel and policy
    /// do now (the same answer as `palisade-agent explain` here).
    async fn explain(&self, q: ExplainQuery) -> Result<(), String> {
        let id = q.id;
        let answer = match explain_query(&q) {
            Err(e) => ExplainAnswer {
                id,
                verdict: None,
                error: e,
            },
            Ok((addr, port)) => {
                let result = self
                    .ctx
                    .blocking(move |a| a.explain_in_force(addr, port))
                    .await;
                match result {
                    Ok(v) => ExplainAnswer {
                        id,
                        verdict: Some(host_verdict(&v)),
                        error: String::new(),
                    },
                    Err(e) => ExplainAnswer {
                        id,
                        verdict: None,
                        error: causes(&e),
                    },
                }
            }
        };
        debug!(id, address = %q.address, port = %q.port, "explain answered");
        self.send(Up::Explain(answer)).await
    }

    /// A lift reaching the host that proved the ban ends its own ban too.
    async fn lift_own(&self, delta: &BanDelta) {
        let nets: Vec<ipnet::IpNet> = delta
            .lifted
            .iter()
            .filter_map(|a| {
                a.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| a.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .collect();
        if nets.is_empty() {
            return;
        }
        let before = delta.lifted_at;
        let lifted = self
            .ctx
            .blocking(move |a| {
                let mut all = Vec::new();
                for net in nets {
                    all.extend(a.lift_own_bans(net, before)?);
                }
                Ok::<_, crate::engine::AgentError>(all)
            })
            .await;
        match lifted {
            Ok(l) if l.is_empty() => {}
            Ok(l) => info!(lifted = ?l, "this host's own bans lifted by the controller"),
            Err(e) => error!(error = %e, "cannot lift this host's own ban as the controller asked"),
        }
    }

    /// Records and enforces what a message changed.
    async fn apply(&mut self, local: &mut Local, changes: Changes) {
        for bad in &changes.rejected {
            warn!(address = %bad, "the controller sent something that is not an address; skipped");
        }
        local.record(&changes);
        if !changes.is_empty() {
            info!(
                shared_bans = changes.ban.len(),
                lifted = changes.unban.len(),
                peers = changes.trust.len(),
                peers_removed = changes.untrust.len(),
                revision = local.mirror.revision(),
                "shared sets updated"
            );
        }
        local.install(self.ctx, changes).await;
    }

    /// A snapshot is complete (what it did not mention has been removed):
    /// the kernel's shared sets lose what the mirror does not hold either.
    async fn after_snapshot(&mut self, local: &mut Local) {
        info!(
            shared_bans = local.mirror.bans.len(),
            peers = local.mirror.peers.len(),
            revision = local.mirror.revision(),
            "snapshot from the controller complete"
        );
        let bans = local.mirror.bans.keys().copied().collect();
        let peers = local.mirror.peers.keys().copied().collect();
        match self.ctx.blocking(move |a| reconcile(a, bans, peers)).await {
            Ok(0) => {}
            Ok(n) => info!(
                removed = n,
                "stale shared elements removed after the snapshot"
            ),
            Err(e) => warn!(error = %e, "cannot compare the shared sets with the snapshot"),
        }
    }

    /// New bans in the book go up.
    async fn report(&mut self, local: &mut Local) -> Result<(), String> {
        for b in local.reporter.poll(now_unix()) {
            debug!(addr = %b.addr, reason = %b.reason, "reporting a ban");
            self.send(report(&b)).await?;
        }
        Ok(())
    }

    async fn policy(
        &mut self,
        local: &mut Local,
        revision: u64,
        p: PolicyUpdate,
    ) -> Result<(), String> {
        let within = Duration::from_secs(u64::from(p.confirm_within_secs));
        let toml = p.toml;
        // Sent again (a snapshot, a reconnection) and already in force.
        let in_force = {
            let toml = toml.clone();
            self.ctx
                .blocking(move |a| {
                    a.state.pending().ok().flatten().is_none()
                        && a.state.last_good().ok().flatten().as_deref() == Some(toml.as_str())
                })
                .await
        };
        if in_force {
            local.update_policy_state(|s| {
                s.revision = revision;
                s.toml = Some(toml);
                s.pending = None;
            });
            return self.policy_result(local, revision, Ok(())).await;
        }
        if local.policy_state().and_then(|s| s.rolled_back).as_deref() == Some(toml.as_str()) {
            warn!(
                revision,
                "the controller sent a policy this host rolled back before; not applied again"
            );
            let why = "not applied: this policy was rolled back on this host before \
                       (it cut the host off from the controller); change it to try again";
            return self.policy_result(local, revision, Err(why.into())).await;
        }
        if let Some(old) = self.confirming.take() {
            let superseded = Err(format!("superseded by revision {revision}"));
            self.policy_result(local, old.revision, superseded).await?;
        }
        let confirm = (!within.is_zero()).then_some(within);
        let applied = {
            let toml = toml.clone();
            self.ctx
                .blocking(move |a| a.apply_text(&toml, "controller", confirm))
                .await
        };
        let a = match applied {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, revision, "the controller's policy was not applied");
                return self
                    .policy_result(local, revision, Err(e.to_string()))
                    .await;
            }
        };
        info!(policy = %a.fingerprint, revision, confirm_within = ?confirm, "policy from the controller applied");
        let _ = self.ctx.policy_tx.try_send(());
        local.update_policy_state(|s| {
            s.revision = revision;
            s.toml = Some(toml);
            s.pending = a.pending.as_ref().map(|p| p.id.clone());
        });
        match a.pending {
            None => self.policy_result(local, revision, Ok(())).await,
            Some(p) => {
                // The proof that the controller is still reachable: a new
                // connection through the new ruleset.
                let probe = probe(
                    self.enrolled.identity.url.clone(),
                    self.enrolled.clone(),
                    p.deadline,
                );
                self.confirming = Some(Confirming {
                    revision,
                    probe: tokio::spawn(probe),
                });
                Ok(())
            }
        }
    }

    /// The probe's verdict: confirm the pending change, or roll it back.
    async fn settle_policy(
        &mut self,
        local: &mut Local,
        revision: u64,
        probe: Probe,
    ) -> Result<(), String> {
        let Some(state) = local.policy_state() else {
            return Ok(());
        };
        let Some(id) = state.pending.clone() else {
            return Ok(());
        };
        let outcome = if probe.reached {
            // Through, but perhaps only after the engine's own deadline
            // rolled the change back: then the last failure is why.
            self.confirm(id, state.toml.clone().unwrap_or_default())
                .await
                .map_err(|e| match &probe.last_failure {
                    Some(why) => format!("{e}; the last attempt through it: {why}"),
                    None => e,
                })
        } else {
            let why = probe.last_failure.unwrap_or_default();
            if let Err(e) = self.ctx.blocking(|a| a.rollback_due()).await {
                error!(error = %e, "rollback failed");
            }
            Err(format!(
                "rolled back: the controller could not be reached through the new ruleset ({why})"
            ))
        };
        settled(local, &outcome);
        let _ = self.ctx.policy_tx.try_send(());
        self.policy_result(local, revision, outcome).await
    }

    /// On (re)connection: a change still waiting is confirmed (this
    /// connection is the proof), one rolled back meanwhile is reported as
    /// such, and a result that may not have reached the controller is sent
    /// again.
    async fn resume_policy(&mut self, local: &mut Local) -> Result<(), String> {
        self.confirming = None;
        let Some(state) = local.policy_state() else {
            return Ok(());
        };
        match (state.pending.clone(), state.unsent) {
            (Some(id), _) => {
                let outcome = self
                    .confirm(id, state.toml.clone().unwrap_or_default())
                    .await;
                settled(local, &outcome);
                let _ = self.ctx.policy_tx.try_send(());
                self.policy_result(local, state.revision, outcome).await
            }
            (None, Some(o)) => {
                self.unsent_heartbeats = 0;
                self.send(Up::PolicyResult(PolicyResult {
                    revision: o.revision,
                    applied: o.applied,
                    error: o.error,
                }))
                .await
            }
            (None, None) => Ok(()),
        }
    }

    async fn confirm(&self, id: String, toml: String) -> Result<(), String> {
        self.ctx
            .blocking(move |a| match a.state.pending() {
                Ok(Some(p)) if p.id == id && p.applied == toml => {
                    a.confirm().map(|_| ()).map_err(|e| e.to_string())
                }
                // Confirmed by other means (by hand).
                _ if a.state.last_good().ok().flatten().as_deref() == Some(toml.as_str()) => Ok(()),
                _ => Err("rolled back: not confirmed before the deadline \
                          (the controller could not be reached again in time)"
                    .into()),
            })
            .await
    }

    /// Tells the controller; kept in `policy.json` until a heartbeat later
    /// (sent again on reconnection if the stream died meanwhile: a policy
    /// that cut the host off is the very case).
    async fn policy_result(
        &mut self,
        local: &mut Local,
        revision: u64,
        outcome: Result<(), String>,
    ) -> Result<(), String> {
        match &outcome {
            Ok(()) => info!(revision, "the controller's policy is in force"),
            Err(e) => warn!(revision, error = %e, "the controller's policy is not in force"),
        }
        let result = PolicyResult {
            revision,
            applied: outcome.is_ok(),
            error: outcome.err().unwrap_or_default(),
        };
        local.update_policy_state(|s| {
            s.unsent = Some(Outcome {
                revision,
                applied: result.applied,
                error: result.error.clone(),
            })
        });
        self.unsent_heartbeats = 0;
        self.send(Up::PolicyResult(result)).await
    }

    /// A heartbeat went: a policy result sent before the previous one is
    /// taken as received.
    fn heartbeat_policy(&mut self, local: &mut Local) {
        let Some(state) = local.policy_state() else {
            return;
        };
        if state.unsent.is_some() {
            if self.unsent_heartbeats >= 1 {
                local.update_policy_state(|s| s.unsent = None);
            } else {
                self.unsent_heartbeats += 1;
            }
        }
    }
}

/// A pending change is settled: a rollback is remembered (see
/// [`PolicyState::rolled_back`]).
fn settled(local: &Local, outcome: &Result<(), String>) {
    local.update_policy_state(|s| {
        s.pending = None;
        if outcome.is_err() {
            s.rolled_back = s.toml.clone();
        }
    });
}

/// What the confirmation probe found.
#[derive(Debug)]
struct Probe {
    /// A new connection got through before the probe gave up.
    reached: bool,
    /// Why the last attempt before that failed (a name that does not
    /// resolve, a refused connection, no answer): the reason a rollback
    /// reports, also when the engine's own deadline rolled the change back
    /// before the probe gave up.
    last_failure: Option<String>,
}

impl Probe {
    fn failed(why: String) -> Probe {
        Probe {
            reached: false,
            last_failure: Some(why),
        }
    }
}

/// Tries new mutual-TLS connections to the controller (its name resolved
/// afresh each time, as a restarted agent would) until one works or the
/// pending change's deadline (Unix seconds) has passed.
async fn probe(url: String, e: Enrolled, deadline: u64) -> Probe {
    let mut last_failure = None;
    loop {
        let config = match tls::mutual_config(&e.ca_pem, &e.cert_pem, &e.key_pem) {
            Ok(c) => c,
            Err(err) => return Probe::failed(causes(&err)),
        };
        let why =
            match tokio::time::timeout(Duration::from_secs(3), tls::connect(&url, config)).await {
                Ok(Ok(_channel)) => {
                    return Probe {
                        reached: true,
                        last_failure,
                    }
                }
                Ok(Err(err)) => causes(&err),
                Err(_) => "no answer within 3 s".to_string(),
            };
        debug!(error = %why, "the controller not reached through the pending change yet");
        if now_unix() >= deadline {
            return Probe::failed(why);
        }
        last_failure = Some(why);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Stores the tenant's per-user rules; true when they changed.
fn user_rules(local: &Local, rules: &UserRules) -> bool {
    let users: BTreeMap<String, Vec<String>> = rules
        .users
        .iter()
        .map(|(ext, list)| (ext.clone(), list.services.clone()))
        .collect();
    if pushed_user_rules(local.dir.parent().unwrap_or(&local.dir)).as_ref() == Some(&users) {
        return false;
    }
    info!(
        users = users.len(),
        "per-user rules from the controller stored; they take precedence over the host's own"
    );
    local.write_json(USER_RULES_FILE, &users);
    true
}

/// The per-user rules the controller pushed (`None`: never any).
pub fn pushed_user_rules(state_dir: &Path) -> Option<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(identity::dir(state_dir).join(USER_RULES_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The address and optional single port of a question.
fn explain_query(
    q: &ExplainQuery,
) -> Result<(IpAddr, Option<(palisade_model::Proto, u16)>), String> {
    let addr: IpAddr = q
        .address
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", q.address))?;
    let port = q.port.trim();
    if port.is_empty() {
        return Ok((addr, None));
    }
    let spec: palisade_model::PortSpec = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
    if spec.range.first != spec.range.last {
        return Err(format!("{port}: explain takes one port, not a range"));
    }
    Ok((addr, Some((spec.proto, spec.range.first))))
}

fn host_verdict(v: &palisade_model::Verdict) -> HostVerdict {
    use palisade_model::Decision;
    HostVerdict {
        host: String::new(),
        allowed: v.decision == Decision::Accept,
        why: v.reason.clone(),
        decision: match v.decision {
            Decision::Accept => "allowed",
            Decision::Drop => "blocked",
            Decision::PerService => "per-service",
        }
        .into(),
        stage: v.stage.as_str().into(),
        open_services: v.open_services.clone(),
        answered: true,
        last_seen: 0,
        zone: v.zone.map(|z| z.to_string()).unwrap_or_default(),
    }
}

fn report(b: &BanRecord) -> Up {
    Up::Ban(BanReport {
        ban: Some(Ban {
            address: b.addr.to_string(),
            reason: b.reason.clone(),
            detail: b.comment.clone(),
            evidence: b.evidence.clone(),
            banned_at: b.at,
            expires_at: b.until,
            origin: String::new(),
        }),
    })
}

/// A ban this host made (not one the controller shared with it).
fn local_ban(b: &BanRecord) -> bool {
    !b.reason.starts_with(SHARED_REASON)
}

/// Which bans of the book go up. The book is tailed by offset; across a
/// reconnection, a restart or a compaction of the book, bans made before the
/// watermark (`controller/reported`) are not sent again. The watermark lags
/// one heartbeat behind what was sent, so a stream that died with messages
/// in flight sends them again (the controller takes a ban twice as once).
struct Reporter {
    book: BanBook,
    book_path: PathBuf,
    /// The book's inode: compaction replaces the file.
    book_ino: Option<u64>,
    path: PathBuf,
    offset: u64,
    /// The latest `at` sent, and the addresses sent with that `at`.
    max_at: u64,
    at_max: HashSet<IpAddr>,
    /// `max_at` at the previous heartbeat.
    prev: u64,
    watermark: u64,
}

impl Reporter {
    fn new(state_dir: &Path, controller_dir: &Path) -> Reporter {
        let path = controller_dir.join(REPORTED_FILE);
        let watermark = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Reporter {
            book: BanBook::new(state_dir),
            book_path: state_dir.join(crate::bans::FILE),
            book_ino: None,
            path,
            offset: 0,
            max_at: watermark,
            at_max: HashSet::new(),
            prev: watermark,
            watermark,
        }
    }

    fn is_new(&mut self, b: &BanRecord) -> bool {
        if b.at > self.max_at {
            self.max_at = b.at;
            self.at_max.clear();
            self.at_max.insert(b.addr);
            true
        } else if b.at == self.max_at {
            self.at_max.insert(b.addr)
        } else {
            false
        }
    }

    /// At (re)connection: the bans in force made since the watermark.
    fn resume(&mut self, now: u64) -> Vec<BanRecord> {
        self.max_at = self.watermark;
        self.at_max.clear();
        self.book_ino = self.ino();
        let (entries, offset) = match self.book.read_from(0) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the ban book");
                return Vec::new();
            }
        };
        self.offset = offset;
        let mut live: BTreeMap<IpAddr, BanRecord> = BTreeMap::new();
        for e in entries {
            match e {
                Entry::Ban(b) => {
                    live.insert(b.addr, b);
                }
                Entry::Lift { addr, .. } => {
                    live.remove(&addr);
                }
            }
        }
        let mut bans: Vec<BanRecord> = live
            .into_values()
            .filter(|b| b.until > now && local_ban(b))
            .collect();
        bans.sort_by_key(|b| b.at);
        bans.retain(|b| self.is_new(b));
        bans
    }

    /// Bans appended since the last look.
    fn poll(&mut self, now: u64) -> Vec<BanRecord> {
        // A compacted book starts over: only what was not sent yet goes.
        let ino = self.ino();
        let compacted = ino != self.book_ino;
        if compacted {
            self.book_ino = ino;
            self.offset = 0;
        }
        let (entries, offset) = match self.book.read_from(self.offset) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the ban book");
                return Vec::new();
            }
        };
        self.offset = offset;
        let mut out = Vec::new();
        for e in entries {
            let Entry::Ban(b) = e else { continue };
            if b.until <= now || !local_ban(&b) {
                continue;
            }
            if compacted {
                if !self.is_new(&b) {
                    continue;
                }
            } else if b.at >= self.max_at {
                self.is_new(&b);
            }
            out.push(b);
        }
        out
    }

    fn ino(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.book_path).ok().map(|m| m.ino())
    }

    /// Once per heartbeat: what was sent a heartbeat ago is taken as received.
    fn heartbeat(&mut self) {
        if self.prev > self.watermark {
            self.watermark = self.prev;
            let tmp = self.path.with_extension("tmp");
            let written = std::fs::write(&tmp, self.watermark.to_string())
                .and_then(|()| std::fs::rename(&tmp, &self.path));
            if let Err(e) = written {
                warn!(error = %e, "cannot record which bans were reported");
            }
        }
        self.prev = self.max_at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(addr: &str, at: u64, reason: &str) -> Entry {
        Entry::Ban(BanRecord {
            addr: addr.parse().unwrap(),
            at,
            until: at + 1000,
            reason: reason.into(),
            comment: format!("{reason}: test"),
            offence: 1,
            evidence: Vec::new(),
        })
    }

    fn addrs(bans: &[BanRecord]) -> Vec<String> {
        bans.iter().map(|b| b.addr.to_string()).collect()
    }

    #[test]
    fn reports_each_local_ban_once_across_reconnections_and_compaction() {
        let state = tempfile::tempdir().unwrap();
        let dir = identity::dir(state.path());
        std::fs::create_dir_all(&dir).unwrap();
        let book = BanBook::new(state.path());
        book.append(&[
            ban("192.0.2.1", 100, "scanner"),
            ban("192.0.2.2", 100, "manual"),
            ban("192.0.2.3", 101, "shared: scanner from t/s/h"),
        ])
        .unwrap();
        let mut r = Reporter::new(state.path(), &dir);
        assert_eq!(
            addrs(&r.resume(200)),
            ["192.0.2.1", "192.0.2.2"],
            "the controller's own bans are not echoed"
        );
        assert!(r.poll(200).is_empty());
        book.append(&[
            ban("192.0.2.4", 102, "password-guessing"),
            Entry::Lift {
                addr: "192.0.2.1".parse().unwrap(),
                at: 102,
            },
        ])
        .unwrap();
        assert_eq!(addrs(&r.poll(200)), ["192.0.2.4"]);
        // Two heartbeats later, what was sent before the first is recorded.
        r.heartbeat();
        r.heartbeat();
        assert_eq!(
            std::fs::read_to_string(dir.join(REPORTED_FILE)).unwrap(),
            "102"
        );

        // The book is compacted (the daemon's start): nothing is sent twice.
        book.compact(200).unwrap();
        book.append(&[ban("192.0.2.5", 103, "scanner")]).unwrap();
        assert_eq!(addrs(&r.poll(200)), ["192.0.2.5"]);

        // A restart: the watermark's second is sent again, not before it.
        let mut again = Reporter::new(state.path(), &dir);
        assert_eq!(addrs(&again.resume(200)), ["192.0.2.4", "192.0.2.5"]);
        // Expired bans are not reported.
        let mut late = Reporter::new(state.path(), &dir);
        assert!(late.resume(5000).is_empty());
    }

    #[test]
    fn changes_become_elements_with_the_time_left() {
        // The pure half of `apply_changes`: the comment and timeout choices.
        let mut m = Mirror::default();
        let c = m.ban_delta(
            1,
            &palisade_proto::v1::BanDelta {
                added: vec![Ban {
                    address: "192.0.2.9".into(),
                    reason: "scanner".into(),
                    origin: "acme/hq/pbx1".into(),
                    expires_at: 1060,
                    ..Ban::default()
                }],
                ..Default::default()
            },
            1000,
        );
        let (addr, b) = &c.ban[0];
        assert_eq!(addr.to_string(), "192.0.2.9");
        assert_eq!(b.comment, "shared: scanner from acme/hq/pbx1");
        assert_eq!(b.expires_at - 1000, 60);
    }
}
