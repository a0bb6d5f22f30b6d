//! End to end: inline mode, toll fraud and per-user rules, against the real
//! agent daemon, Kamailio, SIPp and SIPVicious in a namespace lab.
//!
//! * Inline mode holds SIP from unknown sources in an NFQUEUE until the agent
//!   has judged it: an attack tool with its own User-Agent gets no answer at
//!   all, while a phone registers as usual; turning the mode off takes the
//!   iptables-nft queue chain away again, and with `bypass` SIP keeps
//!   flowing when the agent dies.
//! * Toll fraud: INVITEs without credentials to costly numbers ban their
//!   source at the first one, while a trunk (learnt from Kamailio's
//!   permissions address list) and a registered phone call the same numbers
//!   untouched.
//! * Per-user rules: an extension's services open for exactly the address it
//!   registered from, and close when it unregisters, moves or expires.
//!
//! Like `responsive.rs`, every test takes [`exclusive`], bounds every tool it
//! runs, asserts a bound on its own duration and prints the rig's
//! diagnostics when a bound is missed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use palisade_tests::{
    add_address, exclusive, options_ping, probe_all, require_root_tools, require_sip_tools,
    set_elements, standard_lab, svcrack, svmap, wrong_passwords, AgentMode, Client, Exclusive,
    Family, Lab, Listener, Netns, ProbeSpec, Proto, Rig, RigOptions, Signal, Sipp, ATTACKER, PHONE,
    SIP_PORT,
};

/// Inline mode on, everything else as the default policy has it.
const INLINE_ON: &str = "[responsive.inline]\nenabled = true\n";
/// The per-user rules. The lab's Kamailio serves no WebSocket, so
/// discovery would leave the `webrtc` service without ports (it follows the
/// PBX's ws/wss listeners); its port is written out, as an operator whose
/// WebRTC gateway is a separate process would.
const USERS_POLICY: &str = "[users]\n300 = [\"ucp\"]\n301 = [\"ucp\", \"webrtc\"]\n\
     333 = [\"admin\", \"ssh\"]\n\n[[services]]\nname = \"webrtc\"\nports = [\"8089/tcp\"]\n";
/// The chain inline mode keeps in iptables-nft's `security` table.
const XT_CHAIN: &str = "PALISADE_INLINE";
/// A TCP probe that is dropped fails after this long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

fn preflight() -> Result<Exclusive> {
    let heavy = exclusive()?;
    require_root_tools()?;
    require_sip_tools()?;
    Ok(heavy)
}

/// Polls `check` every `every` until it yields something or `timeout`
/// passes; returns the value and how long it took.
fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<(T, Duration)>> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(Some((v, t0.elapsed())));
        }
        if t0.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// Asserts that the whole test stayed within `bound`.
fn assert_within(t0: Instant, bound: Duration, what: &str) {
    let took = t0.elapsed();
    assert!(took <= bound, "{what} took {took:?} (bound {bound:?})");
    eprintln!("{what}: {took:.1?} (bound {bound:?})");
}

// ---------------------------------------------------------------------------
// Inline mode
// ---------------------------------------------------------------------------

/// `iptables-nft -t security -S` (or `ip6tables-nft`) in the PBX namespace.
fn security_rules(ns: &Netns, program: &str) -> Result<String> {
    ns.run(program, &["-w", "-t", "security", "-S"])
}

/// Whether the queue chain and its jump are in place for both families, as
/// inline mode's defaults (queue 5060, bypass) write them.
fn xt_chain_state(ns: &Netns) -> Result<[bool; 2]> {
    let mut out = [false; 2];
    for (i, program) in ["iptables-nft", "ip6tables-nft"].into_iter().enumerate() {
        let rules = security_rules(ns, program)?;
        let jump = rules
            .lines()
            .any(|l| l.trim() == format!("-A INPUT -j {XT_CHAIN}"));
        let queue = rules.lines().any(|l| {
            l.starts_with(&format!("-A {XT_CHAIN} "))
                && l.contains("-j NFQUEUE --queue-num 5060")
                && l.contains("--queue-bypass")
        });
        out[i] = jump && queue;
    }
    Ok(out)
}

