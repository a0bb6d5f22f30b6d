//! Ruleset benchmark: render, plan and apply against a real kernel.
//!
//! Run as root with `cargo bench -p palisade-agent --bench ruleset`.
//!
//! SAFETY: the very first thing this program does is move itself into a fresh,
//! private network namespace (`unshare(CLONE_NEWNET)`), before any thread or child
//! exists. Every `nft` it runs is a child and inherits that namespace, so the
//! firewall of the machine running the bench is never touched; the namespace and
//! everything in it vanish when the process exits.
//!
//! Targets (issue): render + apply of a policy holding 100,000 banned addresses
//! in < 1 s; a 1,000-element delta to a live set in < 50 ms.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a one-pass smoke
//! test at the smallest size only, and skips when not root.

use anyhow::{bail, ensure, Context, Result};
use nix::sched::{unshare, CloneFlags};
use palisade_agent::engine::Agent;
use palisade_agent::ruleset::plan::{delete_table_batch, element_batch, plan, DynMode};
use palisade_agent::ruleset::{render, LiveTable, Nft};
use palisade_agent::state::StateDir;
use palisade_model::{parse_policy, DynSet, DynamicState, Policy, TimedAddr};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(3600);
const FRESH_TARGET_MS: f64 = 1000.0;
const DELTA_TARGET_MS: f64 = 50.0;
const DELTA: usize = 1_000;

/// A policy with a few networks and interfaces, as on a real PBX host.
const POLICY: &str = r#"
management = ["192.0.2.10", "2001:db8:1::/48"]

[zones.local]
networks = ["192.168.0.0/16", "fd12:3456::/32"]
interfaces = ["eth1"]

[zones.trusted]
networks = ["198.51.100.0/24"]

[zones.blocked]
networks = ["203.0.113.0/24"]
"#;

/// The same with one more network: a policy change that touches only the static half.
const POLICY_CHANGED: &str = r#"
management = ["192.0.2.10", "2001:db8:1::/48"]

[zones.local]
networks = ["192.168.0.0/16", "fd12:3456::/32", "172.16.0.0/12"]
interfaces = ["eth1"]

[zones.trusted]
networks = ["198.51.100.0/24"]

[zones.blocked]
networks = ["203.0.113.0/24"]
"#;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if let Err(e) = run(bench) {
        eprintln!("ruleset bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn is_root() -> Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    Ok(euid == "0")
}

fn netns_id() -> Result<std::path::PathBuf> {
    std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")
}

/// Moves the whole process into a new, empty network namespace, and proves it did.
fn isolate() -> Result<()> {
    let before = netns_id()?;
    unshare(CloneFlags::CLONE_NEWNET)
        .context("unshare(CLONE_NEWNET) failed; the bench needs root (CAP_SYS_ADMIN)")?;
    let after = netns_id()?;
    ensure!(
        before != after,
        "still in network namespace {before:?} after unshare; refusing to touch nftables"
    );
    let ruleset = output("nft", &["list", "ruleset"])?;
    ensure!(
        ruleset.trim().is_empty(),
        "the new network namespace is not empty; refusing to run:\n{ruleset}"
    );
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    if !lo.is_ok_and(|s| s.success()) {
        eprintln!("warning: could not bring lo up in the bench namespace (not needed by nft)");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let nft = output("nft", &["--version"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "nft ?".into());
    format!("nproc={cpus}  kernel={kernel}  {nft}")
}

// ---------------------------------------------------------------- data

/// The `i`-th banned address: even `i` from 10.0.0.0/8, odd from fd00::/16.
/// `space` separates address ranges that must not overlap (0 = base, 1 = delta).
fn addr(space: u32, i: usize) -> IpAddr {
    let n = u32::try_from(i / 2).expect("fits") + 1;
    if i & 1 == 0 {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (space << 20) | n))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            (0xfd00_u128 << 112) | (u128::from(space) << 64) | u128::from(n),
        ))
    }
}

fn bans(space: u32, count: usize) -> Vec<TimedAddr> {
    (0..count)
        .map(|i| TimedAddr {
            addr: addr(space, i),
            ttl: Some(TTL),
            expires: None,
            comment: (i % 1000 == 7).then(|| "sip scanner: 25 failed REGISTERs".to_string()),
        })
        .collect()
}

fn dynamic(count: usize) -> DynamicState {
    let mut state = DynamicState::default();
    state.sets.insert(DynSet::Ban, bans(0, count));
    state
}

// ---------------------------------------------------------------- timing

