//! End to end: the real agent binary enforcing its ruleset in a PBX namespace,
//! judged by real TCP and UDP probes from client namespaces in every zone.

use anyhow::Result;
use palisade_tests::{
    probe, probe_all, require_root_tools, structure, table_json, AgentHost, Lab, Listener,
    ProbeSpec, Proto, UdpFlow,
};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const DROP_TIMEOUT: Duration = Duration::from_millis(400);

/// One client per zone; each link's PBX-side interface is named after its zone.
const ZONES: [(&str, &str); 5] = [
    ("trusted", "z-trusted"),
    ("local", "z-local"),
    ("other", "z-other"),
    ("internet", "z-internet"),
    ("blocked", "z-blocked"),
];

/// Zones assigned three ways: trusted, other and blocked by network (v4 and v6),
/// local by interface, internet by default.
const ZONE_POLICY: &str = r#"
[zones.trusted]
networks = ["10.200.1.0/24", "fd00:200:1::/64"]
[zones.local]
interfaces = ["z-local"]
[zones.other]
networks = ["10.200.3.0/24", "fd00:200:3::/64"]
[zones.blocked]
networks = ["10.200.5.0/24", "fd00:200:5::/64"]
"#;

/// Every catalogue port (RTP at both ends and the middle) and some that no
/// service uses.
const PORTS: [(Proto, u16); 19] = [
    (Proto::Udp, 5060),
    (Proto::Tcp, 5060),
    (Proto::Tcp, 5061),
    (Proto::Udp, 4569),
    (Proto::Udp, 10000),
    (Proto::Udp, 15000),
    (Proto::Udp, 20000),
    (Proto::Tcp, 22),
    (Proto::Tcp, 80),
    (Proto::Tcp, 443),
    (Proto::Tcp, 81),
    (Proto::Tcp, 4443),
    (Proto::Tcp, 8089),
    (Proto::Tcp, 83),
    (Proto::Udp, 69),
    (Proto::Tcp, 9999),
    (Proto::Udp, 9999),
    (Proto::Udp, 20001),
    (Proto::Udp, 9998),
];