/// Whether the chain is gone from both families (no jump, no chain).
fn xt_chain_absent(ns: &Netns) -> Result<bool> {
    for program in ["iptables-nft", "ip6tables-nft"] {
        if security_rules(ns, program)?.contains(XT_CHAIN) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Phone 300 registers once with its right password from the phone host
/// (`port`), over `family`.
fn phone_registers(rig: &Rig, family: Family, port: u16) -> Result<bool> {
    let phone = rig.client(PHONE);
    let stats = Sipp::phone(
        SocketAddr::new(family.addr(phone), port),
        SocketAddr::new(family.pbx(phone), SIP_PORT),
        "300",
        palisade_tests::password("300"),
    )
    .run(&phone.ns, rig.dir())?;
    Ok(stats.successful == 1)
}

#[test]
fn inline_mode_scanners_get_no_answer_and_a_phone_registers() -> Result<()> {
    let _heavy = preflight()?;
    let t0 = Instant::now();
    let lab = standard_lab("inline")?;
    let rig = Rig::start_with(&lab, AgentMode::Running, INLINE_ON)?;
    let agent = rig.agent().expect("the agent runs");
    let context = |what: &str| format!("{what}\n{}", rig.diagnostics());

    // The agent reads the queue, and the kernel has somewhere to send SIP:
    // this kernel has no nft `queue`, so the iptables-nft chain.
    assert!(
        agent
            .daemon_log()
            .contains("inline mode: reading the queue"),
        "{}",
        context("the agent must say it reads the queue")
    );
    let chains = xt_chain_state(&lab.pbx)?;
    assert_eq!(
        chains,
        [true, true],
        "{}\niptables-nft:\n{}\nip6tables-nft:\n{}",
        context("PALISADE_INLINE (NFQUEUE 5060, bypass) must be in ip and ip6 security"),
        security_rules(&lab.pbx, "iptables-nft")?,
        security_rules(&lab.pbx, "ip6tables-nft")?,
    );

    // A phone registers through the queue, over IPv4 and IPv6.
    for family in [Family::V4, Family::V6] {
        assert!(
            phone_registers(&rig, family, 5062)?,
            "{}",
            context(&format!(
                "phone 300 must register with inline on ({family:?})"
            ))
        );
    }

    // svcrack with its own User-Agent: its first REGISTER is held, judged
    // and dropped; nothing ever reaches the registrar.
    let attacker = lab.client(ATTACKER);
    let v4: IpAddr = attacker.v4.into();
    let crack = svcrack(
        &attacker.ns,
        rig.dir(),
        v4,
        attacker.pbx_v4.into(),
        "300",
        &wrong_passwords(500),
        Duration::from_secs(3),
    )?;
    let reached = rig.registrar.requests_from(v4)?;
    let guesses = reached.iter().filter(|r| r.is_guess()).count();
    let (arrived, passed) = (rig.meter.arrived(v4)?, rig.meter.passed(v4)?);
    let ban = rig.ban_of(v4)?;
    eprintln!(
        "inline svcrack: {} requests / {guesses} guesses reached the registrar; \
         SIP packets arrived {arrived}, passed {passed}; ban {ban:?}; svcrack ran {:.1?}",
        reached.len(),
        crack.run.elapsed
    );
    assert!(
        crack.found.is_none() && reached.is_empty() && guesses == 0,
        "{}",
        context(&format!(
            "svcrack must get nothing through: {reached:?}\n{}",
            crack.run.tail(8)
        ))
    );
    assert!(
        arrived >= 1 && passed == 0,
        "{}",
        context(&format!(
            "svcrack's packets arrived ({arrived}) and none passed ({passed})"
        ))
    );
    assert!(
        ban.as_ref()
            .is_some_and(|b| b.comment.as_deref().is_some_and(|c| !c.is_empty())),
        "{}",
        context(&format!(
            "svcrack's source must be banned with a reason: {ban:?}"
        ))
    );

    // svmap from the attacker's other address (not banned yet): the OPTIONS
    // scan finds no server.
    let v6: IpAddr = attacker.v6.into();
    let map = svmap(&attacker.ns, rig.dir(), v6, attacker.pbx_v6.into())?;
    let reached6 = rig.registrar.requests_from(v6)?;
    let (arrived6, passed6) = (rig.meter.arrived(v6)?, rig.meter.passed(v6)?);
    eprintln!(
        "inline svmap: found {:?}; {} requests reached the registrar; arrived {arrived6}, \
         passed {passed6}; ran {:.1?}",
        map.devices,
        reached6.len(),
        map.run.elapsed
    );
    assert!(
        map.devices.is_empty() && reached6.is_empty() && passed6 == 0 && arrived6 >= 1,
        "{}",
        context(&format!(
            "svmap must find no server: {:?}, reached {reached6:?}\n{}",
            map.devices,
            map.run.tail(8)
        ))
    );
    assert!(
        rig.ban_of(v6)?.is_some(),
        "{}",
        context("svmap's source must be banned")
    );

    // The phone is unaffected by all of it.
    assert!(
        phone_registers(&rig, Family::V4, 5062)?,
        "{}",
        context("phone 300 must still register after the attacks")
    );
    assert_within(t0, Duration::from_secs(90), "inline scanners test");
    Ok(())
}

#[test]
fn turning_inline_mode_off_removes_the_queue_chain() -> Result<()> {
    let _heavy = preflight()?;
    let t0 = Instant::now();
    let lab = standard_lab("inlineoff")?;
    let rig = Rig::start_with(&lab, AgentMode::Running, INLINE_ON)?;
    let context = |what: &str| format!("{what}\n{}", rig.diagnostics());
    assert_eq!(
        xt_chain_state(&lab.pbx)?,
        [true, true],
        "{}",
        context("inline on: the chain is in place")
    );
    let inline_chain = |rig: &Rig| -> Result<bool> {
        let table = rig
            .agent()
            .expect("agent")
            .table_json()?
            .unwrap_or_default();
        Ok(table.contains("\"name\": \"inline\"") || table.contains("\"name\":\"inline\""))
    };
    assert!(inline_chain(&rig)?, "{}", context("the marking chain"));

    // Off: the policy without inline, SIGHUP.
    rig.reconfigure("")?;
    let gone = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(xt_chain_absent(&lab.pbx)?.then_some(()))
    })?;
    let Some(((), took)) = gone else {
        bail!(
            "{}\niptables-nft:\n{}",
            context("PALISADE_INLINE still there 10 s after inline was turned off"),
            security_rules(&lab.pbx, "iptables-nft")?
        );
    };
    eprintln!("inline off: PALISADE_INLINE gone {took:.0?} after SIGHUP");
    assert!(
        took <= Duration::from_secs(5),
        "{}",
        context(&format!("the chain took {took:?} to go (bound 5 s)"))
    );
    assert!(
        !inline_chain(&rig)?,
        "{}",
        context("the marking chain must go too")
    );
    assert!(
        phone_registers(&rig, Family::V4, 5062)?,
        "{}",
        context("phone 300 registers with inline off")
    );
    // SIP is copied to the watch again: svmap is still banned (after its
    // first OPTIONS, which the PBX answers).
    let attacker = lab.client(ATTACKER);
    let v4: IpAddr = attacker.v4.into();
    let map = svmap(&attacker.ns, rig.dir(), v4, attacker.pbx_v4.into())?;
    let reached = rig.registrar.requests_from(v4)?.len();
    eprintln!(
        "inline off, svmap: found {:?}, {reached} requests reached the registrar",
        map.devices
    );
    assert!(
        rig.ban_of(v4)?.is_some() && reached <= 1,
        "{}",
        context(&format!(
            "with inline off the copy path bans svmap ({reached} requests reached)"
        ))
    );
    assert_within(t0, Duration::from_secs(40), "inline off test");
    Ok(())
}

