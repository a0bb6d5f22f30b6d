//! Faults (issue 7), small enough for `cargo test`: `kill -9` of the real
//! controller binary during a burst of 2,000 bans loses none that were
//! acknowledged and reuses no revision; an agent away for a (compressed)
//! hour gets exactly what it missed. The scenarios are in
//! `faults/scenarios.rs`; `benches/faults.rs` runs them at full size.

#[path = "faults/scenarios.rs"]
mod scenarios;

use std::time::Duration;

use palisade_controller::sandbox::Sandbox;
use palisade_controller::store::now_secs;
use scenarios::{BurstConfig, HourConfig, Target};

fn seed() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_burst_loses_no_acknowledged_ban_and_reuses_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BurstConfig {
        bans: 2_000,
        agent_share: 0.5,
        reporters_per_site: 1,
        operator_concurrency: 16,
        kill_after_acks: (600, 1_000),
        post_restart_bans: 30,
        flappers: 2,
        seed: seed(),
    };
    let r = scenarios::burst_kill9(dir.path(), cfg).await.unwrap();
    eprintln!("{}", r.table());
    let failures = r.failures();
    assert!(failures.is_empty(), "{failures:#?}\n{}", r.table());
    // The numbers mean something: the kill came mid-burst.
    let (acked, fired) = (r.acked.0 + r.acked.1, r.fired.0 + r.fired.1);
    assert!(
        (600..2_000).contains(&acked) && acked < fired,
        "{acked} acked of {fired}"
    );
    assert_eq!(r.present, acked);
    assert!(r.fresh_bans >= acked);
    assert!(r.post_revisions.0 > r.max_seen, "{:?}", r.post_revisions);
    assert_eq!(r.resumed.len(), 4 + 2);
    assert!(r.flaps > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_away_for_an_hour_gets_exactly_what_it_missed() {
    let every = Duration::from_millis(200);
    let cfg = HourConfig {
        changes: 400,
        prehistory: 300,
        housekeeping_every: every,
        seed: seed(),
    };
    let keep = cfg.changes as u64 + 100;
    let sb = Sandbox::start_with(|o| {
        o.housekeeping_every = every;
        o.ban_sweep_grace = Duration::ZERO;
        o.revlog_keep = keep;
    })
    .await
    .unwrap();
    let target = Target {
        url: sb.url().to_string(),
        ca_pem: sb.ca_pem(),
        operator: sb.operator(),
    };
    let mut r = scenarios::offline_hour(target, cfg.clone()).await.unwrap();
    // Housekeeping ran: no expired ban is left in the store, and the log
    // was compacted (yet still reaches back to where the agent left).
    let store = sb.store();
    let now = now_secs();
    let left = store
        .bans("hour")
        .unwrap()
        .iter()
        .filter(|b| b.ban.expires_at != 0 && b.ban.expires_at <= now)
        .count();
    r.swept = Some(r.expired - left);
    let t = store.tenant("hour").unwrap().unwrap();
    eprintln!("{}\nlog floor {}", r.table(), t.log_floor);
    let failures = r.failures();
    assert!(failures.is_empty(), "{failures:#?}\n{}", r.table());
    assert_eq!(left, 0, "expired bans not swept");
    assert!(
        t.log_floor > r.stale_from && t.log_floor < r.left_at,
        "floor {} not in ({}, {})",
        t.log_floor,
        r.stale_from,
        r.left_at
    );
    assert!(r.expected > cfg.changes * 9 / 10, "{}", r.expected);
    assert!(r.expired_received > 0);
}

/// Copies a directory tree (what a crash at this instant would leave on
/// disk: sled's files as written so far).
fn crash_image(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            crash_image(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// An agent resuming while other requests are between their store
/// transaction and its flush must not be sent a revision that a crash at
/// that instant would take back (a later change would reuse it, and the
/// agent, resuming from it, would skip that change).
///
/// Changes are committed without a flush (as a burst of requests mid-commit
/// leaves them) while the agent resumes; the moment it has its deltas, the
/// store directory is copied and opened as a crash would leave it: it must
/// hold every revision the agent got. (It holds today because the session's
/// Hello is flushed right before the log is read and sled writes all but the
/// newest commit out at once; see the report in issue 7 for the remaining
/// window, which only an fsync-level crash could show.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_agent_never_gets_a_revision_a_crash_could_take_back() {
    use palisade_controller::store::{AuditRecord, BanInfo, SledStore, Store};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    for round in 0..3 {
        let sb = Sandbox::start().await.unwrap();
        let a = sb.enroll("t1", "s0", "pbx1").await.unwrap();
        let b = sb.enroll("t1", "s1", "pbx2").await.unwrap();
        let _sa = a.sync(0, &["198.51.100.1"]).await.unwrap();
        let mut sbb = b.sync(0, &["198.51.100.2"]).await.unwrap();
        sbb.drain(Duration::from_millis(200)).await.unwrap();
        let from = sbb.revision;
        drop(sbb);
        tokio::time::sleep(Duration::from_millis(100)).await;

        // Other requests, mid-commit: stored, never flushed by them.
        let store = sb.store();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    k += 1;
                    let ban = BanInfo {
                        address: format!("203.0.{}.{}", k / 250, k % 250 + 1),
                        reason: "mid-commit".into(),
                        origin: "operator:test".into(),
                        banned_at: now_secs(),
                        ..BanInfo::default()
                    };
                    let audit = AuditRecord::new("t1", "operator:test", "ban.add", "");
                    store.add_ban("t1", &ban, audit).unwrap();
                    std::thread::sleep(Duration::from_micros(200));
                }
                k
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut back = b.sync(from, &["198.51.100.2"]).await.unwrap();
        assert!(!back.welcome.snapshot);
        // What it has got within a few milliseconds of the Welcome.
        back.drain(Duration::from_millis(5)).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let got = back.revision;
        let image = tempfile::tempdir().unwrap();
        crash_image(&sb.data_dir().join("store"), image.path());
        let written = writer.join().unwrap();
        let crashed = SledStore::open(image.path()).unwrap();
        let durable = crashed.tenant("t1").unwrap().unwrap().revision;
        eprintln!(
            "round {round}: resumed from {from}, got up to {got} ({} messages), {written} written, {durable} on disk",
            back.log.len()
        );
        assert!(
            got <= durable,
            "the agent got revision {got}; a crash now would leave {durable}"
        );
    }
}
