//! The SIP watch's packet path on one core: IP/UDP decode → SIP parse →
//! transaction tracking → detectors → verdicts, over a mix of captured-style
//! traffic (phones registering through their challenge, a guessing tool with a
//! phone's User-Agent, a scanner, enumeration). Nothing touches the kernel.
//!
//! `cargo bench -p palisade-agent --bench watch` prints the table; without
//! `--bench` it runs one short pass as a smoke test.
//! Target (issue): ≥ 200,000 packets/s on one core.

use palisade_agent::ruleset::render::{LOG_IN, LOG_OUT};
use palisade_agent::watch::Reader;
use palisade_model::Responsive;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const TARGET_PPS: f64 = 200_000.0;

fn ipv4_udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = Vec::with_capacity(total as usize);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn register(user: &str, ua: &str, call: &str, cseq: u32, auth: bool) -> String {
    let auth = if auth {
        format!("Authorization: Digest username=\"{user}\", realm=\"pbx\", nonce=\"6b1a7c32\", uri=\"sip:pbx\", response=\"9f2a3e1b0c7d6e5f4a3b2c1d0e9f8a7b\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"fd3e21a0\"\r\n")
    } else {
        String::new()
    };
    format!(
        "REGISTER sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bK{call}{cseq};rport\r\nFrom: \"{user}\" <sip:{user}@pbx.example.com>;tag=1093786524\r\nTo: \"{user}\" <sip:{user}@pbx.example.com>\r\nCall-ID: {call}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@192.168.1.10:5062>\r\n{auth}Max-Forwards: 70\r\nUser-Agent: {ua}\r\nExpires: 3600\r\nAllow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, SUBSCRIBE\r\nContent-Length: 0\r\n\r\n"
    )
}

fn answer(user: &str, call: &str, cseq: u32, status: &str, extra: &str) -> String {
    format!(
        "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bK{call}{cseq};rport=5062;received=203.0.113.9\r\nFrom: \"{user}\" <sip:{user}@pbx.example.com>;tag=1093786524\r\nTo: \"{user}\" <sip:{user}@pbx.example.com>;tag=as4f2a1b\r\nCall-ID: {call}\r\nCSeq: {cseq} REGISTER\r\nServer: Asterisk PBX 20.5.0\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// (prefix, packet) in arrival order.
fn traffic() -> Vec<(&'static str, Vec<u8>)> {
    let pbx = Ipv4Addr::new(198, 51, 100, 1);
    let challenge = "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"6b1a7c32\", qop=\"auth\"\r\n";
    let mut out = Vec::new();
    let mut push = |src: Ipv4Addr, req: String, resp: String| {
        out.push((LOG_IN, ipv4_udp(src, 5062, pbx, 5060, req.as_bytes())));
        out.push((LOG_OUT, ipv4_udp(pbx, 5060, src, 5062, resp.as_bytes())));
    };
    for i in 0..4000u32 {
        let src = Ipv4Addr::from(0x0a00_0000 + i);
        let user = format!("{}", 200 + i % 500);
        let call = format!("phone{i}");
        push(
            src,
            register(&user, "Yealink SIP-T46S 66.86.0.15", &call, 1, false),
            answer(&user, &call, 1, "401 Unauthorized", challenge),
        );
        push(
            src,
            register(&user, "Yealink SIP-T46S 66.86.0.15", &call, 2, true),
            answer(
                &user,
                &call,
                2,
                "200 OK",
                "Contact: <sip:u@192.168.1.10:5062>;expires=3600\r\n",
            ),
        );
    }
    for i in 0..1000u32 {
        let src = Ipv4Addr::from(0xcb00_7100 + i);
        let call = format!("guess{i}");
        for g in 0..4 {
            push(
                src,
                register("100", "Zoiper rv2.10.20.1", &call, g, true),
                answer("100", &call, g, "401 Unauthorized", challenge),
            );
        }
    }
    for i in 0..1000u32 {
        let src = Ipv4Addr::from(0xc633_6400 + i);
        let call = format!("war{i}");
        push(
            src,
            register(
                &format!("{}", 100 + i % 900),
                "friendly-scanner",
                &call,
                1,
                false,
            ),
            answer("x", &call, 1, "404 Not Found", ""),
        );
    }
    out
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let packets = traffic();
    let rounds = if bench { 20 } else { 1 };
    let (mut reader, verdicts) = Reader::for_bench(Responsive::default());
    let drain = std::thread::spawn(move || verdicts.into_iter().count());
    let mut t = Instant::now();
    let started = Instant::now();
    let mut n = 0u64;
    for _ in 0..rounds {
        for (prefix, p) in &packets {
            t += Duration::from_micros(50);
            reader.packet(t, prefix.as_bytes(), p);
            n += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(reader);
    let actions = drain.join().unwrap();
    let pps = n as f64 / secs;
    println!("| path | packets | seconds | packets/s (one core) | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| decode + parse + track + detect | {n} | {secs:.3} | {pps:.0} | ≥ {TARGET_PPS:.0} {} |",
        if pps >= TARGET_PPS { "✓" } else { "✗" }
    );
    println!("\n{actions} actions (bans, known-good, notices) produced");
    assert!(actions > 0, "the mix must produce verdicts");
}
