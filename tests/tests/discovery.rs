//! End to end: the agent reads a PBX's own configuration and opens exactly what
//! it needs; edits take effect within 2 s; a broken file keeps the old rules.

use anyhow::Result;
use palisade_tests::{probe, require_root_tools, AgentHost, Lab, Listener, Proto};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const DROP_TIMEOUT: Duration = Duration::from_millis(400);

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f().then(|| start.elapsed())
}

fn pjsip(trunks: &[(&str, String)]) -> String {
    let mut s = String::from(
        "[global]\ntype=global\n\n[transport-udp]\ntype=transport\nprotocol=udp\nbind=0.0.0.0:5060\n\n",
    );
    for (name, matches) in trunks {
        s.push_str(&format!(
            "[{name}]\ntype=endpoint\ncontext=from-trunk\naors={name}\n\n[{name}]\ntype=aor\n\n[{name}-identify]\ntype=identify\nendpoint={name}\nmatch={matches}\n\n"
        ));
    }
    s
}

/// Replaces a file the way editors do: write a new file, rename it over.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

#[test]
fn trunks_in_pjsip_conf_are_let_in_and_followed() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new(
        "disc",
        &[
            ("carrier", "z-carrier"),
            ("branch", "z-branch"),
            ("stranger", "z-stranger"),
        ],
    )?;
    let _sip = Listener::start(&lab.pbx, &[(Proto::Udp, 5060), (Proto::Tcp, 5060)])?;
    let agent = AgentHost::new(&lab.pbx)?;
    let ast = agent
        .write("asterisk-dir-marker", "")?
        .with_file_name("asterisk");
    std::fs::create_dir_all(&ast)?;
    let none = ast.with_file_name("absent");
    // SIP only for the LAN: from elsewhere only the discovered trunks get in.
    std::fs::write(
        agent.config_path(),
        format!(
            "[[services]]\nname = \"sip-udp\"\nzones = [\"local\"]\n[agent]\nmetrics_listen = \"127.0.0.1:9464\"\n[agent.discovery]\nasterisk = \"{}\"\nfreeswitch = \"{}\"\nkamailio = \"{}\"\n",
            ast.display(),
            none.display(),
            none.display()
        ),
    )?;
    let (carrier, branch, stranger) = (
        lab.client("carrier"),
        lab.client("branch"),
        lab.client("stranger"),
    );
    let pjsip_conf = ast.join("pjsip.conf");
    std::fs::write(
        &pjsip_conf,
        pjsip(&[("carrier", format!("{},{}", carrier.v4, carrier.v6))]),
    )?;

    let _daemon = agent.start_daemon()?;
    let sip = |c: &palisade_tests::Client, i: usize| SocketAddr::new(c.pbx_addrs()[i], 5060);
    for i in 0..2 {
        assert!(
            wait_until(Duration::from_secs(5), || probe(
                &carrier.ns,
                Proto::Udp,
                sip(carrier, i),
                Duration::from_millis(300)
            ))
            .is_some(),
            "the trunk named in pjsip.conf is let in on SIP: {}",
            agent.daemon_log()
        );
        assert!(
            !probe(&stranger.ns, Proto::Udp, sip(stranger, i), DROP_TIMEOUT),
            "an unknown host is not"
        );
        assert!(!probe(&branch.ns, Proto::Udp, sip(branch, i), DROP_TIMEOUT));
    }
    assert!(
        !probe(
            &carrier.ns,
            Proto::Tcp,
            SocketAddr::new(carrier.pbx_addrs()[0], 5060),
            DROP_TIMEOUT
        ),
        "only the transports pjsip.conf binds are open"
    );
    let explain = agent.ok(&["explain", &carrier.v4.to_string(), "5060/udp"])?;
    assert!(
        explain.contains("trunk \"carrier\"") && explain.contains("pjsip.conf:"),
        "{explain}"
    );

    // Adding a trunk opens it within 2 s.
    write_atomic(
        &pjsip_conf,
        &pjsip(&[
            ("carrier", format!("{},{}", carrier.v4, carrier.v6)),
            ("branch", format!("{}/32", branch.v4)),
        ]),
    )?;
    let took = wait_until(Duration::from_secs(4), || {
        probe(
            &branch.ns,
            Proto::Udp,
            sip(branch, 0),
            Duration::from_millis(200),
        )
    });
    let took =
        took.unwrap_or_else(|| panic!("the new trunk was not opened: {}", agent.daemon_log()));
    assert!(took < Duration::from_secs(2), "opened after {took:?}");

    // Breaking the file keeps the old rules and says why.
    write_atomic(&pjsip_conf, "[carrier\ntype=endpoint\n")?;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        probe(
            &branch.ns,
            Proto::Udp,
            sip(branch, 0),
            Duration::from_secs(1)
        ),
        "a broken file removes nothing"
    );
    assert!(probe(
        &carrier.ns,
        Proto::Udp,
        sip(carrier, 1),
        Duration::from_secs(1)
    ));
    let show = agent.ok(&["show"])?;
    assert!(
        show.contains("LAST READ REJECTED") && show.contains("pjsip.conf:1"),
        "{show}\n--- daemon log:\n{}",
        agent.daemon_log()
    );
    assert!(
        agent.daemon_log().contains("pjsip.conf:1"),
        "{}",
        agent.daemon_log()
    );

    // Fixed again: the branch trunk removed from the file is closed again.
    write_atomic(
        &pjsip_conf,
        &pjsip(&[("carrier", format!("{},{}", carrier.v4, carrier.v6))]),
    )?;
    assert!(
        wait_until(Duration::from_secs(4), || !probe(
            &branch.ns,
            Proto::Udp,
            sip(branch, 0),
            Duration::from_millis(200)
        ))
        .is_some(),
        "a removed trunk is closed"
    );
    Ok(())
}

