//! Discovery benchmark: reading a FreePBX-shaped Asterisk tree into facts, and
//! comparing two discoveries the way the agent decides whether to re-enforce.
//!
//! Run with `cargo bench -p palisade-agent --bench discover`.
//!
//! Target (issue): parse + build facts for 5,000 extensions (an endpoint, an
//! AOR and an auth section each, ~15,000 sections) in < 100 ms. The "diff" rows
//! time what follows a re-read: `==` on the normalized facts, and the set
//! difference of peers and listening ports to log what changed.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a small smoke
//! pass so the bench cannot rot.

#[path = "../tests/fixtures/asterisk/freepbx_gen.rs"]
mod freepbx_gen;

use palisade_agent::discover::asterisk::discover;
use palisade_agent::discover::ini;
use palisade_model::{PbxFacts, PeerTarget, Transport};
use std::collections::BTreeSet;
use std::fs;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const TARGET_MS: f64 = 100.0;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if let Err(e) = run(bench) {
        eprintln!("discover bench: error: {e}");
        std::process::exit(1);
    }
}

struct Row {
    label: String,
    runs: usize,
    median: f64,
    max: f64,
    target: Option<f64>,
    note: String,
}

fn row(label: &str, samples: &[Duration], target: Option<f64>, note: String) -> Row {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    Row {
        label: label.to_string(),
        runs: n,
        median,
        max: ms[n - 1],
        target,
        note,
    }
}

/// Milliseconds; sub-millisecond values keep three decimals so they are not 0.0.
fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Vec<Duration>, T) {
    let mut samples = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = black_box(f());
        samples.push(start.elapsed());
        last = Some(out);
    }
    (samples, last.expect("at least one run"))
}

type PeerKey<'a> = (&'a str, &'a PeerTarget);
type ListenKey = (Transport, u16, Option<IpAddr>);

/// What the agent would log after a re-read: peers and ports added and removed.
struct FactsDiff<'a> {
    peers_added: Vec<PeerKey<'a>>,
    peers_removed: Vec<PeerKey<'a>>,
    listen_added: Vec<ListenKey>,
    listen_removed: Vec<ListenKey>,
}

fn diff<'a>(old: &'a PbxFacts, new: &'a PbxFacts) -> FactsDiff<'a> {
    let peers = |f: &'a PbxFacts| -> BTreeSet<PeerKey<'a>> {
        f.peers
            .iter()
            .map(|p| (p.name.as_str(), &p.target))
            .collect()
    };
    let listen = |f: &PbxFacts| -> BTreeSet<ListenKey> {
        f.listen
            .iter()
            .map(|l| (l.transport, l.port, l.addr))
            .collect()
    };
    let (po, pn) = (peers(old), peers(new));
    let (lo, ln) = (listen(old), listen(new));
    FactsDiff {
        peers_added: pn.difference(&po).copied().collect(),
        peers_removed: po.difference(&pn).copied().collect(),
        listen_added: ln.difference(&lo).copied().collect(),
        listen_removed: lo.difference(&ln).copied().collect(),
    }
}

/// Tree B: one more trunk, one CIDR fewer, one more transport.
fn change(dir: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let identify = dir.join("pjsip.identify.conf");
    let text = fs::read_to_string(&identify).map_err(io)?;
    let text = text.replace("match=198.51.100.10,198.51.100.0/28", "match=198.51.100.10")
        + "\n[new-carrier]\ntype=identify\nendpoint=new-carrier\nmatch=192.0.2.128/25\n";
    fs::write(&identify, text).map_err(io)?;
    let transports = dir.join("pjsip.transports.conf");
    let text = fs::read_to_string(&transports).map_err(io)?
        + "\n[ipv6-udp]\ntype=transport\nprotocol=udp\nbind=[::]:5060\n";
    fs::write(&transports, text).map_err(io)
}

