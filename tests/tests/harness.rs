//! End-to-end tests of the harness itself, against the real kernel: they
//! need root, `ip` and `nft`, and fail (rather than skip) without them.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use palisade_tests::{
    cleanup_stale_namespaces, netns_names, probe, probe_all, require_root_tools, workspace_bin,
    Lab, Listener, Netns, ProbeSpec, Proto, Signal, UdpFlow,
};

/// Timeout for probes expected to be dropped: every one of them waits this
/// long, so it is short. Packets between namespaces take microseconds.
const DROPPED: Duration = Duration::from_millis(300);
/// Timeout for probes expected to pass (they return as soon as they do) or
/// to be refused (they return as soon as the reset or ICMP error arrives).
const ANSWERED: Duration = Duration::from_secs(3);

/// Drops SIP/UDP in the PBX's input hook, in the command form an operator
/// would type.
fn drop_sip(pbx: &Netns) -> Result<()> {
    pbx.run("nft", &["add", "table", "inet", "t"])?;
    pbx.run(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "t",
            "in",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    )?;
    pbx.run(
        "nft",
        &[
            "add", "rule", "inet", "t", "in", "udp", "dport", "5060", "drop",
        ],
    )?;
    Ok(())
}

/// Every PBX address of the lab: a client reaches those on other links via
/// its default route.
fn all_pbx_addrs(lab: &Lab) -> Vec<IpAddr> {
    lab.clients.iter().flat_map(|c| c.pbx_addrs()).collect()
}

#[test]
fn probes_reach_listeners_and_an_nft_rule_cuts_only_udp() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("probe", &[("alpha", "z-alpha"), ("beta", "z-beta")])?;
    let _services = Listener::start(&lab.pbx, &[(Proto::Tcp, 22), (Proto::Udp, 5060)])?;
    let pbx_addrs = all_pbx_addrs(&lab);

    // Open ports answer from every client on every PBX address, v4 and v6.
    let mut open = Vec::new();
    for client in &lab.clients {
        for &addr in &pbx_addrs {
            open.push(ProbeSpec::new(
                &client.ns,
                Proto::Tcp,
                SocketAddr::new(addr, 22),
            ));
            open.push(ProbeSpec::new(
                &client.ns,
                Proto::Udp,
                SocketAddr::new(addr, 5060),
            ));
        }
    }
    let results = probe_all(&open, ANSWERED);
    for (spec, ok) in open.iter().zip(&results) {
        ensure!(
            ok,
            "{} {} from {} failed",
            spec.proto,
            spec.target,
            spec.ns.name()
        );
    }

    // Closed ports fail, and fast: a reset or a port unreachable is an
    // answer, not a timeout.
    for client in &lab.clients {
        for target_addr in client.pbx_addrs() {
            for (proto, port) in [(Proto::Tcp, 23), (Proto::Udp, 5061)] {
                let target = SocketAddr::new(target_addr, port);
                let started = Instant::now();
                ensure!(
                    !probe(&client.ns, proto, target, ANSWERED),
                    "{proto} {target} passed"
                );
                ensure!(
                    started.elapsed() < ANSWERED / 2,
                    "{proto} {target} took {:?} to fail: refused should be immediate",
                    started.elapsed()
                );
            }
        }
    }

    drop_sip(&lab.pbx)?;

    // A matrix of a few hundred cells, most of them dropped, stays quick and
    // keeps its order: TCP 22 passes, SIP is dropped, TCP 23 is refused.
    let cells = [
        (Proto::Tcp, 22, true),
        (Proto::Udp, 5060, false),
        (Proto::Tcp, 23, false),
    ];
    let mut specs = Vec::new();
    let mut expected = Vec::new();
    for _round in 0..10 {
        for client in &lab.clients {
            for &addr in &pbx_addrs {
                for (proto, port, passes) in cells {
                    specs.push(ProbeSpec::new(
                        &client.ns,
                        proto,
                        SocketAddr::new(addr, port),
                    ));
                    expected.push(passes);
                }
            }
        }
    }
    let started = Instant::now();
    let results = probe_all(&specs, DROPPED);
    let elapsed = started.elapsed();
    for ((spec, ok), want) in specs.iter().zip(&results).zip(&expected) {
        ensure!(
            ok == want,
            "{} {} from {}: got {ok}, want {want}",
            spec.proto,
            spec.target,
            spec.ns.name()
        );
    }
    ensure!(
        elapsed < Duration::from_secs(5),
        "{} probes took {elapsed:?}",
        specs.len()
    );
    Ok(())
}

