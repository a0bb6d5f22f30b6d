//! The resolver against a real DNS server: dnsmasq (Debian: `dnsmasq-base`)
//! serving a made-up `.test` zone on 127.0.0.1:5353 inside a network namespace
//! of this test's own. The lookups run on a thread that joined that namespace,
//! so no query can leave it (it has nothing but `lo`), and the system's
//! resolv.conf is never used.
//!
//! Needs root, `ip` and `dnsmasq`, and fails (rather than skips) without them.

use std::fs::File;
use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use palisade_agent::resolve::{
    refresh_due, Answer, Event, HostKey, ResolveError, Resolver, ResolverConfig, Tracker,
    ELEMENT_TIMEOUT_MARGIN,
};
use palisade_model::Transport;

const S: Duration = Duration::from_secs(1);
const PORT: u16 = 5353;
/// dnsmasq's `--local-ttl`: the TTL of every record it serves here.
const LOCAL_TTL: u32 = 7;

const HOSTS: &str = "\
192.0.2.10 trunk.test
2001:db8::10 trunk.test
192.0.2.11 sip1.trunk.test
2001:db8::11 sip1.trunk.test
192.0.2.12 sip2.trunk.test
192.0.2.13 sips.trunk.test
192.0.2.20 branch.test
2001:db8::30 v6only.test
";

const SRV: &[&str] = &[
    "_sip._udp.trunk.test,sip1.trunk.test,5060,10,5",
    "_sip._udp.trunk.test,sip2.trunk.test,5070,20,0",
    "_sips._tcp.trunk.test,sips.trunk.test,5061,10,0",
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| ip(s)).collect();
    v.sort();
    v
}