#[test]
fn inline_mode_with_bypass_lets_sip_through_when_the_agent_dies() -> Result<()> {
    let _heavy = preflight()?;
    let t0 = Instant::now();
    let lab = standard_lab("inlinekill")?;
    let mut rig = Rig::start_with(&lab, AgentMode::Running, INLINE_ON)?;
    assert!(
        phone_registers(&rig, Family::V4, 5062)?,
        "{}",
        rig.diagnostics()
    );
    assert!(rig.stop_agent(Signal::SIGKILL)?);
    // The chain stays (it belongs to the ruleset, not the process) and, with
    // no reader on the queue, bypass accepts.
    assert_eq!(xt_chain_state(&lab.pbx)?, [true, true]);
    let phone = lab.client(PHONE);
    let answered = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        Ok(options_ping(
            &phone.ns,
            phone.v4.into(),
            SocketAddr::new(phone.pbx_v4.into(), SIP_PORT),
            Duration::from_millis(500),
        )?
        .then_some(()))
    })?;
    assert!(
        answered.is_some(),
        "with bypass and no agent, SIP must reach the registrar\n{}",
        rig.diagnostics()
    );
    for family in [Family::V4, Family::V6] {
        assert!(
            phone_registers(&rig, family, 5062)?,
            "phone 300 must register with the agent gone ({family:?})\n{}",
            rig.diagnostics()
        );
    }
    assert_within(t0, Duration::from_secs(40), "inline bypass test");
    Ok(())
}

