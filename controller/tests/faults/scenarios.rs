//! Faults (issue 7), shared by `tests/faults.rs` (small, asserted) and
//! `benches/faults.rs` (full size, a table):
//!
//! * [`burst_kill9`]: the real `palisade-controller` binary takes a burst of
//!   bans (operator `AddBan`s and agents' `BanReport`s, concurrently) and is
//!   killed with SIGKILL mid-burst; restarted on the same data directory it
//!   must still have every acknowledged ban, and no revision an agent saw
//!   before the kill may mean something else afterwards.
//! * [`offline_hour`]: an agent is away while an hour of its tenant's changes
//!   happens (compressed), with housekeeping (ban sweep, log compaction)
//!   running in between; back with its last revision it must get exactly the
//!   deltas it missed and end up with the state the operator API shows.
//!
//! **Acknowledged** means: an operator ban when `AddBan` returned OK (the
//! controller replies after the store's flush); an agent's ban when another
//! host of the tenant received it in a `BanDelta` (the protocol has no reply
//! to a `BanReport`; the controller fans a ban out only after it is durable).
//!
//! **Expired bans** are not turned into lifts: a resuming agent gets the
//! `BanDelta` that added a ban even when the ban has run out since (or was
//! swept from the store); the agent treats a ban whose `expires_at` is past
//! as over (`agent/src/controller/mirror.rs`), and so does the mirror here
//! before it is compared with `ListBans` (which lists live bans only).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use palisade_controller::client::{self, OperatorAuth, OperatorClient};
use palisade_controller::fleet::user_rules_to_pb;
use palisade_controller::sandbox::{free_port, AgentCreds, ControllerProcess, SimAgent};
use palisade_controller::store::{now_secs, Change, SledStore, Store};
use palisade_proto::v1 as pb;
use pb::agent_message::Body as Up;
use pb::controller_message::Body as Down;
use prost::Message;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub const CONTROLLER: &str = env!("CARGO_BIN_EXE_palisade-controller");

// ------------------------------------------------------------------ binary

/// The real controller binary, with an operator's bundle.
pub struct Binary {
    pub process: ControllerProcess,
    pub bundle: String,
    pub ca_pem: String,
}

impl Binary {
    /// A data directory in `dir` with an operator bundle (which creates the
    /// CA); not started. `args` go to `run`.
    pub fn prepare(dir: &Path, args: &[&str]) -> Result<Binary> {
        let process = ControllerProcess::new(CONTROLLER, dir.join("controller"), free_port()?)
            .args(args)
            .env("RUST_LOG", "info");
        Ok(Binary {
            bundle: process.operator_cert("faults", &dir.join("operator.pem"))?,
            ca_pem: process.ca_pem()?,
            process,
        })
    }

    /// Waits until an operator call succeeds; returns the client.
    pub async fn ready(&mut self, within: Duration) -> Result<OperatorClient> {
        let deadline = Instant::now() + within;
        loop {
            self.process.check_alive()?;
            if let Ok(mut op) = client::operator(
                self.process.url(),
                OperatorAuth::Bundle(self.bundle.clone()),
            )
            .await
            {
                if op.list_tenants(pb::ListRequest {}).await.is_ok() {
                    return Ok(op);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not answer within {within:?}; log:\n{}",
                    self.process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Expired bans the controller's housekeeping swept (from its logs).
    pub fn swept_from_logs(&self) -> usize {
        strip_ansi(&self.process.log_text())
            .lines()
            .filter(|l| l.contains("expired bans removed"))
            .filter_map(|l| l.split("expired=").nth(1)?.split_whitespace().next())
            .filter_map(|n| n.parse::<usize>().ok())
            .sum()
    }
}

/// The text without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ------------------------------------------------------------------ agents

/// Called with the agent's name and each message it receives.
pub type OnMessage = Arc<dyn Fn(&str, &pb::ControllerMessage) + Send + Sync>;

/// A simulated agent reading its stream in its own task.
pub struct Running {
    pub name: String,
    pub up: mpsc::Sender<pb::AgentMessage>,
    stop: watch::Sender<bool>,
    task: JoinHandle<(SimAgent, Option<tonic::Status>)>,
}

impl Running {
    pub fn start(name: &str, s: SimAgent, on: Option<OnMessage>) -> Running {
        let up = s.sender();
        let (stop, mut stopped) = watch::channel(false);
        let who = name.to_string();
        let task = tokio::spawn(async move {
            let mut s = s;
            loop {
                tokio::select! {
                    _ = stopped.changed() => return (s, None),
                    m = s.next(Duration::from_secs(3600)) => match m {
                        Ok(Some(m)) => {
                            if let Some(on) = &on {
                                on(&who, &m);
                            }
                        }
                        Ok(None) => {}
                        Err(st) => return (s, Some(st)),
                    },
                }
            }
        });
        Running {
            name: name.to_string(),
            up,
            stop,
            task,
        }
    }

    /// Stops reading and hands the agent back (drop it to disconnect).
    pub async fn stop(self) -> Result<(SimAgent, Option<tonic::Status>)> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }

    /// Waits for the stream to end on its own (the controller died).
    pub async fn ended(self, within: Duration) -> Result<(SimAgent, Option<tonic::Status>)> {
        let stop = self.stop;
        match tokio::time::timeout(within, self.task).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                let _ = stop.send(true);
                bail!("{}: the stream did not end within {within:?}", self.name)
            }
        }
    }
}

fn ban_report(address: &str, expires_at: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(Up::Ban(pb::BanReport {
            ban: Some(pb::Ban {
                address: address.into(),
                reason: "faults".into(),
                evidence: vec![format!("faults evidence for {address}")],
                expires_at,
                ..pb::Ban::default()
            }),
        })),
    }
}

fn heartbeat(addresses: &[String]) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(Up::Heartbeat(pb::Heartbeat {
            at: now_secs(),
            addresses: addresses.to_vec(),
        })),
    }
}

async fn enroll(
    op: &mut OperatorClient,
    url: &str,
    ca_pem: &str,
    tenant: &str,
    site: &str,
    host: &str,
) -> Result<AgentCreds> {
    let token = op
        .create_token(pb::CreateTokenRequest {
            tenant: tenant.into(),
            site: site.into(),
            valid_secs: 3600,
        })
        .await?
        .into_inner()
        .token;
    AgentCreds::enroll(url, ca_pem, &token, host)
        .await
        .with_context(|| format!("enrolling {tenant}/{site}/{host}"))
}

async fn list_bans(op: &mut OperatorClient, tenant: &str) -> Result<BTreeMap<String, pb::Ban>> {
    Ok(op
        .list_bans(pb::ScopeRef {
            tenant: tenant.into(),
            site: String::new(),
        })
        .await?
        .into_inner()
        .bans
        .into_iter()
        .map(|b| (b.address.clone(), b))
        .collect())
}