#[test]
fn an_nft_rule_cuts_an_established_udp_flow() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("flow", &[("alpha", "z-alpha")])?;
    let _sip = Listener::start(&lab.pbx, &[(Proto::Udp, 5060)])?;
    let alpha = lab.client("alpha");
    let flows = alpha
        .pbx_addrs()
        .map(|addr| UdpFlow::new(&alpha.ns, SocketAddr::new(addr, 5060)));
    let flows = flows.into_iter().collect::<Result<Vec<_>>>()?;

    for flow in &flows {
        let local = flow.local_addr()?;
        for _ in 0..3 {
            ensure!(
                flow.exchange(ANSWERED),
                "flow to {} did not echo",
                flow.target()
            );
        }
        // The same 5-tuple throughout, hence the same conntrack entry.
        ensure!(flow.local_addr()? == local);
    }

    drop_sip(&lab.pbx)?;
    for flow in &flows {
        ensure!(
            !flow.exchange(DROPPED),
            "flow to {} survived the cut",
            flow.target()
        );
    }

    // The flow itself is fine: removing the rule lets it through again.
    lab.pbx.run("nft", &["delete", "table", "inet", "t"])?;
    for flow in &flows {
        ensure!(
            flow.exchange(ANSWERED),
            "flow to {} did not recover",
            flow.target()
        );
    }
    Ok(())
}

#[test]
fn dropping_a_lab_removes_its_namespaces_and_processes() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("drop", &[("alpha", "z-alpha"), ("beta", "z-beta")])?;
    let names = lab.netns_names();
    ensure!(names.len() == 3);
    let live = netns_names()?;
    ensure!(
        names.iter().all(|n| live.contains(n)),
        "{names:?} not all in {live:?}"
    );

    // A process the test started without a guard, and one with a guard
    // that outlives the lab: both must die with their namespace.
    let mut unguarded = lab.pbx.command("sleep").arg("60").spawn()?;
    let mut sleep = lab.client("beta").ns.command("sleep");
    sleep.arg("60");
    let mut guarded = lab.client("beta").ns.spawn(sleep)?;
    let services = Listener::start(&lab.pbx, &[(Proto::Tcp, 22)])?;

    drop(lab);

    let live = netns_names()?;
    ensure!(
        names.iter().all(|n| !live.contains(n)),
        "{names:?} left in {live:?}"
    );
    let status = wait_child(&mut unguarded, ANSWERED)?;
    ensure!(status.signal() == Some(Signal::SIGKILL as i32), "{status}");
    let status = guarded
        .wait_timeout(ANSWERED)?
        .context("guarded child still runs")?;
    ensure!(status.signal() == Some(Signal::SIGKILL as i32), "{status}");
    // A listener outliving its namespace still stops cleanly.
    drop(services);
    Ok(())
}

#[test]
fn namespaces_are_removed_when_a_test_panics() -> Result<()> {
    require_root_tools()?;
    let names = Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let lab = Lab::new("panic", &[("alpha", "z-alpha")]).expect("lab");
        *names.lock().unwrap() = lab.netns_names();
        let _services = Listener::start(&lab.pbx, &[(Proto::Udp, 5060)]).expect("listener");
        panic!("deliberate panic while a lab is up");
    });
    ensure!(outcome.is_err(), "the closure was meant to panic");
    let names = names.into_inner().unwrap();
    ensure!(names.len() == 2, "{names:?}");
    let live = netns_names()?;
    ensure!(
        names.iter().all(|n| !live.contains(n)),
        "{names:?} left in {live:?}"
    );
    Ok(())
}

