//! The controller under a fleet: 1,000 simulated agents, each a real Sync
//! stream over mutual TLS with its own enrolled certificate, against the real
//! `palisade-controller` binary in a child process (so its RSS is its own).
//!
//! * **fan-out**: `BANS` ban reports at random agents, `GAP` apart; for each,
//!   the time from the reporter handing it to its stream to the moment every
//!   other agent of the same tenant has it (p50/p99/max over all
//!   reporter → receiver pairs), deliveries missing and deliveries to another
//!   tenant (both must be 0).
//! * **memory**: the controller's VmRSS with every agent connected (after the
//!   trust exchange and after the fan-out) and its VmHWM.
//! * **restart**: SIGKILL, the same binary again on the same data directory
//!   and port; every agent reconnects with its last revision (equal-jitter
//!   backoff from 500 ms, capped at 30 s, like `agent/src/controller/backoff.rs`);
//!   the time until all have been welcomed again, and every agent's bans
//!   after the resync against what its tenant reported (minus its own). A few
//!   more bans after the restart check that the new streams fan out too.
//!
//! `cargo bench -p palisade-controller --bench fanout`. Targets (issue 7):
//! p99 ≤ 1 s (aim ≤ 250 ms), RSS ≤ 512 MiB, all resynced within 30 s, no ban
//! lost. `FANOUT_HOSTS_PER_SITE` (default 50) shrinks the fleet for a quick
//! look. Without `--bench` it does nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use palisade_controller::client::{self, OperatorAuth};
use palisade_controller::sandbox::{free_port, AgentCreds, ControllerProcess};
use palisade_proto::v1 as pb;
use pb::controller_message::Body as Down;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, Semaphore};

const TENANTS: usize = 10;
const SITES: usize = 2;
const BANS: usize = 200;
const POST_RESTART_BANS: usize = 20;
const GAP: Duration = Duration::from_millis(20);
/// Enrolments and first connections in flight at once.
const SETUP_CONCURRENCY: usize = 32;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

const P99_TARGET: Duration = Duration::from_secs(1);
const P99_AIM: Duration = Duration::from_millis(250);
const RSS_TARGET_KIB: u64 = 512 * 1024;
const RESYNC_TARGET: Duration = Duration::from_secs(30);

/// One simulated agent as the coordinator sees it.
struct Agent {
    tenant: usize,
    creds: AgentCreds,
    address: String,
    /// Welcomes received (every connection).
    welcomes: AtomicU32,
    state: Mutex<AgentState>,
}

#[derive(Default)]
struct AgentState {
    /// When each shared ban first arrived (over every connection).
    first_seen: HashMap<String, Instant>,
    /// The shared bans it holds now (after snapshots and deltas).
    bans: BTreeSet<String>,
    peers: usize,
    last_welcome: Option<Instant>,
    snapshots: u32,
    resumes: u32,
    disconnects: u32,
    connect_errors: u32,
    last_error: Option<String>,
}

struct Shared {
    agents: Vec<Agent>,
    /// Ban address → (reporter, when it was handed to the reporter's stream).
    sent: Mutex<HashMap<String, (usize, Instant)>>,
    /// First arrivals of bans, all agents together.
    arrivals: AtomicUsize,
}

/// Equal-jitter exponential backoff, as the agent's sync task does it.
struct Backoff {
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(BACKOFF_CAP);
        self.attempt += 1;
        ceiling / 2 + ceiling.mul_f64(self.rng.random::<f64>() / 2.0)
    }
}