/// The default policy's matrix, written out from the issue rather than derived
/// from the code under test.
fn expected(zone: &str, proto: Proto, port: u16) -> bool {
    use Proto::*;
    let voip = matches!(
        (proto, port),
        (Udp, 5060) | (Tcp, 5060) | (Tcp, 5061) | (Udp, 4569)
    ) || (proto == Udp && (10000..=20000).contains(&port));
    let portal = matches!((proto, port), (Tcp, 81) | (Tcp, 4443) | (Tcp, 8089));
    let lan_only = matches!(
        (proto, port),
        (Tcp, 22) | (Tcp, 80) | (Tcp, 443) | (Tcp, 83) | (Udp, 69)
    );
    match zone {
        "trusted" => true,
        "local" => voip || portal || lan_only,
        "other" => voip || portal,
        "internet" => voip,
        "blocked" => false,
        _ => unreachable!(),
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

#[test]
fn default_policy_every_zone_and_service_cell_v4_and_v6() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("matrix", &ZONES)?;
    let _services = Listener::start(&lab.pbx, &PORTS)?;
    let agent = AgentHost::new(&lab.pbx)?;

    let mut specs = Vec::new();
    let mut cells = Vec::new();
    for client in &lab.clients {
        for addr in client.pbx_addrs() {
            for (proto, port) in PORTS {
                specs.push(ProbeSpec::new(
                    &client.ns,
                    proto,
                    SocketAddr::new(addr, port),
                ));
                cells.push((
                    client.name.as_str(),
                    client.addrs()[usize::from(addr.is_ipv6())],
                    proto,
                    port,
                ));
            }
        }
    }
    // Without the agent everything answers: a dropped probe later means the firewall.
    let open = probe_all(&specs, Duration::from_secs(2));
    assert!(
        open.iter().all(|ok| *ok),
        "the lab must answer on every port before the agent runs"
    );

    let policy = agent.write("zones.toml", ZONE_POLICY)?;
    agent.apply(&policy)?;
    let results = probe_all(&specs, DROP_TIMEOUT);
    let mut wrong = Vec::new();
    for ((zone, from, proto, port), got) in cells.iter().zip(&results) {
        if *got != expected(zone, *proto, *port) {
            wrong.push(format!(
                "{zone} {from} -> {port}/{}: got {got}",
                proto_name(*proto)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(results.len(), 5 * 2 * PORTS.len());

    // `explain` agrees with the kernel on every cell.
    let mut disagree = Vec::new();
    for ((zone, from, proto, port), got) in cells.iter().zip(&results) {
        let out = agent.ok(&[
            "explain",
            &from.to_string(),
            &format!("{port}/{}", proto_name(*proto)),
        ])?;
        let says_allowed = out.contains("ALLOWED");
        if says_allowed != *got {
            disagree.push(format!("{zone}: {}", out.trim()));
        }
    }
    assert!(
        disagree.is_empty(),
        "explain disagrees with the kernel:\n{}",
        disagree.join("\n")
    );

    // Applying the same policy again changes nothing at all.
    let before = agent.table_json()?.expect("table loaded");
    let out = agent.apply(&policy)?;
    assert!(out.contains("already in force"), "{out}");
    assert_eq!(agent.table_json()?.expect("table loaded"), before);
    Ok(())
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn ban_cuts_a_live_flow_and_dynamic_elements_expire_on_time() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("dyn", &[("internet", "z-inet")])?;
    let _services = Listener::start(
        &lab.pbx,
        &[(Proto::Udp, 5060), (Proto::Tcp, 22), (Proto::Udp, 5061)],
    )?;
    let agent = AgentHost::new(&lab.pbx)?;
    // SIP over UDP for the LAN only, so known-good visibly changes the outcome.
    let policy = agent.write("p.toml", "[[services]]\nname = \"sip-udp\"\nzones = [\"local\"]\n[[services]]\nname = \"sip5061\"\nports = [\"5061/udp\"]\nzones = [\"internet\"]\n")?;
    agent.apply(&policy)?;
    let c = lab.client("internet");

    for (addr, pbx) in c.addrs().into_iter().zip(c.pbx_addrs()) {
        // A UDP flow with a live conntrack entry is cut by a ban at once.
        let flow = UdpFlow::new(&c.ns, SocketAddr::new(pbx, 5061))?;
        assert!(
            flow.exchange(Duration::from_secs(1)),
            "flow works before the ban"
        );
        assert!(flow.exchange(Duration::from_secs(1)));
        agent.ok(&[
            "set",
            "add",
            "ban",
            &addr.to_string(),
            "--timeout",
            "3s",
            "--comment",
            "e2e ban",
        ])?;
        let banned_at = Instant::now();
        assert!(
            !flow.exchange(DROP_TIMEOUT),
            "{addr}: the ban must cut the established flow"
        );
        let show = agent.ok(&["show"])?;
        assert!(
            show.contains(&addr.to_string()) && show.contains("e2e ban"),
            "{show}"
        );
        let explain = agent.ok(&["explain", &addr.to_string(), "5061/udp"])?;
        assert!(explain.contains("BLOCKED at stage bans"), "{explain}");
        // ...and expires on time: not before 2 s, by 5 s.
        assert!(!wait_until(Duration::from_millis(1800), || flow
            .exchange(Duration::from_millis(150))));
        assert!(
            wait_until(Duration::from_secs(4), || flow
                .exchange(Duration::from_millis(200))),
            "ban did not expire"
        );
        let lifetime = banned_at.elapsed();
        assert!(
            lifetime >= Duration::from_secs(2) && lifetime < Duration::from_secs(6),
            "{lifetime:?}"
        );

        // Known-good opens the PBX's signalling while it lives.
        let sip = SocketAddr::new(pbx, 5060);
        assert!(
            !probe(&c.ns, Proto::Udp, sip, DROP_TIMEOUT),
            "SIP is LAN-only here"
        );
        agent.ok(&[
            "set",
            "add",
            "known-good",
            &addr.to_string(),
            "--timeout",
            "2s",
        ])?;
        assert!(
            probe(&c.ns, Proto::Udp, sip, Duration::from_secs(1)),
            "known-good gets SIP"
        );
        assert!(
            !probe(&c.ns, Proto::Tcp, SocketAddr::new(pbx, 22), DROP_TIMEOUT),
            "known-good does not get SSH"
        );
        assert!(
            wait_until(Duration::from_secs(5), || !probe(
                &c.ns,
                Proto::Udp,
                sip,
                Duration::from_millis(200)
            )),
            "known-good did not expire"
        );

        // A per-user grant opens exactly one port for exactly one address.
        agent.ok(&[
            "grant",
            "add",
            &addr.to_string(),
            "22/tcp",
            "--timeout",
            "2s",
            "--comment",
            "ext 333",
        ])?;
        assert!(probe(
            &c.ns,
            Proto::Tcp,
            SocketAddr::new(pbx, 22),
            Duration::from_secs(1)
        ));
        assert!(
            wait_until(Duration::from_secs(5), || !probe(
                &c.ns,
                Proto::Tcp,
                SocketAddr::new(pbx, 22),
                Duration::from_millis(200)
            )),
            "grant did not expire"
        );
    }
    // Removing an element that is not there is a clear error.
    let err = agent.fails(&["set", "del", "ban", "192.0.2.99"])?;
    assert!(err.contains("not in set ban"), "{err}");
    Ok(())
}

#[test]
fn a_rejected_policy_leaves_the_ruleset_byte_identical() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("reject", &[("internet", "z-inet")])?;
    let agent = AgentHost::new(&lab.pbx)?;
    agent.apply(&agent.write("good.toml", ZONE_POLICY)?)?;
    let before = agent.table_json()?.expect("loaded");

    // Bad input the validator catches: file, line and field are named.
    for (text, line, field) in [
        ("[[services]]\nname = \"ssh\"\nzones = [\"dmz\"]\n", 3, "services[0].zones[0]"),
        ("[zones.local]\nnetworks = [\"10.0.0.0/8\"]\n[zones.other]\nnetworks = [\"10.1.0.0/16\"]\n", 4, "zones.other.networks[0]"),
        ("[zones.local]\nnetworks = [\"10.0.0.0/33\"]\n", 2, "zones.local.networks[0]"),
        ("[[services]]\nname = \"x\"\nports = [\"70000/tcp\"]\n", 3, "services[0].ports[0]"),
        ("[[services]]\nname = \"x\"\nports = [\"1/tcp\"]\n[[services]]\nname = \"x\"\nports = [\"2/tcp\"]\n", 5, "services[1].name"),
    ] {
        let bad = agent.write("bad.toml", text)?;
        let err = agent.fails(&["apply", bad.to_str().unwrap()])?;
        let want = format!("bad.toml:{line}:");
        assert!(err.contains(&want) && err.contains(field), "expected {want} and {field} in: {err}");
        assert!(err.contains("untouched"), "{err}");
        assert_eq!(agent.table_json()?.expect("still loaded"), before, "ruleset changed after: {text}");
    }

    // A transaction nft itself rejects (a rule naming a set that does not
    // exist) is atomic too: nothing of it lands.
    use palisade_agent::ruleset::{plan, render, DynMode, LiveTable, Nft};
    let nft = Nft::with_command(
        "ip",
        vec![
            "netns".into(),
            "exec".into(),
            lab.pbx.name().into(),
            "nft".into(),
        ],
    );
    let mut policy =
        palisade_model::parse_policy("management = [\"192.0.2.1\"]\n", "changed.toml")?;
    policy.services.retain(|s| s.name != "ssh");
    let live = LiveTable::parse(&before)?;
    let mut planned = plan(
        &render(&policy),
        Some(&live),
        &Default::default(),
        DynMode::Merge,
    );
    let mut objects = planned.batch.objects.to_vec();
    let poison: nftables::schema::NfObject = serde_json::from_str(
        r#"{"add":{"rule":{"family":"inet","table":"palisade","chain":"input","expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@no_such_set"}},{"drop":null}]}}}"#,
    )?;
    objects.push(poison);
    planned.batch.objects = objects.into();
    let err = nft
        .apply(&planned.batch)
        .expect_err("nft must reject the batch");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(agent.table_json()?.expect("still loaded"), before);
    Ok(())
}

#[test]
fn an_unconfirmed_apply_rolls_back_and_a_confirmed_one_stays() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("confirm", &[("internet", "z-inet")])?;
    let _ssh = Listener::start(&lab.pbx, &[(Proto::Tcp, 22)])?;
    let agent = AgentHost::new(&lab.pbx)?;
    let c = lab.client("internet");
    let ssh = SocketAddr::new(c.pbx_addrs()[0], 22);
    agent.apply(&agent.write("a.toml", "")?)?;
    let a = agent.table_json()?.expect("loaded");
    assert!(!probe(&c.ns, Proto::Tcp, ssh, DROP_TIMEOUT));

    let b = agent.write(
        "b.toml",
        "[[services]]\nname = \"ssh\"\nzones = [\"local\", \"internet\"]\n",
    )?;
    let out = agent.ok(&["apply", b.to_str().unwrap(), "--confirm-within", "2s"])?;
    assert!(out.contains("confirm"), "{out}");
    assert!(
        probe(&c.ns, Proto::Tcp, ssh, Duration::from_secs(1)),
        "the new policy is in force while pending"
    );
    assert!(agent.ok(&["show"])?.contains("pending change"));
    // Nobody confirms: the detached watchdog restores the previous ruleset.
    assert!(
        wait_until(Duration::from_secs(6), || !probe(
            &c.ns,
            Proto::Tcp,
            ssh,
            Duration::from_millis(200)
        )),
        "not rolled back"
    );
    let rolled = agent.table_json()?.expect("loaded");
    let marker = |j: &str| {
        j.split("palisade schema=")
            .nth(1)
            .map(|s| s[..40].to_string())
    };
    assert_eq!(marker(&rolled), marker(&a), "the previous policy is back");
    let err = agent.fails(&["confirm"])?;
    assert!(err.contains("nothing is waiting"), "{err}");
    let log = std::fs::read_to_string(agent.state_dir().join("rollbacks.jsonl"))?;
    assert!(log.contains("not confirmed before the deadline"), "{log}");

    // Confirmed in time: it stays after the deadline and becomes last good.
    agent.ok(&["apply", b.to_str().unwrap(), "--confirm-within", "2s"])?;
    agent.ok(&["confirm"])?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        probe(&c.ns, Proto::Tcp, ssh, Duration::from_secs(1)),
        "a confirmed change is kept"
    );
    let last_good = std::fs::read_to_string(agent.state_dir().join("last-good.toml"))?;
    assert!(last_good.contains("internet"), "{last_good}");
    Ok(())
}

const FOREIGN: &str = r#"
table inet foreign {
    set friends { type ipv4_addr; flags interval; elements = { 198.51.100.0/24 } }
    chain in { type filter hook input priority 10; policy accept; ip saddr @friends accept; tcp dport 2222 drop; }
}
table ip legacy {
    chain c { type filter hook input priority -5; policy accept; udp dport 7 drop; }
}
"#;

#[test]
fn foreign_tables_are_never_touched() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("foreign", &[("internet", "z-inet")])?;
    lab.pbx.nft(FOREIGN)?;
    let snapshot = || -> Result<(String, String)> {
        Ok((
            table_json(&lab.pbx, "inet", "foreign")?.expect("foreign"),
            table_json(&lab.pbx, "ip", "legacy")?.expect("legacy"),
        ))
    };
    let before = snapshot()?;
    let agent = AgentHost::new(&lab.pbx)?;
    agent.apply(&agent.write("a.toml", ZONE_POLICY)?)?;
    assert_eq!(snapshot()?, before);
    agent.ok(&["set", "add", "ban", "203.0.113.1", "--timeout", "1h"])?;
    agent.apply(&agent.write("b.toml", "management = [\"192.0.2.7\"]\n")?)?;
    assert_eq!(snapshot()?, before);
    let out = agent.ok(&["disable", "--uninstall"])?;
    assert!(out.contains("removed"), "{out}");
    assert!(agent.table_json()?.is_none(), "our table is gone");
    assert_eq!(
        snapshot()?,
        before,
        "foreign tables survive the uninstall byte for byte"
    );
    Ok(())
}

#[test]
fn a_killed_agent_leaves_its_rules_and_restores_the_last_good_policy() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("kill", &[("internet", "z-inet")])?;
    let _services = Listener::start(&lab.pbx, &[(Proto::Tcp, 22), (Proto::Udp, 5060)])?;
    let agent = AgentHost::new(&lab.pbx)?;
    std::fs::write(agent.config_path(), "[agent]\ncheck_interval = \"1s\"\n")?;
    let c = lab.client("internet");
    let ssh = SocketAddr::new(c.pbx_addrs()[1], 22);
    let sip = SocketAddr::new(c.pbx_addrs()[1], 5060);

    let mut daemon = agent.start_daemon()?;
    assert!(!probe(&c.ns, Proto::Tcp, ssh, DROP_TIMEOUT));
    assert!(probe(&c.ns, Proto::Udp, sip, Duration::from_secs(1)));
    let loaded = structure(&agent.table_json()?.expect("loaded"));
    daemon.kill()?;
    let now = || structure(&agent.table_json().unwrap().expect("loaded"));
    assert!(now() == loaded, "SIGKILL leaves the table as it was");
    assert!(
        !probe(&c.ns, Proto::Tcp, ssh, DROP_TIMEOUT),
        "still enforced after the kill"
    );
    assert!(probe(&c.ns, Proto::Udp, sip, Duration::from_secs(1)));

    // A restart with a broken config keeps the last good policy in force.
    std::fs::write(
        agent.config_path(),
        "[agent]\ncheck_interval = \"1s\"\n[zones.dmz]\n",
    )?;
    let mut daemon = agent.start_daemon()?;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        daemon.is_running(),
        "a broken config does not stop the daemon: {}",
        agent.daemon_log()
    );
    assert!(
        agent.daemon_log().contains("config rejected"),
        "{}",
        agent.daemon_log()
    );
    assert!(now() == loaded, "the last good policy stays in force");

    // Someone deletes our table behind the agent's back: the periodic check repairs it.
    lab.pbx
        .run("nft", &["delete", "table", "inet", "palisade"])?;
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .table_json()
            .ok()
            .flatten()
            .is_some()),
        "not repaired"
    );
    daemon.kill()?;
    Ok(())
}