fn run(bench: bool) -> Result<(), String> {
    let (extensions, runs) = if bench { (5_000, 20) } else { (200, 2) };
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    freepbx_gen::write_tree(&a, extensions).map_err(|e| e.to_string())?;
    freepbx_gen::write_tree(&b, extensions).map_err(|e| e.to_string())?;
    change(&b)?;

    // Size of what is read, outside the timed part.
    let cfg = ini::load(&a.join("pjsip.conf"));
    let sections = cfg.sections.len();
    let bytes: u64 = fs::read_dir(&a)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();

    // Warm the page cache and the allocator once.
    let warm = discover(&a);
    if !warm.is_ok() {
        return Err(format!("tree A does not read cleanly: {:?}", warm.errors));
    }

    let mut rows = Vec::new();
    let (samples, fa) = time(runs, || discover(&a));
    rows.push(row(
        &format!("parse + facts, tree A ({extensions} extensions)"),
        &samples,
        Some(TARGET_MS),
        format!(
            "{} listen, {} peers",
            fa.facts.listen.len(),
            fa.facts.peers.len()
        ),
    ));
    let (samples, parsed) = time(runs, || ini::load(&a.join("pjsip.conf")).sections.len());
    rows.push(row(
        "  of which: reading pjsip.conf and includes",
        &samples,
        None,
        format!("{parsed} sections"),
    ));
    let (samples, fb) = time(runs, || discover(&b));
    rows.push(row(
        &format!("parse + facts, tree B ({extensions} extensions, changed)"),
        &samples,
        Some(TARGET_MS),
        format!(
            "{} listen, {} peers",
            fb.facts.listen.len(),
            fb.facts.peers.len()
        ),
    ));
    let fa2 = discover(&a);
    let (samples, same) = time(runs, || fa.facts == fa2.facts);
    rows.push(row(
        "facts == (unchanged tree)",
        &samples,
        None,
        format!("equal: {same}"),
    ));
    let (samples, same) = time(runs, || fa.facts == fb.facts);
    rows.push(row(
        "facts == (changed tree)",
        &samples,
        None,
        format!("equal: {same}"),
    ));
    let (samples, d) = time(runs, || {
        let d = diff(&fa.facts, &fb.facts);
        (
            d.peers_added.len(),
            d.peers_removed.len(),
            d.listen_added.len(),
            d.listen_removed.len(),
        )
    });
    rows.push(row(
        "diff: peers and ports added/removed",
        &samples,
        None,
        format!("peers +{} -{}, listen +{} -{}", d.0, d.1, d.2, d.3),
    ));
    if d != (1, 1, 1, 0) {
        return Err(format!("unexpected diff {d:?}"));
    }

    println!();
    println!(
        "discover bench: FreePBX tree, {extensions} extensions, {sections} sections in pjsip.conf \
         and its includes, {:.1} MiB on disk, {} files read{}",
        bytes as f64 / (1024.0 * 1024.0),
        fa.files.len(),
        if bench { "" } else { " (smoke pass)" }
    );
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
    println!(
        "{:<width$}  {:>4}  {:>10}  {:>10}  {:>9}  {:<6}  result",
        "step", "runs", "median ms", "max ms", "target", "status"
    );
    println!("{}", "-".repeat(width + 80));
    let mut failed = false;
    for r in &rows {
        let (target, status) = match r.target {
            None => ("-".to_string(), ""),
            Some(t) if r.max < t => (format!("< {t:.0} ms"), "PASS"),
            Some(t) if r.median < t => (format!("< {t:.0} ms"), "PASS*"),
            Some(t) => {
                failed = bench;
                (format!("< {t:.0} ms"), "FAIL")
            }
        };
        println!(
            "{:<width$}  {:>4}  {:>10}  {:>10}  {:>9}  {:<6}  {}",
            r.label,
            r.runs,
            fmt_ms(r.median),
            fmt_ms(r.max),
            target,
            status,
            r.note
        );
    }
    println!("(PASS*: median under target, max over)");
    if failed {
        return Err("a target was missed".into());
    }
    Ok(())
}