#[test]
fn child_guard_signals_kills_and_reaps() -> Result<()> {
    require_root_tools()?;
    let ns = Netns::new("child")?;

    let mut cmd = ns.command("sleep");
    cmd.arg("60");
    let mut child = ns.spawn(cmd)?;
    ensure!(child.is_running() && child.pid() > 0);
    child.signal(Signal::SIGTERM)?;
    let status = child.wait_timeout(ANSWERED)?.context("SIGTERM ignored")?;
    ensure!(status.signal() == Some(Signal::SIGTERM as i32), "{status}");
    ensure!(!child.is_running());

    // A plain command (not from `Netns::command`) is moved into the
    // namespace too.
    let mut plain = Command::new("sleep");
    plain.arg("60");
    let mut child = ns.spawn(plain)?;
    let pid = child.pid();
    let child_ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    let ns_inode = std::fs::metadata(ns.path())?.ino();
    ensure!(
        child_ns.to_string_lossy() == format!("net:[{ns_inode}]"),
        "child is in {child_ns:?}, namespace is inode {ns_inode}"
    );
    let status = child.kill()?;
    ensure!(status.signal() == Some(Signal::SIGKILL as i32), "{status}");

    // Dropping a guard kills and reaps: the pid is gone, not a zombie.
    let mut cmd = ns.command("sleep");
    cmd.arg("60");
    let child = ns.spawn(cmd)?;
    let pid = child.pid();
    drop(child);
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} remains"
    );
    Ok(())
}

#[test]
fn enter_and_sysctl_act_inside_the_namespace() -> Result<()> {
    require_root_tools()?;
    let ns = Netns::new("enter")?;
    let other = Netns::new("enter")?;
    ensure!(ns.name() != other.name());

    let ns_inode = std::fs::metadata(ns.path())?.ino();
    let inside = ns.enter(|| std::fs::read_link("/proc/thread-self/ns/net"))?;
    ensure!(
        inside.to_string_lossy() == format!("net:[{ns_inode}]"),
        "{inside:?}"
    );
    let outside = std::fs::read_link("/proc/thread-self/ns/net")?;
    ensure!(outside != inside, "the caller's thread changed namespace");

    // A panic inside reaches the caller.
    let outcome = std::panic::catch_unwind(|| ns.enter(|| panic!("deliberate panic inside")));
    ensure!(outcome.is_err());

    // Settings made by `Netns::new`, seen by the `sysctl` tool.
    for key in [
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.accept_dad",
    ] {
        ensure!(ns.run("sysctl", &["-n", key])?.trim() == "0", "{key}");
    }
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ensure!(ns.run("sysctl", &["-n", "net.ipv4.ip_forward"])?.trim() == "1");
    ensure!(other.run("sysctl", &["-n", "net.ipv4.ip_forward"])?.trim() == "0");

    // Failures carry the command's output.
    let err = ns.run("ip", &["link", "show", "no-such-if"]).unwrap_err();
    ensure!(format!("{err:#}").contains("no-such-if"), "{err:#}");
    Ok(())
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed() -> Result<()> {
    require_root_tools()?;
    let mut exited = Command::new("true").spawn()?;
    exited.wait()?;
    let dead = format!("palstale-{}-0", exited.id());
    // Pid 1 and this process are alive: their namespaces must stay. (The
    // counters are chosen not to collide with concurrent runs of this test.)
    let me = std::process::id();
    let alive = [format!("palstale-1-{me}"), format!("palstale-{me}-999999")];
    for name in std::iter::once(&dead).chain(&alive) {
        run_ok(Command::new("ip").args(["netns", "add", name]))?;
    }

    cleanup_stale_namespaces()?;
    let live = netns_names()?;

    for name in &alive {
        run_ok(Command::new("ip").args(["netns", "del", name]))?;
    }
    ensure!(!live.contains(&dead), "{dead} survived the cleanup");
    ensure!(
        alive.iter().all(|n| live.contains(n)),
        "a live run's namespace was removed"
    );
    Ok(())
}

#[test]
fn workspace_bin_explains_a_missing_binary() {
    let err = workspace_bin("palisade-no-such-binary").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
    assert!(msg.contains("palisade-no-such-binary"), "{msg}");
}

fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(Instant::now() < deadline, "child {} still runs", child.id());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