/// Inline mode turned on while the agent runs (policy rewritten, SIGHUP):
/// the watch is restarted with the queue bound, so from then on a scanner's
/// first packet is held and dropped. (It once was not: the running watch was
/// only retuned, the queue stayed unread and bypass let SIP through.)
#[test]
fn inline_mode_turned_on_at_runtime_holds_scanners() -> Result<()> {
    let _heavy = preflight()?;
    let t0 = Instant::now();
    let lab = standard_lab("inlineon")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let context = |what: &str| format!("{what}\n{}", rig.diagnostics());
    rig.reconfigure(INLINE_ON)?;
    let on = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok((xt_chain_state(&lab.pbx)? == [true, true]).then_some(()))
    })?;
    assert!(on.is_some(), "{}", context("the chain must come"));
    let agent = rig.agent().expect("agent");
    assert!(
        wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            Ok(agent
                .daemon_log()
                .contains("inline mode: reading the queue")
                .then_some(()))
        })?
        .is_some(),
        "{}",
        context("after the SIGHUP the agent must read the queue")
    );
    let attacker = lab.client(ATTACKER);
    let v4: IpAddr = attacker.v4.into();
    let map = svmap(&attacker.ns, rig.dir(), v4, attacker.pbx_v4.into())?;
    let reached = rig.registrar.requests_from(v4)?;
    assert!(
        map.devices.is_empty() && reached.is_empty() && rig.ban_of(v4)?.is_some(),
        "{}",
        context(&format!(
            "svmap found {:?}, {} requests reached the registrar",
            map.devices,
            reached.len()
        ))
    );
    assert_within(t0, Duration::from_secs(40), "inline on at runtime test");
    Ok(())
}

// ---------------------------------------------------------------------------
// Toll fraud
// ---------------------------------------------------------------------------

const TRUNK: &str = "trunk";

/// One toll-fraud burst: from `src`, `calls` INVITEs without credentials to
/// `number`.
struct Burst {
    src: IpAddr,
    number: &'static str,
}

