//! End to end: the real controller and real agents, each in its own network
//! namespace. Two sites of one tenant and a host of another tenant enrol
//! with tokens; a ban made at site A is in site B's kernel within 1 s and
//! never at the other tenant's host; site A's address is trusted at site B
//! (and nowhere else).

use anyhow::{bail, Context, Result};
use palisade_tests::{require_root_tools, set_elements, workspace_bin, AgentHost, Lab, Netns};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const URL: &str = "https://10.200.1.1:7443";

/// The controller in the lab's middle namespace, and an operator's bundle.
struct Controller {
    _guard: palisade_tests::ChildGuard,
    dir: tempfile::TempDir,
    bundle: PathBuf,
}

impl Controller {
    fn start(ns: &Netns) -> Result<Controller> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let bundle = dir.path().join("operator.pem");
        let bin = workspace_bin("palisade-controller")?;
        let out = std::process::Command::new(&bin)
            .arg("operator-cert")
            .arg("--data")
            .arg(&data)
            .args(["--name", "e2e", "--out"])
            .arg(&bundle)
            .output()?;
        if !out.status.success() {
            bail!(
                "operator-cert failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut cmd = ns.command(bin.to_str().expect("utf-8 path"));
        cmd.arg("run")
            .arg("--data")
            .arg(&data)
            .args([
                "--listen",
                "0.0.0.0:7443",
                "--name",
                "10.200.1.1",
                "--url",
                URL,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("controller.log"))?);
        let guard = ns.spawn(cmd)?;
        let ctl = Controller {
            _guard: guard,
            dir,
            bundle,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while ctl.operator(ns, &["tenants"]).is_err() {
            if Instant::now() > deadline {
                bail!("the controller did not answer within 15 s: {}", ctl.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(ctl)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// `palisade --controller URL --cert BUNDLE ARGS` from the controller's namespace.
    fn operator(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        let bin = workspace_bin("palisade")?;
        let out = ns
            .command(bin.to_str().expect("utf-8 path"))
            .args(["--controller", URL, "--cert"])
            .arg(&self.bundle)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "palisade {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn token(&self, ns: &Netns, tenant: &str, site: &str) -> Result<String> {
        self.operator(ns, &["token", "create", "--tenant", tenant, "--site", site])
    }
}

fn has(ns: &Netns, set: &str, addr: &str) -> bool {
    set_elements(ns, set)
        .map(|elems| elems.iter().any(|e| e.value == addr))
        .unwrap_or(false)
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if ok() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn enrolled<'a>(
    ctl: &Controller,
    lab: &'a Lab,
    client: usize,
    tenant: &str,
    site: &str,
    host: &str,
) -> Result<(AgentHost<'a>, palisade_tests::ChildGuard)> {
    let agent = AgentHost::new(&lab.clients[client].ns)?;
    let token = ctl.token(&lab.pbx, tenant, site)?;
    let out = agent.ok(&["enroll", "--token", &token, "--hostname", host])?;
    if !out.contains(&format!("{tenant}/{site}/{host}")) {
        bail!("enroll said: {out}");
    }
    let daemon = agent.start_daemon()?;
    Ok((agent, daemon))
}

fn state_has_key(agent: &AgentHost, name: &str) -> bool {
    Path::new(&agent.state_dir())
        .join("controller")
        .join(name)
        .exists()
}

#[test]
fn bans_and_trust_are_shared_within_a_tenant_only() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("ctl", &[("a", "c-a"), ("b", "c-b"), ("x", "c-x")])?;
    let ctl = Controller::start(&lab.pbx)?;
    let (a, _da) = enrolled(&ctl, &lab, 0, "acme", "site-a", "pbx-a")?;
    let (b, _db) = enrolled(&ctl, &lab, 1, "acme", "site-b", "pbx-b")?;
    let (x, _dx) = enrolled(&ctl, &lab, 2, "globex", "hq", "pbx-x")?;
    assert!(state_has_key(&a, "key.pem") && state_has_key(&a, "ca.pem"));

    // Site A's address is trusted at site B, not at the other tenant.
    let a_addr = lab.clients[0].v4.to_string();
    wait_for(
        "site A's address in site B's tenant_peer",
        Duration::from_secs(10),
        || has(b.ns, "tenant_peer_v4", &a_addr),
    )
    .with_context(|| format!("B: {}\ncontroller: {}", b.daemon_log(), ctl.log()))?;
    let b_addr = lab.clients[1].v4.to_string();
    wait_for(
        "site B's address in site A's tenant_peer",
        Duration::from_secs(5),
        || has(a.ns, "tenant_peer_v4", &b_addr),
    )?;
    assert!(
        !has(x.ns, "tenant_peer_v4", &a_addr) && !has(x.ns, "tenant_peer_v4", &b_addr),
        "another tenant's hosts are not trusted"
    );
    assert!(
        !has(b.ns, "tenant_peer_v4", &b_addr),
        "a host does not trust itself"
    );

    // A ban at site A reaches site B's kernel within 1 s.
    let attacker = "203.0.113.66";
    a.ok(&["ban", attacker, "--for", "1h", "--reason", "svcrack"])?;
    let took = wait_for(
        "the ban in site B's ban_shared_v4",
        Duration::from_secs(5),
        || has(b.ns, "ban_shared_v4", attacker),
    )
    .with_context(|| {
        format!(
            "A: {}\nB: {}\ncontroller: {}",
            a.daemon_log(),
            b.daemon_log(),
            ctl.log()
        )
    })?;
    eprintln!("ban fan-out, site A → site B's kernel: {took:?}");
    assert!(
        took <= Duration::from_secs(1),
        "fan-out took {took:?} (must be within 1 s)"
    );
    let elem = set_elements(b.ns, "ban_shared_v4")?
        .into_iter()
        .find(|e| e.value == attacker)
        .expect("just seen");
    let comment = elem.comment.clone().unwrap_or_default();
    assert!(
        comment.starts_with("shared: ") && comment.contains("acme/site-a/pbx-a"),
        "{comment}"
    );
    assert!(
        elem.timeout.is_some_and(|t| t > 3000),
        "the ban's time left goes with it: {elem:?}"
    );

    // Never at the other tenant, and not echoed back into A's shared set.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!has(x.ns, "ban_shared_v4", attacker), "crossed tenants");
    assert!(
        !has(a.ns, "ban_shared_v4", attacker),
        "echoed to its origin"
    );
    assert!(has(a.ns, "ban_v4", attacker));

    // Site B's address changes: site A follows.
    let moved = "10.200.2.77";
    b.ns.ip(&["addr", "add", &format!("{moved}/24"), "dev", "eth0"])?;
    let took = wait_for(
        "site B's new address trusted at site A",
        Duration::from_secs(5),
        || has(a.ns, "tenant_peer_v4", moved),
    )?;
    eprintln!("address change, site B → site A's kernel: {took:?}");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    b.ns.ip(&["addr", "del", &format!("{moved}/24"), "dev", "eth0"])?;
    wait_for(
        "site B's old address no longer trusted at site A",
        Duration::from_secs(2),
        || !has(a.ns, "tenant_peer_v4", moved),
    )?;
    assert!(has(a.ns, "tenant_peer_v4", &b_addr));
    assert!(!has(x.ns, "tenant_peer_v4", moved));
    Ok(())
}