struct Row {
    label: String,
    runs: usize,
    median: f64,
    max: f64,
    /// Target in ms; rows without one print "-".
    target: Option<f64>,
}

impl Row {
    fn status(&self) -> &'static str {
        match self.target {
            None => "",
            Some(t) if self.max < t => "PASS",
            Some(t) if self.median < t => "PASS (median; max over)",
            Some(_) => "FAIL",
        }
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, label: impl Into<String>, samples: &[Duration], target: Option<f64>) {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let median = if ms.len() % 2 == 1 {
            ms[ms.len() / 2]
        } else {
            (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
        };
        let row = Row {
            label: label.into(),
            runs: ms.len(),
            median,
            max: *ms.last().expect("at least one run"),
            target,
        };
        eprintln!(
            "  {:<62} median {:>8} ms  max {:>8} ms",
            row.label,
            fmt_ms(row.median),
            fmt_ms(row.max)
        );
        self.rows.push(row);
    }

    fn print(&self, header: &str) {
        let width = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        println!();
        println!("{header}");
        println!(
            "{:<width$}  {:>4}  {:>10}  {:>10}  {:>9}  status",
            "benchmark", "runs", "median ms", "max ms", "target"
        );
        println!("{}", "-".repeat(width + 52));
        for r in &self.rows {
            let target = r
                .target
                .map(|t| format!("< {t:.0} ms"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<width$}  {:>4}  {:>10}  {:>10}  {:>9}  {}",
                r.label,
                r.runs,
                fmt_ms(r.median),
                fmt_ms(r.max),
                target,
                r.status()
            );
        }
    }
}

/// Milliseconds with one decimal; sub-0.1 ms values keep three so they are not 0.0.
fn fmt_ms(v: f64) -> String {
    if v < 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

/// Runs `f` `runs` times, with `setup` before each run outside the timed part.
fn measure<S, T>(
    runs: usize,
    mut setup: impl FnMut(usize) -> Result<S>,
    mut f: impl FnMut(S) -> Result<T>,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let input = setup(i)?;
        let start = Instant::now();
        let out = f(input)?;
        samples.push(start.elapsed());
        drop(out);
    }
    Ok(samples)
}

fn fmt_n(n: usize) -> String {
    let digits = n.to_string().into_bytes();
    let groups: Vec<&str> = digits
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).expect("ascii digits"))
        .collect();
    groups.join(",")
}

fn ban_count(live: &LiveTable) -> usize {
    live.element_count("ban_v4") + live.element_count("ban_v6")
}

// ---------------------------------------------------------------- the bench

struct Config {
    /// (bans, runs) for the whole-table measurements.
    sizes: Vec<(usize, usize)>,
    /// (bans, runs through `element_batch`, runs through the engine) for the deltas.
    deltas: Vec<(usize, usize, usize)>,
    breakdown: Option<(usize, usize)>,
}