fn operator_ban(tenant: &str, address: &str, expires_at: u64) -> pb::AddBanRequest {
    pb::AddBanRequest {
        tenant: tenant.into(),
        ban: Some(pb::Ban {
            address: address.into(),
            reason: "faults".into(),
            expires_at,
            ..pb::Ban::default()
        }),
    }
}

/// A ban address, distinct for every `k` below 16.7 million (never a host's).
pub fn ban_address(space: u8, k: usize) -> String {
    format!("{space}.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255)
}

fn millis(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

// ------------------------------------------------------------------ part 1

#[derive(Clone, Debug)]
pub struct BurstConfig {
    /// Bans in the burst (operator and agents together).
    pub bans: usize,
    /// The share of them reported by agents.
    pub agent_share: f64,
    pub reporters_per_site: usize,
    /// Operator `AddBan`s in flight at once.
    pub operator_concurrency: usize,
    /// The controller is killed once this many bans are acknowledged: a
    /// random number in this range.
    pub kill_after_acks: (usize, usize),
    /// Operator bans after the restart (their revisions must be new).
    pub post_restart_bans: usize,
    /// Agents that reconnect (resuming from their revision) every few
    /// milliseconds during the burst: the resume path under load.
    pub flappers: usize,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct BurstReport {
    pub config: Option<BurstConfig>,
    pub agents: usize,
    pub kill_target: usize,
    /// Fired before the kill (operator, agent).
    pub fired: (usize, usize),
    /// Acknowledged (operator, agent).
    pub acked: (usize, usize),
    /// When the kill was issued, since the burst began.
    pub killed_after: Duration,
    pub acks_per_sec: f64,
    /// Acknowledged bans in `ListBans` after the restart.
    pub present: usize,
    /// Acknowledged, not in `ListBans`.
    pub lost: Vec<String>,
    /// In `ListBans` but never acknowledged (stored before the kill, the
    /// reply or fan-out did not make it).
    pub unacked_stored: usize,
    /// Fired, neither acknowledged nor stored.
    pub unacked_gone: usize,
    /// The tenant's revision in the store after the crash.
    pub durable_revision: u64,
    /// The highest revision any agent received before the kill.
    pub max_seen: u64,
    /// Revisions agents received before the kill that the store, after the
    /// crash, does not have or has for another change.
    pub seen_not_durable: Vec<String>,
    /// SIGKILL sent → the new process answers an operator call.
    pub restart: Duration,
    /// A freshly enrolled agent's snapshot: bans, acknowledged ones missing,
    /// time from the Sync call to the last ban.
    pub fresh_bans: usize,
    pub fresh_missing: usize,
    pub fresh_snapshot: bool,
    pub fresh_resync: Duration,
    /// Revisions of the bans made after the restart.
    pub post_revisions: (u64, u64),
    /// Post-restart changes with a revision ≤ `max_seen`.
    pub reused: usize,
    /// Agents that saw revision R before the kill, resumed from it.
    pub resumed: Vec<Resumed>,
    /// Reconnections of the flapping agents before the kill, and how many
    /// of them got a snapshot instead of deltas.
    pub flaps: usize,
    pub flap_snapshots: usize,
}

#[derive(Debug, Default)]
pub struct Resumed {
    pub name: String,
    pub from: u64,
    pub snapshot: bool,
    pub deltas: usize,
    /// Deltas with a revision ≤ `from` or not above the one before.
    pub out_of_order: usize,
    /// Its bans against `ListBans` (either side only).
    pub mismatch: usize,
    pub took: Duration,
}

impl BurstReport {
    pub fn failures(&self) -> Vec<String> {
        let mut f = vec![];
        if !self.lost.is_empty() {
            f.push(format!(
                "{} acknowledged bans lost, e.g. {:?}",
                self.lost.len(),
                &self.lost[..self.lost.len().min(5)]
            ));
        }
        if self.acked.0 == 0 || self.acked.1 == 0 {
            f.push(format!(
                "nothing of one kind acknowledged before the kill: {:?}",
                self.acked
            ));
        }
        if self.max_seen > self.durable_revision || !self.seen_not_durable.is_empty() {
            f.push(format!(
                "agents saw revisions up to {} but the store has {} after the crash; not durable: {:?}",
                self.max_seen,
                self.durable_revision,
                &self.seen_not_durable[..self.seen_not_durable.len().min(5)]
            ));
        }
        if self.fresh_missing > 0 || !self.fresh_snapshot {
            f.push(format!(
                "a fresh agent's snapshot (snapshot: {}) misses {} acknowledged bans",
                self.fresh_snapshot, self.fresh_missing
            ));
        }
        if self.reused > 0 {
            f.push(format!(
                "{} changes after the restart reuse a revision ≤ {} seen before the kill (got {:?})",
                self.reused, self.max_seen, self.post_revisions
            ));
        }
        if self.flap_snapshots > 0 {
            f.push(format!(
                "{} of {} reconnections during the burst got a snapshot",
                self.flap_snapshots, self.flaps
            ));
        }
        for r in &self.resumed {
            if r.snapshot || r.out_of_order > 0 || r.mismatch > 0 {
                f.push(format!(
                    "{} resumed from {}: snapshot {}, {} deltas out of order, {} bans differ from ListBans",
                    r.name, r.from, r.snapshot, r.out_of_order, r.mismatch
                ));
            }
        }
        f
    }

    pub fn table(&self) -> String {
        let c = self.config.clone().unwrap_or(BurstConfig {
            bans: 0,
            agent_share: 0.0,
            reporters_per_site: 0,
            operator_concurrency: 0,
            kill_after_acks: (0, 0),
            post_restart_bans: 0,
            flappers: 0,
            seed: 0,
        });
        let ok = |b: bool| if b { "✓" } else { "✗" };
        let mut t = String::new();
        let mut row = |k: &str, v: String, target: &str| {
            t.push_str(&format!("| {k} | {v} | {target} |\n"));
        };
        row(
            "burst",
            format!(
                "{} bans ({} % by {} reporting agents over Sync, the rest operator AddBan × {} in flight); {} agents, 1 tenant, 2 sites",
                c.bans,
                (c.agent_share * 100.0).round(),
                c.reporters_per_site * 2,
                c.operator_concurrency,
                self.agents
            ),
            "—",
        );
        row(
            "SIGKILL after (acks target, seed)",
            format!(
                "{} acks, {} into the burst ({:.0} acks/s) (target {}, seed {})",
                self.acked.0 + self.acked.1,
                millis(self.killed_after),
                self.acks_per_sec,
                self.kill_target,
                c.seed
            ),
            "—",
        );
        row(
            "reconnections (resuming) during the burst / of them snapshots",
            format!("{} / {}", self.flaps, self.flap_snapshots),
            &format!("0 snapshots {}", ok(self.flap_snapshots == 0)),
        );
        row(
            "fired before the kill: operator / agent",
            format!("{} / {}", self.fired.0, self.fired.1),
            "—",
        );
        row(
            "acknowledged: operator / agent",
            format!("{} / {}", self.acked.0, self.acked.1),
            "—",
        );
        row(
            "acknowledged and present after the restart (ListBans)",
            format!("{}", self.present),
            "all",
        );
        row(
            "acknowledged and lost",
            format!("{}", self.lost.len()),
            &format!("0 {}", ok(self.lost.is_empty())),
        );
        row(
            "unacknowledged but stored / unacknowledged and gone",
            format!("{} / {}", self.unacked_stored, self.unacked_gone),
            "—",
        );
        row(
            "highest revision an agent saw before the kill / the store's after it",
            format!("{} / {}", self.max_seen, self.durable_revision),
            &format!("≤ {}", ok(self.max_seen <= self.durable_revision)),
        );
        row(
            "revisions seen before the kill that the store lost or changed",
            format!("{}", self.seen_not_durable.len()),
            &format!("0 {}", ok(self.seen_not_durable.is_empty())),
        );
        row(
            "restart: SIGKILL → answering again",
            millis(self.restart),
            "—",
        );
        row(
            "fresh agent: snapshot bans / acknowledged missing / time",
            format!(
                "{} / {} / {}",
                self.fresh_bans,
                self.fresh_missing,
                millis(self.fresh_resync)
            ),
            &format!(
                "0 missing {}",
                ok(self.fresh_missing == 0 && self.fresh_snapshot)
            ),
        );
        row(
            &format!(
                "{} bans after the restart: revisions (reused ≤ max seen)",
                c.post_restart_bans
            ),
            format!(
                "{}–{} ({})",
                self.post_revisions.0, self.post_revisions.1, self.reused
            ),
            &format!("0 reused {}", ok(self.reused == 0)),
        );
        for r in &self.resumed {
            row(
                &format!("{} resumes from revision {}", r.name, r.from),
                format!(
                    "{}, {} deltas in {}, {} out of order, {} bans ≠ ListBans",
                    if r.snapshot { "snapshot" } else { "deltas" },
                    r.deltas,
                    millis(r.took),
                    r.out_of_order,
                    r.mismatch
                ),
                &format!(
                    "deltas, 0, 0 {}",
                    ok(!r.snapshot && r.out_of_order == 0 && r.mismatch == 0)
                ),
            );
        }
        t
    }
}

#[derive(Default)]
struct Acks {
    /// Ban address → acknowledged (first time), kind.
    operator: HashSet<String>,
    agent: HashSet<String>,
    /// Address → the reporting agent.
    origin: HashMap<String, String>,
    count: usize,
}

/// What one agent saw before the kill.
struct Seen {
    name: String,
    /// Its last connection (its state, the messages of that connection).
    agent: SimAgent,
    /// Messages of its earlier connections.
    history: Vec<pb::ControllerMessage>,
    /// The revision of its first snapshot (messages at it are not deltas).
    snapshot_rev: u64,
}

/// Reconnects every 5–30 ms, resuming from its revision, until the
/// controller dies; then reads what is left of the last stream.
async fn flap(
    creds: AgentCreds,
    addr: String,
    first: SimAgent,
    mut kill: watch::Receiver<bool>,
    seed: u64,
    on: OnMessage,
) -> (Seen, usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = creds.id.host.clone();
    let snapshot_rev = first.welcome_revision();
    let mut s = first;
    let mut history = vec![];
    let (mut flaps, mut snapshots) = (0, 0);
    'outer: loop {
        let until = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(5..30));
        loop {
            tokio::select! {
                _ = kill.changed() => {
                    // Everything sent before the death still counts.
                    while let Ok(Some(m)) = s.next(Duration::from_secs(10)).await {
                        on(&name, &m);
                    }
                    break 'outer;
                }
                _ = tokio::time::sleep_until(until) => break,
                m = s.next(Duration::from_secs(3600)) => match m {
                    Ok(Some(m)) => on(&name, &m),
                    Ok(None) => {}
                    Err(_) => break 'outer,
                },
            }
        }
        match creds.sync(s.revision, &[addr.as_str()]).await {
            Ok(mut n) => {
                flaps += 1;
                if n.welcome.snapshot {
                    snapshots += 1;
                } else {
                    n.bans = std::mem::take(&mut s.bans);
                    n.peers = std::mem::take(&mut s.peers);
                }
                history.append(&mut s.log);
                s = n;
            }
            Err(_) => break,
        }
    }
    (
        Seen {
            name,
            agent: s,
            history,
            snapshot_rev,
        },
        flaps,
        snapshots,
    )
}

/// Part 1. `dir` holds the data directory and logs.
pub async fn burst_kill9(dir: &Path, cfg: BurstConfig) -> Result<BurstReport> {
    const TENANT: &str = "burst";
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut ctl = Binary::prepare(dir, &[])?;
    ctl.process.start()?;
    let mut op = ctl.ready(Duration::from_secs(30)).await?;
    let (url, ca) = (ctl.process.url().to_string(), ctl.ca_pem.clone());

    // Agents: reporters and observers at both sites.
    let mut names = vec![];
    for site in ["s0", "s1"] {
        for i in 0..cfg.reporters_per_site {
            names.push((site, format!("rep-{site}-{i}"), true));
        }
        names.push((site, format!("obs-{site}"), false));
    }
    let acks = Arc::new(Mutex::new(Acks::default()));
    let on: OnMessage = {
        let acks = acks.clone();
        Arc::new(move |who: &str, m: &pb::ControllerMessage| {
            if let Some(Down::Bans(d)) = &m.body {
                let mut a = acks.lock().unwrap();
                for b in &d.added {
                    if b.origin.ends_with(&format!("/{who}")) {
                        continue; // never happens: not echoed
                    }
                    if b.origin.starts_with("operator:") {
                        continue; // acknowledged by its reply
                    }
                    if a.agent.insert(b.address.clone()) {
                        a.count += 1;
                    }
                }
            }
        })
    };
    let mut agents = vec![];
    let mut creds = HashMap::new();
    for (k, (site, name, reporter)) in names.iter().enumerate() {
        let c = enroll(&mut op, &url, &ca, TENANT, site, name).await?;
        let addr = format!("100.64.0.{}", k + 1);
        let mut s = c.sync(0, &[addr.as_str()]).await?;
        s.drain(Duration::from_millis(50)).await?;
        creds.insert(name.clone(), (c, addr));
        agents.push((Running::start(name, s, Some(on.clone())), *reporter));
    }
    let mut flapper_agents = vec![];
    for i in 0..cfg.flappers {
        let site = ["s0", "s1"][i % 2];
        let name = format!("flap-{i}");
        let c = enroll(&mut op, &url, &ca, TENANT, site, &name).await?;
        let addr = format!("100.64.2.{}", i + 1);
        let mut s = c.sync(0, &[addr.as_str()]).await?;
        s.drain(Duration::from_millis(50)).await?;
        creds.insert(name.clone(), (c.clone(), addr.clone()));
        flapper_agents.push((c, addr, s));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The burst's bans: who fires each.
    let n_agent = (cfg.bans as f64 * cfg.agent_share).round() as usize;
    let reporters: Vec<usize> = (0..agents.len()).filter(|&i| agents[i].1).collect();
    let mut per_reporter: Vec<Vec<String>> = vec![vec![]; agents.len()];
    let mut operator_addrs = vec![];
    {
        let mut a = acks.lock().unwrap();
        for k in 0..cfg.bans {
            let address = ban_address(203, k);
            if k < n_agent {
                let r = reporters[k % reporters.len()];
                a.origin.insert(address.clone(), agents[r].0.name.clone());
                per_reporter[r].push(address);
            } else {
                operator_addrs.push(address);
            }
        }
    }
    operator_addrs.shuffle(&mut rng);
    let kill_target = rng.random_range(cfg.kill_after_acks.0..=cfg.kill_after_acks.1);

    let killed = Arc::new(AtomicBool::new(false));
    let (kill_tx, kill_rx) = watch::channel(false);
    let fired_op = Arc::new(AtomicUsize::new(0));
    let fired_agent = Arc::new(AtomicUsize::new(0));
    let t_burst = Instant::now();
    let mut tasks: Vec<JoinHandle<()>> = vec![];
    let flappers: Vec<_> = flapper_agents
        .into_iter()
        .enumerate()
        .map(|(i, (c, addr, s))| {
            tokio::spawn(flap(
                c,
                addr,
                s,
                kill_rx.clone(),
                cfg.seed ^ (i as u64 + 1),
                on.clone(),
            ))
        })
        .collect();
    // Agents report as fast as their streams take it.
    for (i, list) in per_reporter.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let up = agents[i].0.up.clone();
        let list = list.clone();
        let (killed, fired) = (killed.clone(), fired_agent.clone());
        let mut kill_rx = kill_rx.clone();
        tasks.push(tokio::spawn(async move {
            for a in list {
                if killed.load(Ordering::SeqCst) {
                    break;
                }
                tokio::select! {
                    r = up.send(ban_report(&a, 0)) => if r.is_err() { break },
                    _ = kill_rx.changed() => break,
                }
                fired.fetch_add(1, Ordering::SeqCst);
                // Let the other side of the stream breathe now and then.
                tokio::task::yield_now().await;
            }
        }));
    }
    // Operators: AddBan, several in flight, over a few connections.
    {
        let mut clients = vec![op.clone()];
        for _ in 1..4 {
            clients.push(client::operator(&url, OperatorAuth::Bundle(ctl.bundle.clone())).await?);
        }
        let (killed, fired, acks) = (killed.clone(), fired_op.clone(), acks.clone());
        let conc = cfg.operator_concurrency;
        tasks.push(tokio::spawn(async move {
            stream::iter(operator_addrs.into_iter().enumerate())
                .for_each_concurrent(conc, |(i, a)| {
                    let mut c = clients[i % clients.len()].clone();
                    let (killed, fired, acks) = (killed.clone(), fired.clone(), acks.clone());
                    async move {
                        if killed.load(Ordering::SeqCst) {
                            return;
                        }
                        fired.fetch_add(1, Ordering::SeqCst);
                        if c.add_ban(operator_ban(TENANT, &a, 0)).await.is_ok() {
                            let mut acks = acks.lock().unwrap();
                            if acks.operator.insert(a) {
                                acks.count += 1;
                            }
                        }
                    }
                })
                .await;
        }));
    }
    // The kill.
    loop {
        let count = acks.lock().unwrap().count;
        if count >= kill_target {
            break;
        }
        if t_burst.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {count} acks after 300 s; log:\n{}",
                ctl.process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let acks_at_kill = acks.lock().unwrap().count;
    ctl.process.kill()?;
    let t_kill = Instant::now();
    killed.store(true, Ordering::SeqCst);
    let _ = kill_tx.send(true);
    let killed_after = t_burst.elapsed();
    for t in tasks {
        t.await?;
    }
    // Every stream ends; whatever arrived before that was sent before the kill.
    let mut before = vec![];
    for (r, _) in agents {
        let name = r.name.clone();
        let (s, _end) = r.ended(Duration::from_secs(30)).await?;
        before.push(Seen {
            name,
            snapshot_rev: s.welcome_revision(),
            agent: s,
            history: vec![],
        });
    }
    let (mut flaps, mut flap_snapshots) = (0, 0);
    for f in flappers {
        let (seen, n, snaps) = f.await?;
        flaps += n;
        flap_snapshots += snaps;
        before.push(seen);
    }
    let (acked_op, acked_agent) = {
        let a = acks.lock().unwrap();
        (a.operator.clone(), a.agent.clone())
    };
    let mut report = BurstReport {
        config: Some(cfg.clone()),
        agents: before.len() + 1,
        kill_target,
        fired: (
            fired_op.load(Ordering::SeqCst),
            fired_agent.load(Ordering::SeqCst),
        ),
        acked: (acked_op.len(), acked_agent.len()),
        killed_after,
        acks_per_sec: acks_at_kill as f64 / killed_after.as_secs_f64(),
        flaps,
        flap_snapshots,
        ..BurstReport::default()
    };

    // What the store holds after the crash, read directly (the controller
    // is dead, so the directory is free): every revision an agent saw must
    // be there, for the same change.
    {
        let store = SledStore::open(&ctl.process.data_dir().join("store"))?;
        report.durable_revision = store.tenant(TENANT)?.map_or(0, |t| t.revision);
        let log: HashMap<u64, Change> = store
            .changes_since(TENANT, 0)?
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.revision, e.change))
            .collect();
        for seen in &before {
            let name = &seen.name;
            report.max_seen = report.max_seen.max(seen.agent.revision);
            for m in seen.history.iter().chain(&seen.agent.log) {
                report.max_seen = report.max_seen.max(m.revision);
                if m.revision <= seen.snapshot_rev {
                    continue; // the snapshot
                }
                let fine = match (&m.body, log.get(&m.revision)) {
                    (Some(Down::Bans(d)), Some(Change::BanAdded { ban })) => {
                        d.added.len() == 1 && d.added[0].address == ban.address
                    }
                    (Some(Down::Bans(d)), Some(Change::BanLifted { address })) => {
                        d.lifted == [address.clone()]
                    }
                    (Some(Down::Trust(_)), Some(Change::Trust { .. })) => true,
                    _ => false,
                };
                if !fine {
                    report.seen_not_durable.push(format!(
                        "{name}: revision {} ({:?}) → store {:?}",
                        m.revision,
                        m.body,
                        log.get(&m.revision)
                    ));
                }
            }
        }
    }

    // Restart on the same directory and port.
    ctl.process.start()?;
    let mut op = ctl.ready(Duration::from_secs(60)).await?;
    report.restart = t_kill.elapsed();
    let listed = list_bans(&mut op, TENANT).await?;
    let burst: BTreeSet<String> = (0..cfg.bans).map(|k| ban_address(203, k)).collect();
    let acked: BTreeSet<String> = acked_op.iter().chain(&acked_agent).cloned().collect();
    report.lost = acked
        .iter()
        .filter(|a| !listed.contains_key(*a))
        .cloned()
        .collect();
    report.present = acked.len() - report.lost.len();
    report.unacked_stored = listed
        .keys()
        .filter(|a| burst.contains(*a) && !acked.contains(*a))
        .count();
    report.unacked_gone =
        (report.fired.0 + report.fired.1).saturating_sub(acked.len() + report.unacked_stored);

    // A fresh agent: everything in its snapshot.
    let fresh = enroll(&mut op, &url, &ca, TENANT, "s1", "fresh").await?;
    let t = Instant::now();
    let mut s = fresh.sync(0, &["100.64.1.1"]).await?;
    report.fresh_snapshot = s.welcome.snapshot;
    let want = listed.len();
    let _ = s
        .wait_until(Duration::from_secs(30), |s| s.bans.len() >= want)
        .await;
    report.fresh_resync = t.elapsed();
    report.fresh_bans = s.bans.len();
    report.fresh_missing = acked.iter().filter(|a| !s.bans.contains_key(*a)).count();
    drop(s);

    // New changes first: with a reused revision, an agent resuming from a
    // revision it saw before the kill would skip them.
    let mut post = vec![];
    for k in 0..cfg.post_restart_bans {
        let a = ban_address(198, k);
        op.add_ban(operator_ban(TENANT, &a, 0)).await?;
        post.push(a);
    }
    let listed = list_bans(&mut op, TENANT).await?;

    // Every agent that saw something resumes from its last revision.
    let mut first_post = u64::MAX;
    let mut last_post = 0;
    for Seen {
        name, agent: old, ..
    } in before
    {
        let (c, addr) = &creds[&name];
        let from = old.revision;
        let t = Instant::now();
        let mut s = c.sync(from, &[addr.as_str()]).await?;
        let mut r = Resumed {
            name: name.clone(),
            from,
            snapshot: s.welcome.snapshot,
            ..Resumed::default()
        };
        if !s.welcome.snapshot {
            s.bans = old.bans;
            s.peers = old.peers;
        }
        let _ = s
            .wait_until(Duration::from_secs(30), |s| {
                post.iter().all(|a| s.bans.contains_key(a))
            })
            .await;
        r.took = t.elapsed();
        s.drain(Duration::from_millis(200)).await?;
        let mut prev = from;
        for m in &s.log {
            r.deltas += 1;
            if !r.snapshot && m.revision <= prev {
                r.out_of_order += 1;
            }
            prev = prev.max(m.revision);
            if let Some(Down::Bans(d)) = &m.body {
                if d.added.iter().any(|b| post.contains(&b.address)) {
                    first_post = first_post.min(m.revision);
                    last_post = last_post.max(m.revision);
                    if m.revision <= report.max_seen {
                        report.reused += 1;
                    }
                }
            }
        }
        let own = format!("{TENANT}/");
        let mine: BTreeSet<&String> = listed
            .iter()
            .filter(|(_, b)| {
                !(b.origin.starts_with(&own) && b.origin.ends_with(&format!("/{name}")))
            })
            .map(|(a, _)| a)
            .collect();
        let got: BTreeSet<&String> = s.bans.keys().collect();
        r.mismatch = mine.symmetric_difference(&got).count();
        report.resumed.push(r);
    }
    report.post_revisions = (
        if first_post == u64::MAX {
            0
        } else {
            first_post
        },
        last_post,
    );
    ctl.process.kill()?;
    Ok(report)
}