#[test]
fn ssh_sessions_open_at_first_start_stay_reachable() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("guard", &[("admin", "z-admin"), ("stranger", "z-strange")])?;
    let agent = AgentHost::new(&lab.pbx)?;
    // A real SSH-like session: a listener on 22 that keeps its connections.
    let listener = lab.pbx.enter(|| std::net::TcpListener::bind("[::]:22"))?;
    let admin = lab.client("admin");
    let target = SocketAddr::new(admin.pbx_addrs()[0], 22);
    let session = admin
        .ns
        .enter(|| std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)))?;
    let (held, _) = listener.accept()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || loop {
        let _ = listener.accept();
        std::thread::sleep(Duration::from_millis(20));
    });

    agent.apply(&agent.write("p.toml", "")?)?;
    let stranger = lab.client("stranger");
    assert!(!probe(
        &stranger.ns,
        Proto::Tcp,
        SocketAddr::new(stranger.pbx_addrs()[0], 22),
        DROP_TIMEOUT
    ));
    assert!(
        probe(&admin.ns, Proto::Tcp, target, Duration::from_secs(1)),
        "the admin can open a new session"
    );
    let explain = agent.ok(&["explain", &admin.addrs()[0].to_string(), "22/tcp"])?;
    assert!(explain.contains("ALLOWED at stage management"), "{explain}");
    drop((session, held));
    let _: IpAddr = admin.addrs()[0];
    Ok(())
}