fn run(bench: bool) -> Result<()> {
    if !is_root()? {
        if bench {
            bail!(
                "must run as root: it applies real nftables transactions \
                 (inside a private network namespace it creates first)"
            );
        }
        eprintln!("ruleset bench: not root, smoke test skipped");
        return Ok(());
    }
    // Before anything else: no thread or child may exist in the host namespace.
    isolate()?;

    let cfg = if bench {
        Config {
            sizes: vec![(100, 20), (10_000, 10), (100_000, 5)],
            deltas: vec![(100, 20, 20), (100_000, 20, 5)],
            breakdown: Some((100_000, 5)),
        }
    } else {
        Config {
            sizes: vec![(100, 1)],
            deltas: vec![(100, 1, 1)],
            breakdown: None,
        }
    };

    let header = format!("palisade ruleset bench  ({})", machine());
    eprintln!("{header}");
    let policy = parse_policy(POLICY, "bench.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let changed = parse_policy(POLICY_CHANGED, "bench.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let nft = Nft::default();
    let state = tempfile::tempdir().context("creating a state directory")?;
    let agent = Agent::new(Nft::default(), StateDir::open(state.path())?);
    let mut report = Report::default();
    let delta = bans(1, DELTA);

    for &(size, runs) in &cfg.sizes {
        let dynamic = dynamic(size);
        let n = fmt_n(size);

        // 1. Fresh table: render + plan + apply. The table is deleted between runs,
        //    untimed; after the last run it stays for the next measurements.
        let samples = measure(
            runs,
            |i| {
                if i > 0 {
                    nft.apply(&delete_table_batch())?;
                }
                Ok(())
            },
            |()| fresh_apply(&nft, &policy, &dynamic),
        )?;
        let target = (size == 100_000).then_some(FRESH_TARGET_MS);
        report.push(
            format!("fresh table: render+plan+apply, {n} bans"),
            &samples,
            target,
        );

        // Correctness, untimed: every ban is in the kernel.
        let live = nft.list()?.context("the table is missing after apply")?;
        ensure!(
            ban_count(&live) == size,
            "after applying {size} bans the kernel holds {} (ban_v4 {} + ban_v6 {})",
            ban_count(&live),
            live.element_count("ban_v4"),
            live.element_count("ban_v6")
        );
        eprintln!(
            "  verified: ban_v4 {} + ban_v6 {} = {} elements",
            live.element_count("ban_v4"),
            live.element_count("ban_v6"),
            fmt_n(ban_count(&live))
        );

        // 2. Already in force: list + plan (+ apply if needed; it must not be).
        let samples = measure(runs, |_| Ok(()), |()| in_force(&nft, &policy, &dynamic))?;
        report.push(
            format!("already in force: list+plan (no-op), {n} bans"),
            &samples,
            None,
        );

        // 2b. A policy change onto the live table: the static half is replaced in
        //     one transaction, the bans stay. Alternates between two policies and
        //     ends on the original one (an even number of runs).
        let samples = measure(
            2 * runs,
            |i| Ok(if i % 2 == 0 { &changed } else { &policy }),
            |p| policy_change(&nft, p, &dynamic),
        )?;
        report.push(
            format!("policy change on live table: list+plan+apply, {n} bans"),
            &samples,
            None,
        );

        // 2c. The same two paths as the daemon and the CLI run them: the engine
        //     reads a terse listing plus only the sets it compares.
        let samples = measure(
            runs,
            |_| Ok(()),
            |()| {
                let applied = agent.enforce(&policy)?;
                ensure!(
                    applied.summary.is_noop(),
                    "not a no-op: {:?}",
                    applied.summary
                );
                Ok(())
            },
        )?;
        report.push(
            format!("engine: Agent::enforce, already in force, {n} bans"),
            &samples,
            None,
        );
        let samples = measure(
            2 * runs,
            |i| Ok(if i % 2 == 0 { &changed } else { &policy }),
            |p| {
                let applied = agent.enforce(p)?;
                ensure!(
                    applied.summary.static_changed,
                    "no change: {:?}",
                    applied.summary
                );
                Ok(())
            },
        )?;
        report.push(
            format!("engine: Agent::enforce, policy change, {n} bans"),
            &samples,
            None,
        );
        ensure!(
            ban_count(&nft.list()?.context("table")?) == size,
            "the engine lost bans"
        );

        // 3. Deltas of 1,000 elements to the live ban set.
        if let Some(&(_, runs, engine_runs)) = cfg.deltas.iter().find(|(s, ..)| *s == size) {
            let mut add = Vec::new();
            let mut del = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                nft.apply(&element_batch(DynSet::Ban, &delta, false))?;
                add.push(start.elapsed());
                let start = Instant::now();
                nft.apply(&element_batch(DynSet::Ban, &delta, true))?;
                del.push(start.elapsed());
            }
            let d = fmt_n(DELTA);
            report.push(
                format!("delta: add {d} bans to a set of {n}"),
                &add,
                Some(DELTA_TARGET_MS),
            );
            report.push(
                format!("delta: delete {d} bans from a set of {n}"),
                &del,
                Some(DELTA_TARGET_MS),
            );

            // The same through the engine, as the daemon and the CLI do it.
            let mut add = Vec::new();
            let mut del = Vec::new();
            for _ in 0..engine_runs {
                let start = Instant::now();
                agent.add_elements(DynSet::Ban, &delta)?;
                add.push(start.elapsed());
                let start = Instant::now();
                agent.delete_elements(DynSet::Ban, &delta)?;
                del.push(start.elapsed());
            }
            report.push(
                format!("engine: Agent::add_elements {d} to a set of {n}"),
                &add,
                Some(DELTA_TARGET_MS),
            );
            report.push(
                format!("engine: Agent::delete_elements {d} from a set of {n}"),
                &del,
                Some(DELTA_TARGET_MS),
            );
            let live = nft.list()?.context("the table is missing")?;
            ensure!(
                ban_count(&live) == size,
                "after the deltas the kernel holds {} bans, expected {size}",
                ban_count(&live)
            );
        }

        // 4. Where the time goes, at the largest size (the table is still live).
        if let Some((bsize, bruns)) = cfg.breakdown.filter(|(s, _)| *s == size) {
            breakdown(&nft, &policy, &dynamic, bsize, bruns, &mut report)?;
        }

        nft.apply(&delete_table_batch())?;
    }

    report.print(&header);
    let failed: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.status() == "FAIL")
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() {
        println!("\nmissed targets: {}", failed.join("; "));
    }
    Ok(())
}