/// The revision a Welcome carried.
trait WelcomeRevision {
    fn welcome_revision(&self) -> u64;
}

impl WelcomeRevision for SimAgent {
    fn welcome_revision(&self) -> u64 {
        // The first message after the Welcome tells; a snapshot's messages
        // all carry the Welcome's revision.
        if self.welcome.snapshot {
            self.log.first().map_or(self.revision, |m| m.revision)
        } else {
            0
        }
    }
}

// ------------------------------------------------------------------ part 2

#[derive(Clone, Debug)]
pub struct HourConfig {
    /// Changes while the agent is away.
    pub changes: usize,
    /// Changes before it goes away.
    pub prehistory: usize,
    /// The housekeeping interval the controller was started with (the
    /// scenario waits two of them after the last ban expired).
    pub housekeeping_every: Duration,
    pub seed: u64,
}

/// Where the controller is: the binary or a sandbox, seen the same way.
pub struct Target {
    pub url: String,
    pub ca_pem: String,
    pub operator: OperatorClient,
}

#[derive(Debug, Default)]
pub struct HourReport {
    pub config: Option<HourConfig>,
    /// Changes made while it was away, by kind.
    pub made: BTreeMap<&'static str, usize>,
    pub hour_took: Duration,
    /// Bans made during the hour that expired during it.
    pub expired: usize,
    /// The revision it left at, and the tenant's when it came back.
    pub left_at: u64,
    pub back_at: u64,
    pub snapshot: bool,
    /// Messages meant for it (by the plan) and received.
    pub expected: usize,
    pub received: usize,
    pub bytes: usize,
    pub catch_up: Duration,
    pub duplicates: usize,
    pub out_of_order: usize,
    /// Revisions outside (left_at, back_at].
    pub out_of_range: usize,
    /// Ban additions/lifts/trust changes the plan made and it did not get
    /// (or got and the plan did not make).
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// Expired bans received as additions (the agent drops them).
    pub expired_received: usize,
    /// Mirror vs operator API.
    pub bans_differ: Vec<String>,
    pub peers_differ: Vec<String>,
    pub policy_same: bool,
    pub user_rules_same: bool,
    /// The plan's own bookkeeping vs `ListBans` (a bad plan, not the controller).
    pub plan_vs_api: usize,
    /// An agent away since before the compacted part of the log: snapshot?
    pub stale_from: u64,
    pub stale_snapshot: bool,
    /// Filled by the caller: bans swept by housekeeping.
    pub swept: Option<usize>,
}