#[test]
fn the_daemon_serves_prometheus_metrics() -> Result<()> {
    use std::io::{Read, Write};
    require_root_tools()?;
    let lab = Lab::new("metrics", &[("internet", "z-inet")])?;
    let agent = AgentHost::new(&lab.pbx)?;
    std::fs::write(
        agent.config_path(),
        "[agent]\nmetrics_listen = \"127.0.0.1:9464\"\n",
    )?;
    let mut cmd = agent.command(&["run"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _daemon = lab.pbx.spawn(cmd)?;
    let scrape = || -> Option<String> {
        let mut s = lab
            .pbx
            .enter(|| std::net::TcpStream::connect("127.0.0.1:9464"))
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            body = scrape().unwrap_or_default();
            body.contains("palisade_ruleset_applies_total")
        }),
        "no metrics: {body}"
    );
    assert!(body.contains("palisade_nft_transaction_seconds"), "{body}");
    Ok(())
}

/// Whether `addr` is an element of `set` in the live table.
fn in_set(agent: &AgentHost<'_>, set: &str, addr: &str) -> bool {
    let Ok(Some(json)) = agent.table_json() else {
        return false;
    };
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|item| {
            item["set"]["name"] == set
                && item["set"]["elem"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["elem"]["val"] == addr || *e == addr)
        })
}