fn fresh_apply(nft: &Nft, policy: &Policy, dynamic: &DynamicState) -> Result<()> {
    let desired = render(policy);
    let planned = plan(&desired, None, dynamic, DynMode::Merge);
    ensure!(
        planned.summary.create_table,
        "plan did not create the table"
    );
    nft.apply(&planned.batch)?;
    Ok(())
}

fn in_force(nft: &Nft, policy: &Policy, dynamic: &DynamicState) -> Result<()> {
    let desired = render(policy);
    let live = nft.list()?.context("the table is missing")?;
    let planned = plan(&desired, Some(&live), dynamic, DynMode::Merge);
    if !planned.summary.is_noop() {
        nft.apply(&planned.batch)?;
    }
    ensure!(
        planned.summary.is_noop(),
        "re-applying the same policy was not a no-op: {:?}",
        planned.summary
    );
    Ok(())
}

fn policy_change(nft: &Nft, policy: &Policy, dynamic: &DynamicState) -> Result<()> {
    let desired = render(policy);
    let live = nft.list()?.context("the table is missing")?;
    let planned = plan(&desired, Some(&live), dynamic, DynMode::Merge);
    let s = &planned.summary;
    ensure!(
        s.static_changed && !s.create_table && !s.rebuild_table && s.elements_added == 0,
        "a policy change should replace the static half only: {s:?}"
    );
    nft.apply(&planned.batch)?;
    Ok(())
}

fn breakdown(
    nft: &Nft,
    policy: &Policy,
    dynamic: &DynamicState,
    size: usize,
    runs: usize,
    report: &mut Report,
) -> Result<()> {
    let n = fmt_n(size);
    let samples = measure(
        20,
        |_| Ok(()),
        |()| Ok(std::hint::black_box(render(policy))),
    )?;
    report.push(
        "  render only (pure; bans are not rendered)",
        &samples,
        None,
    );

    let desired = render(policy);
    let samples = measure(
        runs,
        |_| Ok(()),
        |()| Ok(plan(&desired, None, dynamic, DynMode::Merge)),
    )?;
    report.push(
        format!("  plan only, fresh table, {n} bans"),
        &samples,
        None,
    );

    let fresh = plan(&desired, None, dynamic, DynMode::Merge);
    let mut json_len = 0;
    let samples = measure(
        runs,
        |_| Ok(()),
        |()| {
            let json = serde_json::to_vec(&fresh.batch)?;
            json_len = json.len();
            Ok(json)
        },
    )?;
    report.push(
        format!(
            "  serialize fresh batch to JSON ({:.1} MB)",
            json_len as f64 / 1e6
        ),
        &samples,
        None,
    );

    let mut raw = String::new();
    let samples = measure(
        runs,
        |_| Ok(()),
        |()| {
            raw = nft.list_raw()?.context("the table is missing")?;
            Ok(())
        },
    )?;
    report.push(
        format!(
            "  nft -j list table ({:.1} MB of JSON)",
            raw.len() as f64 / 1e6
        ),
        &samples,
        None,
    );

    let samples = measure(runs, |_| Ok(()), |()| Ok(LiveTable::parse(&raw)?))?;
    report.push(format!("  LiveTable::parse, {n} bans"), &samples, None);

    let live = LiveTable::parse(&raw)?;
    let samples = measure(
        runs,
        |_| Ok(()),
        |()| Ok(plan(&desired, Some(&live), dynamic, DynMode::Merge)),
    )?;
    report.push(
        format!("  plan only, against the live table, {n} bans"),
        &samples,
        None,
    );

    // What `Agent::enforce` hands to `plan`: no bans, only first-start sessions.
    let none = DynamicState::default();
    let samples = measure(
        runs,
        |_| Ok(()),
        |()| Ok(plan(&desired, Some(&live), &none, DynMode::Merge)),
    )?;
    report.push(
        "  plan only, against the live table, no bans wanted (enforce)",
        &samples,
        None,
    );
    Ok(())
}