impl HourReport {
    pub fn failures(&self) -> Vec<String> {
        let mut f = vec![];
        if self.snapshot {
            f.push(format!(
                "resumed from {} with a snapshot, not deltas",
                self.left_at
            ));
        }
        if self.received != self.expected {
            f.push(format!(
                "received {} messages, expected {}",
                self.received, self.expected
            ));
        }
        if self.duplicates + self.out_of_order + self.out_of_range > 0 {
            f.push(format!(
                "revisions: {} duplicated, {} out of order, {} outside ({}, {}]",
                self.duplicates, self.out_of_order, self.out_of_range, self.left_at, self.back_at
            ));
        }
        let made: usize = self.made.values().sum();
        if self.back_at - self.left_at != made as u64 {
            f.push(format!(
                "{} revisions after {}, {} changes made",
                self.back_at - self.left_at,
                self.left_at,
                made
            ));
        }
        for (what, v) in [
            ("missing", &self.missing),
            ("unexpected", &self.unexpected),
            ("bans ≠ ListBans", &self.bans_differ),
            ("peers ≠ ListHosts", &self.peers_differ),
        ] {
            if !v.is_empty() {
                f.push(format!(
                    "{what}: {} e.g. {:?}",
                    v.len(),
                    &v[..v.len().min(5)]
                ));
            }
        }
        if !self.policy_same || !self.user_rules_same {
            f.push(format!(
                "policy same: {}, user rules same: {}",
                self.policy_same, self.user_rules_same
            ));
        }
        if self.plan_vs_api > 0 {
            f.push(format!(
                "the operator API differs from the plan in {} bans",
                self.plan_vs_api
            ));
        }
        if !self.stale_snapshot {
            f.push(format!(
                "an agent from revision {} (before the compacted log) got no snapshot",
                self.stale_from
            ));
        }
        if self.expired == 0 {
            f.push("no ban expired during the hour".into());
        }
        f
    }