#[test]
fn toll_fraud_is_banned_at_the_first_invite_and_trunk_calls_complete() -> Result<()> {
    let _heavy = preflight()?;
    let t0 = Instant::now();
    let lab = Lab::new(
        "toll",
        &[
            (PHONE, "z-phone"),
            (ATTACKER, "z-attack"),
            (TRUNK, "z-trunk"),
        ],
    )?;
    let trunk = lab.client(TRUNK);
    let attacker = lab.client(ATTACKER);
    let phone = lab.client(PHONE);
    // More attacker addresses, one per burst, each in the attacker's /24.
    let extra: Vec<IpAddr> = ["10.200.2.3", "10.200.2.4", "10.200.2.5"]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    for ip in &extra {
        add_address(&attacker.ns, "eth0", &format!("{ip}/24"))?;
    }
    let rig = Rig::start_opts(
        &lab,
        AgentMode::Running,
        RigOptions {
            trunks: vec![trunk.v4.into(), trunk.v6.into()],
            ..RigOptions::default()
        },
    )?;
    let context = |what: &str| format!("{what}\n{}", rig.diagnostics());

    // Discovery found the trunk in Kamailio's address list.
    let found = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        let v4 = set_elements(&lab.pbx, "trunk_v4")?;
        let v6 = set_elements(&lab.pbx, "trunk_v6")?;
        Ok((v4.iter().any(|e| e.covers(trunk.v4.into()))
            && v6.iter().any(|e| e.covers(trunk.v6.into())))
        .then_some(()))
    })?;
    assert!(
        found.is_some(),
        "{}",
        context("the trunk must be discovered into trunk_v4/trunk_v6")
    );
    let show = rig.agent().expect("agent").ok(&["show"])?;
    assert!(
        show.lines()
            .any(|l| l.contains("trunk \"trunk\"") && l.contains(&trunk.v4.to_string())),
        "`show` must name the discovered trunk:\n{show}"
    );

    let bursts = [
        Burst {
            src: attacker.v4.into(),
            number: "011441234567890",
        },
        Burst {
            src: attacker.v6.into(),
            number: "00441234567890",
        },
        Burst {
            src: extra[0],
            number: "+441234567890",
        },
        Burst {
            src: extra[1],
            number: "19005550123",
        },
        Burst {
            src: extra[2],
            number: "9011441234567890",
        },
    ];
    const BURST_CALLS: u64 = 20;
    const BURST_RATE: f64 = 20.0;
    const TRUNK_CALLS_V4: u64 = 20;
    const TRUNK_CALLS_V6: u64 = 10;

    // The trunk calls the same kind of numbers throughout the bursts.
    let (trunk_v4, trunk_v6, bursts_done) = std::thread::scope(|scope| {
        let calls_v4 = scope.spawn(|| {
            Sipp::call(
                SocketAddr::new(trunk.v4.into(), SIP_PORT),
                SocketAddr::new(trunk.pbx_v4.into(), SIP_PORT),
                "011441234567890",
            )
            .repeat(TRUNK_CALLS_V4, 4.0)
            .run(&trunk.ns, rig.dir())
        });
        let calls_v6 = scope.spawn(|| {
            Sipp::call(
                SocketAddr::new(trunk.v6.into(), SIP_PORT),
                SocketAddr::new(trunk.pbx_v6.into(), SIP_PORT),
                "00441234567890",
            )
            .repeat(TRUNK_CALLS_V6, 2.0)
            .run(&trunk.ns, rig.dir())
        });
        let mut done = Vec::new();
        for b in &bursts {
            let target = if b.src.is_ipv4() {
                attacker.pbx_v4.into()
            } else {
                IpAddr::from(attacker.pbx_v6)
            };
            let started = SystemTime::now();
            let stats = Sipp::toll_fraud(
                SocketAddr::new(b.src, SIP_PORT),
                SocketAddr::new(target, SIP_PORT),
                b.number,
                BURST_RATE,
                BURST_CALLS,
            )
            .run(&attacker.ns, rig.dir());
            done.push((started, stats));
        }
        let join = |h: std::thread::ScopedJoinHandle<'_, _>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        (join(calls_v4), join(calls_v6), done)
    });

    for (b, (started, stats)) in bursts.iter().zip(bursts_done) {
        let stats = stats?;
        let invites: Vec<_> = rig
            .registrar
            .requests_from(b.src)?
            .into_iter()
            .filter(|r| r.method == "INVITE")
            .collect();
        let ban = rig.ban_of(b.src)?;
        let since = invites.first().map_or(started, |r| r.at);
        let decided = rig
            .ban_logged(b.src)
            .and_then(|at| at.duration_since(since).ok());
        eprintln!(
            "toll fraud from {} to {}: {} of {} INVITEs sent reached the registrar, \
             {} answered; ban decided {decided:.1?} after the first reached it \
             (nft monitor saw it after {:.0?}): {:?}",
            b.src,
            b.number,
            invites.len(),
            stats.created,
            stats.successful,
            rig.ban_delay(b.src, since),
            ban.as_ref().and_then(|b| b.comment.as_deref())
        );
        assert!(
            stats.created == BURST_CALLS,
            "{}",
            context(&format!("the burst from {} ran in full: {stats:?}", b.src))
        );
        assert!(
            invites.len() <= 1 && stats.successful <= 1,
            "{}",
            context(&format!(
                "at most 1 fraud INVITE from {} may reach the registrar: {invites:#?}",
                b.src
            ))
        );
        assert!(
            ban.as_ref().is_some_and(|e| e
                .comment
                .as_deref()
                .is_some_and(|c| c.contains("toll-fraud"))),
            "{}",
            context(&format!("{} must be banned for toll fraud: {ban:?}", b.src))
        );
    }

    // Every one of the trunk's calls went through, and it is not banned.
    let (trunk_v4, trunk_v6) = (trunk_v4?, trunk_v6?);
    eprintln!(
        "trunk calls: v4 {} of {}, v6 {} of {}",
        trunk_v4.successful, trunk_v4.created, trunk_v6.successful, trunk_v6.created
    );
    for (stats, n, ip) in [
        (&trunk_v4, TRUNK_CALLS_V4, IpAddr::from(trunk.v4)),
        (&trunk_v6, TRUNK_CALLS_V6, IpAddr::from(trunk.v6)),
    ] {
        assert!(
            stats.created == n && stats.successful == n,
            "{}",
            context(&format!(
                "all {n} calls of the trunk from {ip} must complete: {stats:?}"
            ))
        );
        let answered = rig
            .registrar
            .requests_from(ip)?
            .iter()
            .filter(|r| r.method == "INVITE" && r.result == "trunk")
            .count();
        assert!(
            answered >= n as usize,
            "{}",
            context(&format!(
                "{answered} trunk INVITEs from {ip} answered, {n} sent"
            ))
        );
        assert!(
            rig.ban_of(ip)?.is_none(),
            "{}",
            context(&format!("the trunk {ip} must never be banned"))
        );
    }

    // A registered phone (known-good) dialling abroad is not touched either:
    // its INVITEs are challenged by the PBX, and it stays unbanned.
    assert!(
        phone_registers(&rig, Family::V4, 5062)?,
        "{}",
        context("phone 300 registers")
    );
    let ip: IpAddr = phone.v4.into();
    let stats = Sipp::toll_fraud(
        SocketAddr::new(ip, 5066),
        SocketAddr::new(phone.pbx_v4.into(), SIP_PORT),
        "00441234567890",
        5.0,
        5,
    )
    .run(&phone.ns, rig.dir())?;
    assert!(
        stats.successful == 5 && rig.ban_of(ip)?.is_none(),
        "{}",
        context(&format!(
            "the registered phone's INVITEs must all be answered and it not banned: {stats:?}"
        ))
    );
    assert_within(t0, Duration::from_secs(90), "toll-fraud test");
    Ok(())
}

