//! Faults (issue 7): "`kill -9` of the controller during a burst of 10,000
//! bans loses none that were acknowledged; an agent offline for an hour
//! receives exactly what it missed." Both against the real
//! `palisade-controller` binary in a child process, with simulated agents
//! on real mutual-TLS Sync streams and sled on disk. The scenarios (and
//! what "acknowledged" means) are in `tests/faults/scenarios.rs`; smaller
//! versions run in `cargo test` (`tests/faults.rs`).
//!
//! * **kill -9**: 10,000 bans, half operator `AddBan` (32 in flight over 4
//!   connections), half `BanReport`s from 4 agents at 2 sites; SIGKILL once
//!   a random 4,000–6,000 are acknowledged; the store read straight after
//!   the crash; the same binary restarted on the same directory and port;
//!   Meanwhile 2 more agents reconnect every 5–30 ms, each time resuming
//!   from their revision. After the restart:
//!   `ListBans`, a freshly enrolled agent's snapshot, 200 new bans (their
//!   revisions must be new), and every agent resuming from the revision it
//!   had.
//! * **offline for an hour**: 3,600 changes of its tenant while one agent is
//!   away (bans reported by other hosts and by operators, some expiring
//!   within seconds, lifts, other hosts' address changes, policies for its
//!   site, the other site and the tenant, user rules), with housekeeping
//!   every 250 ms (expired bans swept at once, the revision log compacted to
//!   4,100 entries); then it comes back with its last revision.
//!
//! `cargo bench -p palisade-controller --bench faults`; `FAULTS_SEED` fixes
//! the random choices (printed). Without `--bench` it does nothing.

#[path = "../tests/faults/scenarios.rs"]
mod scenarios;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use scenarios::{Binary, BurstConfig, HourConfig, Target};

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(seed))
}

async fn bench(seed: u64) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut failed = vec![];

    // ---- part 1: kill -9 mid-burst.
    let dir = tempfile::tempdir()?;
    let burst = scenarios::burst_kill9(
        dir.path(),
        BurstConfig {
            bans: 10_000,
            agent_share: 0.5,
            reporters_per_site: 2,
            operator_concurrency: 32,
            kill_after_acks: (4_000, 6_000),
            post_restart_bans: 200,
            flappers: 2,
            seed,
        },
    )
    .await?;
    keep_logs(dir.path(), "burst");
    println!();
    println!(
        "faults bench, part 1: kill -9 of `palisade-controller run` mid-burst ({cores} cores)"
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    print!("{}", burst.table());
    failed.extend(burst.failures());

    // ---- part 2: an agent offline for an hour.
    let every = Duration::from_millis(250);
    let cfg = HourConfig {
        changes: 3_600,
        prehistory: 1_000,
        housekeeping_every: every,
        seed,
    };
    let dir = tempfile::tempdir()?;
    let keep = (cfg.changes + 500).to_string();
    let mut ctl = Binary::prepare(
        dir.path(),
        &[
            "--housekeeping-every",
            "250ms",
            "--ban-sweep-grace",
            "0s",
            "--revlog-keep",
            &keep,
        ],
    )?;
    ctl.process.start()?;
    let operator = ctl.ready(Duration::from_secs(30)).await?;
    let target = Target {
        url: ctl.process.url().to_string(),
        ca_pem: ctl.ca_pem.clone(),
        operator,
    };
    let mut hour = scenarios::offline_hour(target, cfg).await?;
    hour.swept = Some(ctl.swept_from_logs());
    ctl.process.kill()?;
    keep_logs(dir.path(), "hour");
    println!();
    println!(
        "faults bench, part 2: an agent offline for an hour (compressed; housekeeping every 250 ms, log kept to {keep} entries)"
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    print!("{}", hour.table());
    println!();
    failed.extend(hour.failures());
    if hour.swept != Some(hour.expired) {
        failed.push(format!(
            "{} bans expired during the hour, housekeeping swept {:?}",
            hour.expired, hour.swept
        ));
    }
    if failed.is_empty() {
        println!("all checks passed (seed {seed})");
        Ok(())
    } else {
        for f in &failed {
            println!("FAILED: {f}");
        }
        anyhow::bail!("{} checks failed (seed {seed})", failed.len())
    }
}

/// Copies the controller's logs to target/ for a look afterwards.
fn keep_logs(dir: &Path, part: &str) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults");
    if std::fs::create_dir_all(&out).is_ok() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    let _ = std::fs::copy(e.path(), out.join(format!("{part}-{name}")));
                }
            }
        }
        eprintln!("controller logs: {}", out.display());
    }
}