/// A network namespace, deleted on drop (also when the test panics). Named
/// like the workspace's test harness names its own (`pal<tag>-<pid>-<n>`), so
/// its stale-namespace cleanup also removes ones a killed run left behind.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("palresolve-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a new thread that joined the namespace, with a Tokio
    /// runtime of that thread only (sockets belong to the namespace of the
    /// thread that creates them); a panic in `f` is re-raised here.
    fn block_on<F: std::future::Future<Output = ()>>(&self, f: impl FnOnce() -> F + Send) {
        let file = File::open(self.path()).expect("open the namespace");
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the namespace");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime")
                    .block_on(f());
            });
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        });
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port` in the
    /// namespace.
    fn accepts(&self, port: u16) -> bool {
        let file = File::open(self.path()).expect("open the namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the namespace");
                    TcpStream::connect(("127.0.0.1", port)).is_ok()
                })
                .join()
                .expect("probe thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("resolve_dns: cannot delete namespace {}", self.name);
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// dnsmasq serving `HOSTS` and `SRV` in a namespace; killed on drop.
struct Dnsmasq {
    child: Option<Child>,
    dir: tempfile::TempDir,
    netns: String,
}

impl Dnsmasq {
    fn start(ns: &Netns) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hosts"), HOSTS).unwrap();
        let mut server = Dnsmasq {
            child: None,
            dir,
            netns: ns.name.clone(),
        };
        server.spawn(ns);
        server
    }

    fn spawn(&mut self, ns: &Netns) {
        let hosts = self.dir.path().join("hosts");
        let log = File::create(self.dir.path().join("dnsmasq.log")).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--local=/test/",
                "--user=root",
                "--pid-file=",
                "--log-facility=-",
            ])
            .arg(format!("--port={PORT}"))
            .arg(format!("--local-ttl={LOCAL_TTL}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args(SRV.iter().map(|s| format!("--srv-host={s}")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start dnsmasq (Debian: apt-get install dnsmasq-base): {e}")
        });
        self.child = Some(child);
        let deadline = Instant::now() + 10 * S;
        while !ns.accepts(PORT) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dnsmasq exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "dnsmasq not up: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// Rewrites the hosts file and makes dnsmasq re-read it.
    fn set_hosts(&self, text: &str) {
        std::fs::write(self.dir.path().join("hosts"), text).unwrap();
        let pid = self.child.as_ref().expect("dnsmasq running").id();
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).expect("SIGHUP dnsmasq");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn require_root_tools() {
    // /proc/self belongs to the process's effective user.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert!(
        uid == 0,
        "resolve_dns needs root (network namespaces): run via sudo ./deploy/test.sh"
    );
    for tool in ["ip", "dnsmasq"] {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(tool).is_file());
        assert!(
            found,
            "resolve_dns needs `{tool}` (Debian: apt-get install iproute2 dnsmasq-base)"
        );
    }
}

fn config(min_ttl: Duration, max_ttl: Duration) -> ResolverConfig {
    ResolverConfig {
        nameservers: vec![format!("127.0.0.1:{PORT}").parse().unwrap()],
        min_ttl,
        max_ttl,
        timeout: S,
        ..ResolverConfig::default()
    }
}

async fn lookup(r: &Resolver, name: &str, port: Option<u16>, t: Option<Transport>) -> Answer {
    r.lookup(name, port, t)
        .await
        .unwrap_or_else(|e| panic!("lookup {name}: {e}"))
}

#[test]
fn lookups_against_dnsmasq() {
    require_root_tools();
    let ns = Netns::new();
    let server = Dnsmasq::start(&ns);
    ns.block_on(|| async {
        let r = Resolver::new(&config(S, 3600 * S)).unwrap();

        // A and AAAA; a port turns SRV off although trunk.test has SRV.
        let a = lookup(&r, "trunk.test", Some(5060), None).await;
        assert_eq!(a.addrs, ips(&["192.0.2.10", "2001:db8::10"]), "{a:?}");
        assert!(
            a.via.contains(&"A trunk.test -> 192.0.2.10".to_string()),
            "{a:?}"
        );
        assert!(a
            .via
            .contains(&"AAAA trunk.test -> 2001:db8::10".to_string()));
        // The TTL the server gave (above the 1 s floor used here).
        assert_eq!(a.ttl, LOCAL_TTL * S);

        // A only, AAAA only (the missing family is not an error).
        let a = lookup(&r, "branch.test", None, None).await;
        assert_eq!(a.addrs, ips(&["192.0.2.20"]));
        let a = lookup(&r, "V6ONLY.test.", None, None).await;
        assert_eq!(a.addrs, ips(&["2001:db8::30"]));

        // No port: SRV first, all three SIP services, every target.
        let a = lookup(&r, "trunk.test", None, None).await;
        assert_eq!(
            a.addrs,
            ips(&["192.0.2.11", "2001:db8::11", "192.0.2.12", "192.0.2.13"]),
            "{a:?}"
        );
        assert!(
            a.via.contains(
                &"SRV _sip._udp.trunk.test -> sip1.trunk.test:5060 (priority 10, weight 5)"
                    .to_string()
            ),
            "{a:?}"
        );
        assert!(a
            .via
            .contains(&"A sip2.trunk.test -> 192.0.2.12".to_string()));
        // The transport hint picks the service.
        let a = lookup(&r, "trunk.test", None, Some(Transport::Tls)).await;
        assert_eq!(a.addrs, ips(&["192.0.2.13"]), "{a:?}");
        let a = lookup(&r, "trunk.test", None, Some(Transport::Udp)).await;
        assert_eq!(a.addrs, ips(&["192.0.2.11", "2001:db8::11", "192.0.2.12"]));
        // No _sip._tcp record: the name's own A/AAAA.
        let a = lookup(&r, "trunk.test", None, Some(Transport::Tcp)).await;
        assert_eq!(a.addrs, ips(&["192.0.2.10", "2001:db8::10"]), "{a:?}");

        // NXDOMAIN is an error, not an empty answer.
        match r.lookup("nosuch.test", None, None).await {
            Err(ResolveError::NotFound { name }) => assert_eq!(name, "nosuch.test"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        // An address needs no DNS.
        let a = lookup(&r, "192.0.2.99", None, None).await;
        assert_eq!(a.addrs, ips(&["192.0.2.99"]));

        // The TTL is clamped: 7 s → 30 s with the default floor, → 5 s under
        // a 5 s ceiling.
        let r = Resolver::new(&config(30 * S, 3600 * S)).unwrap();
        assert_eq!(lookup(&r, "branch.test", None, None).await.ttl, 30 * S);
        assert_eq!(lookup(&r, "trunk.test", None, None).await.ttl, 30 * S);
        let r = Resolver::new(&config(S, 5 * S)).unwrap();
        assert_eq!(lookup(&r, "branch.test", None, None).await.ttl, 5 * S);
    });
    drop(server);
}

#[test]
fn tracker_follows_record_changes_and_outages() {
    require_root_tools();
    let ns = Netns::new();
    let mut server = Dnsmasq::start(&ns);
    let server = &mut server;
    let ns_ref = &ns;
    ns.block_on(|| async move {
        let config = ResolverConfig {
            grace: 3600 * S,
            ..config(S, 3600 * S)
        };
        let r = Resolver::new(&config).unwrap();
        let mut t = Tracker::new(&config);
        let branch = HostKey::new("branch.test", None, None);
        let trunk = HostKey::new("trunk.test", None, Some(Transport::Udp));
        t.track(branch.clone());
        t.track(trunk.clone());

        // First round: both due, everything added with ttl + grace.
        let t0 = Instant::now();
        let d = refresh_due(&mut t, &r, t0).await;
        let mut added: Vec<IpAddr> = d.add.iter().map(|e| e.addr).collect();
        added.sort();
        assert_eq!(
            added,
            ips(&["192.0.2.20", "192.0.2.11", "2001:db8::11", "192.0.2.12"]),
            "{d:?}"
        );
        for e in &d.add {
            assert_eq!(
                e.timeout,
                LOCAL_TTL * S + config.grace + ELEMENT_TIMEOUT_MARGIN
            );
        }
        let e = d.add.iter().find(|e| e.addr == ip("192.0.2.20")).unwrap();
        assert_eq!(e.comment, "branch.test");
        assert!(d.remove.is_empty());
        // Nothing is due before the TTL.
        assert!(t.due(t0 + (LOCAL_TTL - 1) * S).is_empty());
        assert!(refresh_due(&mut t, &r, t0 + S).await.is_noop());

        // The A record changes; dnsmasq re-reads its hosts on SIGHUP.
        server.set_hosts(&HOSTS.replace("192.0.2.20 branch.test", "192.0.2.21 branch.test"));
        let deadline = Instant::now() + 10 * S;
        while lookup(&r, "branch.test", None, None).await.addrs != ips(&["192.0.2.21"]) {
            assert!(Instant::now() < deadline, "dnsmasq did not reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t1 = t0 + LOCAL_TTL * S;
        assert_eq!(t.due(t1).len(), 2);
        let d = refresh_due(&mut t, &r, t1).await;
        assert_eq!(d.remove, ips(&["192.0.2.20"]), "{d:?}");
        assert_eq!(
            d.add.iter().map(|e| e.addr).collect::<Vec<_>>(),
            ips(&["192.0.2.21"])
        );
        // The trunk's unchanged addresses get a fresh timeout.
        assert_eq!(d.refresh.len(), 3, "{d:?}");
        assert!(matches!(&d.events[..], [Event::Changed { key, .. }] if *key == branch));

        // The server goes away: a failure, logged once, addresses kept.
        server.stop();
        let t2 = t1 + LOCAL_TTL * S;
        let d = refresh_due(&mut t, &r, t2).await;
        assert!(d.is_noop(), "{d:?}");
        let failed: Vec<&HostKey> = d
            .events
            .iter()
            .map(|e| match e {
                Event::Failed {
                    key,
                    error: ResolveError::Failed { .. },
                    kept,
                    ..
                } => {
                    assert!(!kept.is_empty());
                    key
                }
                other => panic!("unexpected event {other:?}"),
            })
            .collect();
        assert_eq!(failed, [&branch, &trunk]);
        assert_eq!(t.answer(&branch).unwrap().addrs, ips(&["192.0.2.21"]));
        assert_eq!(t.elements(t2).len(), 4);
        // Retried at the floor, silently.
        let t3 = t2 + config.min_ttl;
        assert_eq!(t.due(t3).len(), 2);
        let d = refresh_due(&mut t, &r, t3).await;
        assert!(d.is_noop() && d.events.is_empty(), "{d:?}");

        // Back again: recovery is reported once and the timeouts renewed.
        server.spawn(ns_ref);
        let t4 = t3 + config.min_ttl;
        let d = refresh_due(&mut t, &r, t4).await;
        assert!(d.add.is_empty() && d.remove.is_empty(), "{d:?}");
        assert_eq!(d.refresh.len(), 4);
        assert!(d
            .events
            .iter()
            .all(|e| matches!(e, Event::Recovered { failures: 2, .. })));
        assert_eq!(d.events.len(), 2);
    });
}