// ---------------------------------------------------------------------------
// Per-user rules
// ---------------------------------------------------------------------------

/// The services of the users, as the catalogue has them.
const SSH: u16 = 22;
const ADMIN: [u16; 2] = [80, 443];
const UCP: [u16; 2] = [81, 4443];
const WEBRTC: u16 = 8089;
const ALL_PORTS: [u16; 6] = [SSH, ADMIN[0], ADMIN[1], UCP[0], UCP[1], WEBRTC];

/// Which of `ports` `client` reaches over TCP on the PBX's address of its
/// link (`family`), probed in parallel.
fn reachable(client: &Client, family: Family, ports: &[u16]) -> Vec<u16> {
    let specs: Vec<ProbeSpec<'_>> = ports
        .iter()
        .map(|&p| {
            ProbeSpec::new(
                &client.ns,
                Proto::Tcp,
                SocketAddr::new(family.pbx(client), p),
            )
        })
        .collect();
    let open: Vec<u16> = ports
        .iter()
        .zip(probe_all(&specs, PROBE_TIMEOUT))
        .filter(|(_, ok)| *ok)
        .map(|(p, _)| *p)
        .collect();
    sorted(&open)
}

/// The TCP ports granted to `ip` now.
fn granted(rig: &Rig, ip: IpAddr) -> Result<Vec<u16>> {
    let mut ports: Vec<u16> = rig
        .grants()?
        .into_iter()
        .filter(|g| g.addr == ip && g.proto == "tcp")
        .map(|g| g.port)
        .collect();
    ports.sort_unstable();
    Ok(ports)
}

