//! End to end: the real controller and real agents, each in its own network
//! namespace (issue 7).
//!
//! The lab's middle namespace is "the internet": it runs
//! `palisade-controller` and routes between the others. Tenant acme has two
//! sites: site A runs Kamailio (the registrar) behind an agent whose policy
//! exposes SIP to the internet under the responsive firewall, like
//! `deploy/lab.sh`'s hq; site B is a second PBX. Tenant globex has two sites
//! of its own. An attacker on the internet runs svcrack (real SIPVicious)
//! against site A.
//!
//! * [`svcrack_at_one_site_is_banned_at_every_site_of_its_tenant_only`]:
//!   site A bans the attacker; the ban is in site B's kernel within 1 s of
//!   site A's verdict, with its origin, and never at globex's hosts nor
//!   echoed back to A; each acme host trusts the other's addresses (and
//!   globex's hosts each other), and site B's address change is followed at
//!   site A within 1 s.
//! * [`a_policy_that_cuts_the_controller_off_is_rolled_back_and_audited`]:
//!   a good policy pushed with `palisade policy set` is applied and
//!   reported; one that blocks the controller's network (the renderer lets
//!   the controller through only as established traffic, after the blocked
//!   zone) cuts the agent off, is rolled back at the confirmation deadline,
//!   and the controller's audit (and `palisade hosts`) says why.
//! * [`an_operator_ban_on_the_controller_does_not_cut_the_fleet_off`]
//!   (ignored: it fails today): the renderer does not know the controller's
//!   address, so a shared ban on it locks every host of the tenant out of
//!   its controller for good.

use anyhow::{bail, Context, Result};
use palisade_tests::{
    ban_of, exclusive, probe, require_root_tools, require_sip_tools, set_elements, structure,
    svcrack, workspace_bin, wrong_passwords, AgentHost, ChildGuard, Lab, Netns, Proto, Registrar,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The controller listens on every address of the middle namespace; this is
/// its address on site A's link, reached by every other site through its
/// default route.
const CONTROLLER: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const PORT: u16 = 7443;
const URL: &str = "https://10.200.1.1:7443";
/// The fan-out budget of the issue.
const BUDGET: Duration = Duration::from_secs(1);
/// What the controller gives an agent to prove a pushed policy still lets it
/// reach the controller (`ServerOptions::confirm_within_secs`).
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);

/// The controller in the lab's middle namespace, and an operator's bundle.
struct Controller {
    _guard: ChildGuard,
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
                &format!("0.0.0.0:{PORT}"),
                "--name",
                &CONTROLLER.to_string(),
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

    /// `palisade --controller URL --cert BUNDLE ARGS` from the controller's
    /// namespace: its stdout and stderr.
    fn operator_out(&self, ns: &Netns, args: &[&str]) -> Result<(String, String)> {
        let bin = workspace_bin("palisade")?;
        let out = ns
            .command(bin.to_str().expect("utf-8 path"))
            .args(["--controller", URL, "--cert"])
            .arg(&self.bundle)
            .args(args)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            bail!("palisade {args:?}: {stderr}");
        }
        Ok((
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr,
        ))
    }

    /// Like [`Controller::operator_out`], stdout only.
    fn operator(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        Ok(self.operator_out(ns, args)?.0)
    }

    fn token(&self, ns: &Netns, tenant: &str, site: &str) -> Result<String> {
        self.operator(ns, &["token", "create", "--tenant", tenant, "--site", site])
    }

    /// `palisade hosts --tenant T`: the hosts shown as connected.
    fn connected(&self, ns: &Netns, tenant: &str) -> Result<Vec<String>> {
        let out = self.operator(ns, &["hosts", "--tenant", tenant])?;
        Ok(out
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some("connected"))
            .filter_map(|l| l.split('\t').next().map(str::to_owned))
            .collect())
    }

    /// The POLICY column of `palisade hosts --tenant T` for host `id`: what
    /// the host last said of the controller's policy.
    fn host_policy(&self, ns: &Netns, tenant: &str, id: &str) -> Result<String> {
        let out = self.operator(ns, &["hosts", "--tenant", tenant])?;
        out.lines()
            .find(|l| l.split('\t').next() == Some(id))
            .and_then(|l| l.split('\t').nth(6))
            .map(str::to_owned)
            .with_context(|| format!("no policy column for {id} in {out:?}"))
    }

    /// `palisade audit --tenant T` (newest first), one entry a line.
    fn audit(&self, ns: &Netns, tenant: &str) -> Result<Vec<String>> {
        let out = self.operator(ns, &["audit", "--tenant", tenant, "--limit", "200"])?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// The revision the controller stored a site's policy at (`palisade
    /// policy get` says it on stderr), and the policy.
    fn policy(&self, ns: &Netns, tenant: &str, site: &str) -> Result<(u64, String)> {
        let (toml, stderr) =
            self.operator_out(ns, &["policy", "get", "--tenant", tenant, "--site", site])?;
        let revision = stderr
            .lines()
            .find_map(|l| l.strip_prefix("# revision "))
            .and_then(|r| r.trim().parse().ok())
            .with_context(|| format!("no revision in {stderr:?}"))?;
        Ok((revision, toml))
    }
}