    pub fn table(&self) -> String {
        let ok = |b: bool| if b { "✓" } else { "✗" };
        let made: usize = self.made.values().sum();
        let mut t = String::new();
        let mut row = |k: &str, v: String, target: &str| {
            t.push_str(&format!("| {k} | {v} | {target} |\n"));
        };
        row(
            "changes while away (compressed hour)",
            format!(
                "{made} in {}: {}",
                millis(self.hour_took),
                self.made
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "—",
        );
        row(
            "bans that expired during the hour (swept by housekeeping)",
            format!(
                "{} ({})",
                self.expired,
                self.swept.map_or("?".into(), |n| n.to_string())
            ),
            "—",
        );
        row(
            "left at revision → tenant at",
            format!(
                "{} → {} ({} missed)",
                self.left_at,
                self.back_at,
                self.back_at - self.left_at
            ),
            &format!(
                "= changes {}",
                ok(self.back_at - self.left_at == made as u64)
            ),
        );
        row(
            "resumed with",
            (if self.snapshot {
                "a snapshot"
            } else {
                "deltas"
            })
            .to_string(),
            &format!("deltas {}", ok(!self.snapshot)),
        );
        row(
            "messages received / meant for it",
            format!("{} / {}", self.received, self.expected),
            &format!("equal {}", ok(self.received == self.expected)),
        );
        row(
            "bytes received (protobuf)",
            format!("{} ({:.1} KiB)", self.bytes, self.bytes as f64 / 1024.0),
            "—",
        );
        row("time to catch up", millis(self.catch_up), "—");
        row(
            "duplicates / out of order / outside the range",
            format!(
                "{} / {} / {}",
                self.duplicates, self.out_of_order, self.out_of_range
            ),
            &format!(
                "0 {}",
                ok(self.duplicates + self.out_of_order + self.out_of_range == 0)
            ),
        );
        row(
            "missing / unexpected changes",
            format!("{} / {}", self.missing.len(), self.unexpected.len()),
            &format!(
                "0 {}",
                ok(self.missing.is_empty() && self.unexpected.is_empty())
            ),
        );
        row(
            "expired bans received as additions (dropped by the agent)",
            format!("{}", self.expired_received),
            "—",
        );
        row(
            "mirror vs operator API: bans / peers / policy / user rules",
            format!(
                "{} / {} / {} / {}",
                self.bans_differ.len(),
                self.peers_differ.len(),
                if self.policy_same { "same" } else { "differs" },
                if self.user_rules_same {
                    "same"
                } else {
                    "differs"
                }
            ),
            &format!(
                "0 / 0 / same / same {}",
                ok(self.bans_differ.is_empty()
                    && self.peers_differ.is_empty()
                    && self.policy_same
                    && self.user_rules_same)
            ),
        );
        row(
            "an agent away since revision before the compacted log",
            format!(
                "from {}: {}",
                self.stale_from,
                if self.stale_snapshot {
                    "snapshot"
                } else {
                    "deltas"
                }
            ),
            &format!("snapshot {}", ok(self.stale_snapshot)),
        );
        t
    }
}

/// One planned change.
#[derive(Clone, Debug)]
enum Step {
    /// Reporter index, address, expires_at offset (0: never).
    AgentBan(usize, String, u64),
    OperatorBan(String, u64),
    Lift(String),
    /// Reporter index, new addresses.
    Addresses(usize, Vec<String>),
    Policy(&'static str, String),
    UserRules(BTreeMap<String, Vec<String>>),
}

impl Step {
    fn kind(&self) -> &'static str {
        match self {
            Step::AgentBan(_, _, 0) => "agent bans",
            Step::AgentBan(..) => "agent bans expiring",
            Step::OperatorBan(_, 0) => "operator bans",
            Step::OperatorBan(..) => "operator bans expiring",
            Step::Lift(_) => "lifts",
            Step::Addresses(..) => "address changes",
            Step::Policy("s0", _) => "policies for its site",
            Step::Policy(..) => "policies for the other site / default",
            Step::UserRules(_) => "user rules",
        }
    }