fn sorted(ports: &[u16]) -> Vec<u16> {
    let mut v = ports.to_vec();
    v.sort_unstable();
    v
}

/// `user` registers (or, with `expires` 0, unregisters) from `client`'s
/// IPv4 address and `port`; fails the test unless the registrar said 200.
/// Returns when the registrar accepted it (its log's timestamp, taken as it
/// sent the 200).
fn register(rig: &Rig, client: &Client, port: u16, user: &str, expires: u32) -> Result<SystemTime> {
    let ip: IpAddr = client.v4.into();
    let before = rig.registrar.requests_from(ip)?.len();
    let sipp = Sipp {
        expires,
        ..Sipp::phone(
            SocketAddr::new(ip, port),
            SocketAddr::new(client.pbx_v4.into(), SIP_PORT),
            user,
            palisade_tests::password(user),
        )
    };
    let stats = sipp.run(&client.ns, rig.dir())?;
    let accepted = rig
        .registrar
        .requests_from(ip)?
        .into_iter()
        .skip(before)
        .rfind(|r| r.is_success() && r.user == user)
        .map(|r| r.at);
    match accepted {
        Some(at) if stats.successful == 1 => Ok(at),
        _ => bail!(
            "{user} (expires {expires}) from {ip}:{port} did not get its 200: {stats:?}\n{}",
            rig.diagnostics()
        ),
    }
}

/// Waits until the grants of `ip` are exactly `want`; returns how long after
/// `since` that was first seen (polling every 5 ms), or fails with what they
/// were after `bound`.
fn wait_grants(
    rig: &Rig,
    ip: IpAddr,
    want: &[u16],
    since: SystemTime,
    bound: Duration,
) -> Result<Duration> {
    let want = sorted(want);
    match wait_for(bound, Duration::from_millis(5), || {
        Ok((granted(rig, ip)? == want).then(SystemTime::now))
    })? {
        Some((at, _)) => Ok(at.duration_since(since).unwrap_or_default()),
        None => bail!(
            "the grants of {ip} are {:?}, not {want:?}, {bound:?} on\n{}",
            granted(rig, ip)?,
            rig.diagnostics()
        ),
    }
}

