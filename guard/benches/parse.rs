//! Parser throughput on one core: `cargo bench -p palisade-guard --bench parse`.
//!
//! Prints one row per corpus message (`tests/corpus/*.sip`), then the mix of all
//! of them round-robin (parse only, and parse plus the accessors a detector calls),
//! TCP reassembly of the mix, and two hostile inputs. The target is well above
//! 1,000,000 small REGISTERs per second: the watch must keep up with a flood.
//!
//! Pass a number of milliseconds per row as the first argument (default 300).

use std::fs;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_guard::sip::{parse, Limits, Parsed, StreamBuffer, Transport};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .expect("tests/corpus")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sip"))
        .filter_map(|path| {
            let name = path.file_stem()?.to_string_lossy().into_owned();
            Some((name, fs::read(&path).ok()?))
        })
        .collect();
    files.sort();
    files
}

/// Runs `round` (which handles `per_round` messages) repeatedly for about
/// `budget`, and returns nanoseconds per message.
fn measure(budget: Duration, per_round: usize, mut round: impl FnMut()) -> f64 {
    let warm_up = Instant::now();
    while warm_up.elapsed() < budget / 10 {
        round();
    }
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            round();
        }
        rounds += 64;
    }
    start.elapsed().as_nanos() as f64 / (rounds as f64 * per_round as f64)
}

fn row(name: &str, bytes: usize, ns: f64) {
    let per_second = 1e9 / ns;
    let mib_per_second = per_second * bytes as f64 / (1024.0 * 1024.0);
    println!("{name:<34} {bytes:>7} {per_second:>14.0} {ns:>10.1} {mib_per_second:>9.0}");
}

fn parse_one(buf: &[u8], transport: Transport, limits: &Limits) -> usize {
    match parse(black_box(buf), transport, limits) {
        Ok(Parsed::Message(m, n)) => black_box(m.header_count()) + n,
        Ok(Parsed::KeepAlive(n)) => n,
        Ok(Parsed::Incomplete) => 0,
        Err(e) => black_box(e.to_string().len()),
    }
}

/// Parse plus what a detector asks of each message.
fn parse_and_read(buf: &[u8], limits: &Limits) -> usize {
    let Ok(Parsed::Message(m, _)) = parse(black_box(buf), Transport::Datagram, limits) else {
        return 0;
    };
    let mut n = m.cseq().map_or(0, |(seq, _)| seq as usize);
    n += m.call_id().map_or(0, <[u8]>::len);
    n += m.from_user().map_or(0, <[u8]>::len);
    n += m.to_user().map_or(0, <[u8]>::len);
    n += m.user_agent().map_or(0, <[u8]>::len);
    n += m.auth_username().map_or(0, <[u8]>::len);
    n += m.expires().unwrap_or(0) as usize;
    n += m.contacts().filter_map(|c| c.expires).count();
    n += usize::from(m.challenge_is_stale()) + m.via_count_at_most(8);
    black_box(n)
}

fn main() {
    let budget = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse::<u64>().ok())
        .map_or(Duration::from_millis(300), Duration::from_millis);
    let limits = Limits::default();
    let files = corpus();
    assert!(!files.is_empty(), "no corpus files");

    println!(
        "{:<34} {:>7} {:>14} {:>10} {:>9}",
        "kind", "bytes", "messages/s", "ns/msg", "MiB/s"
    );
    println!("{}", "-".repeat(78));
    for (name, buf) in &files {
        let ns = measure(budget, 1, || {
            black_box(parse_one(buf, Transport::Datagram, &limits));
        });
        row(name, buf.len(), ns);
    }
    println!("{}", "-".repeat(78));

    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    let mean = total / files.len();
    let ns = measure(budget, files.len(), || {
        for (_, buf) in &files {
            black_box(parse_one(buf, Transport::Datagram, &limits));
        }
    });
    row("mix: parse (datagram)", mean, ns);

    let ns = measure(budget, files.len(), || {
        for (_, buf) in &files {
            black_box(parse_one(buf, Transport::Stream, &limits));
        }
    });
    row("mix: parse (stream)", mean, ns);

    let ns = measure(budget, files.len(), || {
        for (_, buf) in &files {
            black_box(parse_and_read(buf, &limits));
        }
    });
    row("mix: parse + detector accessors", mean, ns);

    let stream: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let mut seq = 0u32;
    let ns = measure(budget, files.len(), || {
        let mut buffer = StreamBuffer::default();
        buffer.sync_at(seq);
        let mut count = 0;
        for segment in stream.chunks(1460) {
            buffer.push(seq, segment, |m| count += m.len());
            seq = seq.wrapping_add(segment.len() as u32);
        }
        black_box(count);
    });
    row("mix: StreamBuffer, 1460 B segments", mean, ns);
    println!("{}", "-".repeat(78));

    let mut junk = vec![0u8; 1400];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut junk {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let ns = measure(budget, 1, || {
        black_box(parse_one(&junk, Transport::Datagram, &limits));
    });
    row("hostile: 1400 B binary junk", junk.len(), ns);

    let mut flood = b"OPTIONS sip:100@pbx SIP/2.0\r\n".to_vec();
    for i in 0..1000 {
        flood.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let ns = measure(budget, 1, || {
        black_box(parse_one(&flood, Transport::Datagram, &limits));
    });
    row("hostile: 1000 headers (limit 256)", flood.len(), ns);
}