#[test]
fn a_trunk_named_by_dns_follows_its_a_record() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("dns", &[("carrier", "z-carrier"), ("moved", "z-moved")])?;
    let _sip = Listener::start(&lab.pbx, &[(Proto::Udp, 5060)])?;
    let agent = AgentHost::new(&lab.pbx)?;
    let (carrier, moved) = (lab.client("carrier"), lab.client("moved"));

    // A real DNS server inside the PBX namespace, serving the trunk's name.
    let hosts = agent.write("hosts", &format!("{} sip.carrier.test\n", carrier.v4))?;
    let mut dns = lab.pbx.command("dnsmasq");
    dns.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--port=5353",
        "--local=/test/",
        "--user=root",
        "--pid-file=",
        "--local-ttl=2",
    ])
    .arg(format!("--addn-hosts={}", hosts.display()))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let dns = lab.pbx.spawn(dns)?;

    let ast = hosts.with_file_name("asterisk");
    std::fs::create_dir_all(&ast)?;
    std::fs::write(
        ast.join("pjsip.conf"),
        "[udp]\ntype=transport\nprotocol=udp\nbind=0.0.0.0\n\n[carrier]\ntype=registration\nserver_uri=sip:sip.carrier.test:5060\nclient_uri=sip:me@sip.carrier.test\n",
    )?;
    let absent = ast.with_file_name("absent");
    std::fs::write(
        agent.config_path(),
        format!(
            "[[services]]\nname = \"sip-udp\"\nzones = [\"local\"]\n[agent]\nmetrics_listen = \"127.0.0.1:9464\"\n[agent.discovery]\nasterisk = \"{}\"\nfreeswitch = \"{}\"\nkamailio = \"{}\"\n[agent.resolver]\nnameservers = [\"127.0.0.1:5353\"]\nmin_ttl = \"1s\"\n",
            ast.display(),
            absent.display(),
            absent.display()
        ),
    )?;
    let _daemon = agent.start_daemon()?;
    let sip = |c: &palisade_tests::Client| SocketAddr::new(c.pbx_addrs()[0], 5060);
    assert!(
        wait_until(Duration::from_secs(5), || probe(
            &carrier.ns,
            Proto::Udp,
            sip(carrier),
            Duration::from_millis(300)
        ))
        .is_some(),
        "the trunk's resolved address is let in: {}",
        agent.daemon_log()
    );
    assert!(!probe(&moved.ns, Proto::Udp, sip(moved), DROP_TIMEOUT));
    let explain = agent.ok(&["explain", &carrier.v4.to_string(), "5060/udp"])?;
    assert!(
        explain.contains("trunk \"carrier\"") && explain.contains("sip.carrier.test -> "),
        "{explain}"
    );

    // The A record moves: within the TTL the new address is in, the old one out.
    let applies = agent.daemon_log().matches("ruleset applied").count();
    std::fs::write(&hosts, format!("{} sip.carrier.test\n", moved.v4))?;
    dns.signal(palisade_tests::Signal::SIGHUP)?;
    let took = wait_until(Duration::from_secs(8), || {
        probe(
            &moved.ns,
            Proto::Udp,
            sip(moved),
            Duration::from_millis(200),
        ) && !probe(
            &carrier.ns,
            Proto::Udp,
            sip(carrier),
            Duration::from_millis(200),
        )
    });
    let took =
        took.unwrap_or_else(|| panic!("the trunk set did not follow DNS: {}", agent.daemon_log()));
    assert!(
        took < Duration::from_secs(5),
        "followed after {took:?} (TTL 2 s)"
    );
    // Element changes only: the policy's rules were never re-applied.
    assert_eq!(
        agent.daemon_log().matches("ruleset applied").count(),
        applies,
        "{}",
        agent.daemon_log()
    );
    drop(dns);
    Ok(())
}