/// One site's PBX: an enrolled agent and its daemon.
struct Site<'a> {
    /// `tenant/site/host`, as the controller names it.
    id: String,
    agent: AgentHost<'a>,
    daemon: Option<ChildGuard>,
    v4: String,
    v6: String,
}

impl<'a> Site<'a> {
    /// Writes the agent's config (`policy`, with discovery reading only
    /// `kamailio`'s directory if any: never the test machine's own PBX
    /// configuration), enrols it with a fresh token and starts its daemon.
    fn start(
        ctl: &Controller,
        lab: &'a Lab,
        client: &str,
        id: &str,
        kamailio: Option<&Path>,
        policy: &str,
    ) -> Result<Site<'a>> {
        let host = lab.client(client);
        let agent = AgentHost::new(&host.ns)?;
        let none = agent.state_dir().join("no-pbx");
        let kamailio = kamailio.map_or_else(|| none.join("kamailio"), Path::to_path_buf);
        std::fs::write(
            agent.config_path(),
            format!(
                "[agent.discovery]\nkamailio = {:?}\nasterisk = {:?}\nfreeswitch = {:?}\n\n\
                 # Reconnect soon after the controller is reachable again.\n\
                 [agent.controller]\nmax_backoff = \"2s\"\n\n{policy}",
                kamailio.display().to_string(),
                none.join("asterisk").display().to_string(),
                none.join("freeswitch").display().to_string(),
            ),
        )?;
        let mut parts = id.splitn(3, '/');
        let (tenant, site, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let token = ctl.token(&lab.pbx, tenant, site)?;
        let out = agent.ok(&["enroll", "--token", &token, "--hostname", name])?;
        if !out.contains(id) {
            bail!("enroll said: {out}");
        }
        let daemon = agent.start_daemon()?;
        Ok(Site {
            id: id.to_owned(),
            agent,
            daemon: Some(daemon),
            v4: host.v4.to_string(),
            v6: host.v6.to_string(),
        })
    }

    fn ns(&self) -> &'a Netns {
        self.agent.ns
    }

    fn has(&self, set: &str, addr: &str) -> bool {
        has(self.ns(), set, addr)
    }

    fn trusts(&self, other: &Site) -> bool {
        self.has("tenant_peer_v4", &other.v4) && self.has("tenant_peer_v6", &other.v6)
    }

    /// Trusts none of `other`'s addresses.
    fn distrusts(&self, other: &Site) -> bool {
        !self.has("tenant_peer_v4", &other.v4) && !self.has("tenant_peer_v6", &other.v6)
    }

    fn log(&self) -> String {
        format!("{} agent log:\n{}", self.id, self.agent.daemon_log())
    }
}

impl Drop for Site<'_> {
    fn drop(&mut self) {
        // The daemon goes before its installation (config, state).
        self.daemon.take();
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

fn wait_connected(ctl: &Controller, ns: &Netns, tenant: &str, sites: &[&Site]) -> Result<()> {
    wait_for(
        &format!("every host of {tenant} connected"),
        Duration::from_secs(15),
        || {
            ctl.connected(ns, tenant)
                .is_ok_and(|c| sites.iter().all(|s| c.contains(&s.id)))
        },
    )
    .with_context(|| ctl.log())?;
    Ok(())
}

fn state_has_key(agent: &AgentHost, name: &str) -> bool {
    Path::new(&agent.state_dir())
        .join("controller")
        .join(name)
        .exists()
}

/// The ruleset a policy renders to, from `nft -j list table`: chains, rules
/// (counters zeroed, handles dropped) and the elements of the static sets
/// (zones, interfaces, management, trunks); the dynamic sets (bans, peers,
/// meters: every set with timeouts) are left out, as they change on their own.
fn ruleset(json: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&structure(json)).expect("nft -j output is JSON");
    let mut kept = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("handle");
        }
        let keep = match kind.as_str() {
            "chain" | "rule" => true,
            "set" => !body["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "timeout" || x == "dynamic")),
            _ => false,
        };
        if keep {
            let mut one = serde_json::Map::new();
            one.insert(kind.clone(), body);
            kept.push(serde_json::Value::Object(one));
        }
    }
    serde_json::Value::Array(kept).to_string()
}

