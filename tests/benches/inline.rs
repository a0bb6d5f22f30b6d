//! Inline mode (NFQUEUE) against a real kernel: the agent daemon in a PBX
//! namespace holds every SIP packet of an unknown source until it has judged
//! it; a UDP echo service stands in for the PBX on the SIP port.
//!
//! * **added latency**: 3,000 sequential OPTIONS round trips from a client,
//!   with the agent copying (NFLOG) and then holding (NFQUEUE, this kernel's
//!   iptables-nft xt path); the difference of the percentiles is what holding
//!   costs a packet.
//! * **throughput on one core**: the agent's reader is one thread; clients
//!   is pinned to one core and clients on the other send as fast as they can
//!   for 3 s from 8 addresses (each under the tier); the kernel's queue
//!   counters say how many packets the agent judged. The queue fails closed for the measurement (`bypass = false`), so nothing
//!   passes unjudged when the agent falls behind.
//!
//! `sudo cargo bench -p palisade-tests --bench inline`. Targets (issue): added
//! p99 ≤ 100 µs; ≥ 100,000 packets/s.

use anyhow::{bail, Result};
use palisade_tests::{add_address, require_root_tools, AgentHost, Lab, Listener, Proto};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const ROUND_TRIPS: usize = 3_000;
const BLAST: Duration = Duration::from_secs(3);
const SOURCES: u8 = 8;

/// Tiers and the flood detector out of the way: the bench measures the
/// packet path, not the limits.
const BASE: &str = "[agent.discovery]\nkamailio = \"/nonexistent\"\nasterisk = \"/nonexistent\"\nfreeswitch = \"/nonexistent\"\n[responsive.tiers]\nrate = 100000\nburst = 100000\n[responsive.detect]\nflood_rate = 1000000\n";

fn options(call: u64) -> Vec<u8> {
    format!(
        "OPTIONS sip:100@10.200.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.200.1.2:5060;branch=z9hG4bK-{call}\r\nFrom: <sip:100@10.200.1.1>;tag={call}\r\nTo: <sip:100@10.200.1.1>\r\nCall-ID: inline-{call}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: Yealink SIP-T46S 66.86.0.15\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn round_trips(from: Ipv4Addr, target: SocketAddr) -> Result<Vec<Duration>> {
    let sock = UdpSocket::bind((from, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    let mut out = Vec::with_capacity(ROUND_TRIPS);
    for call in 0..ROUND_TRIPS as u64 {
        let msg = options(call);
        let t = Instant::now();
        sock.send_to(&msg, target)?;
        if sock.recv(&mut buf).is_ok() {
            out.push(t.elapsed());
        }
    }
    out.sort();
    Ok(out)
}

/// The kernel's counters of queue `num` in the current namespace:
/// (packets queued so far, packets dropped because the queue was full or the
/// agent could not take them).
fn queue_counters(num: u16) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")?;
    for line in text.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        // queue, portid, waiting, copy mode, copy range, queue dropped,
        // user dropped, id sequence, 1
        if f.len() >= 8 && f[0] == u64::from(num) {
            return Ok((f[7], f[5] + f[6]));
        }
    }
    bail!("queue {num} is not bound")
}

/// Senders on the other core blast from every source address for [`BLAST`];
/// the agent's judged packets/s come from the kernel's queue counters.
fn blast(sources: &[Ipv4Addr], target: SocketAddr, pbx: &palisade_tests::Netns) -> Result<f64> {
    let socks: Vec<UdpSocket> = sources
        .iter()
        .map(|a| UdpSocket::bind((*a, 0)))
        .collect::<Result<_, _>>()?;
    let msgs: Vec<Vec<u8>> = (0..64).map(options).collect();
    let before = pbx.enter(|| queue_counters(5060))?;
    let start = Instant::now();
    let mut i = 0usize;
    while start.elapsed() < BLAST {
        for s in &socks {
            let _ = s.send_to(&msgs[i % msgs.len()], target);
            i += 1;
        }
    }
    // Let the agent finish what is queued.
    std::thread::sleep(Duration::from_millis(200));
    let after = pbx.enter(|| queue_counters(5060))?;
    let queued = after.0 - before.0;
    let dropped = after.1 - before.1;
    eprintln!(
        "blast: {i} sent, {queued} queued, {dropped} dropped by the queue ({:.0} sent/s)",
        i as f64 / BLAST.as_secs_f64()
    );
    Ok(queued.saturating_sub(dropped) as f64 / BLAST.as_secs_f64())
}

/// Pins the calling thread (and what it spawns) to `cpu`.
fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    require_root_tools()?;
    let lab = Lab::new("ib", &[("client", "z-client")])?;
    let client = lab.client("client");
    let echo = Listener::start(&lab.pbx, &[(Proto::Udp, 5060)])?;
    let host = AgentHost::new(&lab.pbx)?;
    let target = SocketAddr::new(client.pbx_v4.into(), 5060);
    let sources: Vec<Ipv4Addr> = (0..SOURCES)
        .map(|i| Ipv4Addr::new(10, 200, 1, 20 + i))
        .collect();
    for a in &sources {
        add_address(&client.ns, "eth0", &format!("{a}/24")).ok();
    }

    std::fs::write(host.config_path(), BASE)?;
    let daemon = host.start_daemon()?;
    host.wait_for_log("SIP watch started", Duration::from_secs(10))?;
    let copied = client.ns.enter(|| round_trips(sources[0], target))?;
    drop(daemon);

    std::fs::write(
        host.config_path(),
        format!("{BASE}[responsive.inline]\nenabled = true\nbypass = false\n"),
    )?;
    let daemon = host.start_daemon()?;
    host.wait_for_log("inline mode: reading the queue", Duration::from_secs(10))?;
    let held = client.ns.enter(|| round_trips(sources[1], target))?;
    // One core for the agent, the other for the senders and the kernel's
    // work on their side; a PBX socket that never reads (no answers to copy).
    drop(echo);
    let _sink = lab
        .pbx
        .enter(|| UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 5060)))?;
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &daemon.pid().to_string()])
        .output()?;
    pin(1);
    let pps = client.ns.enter(|| blast(&sources, target, &lab.pbx))?;
    let log = host.daemon_log();
    drop(daemon);
    if copied.len() < ROUND_TRIPS / 2 || held.len() < ROUND_TRIPS / 2 {
        bail!(
            "round trips lost: {} copied, {} held of {ROUND_TRIPS}; daemon log:\n{log}",
            copied.len(),
            held.len()
        );
    }

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let added = |p: f64| us(percentile(&held, p)) - us(percentile(&copied, p));
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| round trip, copied (NFLOG) | p50 {:.0} µs, p99 {:.0} µs ({} of {ROUND_TRIPS}) | |",
        us(percentile(&copied, 0.5)),
        us(percentile(&copied, 0.99)),
        copied.len()
    );
    println!(
        "| round trip, held (NFQUEUE via iptables-nft) | p50 {:.0} µs, p99 {:.0} µs ({} of {ROUND_TRIPS}) | |",
        us(percentile(&held, 0.5)),
        us(percentile(&held, 0.99)),
        held.len()
    );
    println!(
        "| added latency per packet | p50 {:.0} µs, p99 {:.0} µs | p99 ≤ 100 µs {} |",
        added(0.5),
        added(0.99),
        if added(0.99) <= 100.0 { "✓" } else { "✗" }
    );
    println!(
        "| judged packets/s, agent reader on one core, queue fails closed | {:.0} | ≥ 100,000 {} |",
        pps,
        if pps >= 100_000.0 { "✓" } else { "✗" }
    );
    Ok(())
}