#[test]
fn per_user_rules_open_for_the_registered_address_only_and_close_on_unregister() -> Result<()> {
    let _heavy = preflight()?;
    let t0 = Instant::now();
    let lab = standard_lab("users")?;
    let _services = Listener::start(&lab.pbx, &ALL_PORTS.map(|p| (Proto::Tcp, p)))?;
    let rig = Rig::start_with(&lab, AgentMode::Running, USERS_POLICY)?;
    let context = |what: &str| format!("{what}\n{}", rig.diagnostics());
    let phone = lab.client(PHONE);
    let attacker = lab.client(ATTACKER);
    let (phone_ip, attacker_ip): (IpAddr, IpAddr) = (phone.v4.into(), attacker.v4.into());
    let ssh_admin = [SSH, ADMIN[0], ADMIN[1]];

    // Both hosts are in the internet zone, where none of these is open.
    for (client, family) in [
        (phone, Family::V4),
        (phone, Family::V6),
        (attacker, Family::V4),
    ] {
        let open = reachable(client, family, &ALL_PORTS);
        assert!(
            open.is_empty(),
            "{}",
            context(&format!(
                "{} {family:?} reaches {open:?} before any registration",
                client.name
            ))
        );
    }

    /// Opening or closing a grant after the registrar's 200, at most.
    const FOLLOW: Duration = Duration::from_secs(1);

    // 300 registers from the attacker host: the user portal opens there,
    // never SSH or the admin interface.
    let at = register(&rig, attacker, 5062, "300", 120)?;
    let took = wait_grants(&rig, attacker_ip, &UCP, at, FOLLOW)?;
    eprintln!("300 at {attacker_ip}: grants open at most {took:.0?} after the registrar's 200");
    assert_eq!(
        reachable(attacker, Family::V4, &ALL_PORTS),
        sorted(&UCP),
        "{}",
        context("300's address reaches exactly the user portal")
    );

    // 333 registers from the phone host: SSH and admin open there only.
    let at = register(&rig, phone, 5062, "333", 120)?;
    let took = wait_grants(&rig, phone_ip, &ssh_admin, at, FOLLOW)?;
    eprintln!("333 at {phone_ip}: grants open at most {took:.0?} after the registrar's 200");
    for g in rig.grants()?.iter().filter(|g| g.addr == phone_ip) {
        assert!(
            g.timeout.is_some_and(|t| (110..=120).contains(&t)),
            "{}",
            context(&format!(
                "a grant lasts as long as the registration (120 s): {g:?}"
            ))
        );
    }
    assert_eq!(
        reachable(phone, Family::V4, &ALL_PORTS),
        sorted(&ssh_admin),
        "{}",
        context("333's address reaches SSH and admin, nothing else")
    );
    assert!(
        reachable(phone, Family::V6, &ALL_PORTS).is_empty(),
        "{}",
        context("the phone host's IPv6 address did not register: nothing for it")
    );
    assert_eq!(
        reachable(attacker, Family::V4, &ALL_PORTS),
        sorted(&UCP),
        "{}",
        context("the attacker host (300) still reaches only the portal")
    );

    // 300 moves to the phone host: the portal closes at the attacker host
    // and opens beside 333's services.
    let at = register(&rig, phone, 5064, "300", 120)?;
    let moved = wait_grants(&rig, attacker_ip, &[], at, FOLLOW)?;
    let both = sorted(&[SSH, ADMIN[0], ADMIN[1], UCP[0], UCP[1]]);
    wait_grants(&rig, phone_ip, &both, at, FOLLOW)?;
    eprintln!("300 moved to {phone_ip}: the old address closed at most {moved:.0?} after the 200");
    assert!(
        reachable(attacker, Family::V4, &ALL_PORTS).is_empty(),
        "{}",
        context("300 moved away: nothing left for the attacker host")
    );
    assert_eq!(reachable(phone, Family::V4, &ALL_PORTS), both);

    // 333 unregisters: SSH and admin close within a second, the portal
    // stays for 300 at the same address.
    let at = register(&rig, phone, 5062, "333", 0)?;
    let closed = wait_grants(&rig, phone_ip, &UCP, at, Duration::from_secs(3))?;
    let open_now = reachable(phone, Family::V4, &ALL_PORTS);
    let probed = SystemTime::now().duration_since(at).unwrap_or_default();
    eprintln!(
        "333 unregistered: its grants closed at most {closed:.0?} after the registrar's 200; \
         probes {probed:.0?} after it reach {open_now:?}"
    );
    assert!(
        closed <= Duration::from_secs(1),
        "{}",
        context(&format!("333's grants closed after {closed:?} (bound 1 s)"))
    );
    assert!(
        probed <= Duration::from_secs(2),
        "the probes themselves ran late ({probed:?})"
    );
    assert_eq!(
        open_now,
        sorted(&UCP),
        "{}",
        context("after 333 unregistered only 300's portal is left")
    );

    // 301 registers from the attacker host for 5 s and lets it run out:
    // its grants (portal and WebRTC) close on their own.
    let at = register(&rig, attacker, 5066, "301", 5)?;
    let ucp_webrtc = [UCP[0], UCP[1], WEBRTC];
    wait_grants(&rig, attacker_ip, &ucp_webrtc, at, FOLLOW)?;
    assert_eq!(
        reachable(attacker, Family::V4, &ALL_PORTS),
        sorted(&ucp_webrtc)
    );
    let expired = wait_grants(&rig, attacker_ip, &[], at, Duration::from_secs(8))?;
    eprintln!("301's 5 s registration: grants gone {expired:.2?} after the registrar's 200");
    assert!(
        (Duration::from_secs(4)..=Duration::from_millis(6500)).contains(&expired),
        "{}",
        context(&format!(
            "301's grants must expire with its registration (5 s), not after {expired:?}"
        ))
    );
    assert!(
        reachable(attacker, Family::V4, &ALL_PORTS).is_empty(),
        "{}",
        context("nothing reachable after 301's registration expired")
    );

    assert_within(t0, Duration::from_secs(90), "per-user rules test");
    Ok(())
}