    /// Whether the away agent (site s0) gets a message for it.
    fn for_away(&self) -> bool {
        !matches!(self, Step::Policy(site, _) if *site != "s0")
    }
}

fn policy_toml(i: usize) -> String {
    format!(
        "management = [\"192.0.2.{}\", \"2001:db8::{:x}\"]\n",
        i % 250 + 1,
        i + 1
    )
}

fn user_rules(i: usize) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert(format!("{}", 100 + i % 50), vec!["ssh".to_string()]);
    let more = ["admin", "ucp", "webrtc", "provisioning"];
    m.insert(
        "200".to_string(),
        vec!["ssh".into(), more[i % more.len()].to_string()],
    );
    m
}

/// Part 2.
pub async fn offline_hour(target: Target, cfg: HourConfig) -> Result<HourReport> {
    const TENANT: &str = "hour";
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let Target {
        url,
        ca_pem: ca,
        operator: mut op,
    } = target;
    let mut report = HourReport {
        config: Some(cfg.clone()),
        ..HourReport::default()
    };

    // Hosts: `away` (s0) goes offline; three others report bans and change
    // addresses; `stale` leaves at the very start.
    let away_c = enroll(&mut op, &url, &ca, TENANT, "s0", "away").await?;
    let stale_c = enroll(&mut op, &url, &ca, TENANT, "s1", "stale").await?;
    let mut stale = stale_c.sync(0, &["100.64.9.1"]).await?;
    stale.drain(Duration::from_millis(100)).await?;
    report.stale_from = stale.revision;
    drop(stale);
    let mut reporters = vec![];
    let mut reporter_addrs: Vec<Vec<String>> = vec![];
    for (k, (site, name)) in [("s0", "r0"), ("s1", "r1"), ("s1", "r2")]
        .into_iter()
        .enumerate()
    {
        let c = enroll(&mut op, &url, &ca, TENANT, site, name).await?;
        let addrs = vec![format!("100.{}.0.1", 65 + k)];
        let mut s = c.sync(0, &[addrs[0].as_str()]).await?;
        s.drain(Duration::from_millis(20)).await?;
        reporters.push(Running::start(name, s, None));
        reporter_addrs.push(addrs);
    }
    let away_addr = "100.64.0.1";
    let mut away = away_c.sync(0, &[away_addr]).await?;

    // Before: operator bans (some lifted during the hour), both policies,
    // user rules (last, so that `away` is at the tenant's revision).
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut liftable: Vec<String> = vec![];
    let pre_bans = cfg.prehistory.saturating_sub(3).max(1);
    for k in 0..pre_bans {
        let a = ban_address(192, 0x10000 + k);
        op.add_ban(operator_ban(TENANT, &a, 0)).await?;
        live.insert(a.clone());
        liftable.push(a);
    }
    let mut policy_s0 = policy_toml(0);
    op.set_policy(pb::PolicyDocument {
        tenant: TENANT.into(),
        site: "s0".into(),
        toml: policy_s0.clone(),
        revision: 0,
    })
    .await?;
    op.set_policy(pb::PolicyDocument {
        tenant: TENANT.into(),
        site: String::new(),
        toml: policy_toml(1),
        revision: 0,
    })
    .await?;
    let mut rules = user_rules(0);
    op.set_user_rules(pb::UserRulesRequest {
        tenant: TENANT.into(),
        rules: Some(user_rules_to_pb(&rules)),
    })
    .await?;
    let want = user_rules_to_pb(&rules);
    away.wait_until(Duration::from_secs(30), |s| {
        s.bans.len() == pre_bans && s.user_rules.as_ref() == Some(&want)
    })
    .await?;
    away.drain(Duration::from_millis(100)).await?;
    report.left_at = away.revision;
    let before = (
        away.bans.clone(),
        away.peers.clone(),
        away.policy.clone(),
        away.user_rules.clone(),
    );
    drop(away);
    // Gone for the controller too before anything happens.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The plan.
    let n = cfg.changes;
    let mut counts = [0usize; 6];
    let shares = [35, 20, 12, 15, 8, 10];
    for (i, s) in shares.iter().enumerate() {
        counts[i] = n * s / 100;
    }
    counts[0] += n - counts.iter().sum::<usize>();
    let mut kinds: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(k, &c)| std::iter::repeat_n(k, c))
        .collect();
    kinds.shuffle(&mut rng);
    let mut steps = vec![];
    let mut next_ban = 0usize;
    let mut hb = [0usize; 3];
    let mut lift_pool = liftable.clone();
    lift_pool.shuffle(&mut rng);
    let mut policies = 0usize;
    let mut rule_sets = 0usize;
    for kind in kinds {
        let expiring = rng.random_range(0..4) == 0;
        let exp = if expiring { rng.random_range(3..=5) } else { 0 };
        next_ban += 1;
        let step = match kind {
            0 => Step::AgentBan(rng.random_range(0..3), ban_address(203, next_ban), exp),
            1 => {
                let a = ban_address(198, next_ban);
                if exp == 0 {
                    lift_pool.push(a.clone());
                }
                Step::OperatorBan(a, exp)
            }
            2 => match lift_pool.pop() {
                Some(a) => Step::Lift(a),
                None => Step::OperatorBan(ban_address(198, next_ban), 0),
            },
            3 => {
                let r = rng.random_range(0..3);
                hb[r] += 1;
                let i = hb[r];
                let mut addrs = vec![format!("100.{}.{}.{}", 65 + r, i / 250, i % 250 + 1)];
                if i % 3 == 0 {
                    addrs.push(format!("2001:db8:{:x}::{:x}", r + 1, i));
                }
                Step::Addresses(r, addrs)
            }
            4 => {
                policies += 1;
                let site = match policies % 4 {
                    0 => "",
                    1 => "s1",
                    _ => "s0",
                };
                Step::Policy(site, policy_toml(policies + 1))
            }
            _ => {
                rule_sets += 1;
                Step::UserRules(user_rules(rule_sets))
            }
        };
        steps.push(step);
    }

    // The hour.
    let t_hour = Instant::now();
    let mut expected_added: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_lifted: BTreeSet<String> = BTreeSet::new();
    let mut expected_trust: BTreeSet<String> = BTreeSet::new();
    let mut max_expiry = 0;
    for step in &steps {
        *report.made.entry(step.kind()).or_default() += 1;
        if step.for_away() {
            report.expected += 1;
        }
        match step {
            Step::AgentBan(r, a, exp) => {
                let at = if *exp == 0 { 0 } else { now_secs() + exp };
                max_expiry = max_expiry.max(at);
                reporters[*r]
                    .up
                    .send(ban_report(a, at))
                    .await
                    .map_err(|_| anyhow!("reporter {r} stream closed"))?;
                expected_added.insert(a.clone(), at);
                if at == 0 {
                    live.insert(a.clone());
                } else {
                    report.expired += 1;
                }
            }
            Step::OperatorBan(a, exp) => {
                let at = if *exp == 0 { 0 } else { now_secs() + exp };
                max_expiry = max_expiry.max(at);
                op.add_ban(operator_ban(TENANT, a, at)).await?;
                expected_added.insert(a.clone(), at);
                if at == 0 {
                    live.insert(a.clone());
                } else {
                    report.expired += 1;
                }
            }
            Step::Lift(a) => {
                op.lift_ban(pb::LiftBanRequest {
                    tenant: TENANT.into(),
                    address: a.clone(),
                })
                .await?;
                live.remove(a);
                expected_lifted.insert(a.clone());
            }
            Step::Addresses(r, addrs) => {
                for a in &reporter_addrs[*r] {
                    expected_trust.insert(format!("-{a}"));
                }
                for a in addrs {
                    expected_trust.insert(format!("+{a}"));
                }
                reporter_addrs[*r] = addrs.clone();
                reporters[*r]
                    .up
                    .send(heartbeat(addrs))
                    .await
                    .map_err(|_| anyhow!("reporter {r} stream closed"))?;
            }
            Step::Policy(site, toml) => {
                op.set_policy(pb::PolicyDocument {
                    tenant: TENANT.into(),
                    site: site.to_string(),
                    toml: toml.clone(),
                    revision: 0,
                })
                .await?;
                if *site == "s0" {
                    policy_s0 = toml.clone();
                }
            }
            Step::UserRules(u) => {
                op.set_user_rules(pb::UserRulesRequest {
                    tenant: TENANT.into(),
                    rules: Some(user_rules_to_pb(u)),
                })
                .await?;
                rules = u.clone();
            }
        }
    }
    // Reports and heartbeats are handled in order per stream: wait until
    // the last ones are in.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = list_bans(&mut op, TENANT).await?;
        let hosts = op
            .list_hosts(pb::ListHostsRequest {
                tenant: TENANT.into(),
            })
            .await?
            .into_inner()
            .hosts;
        let addrs_in = (0..3).all(|r| {
            hosts.iter().any(|h| {
                h.name == format!("r{r}") && {
                    let mut a = reporter_addrs[r].clone();
                    a.sort();
                    h.addresses == a
                }
            })
        });
        let bans_in = expected_added
            .iter()
            .filter(|(_, &at)| at == 0 || at > now_secs() + 1)
            .all(|(a, _)| listed.contains_key(a) || expected_lifted.contains(a));
        if addrs_in && bans_in {
            break;
        }
        if Instant::now() > deadline {
            bail!("the hour's changes did not all arrive within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.hour_took = t_hour.elapsed();
    // Every expiring ban runs out, and housekeeping passes twice.
    while now_secs() <= max_expiry {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(cfg.housekeeping_every * 2 + Duration::from_millis(100)).await;

    // Where the tenant is now (a snapshot's Welcome carries its revision):
    // the stale agent, away since before the compacted part of the log.
    let mut stale = stale_c.sync(report.stale_from, &["100.64.9.1"]).await?;
    report.stale_snapshot = stale.welcome.snapshot;
    stale.drain(Duration::from_millis(100)).await?;
    report.back_at = stale.welcome_revision().max(stale.revision);
    drop(stale);
    if !report.stale_snapshot {
        // No snapshot: the tenant's revision from a fresh one.
        let mut s = stale_c.sync(0, &["100.64.9.1"]).await?;
        s.drain(Duration::from_millis(100)).await?;
        report.back_at = s.welcome_revision();
    }

    // Back.
    let t_back = Instant::now();
    let mut back = away_c.sync(report.left_at, &[away_addr]).await?;
    report.snapshot = back.welcome.snapshot;
    if !back.welcome.snapshot {
        back.bans = before.0.clone();
        back.peers = before.1.clone();
        back.policy = before.2.clone();
        back.user_rules = before.3.clone();
    }
    let expected = report.expected;
    let _ = back
        .wait_until(Duration::from_secs(60), |s| s.log.len() >= expected)
        .await;
    report.catch_up = t_back.elapsed();
    back.drain(Duration::from_millis(300)).await?;
    report.received = back.log.len();
    let now = now_secs();
    let mut seen_revs = HashSet::new();
    let mut prev = report.left_at;
    let mut got_added: BTreeMap<String, usize> = BTreeMap::new();
    let mut got_lifted: BTreeSet<String> = BTreeSet::new();
    let mut got_trust: BTreeSet<String> = BTreeSet::new();
    for m in &back.log {
        report.bytes += m.encoded_len();
        if !seen_revs.insert(m.revision) {
            report.duplicates += 1;
        } else if m.revision <= prev {
            report.out_of_order += 1;
        }
        if m.revision <= report.left_at || m.revision > report.back_at {
            report.out_of_range += 1;
        }
        prev = prev.max(m.revision);
        match &m.body {
            Some(Down::Bans(d)) => {
                for b in &d.added {
                    *got_added.entry(b.address.clone()).or_default() += 1;
                    if b.expires_at != 0 && b.expires_at <= now {
                        report.expired_received += 1;
                    }
                }
                got_lifted.extend(d.lifted.iter().cloned());
            }
            Some(Down::Trust(d)) => {
                got_trust.extend(d.added.iter().map(|p| format!("+{}", p.address)));
                got_trust.extend(d.removed.iter().map(|a| format!("-{a}")));
            }
            _ => {}
        }
    }
    for (a, n) in &got_added {
        if *n > 1 {
            report.unexpected.push(format!("{a} added {n} times"));
        }
        if !expected_added.contains_key(a) {
            report.unexpected.push(format!("ban {a}"));
        }
    }
    for a in expected_added.keys() {
        if !got_added.contains_key(a) {
            report.missing.push(format!("ban {a}"));
        }
    }
    for a in expected_lifted.symmetric_difference(&got_lifted) {
        if expected_lifted.contains(a) {
            report.missing.push(format!("lift {a}"));
        } else {
            report.unexpected.push(format!("lift {a}"));
        }
    }
    // Trust: every address change appears (an address dropped and added
    // again by the same host counts once per sign).
    for t in expected_trust.symmetric_difference(&got_trust) {
        if expected_trust.contains(t) {
            report.missing.push(format!("trust {t}"));
        } else {
            report.unexpected.push(format!("trust {t}"));
        }
    }

    // The mirror (expired bans are over, as for the agent) vs the API.
    let listed = list_bans(&mut op, TENANT).await?;
    let mirror: BTreeSet<&String> = back
        .bans
        .iter()
        .filter(|(_, b)| b.expires_at == 0 || b.expires_at > now)
        .map(|(a, _)| a)
        .collect();
    let api: BTreeSet<&String> = listed.keys().collect();
    report.bans_differ = mirror
        .symmetric_difference(&api)
        .map(|a| a.to_string())
        .collect();
    let plan: BTreeSet<&String> = live.iter().collect();
    report.plan_vs_api = plan.symmetric_difference(&api).count();
    let hosts = op
        .list_hosts(pb::ListHostsRequest {
            tenant: TENANT.into(),
        })
        .await?
        .into_inner()
        .hosts;
    let peers_api: BTreeMap<String, String> = hosts
        .iter()
        .filter(|h| !h.revoked && h.name != "away")
        .flat_map(|h| {
            let id = format!("{}/{}/{}", h.tenant, h.site, h.name);
            h.addresses.iter().map(move |a| (a.clone(), id.clone()))
        })
        .collect();
    report.peers_differ = peers_api
        .iter()
        .filter(|(a, h)| back.peers.get(*a) != Some(h))
        .map(|(a, h)| format!("{a} of {h} missing"))
        .chain(
            back.peers
                .iter()
                .filter(|(a, _)| !peers_api.contains_key(*a))
                .map(|(a, h)| format!("{a} of {h} extra")),
        )
        .collect();
    let doc = op
        .get_policy(pb::ScopeRef {
            tenant: TENANT.into(),
            site: "s0".into(),
        })
        .await?
        .into_inner();
    report.policy_same = back.policy.as_deref() == Some(doc.toml.as_str()) && doc.toml == policy_s0;
    let api_rules = op
        .get_user_rules(pb::ScopeRef {
            tenant: TENANT.into(),
            site: String::new(),
        })
        .await?
        .into_inner();
    report.user_rules_same =
        back.user_rules.as_ref() == Some(&api_rules) && api_rules == user_rules_to_pb(&rules);
    for r in reporters {
        let _ = r.stop().await;
    }
    Ok(report)
}