/// Manual bans go into the kernel at once, are refused for management and
/// allow-listed addresses, survive a reboot (table gone, state kept) and a
/// restart, and `unban` lifts them for good.
#[test]
fn manual_bans_survive_a_reboot_and_unban_lifts_them() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("banbook", &[("internet", "z-inet")])?;
    let agent = AgentHost::new(&lab.pbx)?;
    std::fs::write(
        agent.config_path(),
        "management = [\"192.0.2.10\"]\n[responsive]\nallow = [\"198.51.100.0/24\"]\n[agent]\ncheck_interval = \"1s\"\n",
    )?;
    let mut daemon = agent.start_daemon()?;

    let out = agent.ok(&["ban", "203.0.113.9", "--for", "1h", "--reason", "test"])?;
    assert!(out.contains("banned"), "{out}");
    assert!(
        in_set(&agent, "ban_v4", "203.0.113.9"),
        "in the kernel at once"
    );
    agent.ok(&["ban", "2001:db8::66", "--for", "2h"])?;
    assert!(in_set(&agent, "ban_v6", "2001:db8::66"));
    let refused = agent.fails(&["ban", "192.0.2.10"])?;
    assert!(refused.contains("management"), "{refused}");
    let refused = agent.fails(&["ban", "198.51.100.7"])?;
    assert!(refused.contains("allow-list"), "{refused}");
    let explained = agent.ok(&["explain", "203.0.113.9", "5060/udp"])?;
    assert!(explained.contains("manual: test"), "{explained}");

    // A reboot: the daemon stops, the kernel forgets everything, the state stays.
    daemon.kill()?;
    lab.pbx
        .run("nft", &["delete", "table", "inet", "palisade"])?;
    let mut daemon = agent.start_daemon()?;
    assert!(
        wait_until(Duration::from_secs(5), || in_set(
            &agent,
            "ban_v4",
            "203.0.113.9"
        ) && in_set(
            &agent,
            "ban_v6",
            "2001:db8::66"
        )),
        "bans restored after the reboot: {}",
        agent.daemon_log()
    );

    agent.ok(&["unban", "203.0.113.9"])?;
    assert!(!in_set(&agent, "ban_v4", "203.0.113.9"));
    // Unbanning what is not banned is fine.
    agent.ok(&["unban", "203.0.113.200"])?;
    // The lift holds across the periodic check and a restart.
    std::thread::sleep(Duration::from_millis(1500));
    daemon.kill()?;
    let mut daemon = agent.start_daemon()?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !in_set(&agent, "ban_v4", "203.0.113.9"),
        "the lift is remembered"
    );
    assert!(
        in_set(&agent, "ban_v6", "2001:db8::66"),
        "the other ban stays"
    );
    daemon.kill()?;
    Ok(())
}