fn ruleset_of(site: &Site) -> Result<String> {
    let json = site
        .agent
        .table_json()?
        .with_context(|| format!("{} has no table", site.id))?;
    Ok(ruleset(&json))
}

/// Site A's policy, like `deploy/lab.sh`'s hq: the default policy (SIP open
/// to the internet zone, where the attacker is, under the responsive
/// firewall), discovery reading the site's Kamailio.
const SIP_POLICY: &str = "[responsive]\nenabled = true\n";

#[test]
fn svcrack_at_one_site_is_banned_at_every_site_of_its_tenant_only() -> Result<()> {
    let _heavy = exclusive()?;
    require_root_tools()?;
    require_sip_tools()?;
    let lab = Lab::new(
        "ctl",
        &[
            ("a", "c-a"),
            ("b", "c-b"),
            ("x", "c-x"),
            ("y", "c-y"),
            ("attacker", "c-att"),
        ],
    )?;
    // The middle namespace is the internet: it routes the attacker to site A.
    lab.pbx.sysctl("net.ipv4.ip_forward", "1")?;
    lab.pbx.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let ctl = Controller::start(&lab.pbx)?;

    let site_a = lab.client("a");
    let registrar = Registrar::start_on(&site_a.ns, &site_a.addrs(), &[])?;
    let a = Site::start(
        &ctl,
        &lab,
        "a",
        "acme/site-a/pbx-a",
        Some(registrar.config_dir()),
        SIP_POLICY,
    )?;
    let b = Site::start(&ctl, &lab, "b", "acme/site-b/pbx-b", None, "")?;
    let x = Site::start(&ctl, &lab, "x", "globex/site-1/pbx-x", None, "")?;
    let y = Site::start(&ctl, &lab, "y", "globex/site-2/pbx-y", None, "")?;
    assert!(state_has_key(&a.agent, "key.pem") && state_has_key(&a.agent, "ca.pem"));
    wait_connected(&ctl, &lab.pbx, "acme", &[&a, &b])?;
    wait_connected(&ctl, &lab.pbx, "globex", &[&x, &y])?;
    // The table is in force before the watch reads: attack only once the
    // agent can see it.
    a.agent
        .wait_for_log("SIP watch started", Duration::from_secs(10))?;
    let logs = || {
        format!(
            "{}\n{}\n{}\n{}\ncontroller: {}\nregistrar: {}",
            a.log(),
            b.log(),
            x.log(),
            y.log(),
            ctl.log(),
            registrar.log_tail(20)
        )
    };

    // Trust: each acme host trusts the other's addresses, globex's hosts
    // each other, and no host another tenant's or its own.
    wait_for(
        "the acme and globex hosts trusting their peers",
        Duration::from_secs(10),
        || a.trusts(&b) && b.trusts(&a) && x.trusts(&y) && y.trusts(&x),
    )
    .with_context(logs)?;
    for (host, other) in [
        (&a, &x),
        (&a, &y),
        (&b, &x),
        (&b, &y),
        (&x, &a),
        (&x, &b),
        (&y, &a),
        (&y, &b),
        (&a, &a),
        (&x, &x),
    ] {
        assert!(
            host.distrusts(other),
            "{} trusts {}'s addresses",
            host.id,
            other.id
        );
    }

    // svcrack from the attacker against site A.
    let attacker = lab.client("attacker");
    let attacker_ip: IpAddr = attacker.v4.into();
    let banned = attacker.v4.to_string();
    let scratch = tempfile::tempdir()?;
    let dictionary = wrong_passwords(2000);
    std::thread::scope(|scope| -> Result<()> {
        let crack = scope.spawn(|| {
            svcrack(
                &attacker.ns,
                scratch.path(),
                attacker_ip,
                site_a.v4.into(),
                "300",
                &dictionary,
                Duration::from_secs(3),
            )
        });
        // Poll both kernels every 10 ms: when the ban is in force at A, and
        // when it is in B's ban_shared_v4.
        let (mut at_a, mut at_b) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while at_a.is_none() || at_b.is_none() {
            if at_a.is_none() && ban_of(a.ns(), attacker_ip)?.is_some() {
                at_a = Some(SystemTime::now());
            }
            if at_b.is_none() && b.has("ban_shared_v4", &banned) {
                at_b = Some(SystemTime::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "svcrack: banned at A {at_a:?}, at B {at_b:?} (after 60 s)\n{}",
                    logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (at_a, at_b) = (at_a.expect("seen"), at_b.expect("seen"));
        // A's verdict, as its log dates it (the poll sees it up to ~20 ms late).
        let verdict = a.agent.ban_logged(attacker_ip).unwrap_or(at_a);
        let fanout = at_b.duration_since(verdict).unwrap_or_default();
        let polled = at_b.duration_since(at_a).unwrap_or_default();
        eprintln!(
            "svcrack ban fan-out, site A's verdict → site B's kernel: {fanout:?} \
             (seen at A by polling {:?} after the verdict; A → B polled {polled:?})",
            at_a.duration_since(verdict).unwrap_or_default()
        );
        assert!(
            fanout <= BUDGET,
            "fan-out took {fanout:?} (must be within {BUDGET:?})\n{}",
            logs()
        );

        let ban_a = ban_of(a.ns(), attacker_ip)?.expect("just seen");
        assert!(
            ban_a
                .comment
                .as_deref()
                .is_some_and(|c| !c.trim().is_empty()),
            "site A's ban carries its reason: {ban_a:?}"
        );
        eprintln!("site A's ban: {ban_a:?}");
        let elem = set_elements(b.ns(), "ban_shared_v4")?
            .into_iter()
            .find(|e| e.value == banned)
            .expect("just seen");
        let comment = elem.comment.clone().unwrap_or_default();
        assert!(
            comment.starts_with("shared: ") && comment.contains(&a.id),
            "the shared ban names its origin: {comment}"
        );
        assert!(
            elem.timeout.is_some_and(|t| t > 60),
            "the ban's time left goes with it: {elem:?}"
        );

        // The controller has it for acme, with its origin, and not for globex.
        let acme_bans = ctl.operator(&lab.pbx, &["bans", "--tenant", "acme"])?;
        assert!(
            acme_bans
                .lines()
                .any(|l| l.contains(&banned) && l.contains(&a.id)),
            "{acme_bans}"
        );
        let globex_bans = ctl.operator(&lab.pbx, &["bans", "--tenant", "globex"])?;
        assert!(!globex_bans.contains(&banned), "{globex_bans}");

        // Never at the other tenant, and not echoed back to its origin.
        std::thread::sleep(Duration::from_millis(1500));
        for host in [&x, &y] {
            for set in ["ban_shared_v4", "ban_v4"] {
                assert!(
                    !host.has(set, &banned),
                    "the ban crossed tenants: in {}'s {set}",
                    host.id
                );
            }
        }
        assert!(
            !a.has("ban_shared_v4", &banned),
            "echoed back into its origin's shared set"
        );
        assert!(ban_of(a.ns(), attacker_ip)?.is_some() && b.has("ban_shared_v4", &banned));

        // Site B's address changes: site A follows, within 1 s.
        let moved = "10.200.2.77";
        b.ns()
            .ip(&["addr", "add", &format!("{moved}/24"), "dev", "eth0"])?;
        let took = wait_for(
            "site B's new address trusted at site A",
            Duration::from_secs(5),
            || a.has("tenant_peer_v4", moved),
        )
        .with_context(logs)?;
        eprintln!("address added, site B → site A's kernel: {took:?}");
        assert!(took <= BUDGET, "took {took:?}");
        b.ns()
            .ip(&["addr", "del", &format!("{moved}/24"), "dev", "eth0"])?;
        let took = wait_for(
            "site B's old address no longer trusted at site A",
            Duration::from_secs(5),
            || !a.has("tenant_peer_v4", moved),
        )
        .with_context(logs)?;
        eprintln!("address removed, site B → site A's kernel: {took:?}");
        assert!(took <= BUDGET, "took {took:?}");
        assert!(a.trusts(&b), "site B's other addresses stay trusted");
        for host in [&x, &y] {
            assert!(!host.has("tenant_peer_v4", moved), "{}", host.id);
        }

        let report = crack.join().expect("svcrack thread")?;
        assert!(
            report.found.is_none(),
            "svcrack cracked a wrong dictionary: {}",
            report.run.tail(10)
        );
        let guesses = registrar.guesses_from(attacker_ip)?;
        eprintln!("svcrack: {guesses} guesses reached site A's registrar");
        Ok(())
    })
}

#[test]
fn a_policy_that_cuts_the_controller_off_is_rolled_back_and_audited() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("ctlpol", &[("a", "c-a"), ("b", "c-b")])?;
    let ctl = Controller::start(&lab.pbx)?;
    let a = Site::start(&ctl, &lab, "a", "acme/site-a/pbx-a", None, "")?;
    let b = Site::start(&ctl, &lab, "b", "acme/site-b/pbx-b", None, "")?;
    wait_connected(&ctl, &lab.pbx, "acme", &[&a, &b])?;
    wait_for("site A trusted at site B", Duration::from_secs(10), || {
        b.trusts(&a)
    })?;
    let logs = || format!("{}\n{}\ncontroller: {}", a.log(), b.log(), ctl.log());
    let controller = SocketAddr::new(CONTROLLER.into(), PORT);
    let reaches_controller = || probe(b.ns(), Proto::Tcp, controller, Duration::from_millis(500));
    assert!(reaches_controller());
    let a_before = ruleset_of(&a)?;
    let dir = tempfile::tempdir()?;
    let result_of = |revision: u64| -> Result<Option<String>> {
        let needle = format!("revision {revision} ");
        Ok(ctl
            .audit(&lab.pbx, "acme")?
            .into_iter()
            .find(|l| l.contains("policy.result") && l.contains(&needle)))
    };

    // A good policy for site B: its office LAN is the local zone.
    let good = "# site-b: the office LAN uses the PBX's LAN services.\n\
                [zones.local]\nnetworks = [\"192.168.50.0/24\"]\n";
    let good_file = dir.path().join("good.toml");
    std::fs::write(&good_file, good)?;
    let file = good_file.to_str().expect("utf-8 path");
    ctl.operator(
        &lab.pbx,
        &[
            "policy", "set", "--tenant", "acme", "--site", "site-b", file,
        ],
    )?;
    let (good_rev, stored) = ctl.policy(&lab.pbx, "acme", "site-b")?;
    assert_eq!(stored.trim(), good.trim());
    let mut line = None;
    wait_for(
        "site B's result for the good policy",
        Duration::from_secs(10),
        || {
            line = result_of(good_rev).ok().flatten();
            line.is_some()
        },
    )
    .with_context(logs)?;
    let line = line.expect("just seen");
    eprintln!("good policy: {line}");
    assert!(
        line.contains(&format!("agent:{}", b.id))
            && line.contains(&format!("revision {good_rev} applied"))
            && !line.contains("(refused)"),
        "{line}"
    );
    let listed = ctl.host_policy(&lab.pbx, "acme", &b.id)?;
    assert_eq!(listed, format!("r{good_rev} applied"));
    assert!(b.has("zone_local_v4", "192.168.50.0/24"), "{}", logs());
    let good_ruleset = ruleset_of(&b)?;
    assert_eq!(ruleset_of(&a)?, a_before, "site A's ruleset was touched");
    assert!(reaches_controller());

    // A policy that cuts site B off its controller: the operator blocks the
    // range last night's scans came from, and the controller is in it. The
    // controller's address is not among the management addresses the
    // renderer puts first; its answers are established traffic, and the
    // blocked zone comes before the established shortcut.
    let bad = format!(
        "{good}\n# Last night's scans came from 10.200.1.0/24: block it.\n\
         [zones.blocked]\nnetworks = [\"10.200.1.0/24\"]\n"
    );
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, &bad)?;
    let file = bad_file.to_str().expect("utf-8 path");
    let pushed = Instant::now();
    ctl.operator(
        &lab.pbx,
        &[
            "policy", "set", "--tenant", "acme", "--site", "site-b", file,
        ],
    )?;
    let (bad_rev, _) = ctl.policy(&lab.pbx, "acme", "site-b")?;
    assert!(bad_rev > good_rev);
    wait_for(
        "the cutting policy in force at site B",
        Duration::from_secs(10),
        || b.has("zone_blocked_v4", "10.200.1.0/24"),
    )
    .with_context(logs)?;
    assert!(
        !reaches_controller(),
        "the policy was to cut site B off the controller"
    );

    // Rolled back at the deadline: the previous ruleset, the controller
    // reachable, connected again, and the reason in the controller's audit.
    let mut line = None;
    let took = wait_for(
        "the rollback reported to the controller",
        CONFIRM_WITHIN + Duration::from_secs(30),
        || {
            line = result_of(bad_rev).ok().flatten();
            line.is_some()
        },
    )
    .with_context(logs)?;
    let line = line.expect("just seen");
    eprintln!(
        "cutting policy: rolled back and reported {:?} after the push \
         ({took:?} after it was in force): {line}",
        pushed.elapsed()
    );
    assert!(
        line.contains(&format!("agent:{}", b.id))
            && line.contains("(refused)")
            && line.contains(&format!("revision {bad_rev} not applied"))
            && line.contains("rolled back")
            && line.contains("the controller could not be reached"),
        "{line}"
    );
    let listed = ctl.host_policy(&lab.pbx, "acme", &b.id)?;
    assert!(
        listed.starts_with(&format!("r{bad_rev} NOT APPLIED: rolled back")),
        "palisade hosts: {listed}"
    );
    assert_eq!(
        ruleset_of(&b)?,
        good_ruleset,
        "site B's ruleset is the previous one again\n{}",
        logs()
    );
    assert!(!b.has("zone_blocked_v4", "10.200.1.0/24"));
    assert!(reaches_controller());
    wait_connected(&ctl, &lab.pbx, "acme", &[&a, &b])?;
    assert!(b.agent.daemon_log().contains("rolling back"), "{}", b.log());
    // It stays rolled back: the reconnection does not bring the policy again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ruleset_of(&b)?, good_ruleset, "{}", logs());
    assert_eq!(ruleset_of(&a)?, a_before, "site A's ruleset was touched");
    // The controller keeps the operator's document (nothing refused it).
    let (rev, stored) = ctl.policy(&lab.pbx, "acme", "site-b")?;
    eprintln!("site B's policy at the controller after the rollback: revision {rev}");
    assert_eq!(stored.trim(), bad.trim());
    Ok(())
}

/// Found while checking whether the renderer always lets the controller
/// through: it does not know the controller's address, so a shared ban on it
/// (`ban_shared`, evaluated before the established shortcut) cuts every host
/// of the tenant off its controller, and the lift can never reach them: they
/// stay cut off until the ban expires (forever without `--for`). Bans are not
/// policy changes, so nothing rolls this back. Ignored until the controller
/// refuses such a ban or the agent's ruleset lets its controller through
/// ahead of the bans (ARCHITECTURE.md: "the controller [comes] first in the
/// ruleset").
#[test]
#[ignore = "product bug: a shared ban on the controller's address locks the tenant's fleet out"]
fn an_operator_ban_on_the_controller_does_not_cut_the_fleet_off() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("ctlban", &[("a", "c-a"), ("b", "c-b")])?;
    let ctl = Controller::start(&lab.pbx)?;
    let a = Site::start(&ctl, &lab, "a", "acme/site-a/pbx-a", None, "")?;
    let b = Site::start(&ctl, &lab, "b", "acme/site-b/pbx-b", None, "")?;
    wait_connected(&ctl, &lab.pbx, "acme", &[&a, &b])?;
    let controller = SocketAddr::new(CONTROLLER.into(), PORT);
    // A slip of the operator: refused, or taken and harmless.
    let refused = ctl
        .operator(
            &lab.pbx,
            &[
                "ban",
                "add",
                "--tenant",
                "acme",
                &CONTROLLER.to_string(),
                "--reason",
                "typo",
            ],
        )
        .is_err();
    eprintln!("a ban on the controller's address refused: {refused}");
    std::thread::sleep(Duration::from_secs(2));
    for site in [&a, &b] {
        assert!(
            probe(site.ns(), Proto::Tcp, controller, Duration::from_secs(1)),
            "{} cannot reach the controller: ban_shared_v4 {:?}",
            site.id,
            set_elements(site.ns(), "ban_shared_v4")?
        );
    }
    // The sync streams still work: a ban reaches both sites.
    ctl.operator(
        &lab.pbx,
        &[
            "ban",
            "add",
            "--tenant",
            "acme",
            "203.0.113.9",
            "--for",
            "1h",
        ],
    )?;
    wait_for("a later ban at both sites", Duration::from_secs(5), || {
        a.has("ban_shared_v4", "203.0.113.9") && b.has("ban_shared_v4", "203.0.113.9")
    })
    .with_context(|| format!("{}\n{}", a.log(), b.log()))?;
    Ok(())
}