/// One agent's life: connect (resuming from its last revision), apply what
/// arrives, report the bans it is told to, reconnect with backoff when the
/// stream ends. Returns when its command channel closes.
async fn run_agent(
    shared: Arc<Shared>,
    i: usize,
    mut cmds: mpsc::Receiver<String>,
    gate: Arc<Semaphore>,
) {
    let me = &shared.agents[i];
    let mut revision = 0;
    let mut bans = BTreeMap::new();
    let mut peers = BTreeMap::new();
    let mut backoff = Backoff {
        attempt: 0,
        rng: StdRng::seed_from_u64(i as u64),
    };
    let mut first = Some(gate);
    loop {
        let opened = match first.take() {
            Some(gate) => {
                let _permit = gate.acquire().await.expect("gate");
                me.creds.sync(revision, &[me.address.as_str()]).await
            }
            None => me.creds.sync(revision, &[me.address.as_str()]).await,
        };
        let mut s = match opened {
            Ok(s) => s,
            Err(st) => {
                {
                    let mut state = me.state.lock().unwrap();
                    state.connect_errors += 1;
                    state.last_error = Some(format!("{:?}: {}", st.code(), st.message()));
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.attempt = 0;
        if !s.welcome.snapshot {
            s.bans = std::mem::take(&mut bans);
            s.peers = std::mem::take(&mut peers);
        }
        {
            let mut state = me.state.lock().unwrap();
            state.last_welcome = Some(Instant::now());
            if s.welcome.snapshot {
                state.snapshots += 1;
                state.bans.clear();
            } else {
                state.resumes += 1;
            }
        }
        me.welcomes.fetch_add(1, Ordering::SeqCst);
        let ended = loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(address) => {
                        let t0 = Instant::now();
                        shared.sent.lock().unwrap().insert(address.clone(), (i, t0));
                        if let Err(e) = s.report_ban(&address, "bench").await {
                            break format!("reporting: {e}");
                        }
                    }
                    None => return,
                },
                m = s.next(Duration::from_secs(3600)) => match m {
                    Ok(Some(m)) => {
                        let now = Instant::now();
                        match &m.body {
                            Some(Down::Bans(d)) => {
                                let mut state = me.state.lock().unwrap();
                                for b in &d.added {
                                    if !state.first_seen.contains_key(&b.address) {
                                        state.first_seen.insert(b.address.clone(), now);
                                        shared.arrivals.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                state.bans = s.bans.keys().cloned().collect();
                            }
                            Some(Down::Trust(_)) => {
                                me.state.lock().unwrap().peers = s.peers.len();
                            }
                            _ => {}
                        }
                        s.log.clear();
                    }
                    Ok(None) => {}
                    Err(st) => break format!("{:?}: {}", st.code(), st.message()),
                },
            }
        };
        revision = s.revision;
        bans = std::mem::take(&mut s.bans);
        peers = std::mem::take(&mut s.peers);
        drop(s);
        {
            let mut state = me.state.lock().unwrap();
            state.disconnects += 1;
            state.last_error = Some(ended);
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

// ------------------------------------------------------------------ limits

fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

// ------------------------------------------------------------------ helpers

fn ban_address(k: usize) -> String {
    format!("203.0.{}.{}", k / 250, k % 250 + 1)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Fires `count` ban reports (addresses from `first`) at random agents, `GAP`
/// apart, and waits until every other agent of the reporter's tenant has each
/// (or `within` has passed). Returns the bans by address → reporter.
async fn fire_bans(
    shared: &Shared,
    cmds: &[mpsc::Sender<String>],
    rng: &mut StdRng,
    first: usize,
    count: usize,
    per_tenant: usize,
    within: Duration,
) -> Result<Vec<(String, usize)>> {
    let expected = shared.arrivals.load(Ordering::SeqCst) + count * (per_tenant - 1);
    let mut fired = Vec::new();
    let mut tick = tokio::time::interval(GAP);
    for k in first..first + count {
        tick.tick().await;
        let who = rng.random_range(0..shared.agents.len());
        let address = ban_address(k);
        cmds[who].send(address.clone()).await?;
        fired.push((address, who));
    }
    wait_for(within, || {
        shared.arrivals.load(Ordering::SeqCst) >= expected
    })
    .await;
    // Anything late or misdirected has a moment to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(fired)
}

struct FanoutResult {
    latencies: Vec<Duration>,
    missing: usize,
    cross_tenant: usize,
    echoed: usize,
}

fn fanout_result(shared: &Shared, fired: &[(String, usize)]) -> FanoutResult {
    let sent = shared.sent.lock().unwrap();
    let tenant_of: HashMap<&str, usize> = fired
        .iter()
        .map(|(a, who)| (a.as_str(), shared.agents[*who].tenant))
        .collect();
    let mut r = FanoutResult {
        latencies: vec![],
        missing: 0,
        cross_tenant: 0,
        echoed: 0,
    };
    for (address, who) in fired {
        let t0 = sent.get(address).map(|(_, t)| *t);
        let tenant = shared.agents[*who].tenant;
        for (j, a) in shared.agents.iter().enumerate() {
            let state = a.state.lock().unwrap();
            let got = state.first_seen.get(address);
            if j == *who {
                r.echoed += usize::from(got.is_some());
            } else if a.tenant == tenant {
                match (t0, got) {
                    (Some(t0), Some(t)) => r.latencies.push(t.saturating_duration_since(t0)),
                    _ => r.missing += 1,
                }
            }
        }
    }
    for a in &shared.agents {
        let state = a.state.lock().unwrap();
        r.cross_tenant += state
            .first_seen
            .keys()
            .filter(|addr| tenant_of.get(addr.as_str()).is_some_and(|t| *t != a.tenant))
            .count();
    }
    r.latencies.sort();
    r
}

/// Agents whose bans differ from what their tenant reported (minus their own).
fn ban_mismatch(shared: &Shared, fired: &[(String, usize)]) -> (usize, usize) {
    let (mut agents_wrong, mut bans_wrong) = (0, 0);
    for (j, a) in shared.agents.iter().enumerate() {
        let expected: BTreeSet<String> = fired
            .iter()
            .filter(|(_, who)| *who != j && shared.agents[*who].tenant == a.tenant)
            .map(|(addr, _)| addr.clone())
            .collect();
        let state = a.state.lock().unwrap();
        let diff = expected.symmetric_difference(&state.bans).count();
        if diff > 0 {
            agents_wrong += 1;
            bans_wrong += diff;
        }
    }
    (agents_wrong, bans_wrong)
}

// ------------------------------------------------------------------ main

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let nofile = raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(nofile))
}

async fn bench(nofile: u64) -> Result<()> {
    let hosts_per_site: usize = std::env::var("FANOUT_HOSTS_PER_SITE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let per_tenant = SITES * hosts_per_site;
    let n = TENANTS * per_tenant;
    if nofile < (n as u64) * 3 + 256 {
        bail!("RLIMIT_NOFILE {nofile} is too low for {n} agents");
    }
    let dir = tempfile::tempdir()?;
    let mut ctl = ControllerProcess::new(
        env!("CARGO_BIN_EXE_palisade-controller"),
        dir.path().join("controller"),
        free_port()?,
    );
    let url = ctl.url().to_string();

    // The operator's bundle first (it creates the CA the controller then uses).
    let bundle = ctl.operator_cert("bench", &dir.path().join("bench-operator.pem"))?;
    let ca_pem = ctl.ca_pem()?;

    ctl.start()?;
    ctl.wait_listening(Duration::from_secs(30)).await?;
    let operator = client::operator(&url, OperatorAuth::Bundle(bundle)).await?;
    eprintln!(
        "controller pid {} on {url}; {n} agents: {TENANTS} tenants × {SITES} sites × {hosts_per_site} hosts",
        ctl.pid().unwrap_or_default()
    );

    // ---- enrolment: a token and an Enroll per host.
    let t = Instant::now();
    let mut names = Vec::new();
    for tn in 0..TENANTS {
        for sn in 0..SITES {
            for hn in 0..hosts_per_site {
                names.push((tn, sn, hn));
            }
        }
    }
    let enrolled: Vec<Result<Agent>> = stream::iter(names)
        .map(|(tn, sn, hn)| {
            let mut operator = operator.clone();
            let (url, ca_pem) = (url.clone(), ca_pem.clone());
            async move {
                let (tenant, site, host) = (format!("t{tn}"), format!("s{sn}"), format!("pbx{hn}"));
                let token = operator
                    .create_token(pb::CreateTokenRequest {
                        tenant: tenant.clone(),
                        site: site.clone(),
                        valid_secs: 3600,
                    })
                    .await?
                    .into_inner()
                    .token;
                let creds = AgentCreds::enroll(&url, &ca_pem, &token, &host)
                    .await
                    .with_context(|| format!("enrolling {tenant}/{site}/{host}"))?;
                Ok(Agent {
                    tenant: tn,
                    creds,
                    address: format!("198.18.{}.{}", tn * SITES + sn, hn + 1),
                    welcomes: AtomicU32::new(0),
                    state: Mutex::new(AgentState::default()),
                })
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let agents = enrolled.into_iter().collect::<Result<Vec<_>>>()?;
    let enrol_time = t.elapsed();
    eprintln!("enrolled {n} hosts in {enrol_time:.1?}");

    // ---- every agent connects; the tenant's addresses are exchanged.
    let shared = Arc::new(Shared {
        agents,
        sent: Mutex::new(HashMap::new()),
        arrivals: AtomicUsize::new(0),
    });
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let t = Instant::now();
    let mut cmds = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (tx, rx) = mpsc::channel(16);
        cmds.push(tx);
        tasks.push(tokio::spawn(run_agent(shared.clone(), i, rx, gate.clone())));
    }
    let all_welcomed = |shared: &Shared, at_least: u32| {
        shared
            .agents
            .iter()
            .all(|a| a.welcomes.load(Ordering::SeqCst) >= at_least)
    };
    if !wait_for(Duration::from_secs(300), || all_welcomed(&shared, 1)).await {
        bail!("not every agent connected; log {}", ctl.log_tail());
    }
    let connect_time = t.elapsed();
    let peers_done = wait_for(Duration::from_secs(60), || {
        shared
            .agents
            .iter()
            .all(|a| a.state.lock().unwrap().peers == per_tenant - 1)
    })
    .await;
    let settle_time = t.elapsed();
    eprintln!(
        "connected in {connect_time:.1?}; every peer trusted everywhere: {peers_done} after {settle_time:.1?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = ctl.rss_kib()?;
    let cpu_setup = ctl.cpu()?;

    // ---- fan-out.
    let mut rng = StdRng::seed_from_u64(7);
    let fired = fire_bans(
        &shared,
        &cmds,
        &mut rng,
        0,
        BANS,
        per_tenant,
        Duration::from_secs(15),
    )
    .await?;
    let fan = fanout_result(&shared, &fired);
    let rss_after_fanout = ctl.rss_kib()?;
    let cpu_fanout = ctl.cpu()? - cpu_setup;
    let hwm_before_restart = ctl.peak_rss_kib()?;
    let conn_errors_before: u32 = shared
        .agents
        .iter()
        .map(|a| a.state.lock().unwrap().connect_errors)
        .sum();
    eprintln!(
        "fan-out: {} deliveries, p50 {}, p99 {}, max {}, missing {}, cross-tenant {}",
        fan.latencies.len(),
        ms(pct(&fan.latencies, 0.5)),
        ms(pct(&fan.latencies, 0.99)),
        ms(fan.latencies.last().copied().unwrap_or_default()),
        fan.missing,
        fan.cross_tenant
    );

    // ---- restart: SIGKILL, then the same binary on the same data and port.
    let welcomes_before: Vec<u32> = shared
        .agents
        .iter()
        .map(|a| a.welcomes.load(Ordering::SeqCst))
        .collect();
    let t_kill = Instant::now();
    ctl.kill()?;
    ctl.start()?;
    let t_spawn = Instant::now();
    ctl.wait_listening(Duration::from_secs(30)).await?;
    let listening_after = t_spawn.elapsed();
    let resynced = wait_for(Duration::from_secs(120), || {
        shared
            .agents
            .iter()
            .zip(&welcomes_before)
            .all(|(a, b)| a.welcomes.load(Ordering::SeqCst) > *b)
    })
    .await;
    let last_welcome = shared
        .agents
        .iter()
        .filter_map(|a| a.state.lock().unwrap().last_welcome)
        .max()
        .unwrap_or(t_kill);
    let resync_time = last_welcome.saturating_duration_since(t_kill);
    let mut back_after: Vec<Duration> = shared
        .agents
        .iter()
        .filter_map(|a| a.state.lock().unwrap().last_welcome)
        .map(|t| t.saturating_duration_since(t_kill))
        .collect();
    back_after.sort();
    let not_back = shared
        .agents
        .iter()
        .zip(&welcomes_before)
        .filter(|(a, b)| a.welcomes.load(Ordering::SeqCst) <= **b)
        .count();
    // Deltas after the Welcome (none are expected: nothing changed while down).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (lost_agents, lost_bans) = ban_mismatch(&shared, &fired);
    let (snapshots, resumes, reconnect_errors) =
        shared.agents.iter().fold((0, 0, 0), |(s, r, e), a| {
            let st = a.state.lock().unwrap();
            (s + st.snapshots, r + st.resumes, e + st.connect_errors)
        });
    let reconnect_errors = reconnect_errors - conn_errors_before;
    // Every agent's first connection was a snapshot: count those since.
    let snapshots = snapshots.saturating_sub(n as u32);
    let rss_after_restart = ctl.rss_kib()?;
    let cpu_resync = ctl.cpu()?;
    eprintln!(
        "restart: listening {listening_after:.1?} after the spawn; all welcomed: {resynced}, {resync_time:.2?} after the SIGKILL ({not_back} not back); {resumes} resumes, {snapshots} snapshots since the restart, {reconnect_errors} failed attempts"
    );

    // ---- the new streams fan out too.
    let post = fire_bans(
        &shared,
        &cmds,
        &mut rng,
        BANS,
        POST_RESTART_BANS,
        per_tenant,
        Duration::from_secs(15),
    )
    .await?;
    let post_fan = fanout_result(&shared, &post);
    let all_fired: Vec<(String, usize)> = fired.iter().chain(&post).cloned().collect();
    let (final_lost_agents, final_lost_bans) = ban_mismatch(&shared, &all_fired);
    let hwm = ctl.peak_rss_kib()?;

    // ---- the table.
    let p50 = pct(&fan.latencies, 0.5);
    let p99 = pct(&fan.latencies, 0.99);
    let max = fan.latencies.last().copied().unwrap_or_default();
    let pairs = BANS * (per_tenant - 1);
    println!();
    println!(
        "fan-out bench: {n} agents ({TENANTS} tenants × {SITES} sites × {hosts_per_site} hosts), each its own mutual-TLS Sync stream; controller = `palisade-controller run` (pid {}), {} cores",
        ctl.pid().unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("enrolment {enrol_time:.1?}; first connection of all {connect_time:.1?} (trust exchange settled after {settle_time:.1?})");
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| ban fan-out p50 ({BANS} reports {} ms apart, {} reporter→receiver pairs) | {} | — |",
        GAP.as_millis(),
        fan.latencies.len(),
        ms(p50)
    );
    println!(
        "| ban fan-out p99 | {} | ≤ 1 s {} (aim ≤ 250 ms {}) |",
        ms(p99),
        mark(p99 <= P99_TARGET),
        mark(p99 <= P99_AIM)
    );
    println!("| ban fan-out max | {} | — |", ms(max));
    println!(
        "| deliveries missing (of {pairs}) | {} | 0 {} |",
        fan.missing,
        mark(fan.missing == 0)
    );
    println!(
        "| cross-tenant deliveries | {} | 0 {} |",
        fan.cross_tenant,
        mark(fan.cross_tenant == 0)
    );
    println!(
        "| bans echoed to their reporter | {} | 0 {} |",
        fan.echoed,
        mark(fan.echoed == 0)
    );
    println!(
        "| controller RSS, {n} connected (before fan-out) | {} | ≤ 512 MiB {} |",
        mib(rss_connected),
        mark(rss_connected <= RSS_TARGET_KIB)
    );
    println!(
        "| controller RSS, {n} connected (after fan-out) | {} | ≤ 512 MiB {} |",
        mib(rss_after_fanout),
        mark(rss_after_fanout <= RSS_TARGET_KIB)
    );
    println!(
        "| controller peak RSS (VmHWM), first run | {} | ≤ 512 MiB {} |",
        mib(hwm_before_restart),
        mark(hwm_before_restart <= RSS_TARGET_KIB)
    );
    println!(
        "| restart: SIGKILL → all {n} welcomed again (median) | {} ({}) | ≤ 30 s {} |",
        format_args!("{:.2} s", resync_time.as_secs_f64()),
        format_args!("{:.2} s", pct(&back_after, 0.5).as_secs_f64()),
        mark(resynced && resync_time <= RESYNC_TARGET)
    );
    println!(
        "| restart: new process listening after spawn | {} | — |",
        ms(listening_after)
    );
    println!(
        "| restart: resumed from last revision / snapshots / failed attempts | {} / {} / {} | — |",
        resumes, snapshots, reconnect_errors
    );
    println!(
        "| agents whose bans differ after the resync (bans off) | {lost_agents} ({lost_bans}) | 0 {} |",
        mark(lost_agents == 0 && resynced)
    );
    println!(
        "| after restart: {POST_RESTART_BANS} more bans, p99 / missing / cross-tenant | {} / {} / {} | ≤ 1 s, 0, 0 {} |",
        ms(pct(&post_fan.latencies, 0.99)),
        post_fan.missing,
        post_fan.cross_tenant,
        mark(
            pct(&post_fan.latencies, 0.99) <= P99_TARGET
                && post_fan.missing == 0
                && post_fan.cross_tenant == 0
        )
    );
    println!(
        "| agents whose bans differ at the end (bans off) | {final_lost_agents} ({final_lost_bans}) | 0 {} |",
        mark(final_lost_agents == 0)
    );
    println!(
        "| controller RSS after the restart, {n} connected (peak) | {} ({}) | ≤ 512 MiB {} |",
        mib(rss_after_restart),
        mib(hwm),
        mark(hwm <= RSS_TARGET_KIB)
    );
    println!(
        "| controller CPU: enrolment + first connections / fan-out / restart + resync | {:.2} s / {:.2} s / {:.2} s | — |",
        cpu_setup.as_secs_f64(),
        cpu_fanout.as_secs_f64(),
        cpu_resync.as_secs_f64()
    );
    println!();

    if !resynced {
        for (i, a) in shared.agents.iter().enumerate() {
            if a.welcomes.load(Ordering::SeqCst) <= welcomes_before[i] {
                let st = a.state.lock().unwrap();
                eprintln!("not back: {} ({:?})", a.creds.id, st.last_error);
            }
        }
    }
    drop(cmds);
    for t in tasks {
        t.abort();
    }
    ctl.kill()?;
    keep_logs(dir.path(), ctl.logs());
    Ok(())
}

/// Copies the controller's logs to target/ for a look afterwards.
fn keep_logs(dir: &Path, logs: &[PathBuf]) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fanout");
    if std::fs::create_dir_all(&out).is_ok() {
        for l in logs {
            if let Ok(rel) = l.strip_prefix(dir) {
                let _ = std::fs::copy(l, out.join(rel));
            }
        }
        eprintln!("controller logs: {}", out.display());
    }
}
