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
//!   the agents reach their controller by name (`ctl.test`), through a real
//!   dnsmasq on the router (the middle namespace). A good policy pushed with
//!   `palisade policy set` is applied and reported; one that blocks site B's
//!   router, which is also its resolver, leaves the existing stream alive
//!   (the controller's address is accepted first) but no fresh connection
//!   can find the controller: the change is rolled back at the confirmation
//!   deadline, and the controller's audit (and `palisade hosts`) says why.
//! * [`an_operator_ban_on_the_controller_does_not_cut_the_fleet_off`][]: the
//!   operator's ban on the controller's address is refused; the address put
//!   straight into site A's kernel ban set does not cut A off either (the
//!   `controller` set is accepted before the bans): A reaches the
//!   controller and gets a later ban within 1 s.
//! * [`a_site_behind_nat_is_trusted_at_its_public_address`]: site B's PBX
//!   sits on a private LAN behind a masquerading gateway; the controller
//!   counts the address B's stream comes from among B's own, so site A
//!   trusts B's public address (B's trunk traffic gets through, a stranger's
//!   does not), and follows it when the gateway's address changes.
//! * [`a_pbx_s_advertised_public_address_is_trusted_at_the_other_sites`]:
//!   site B's pjsip.conf names its public address; site A trusts it, and
//!   follows an edit of the file.
//! * [`operators_explain_lift_and_set_user_rules_across_real_agents`]:
//!   `palisade explain` answered by every host from its own kernel,
//!   `palisade ban lift` ending the ban at the host that proved it as well as
//!   the shared copies, `palisade users set` opening SSH for the address a
//!   real phone registers extension 333 from, and `palisade events` showing
//!   it all as it happens.

use anyhow::{bail, Context, Result};
use palisade_tests::{
    ban_of, exclusive, grant_elements, password, probe, require_dns_tools, require_root_tools,
    require_sip_tools, resolve, set_elements, structure, svcrack, veth, workspace_bin,
    wrong_passwords, AgentHost, ChildGuard, Dnsmasq, Lab, Listener, Netns, Proto, Registrar,
    ResolvConf, Sipp,
};
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The controller listens on every address of the middle namespace; this is
/// its address on site A's link, reached by every other site through its
/// default route.
const CONTROLLER: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const PORT: u16 = 7443;
const URL: &str = "https://10.200.1.1:7443";
/// The controller's name, where the agents resolve it through DNS.
const CONTROLLER_NAME: &str = "ctl.test";
/// The fan-out budget of the issue.
const BUDGET: Duration = Duration::from_secs(1);
/// What the controller gives an agent to prove a pushed policy still lets it
/// reach the controller (`ServerOptions::confirm_within_secs`).
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);

/// How the controller is known: the `--name` its certificate is made for
/// and the `--url` its tokens carry (where the agents, and the operator
/// here, reach it).
#[derive(Clone, Copy, Debug)]
struct Naming {
    name: &'static str,
    url: &'static str,
}

/// By its address on site A's link.
const BY_ADDRESS: Naming = Naming {
    name: "10.200.1.1",
    url: URL,
};

/// By name, resolved through DNS by everyone who reaches it.
const BY_NAME: Naming = Naming {
    name: CONTROLLER_NAME,
    url: "https://ctl.test:7443",
};

/// The controller in the lab's middle namespace, and an operator's bundle.
struct Controller {
    _guard: ChildGuard,
    dir: tempfile::TempDir,
    bundle: PathBuf,
    url: String,
}

impl Controller {
    fn start(ns: &Netns) -> Result<Controller> {
        Controller::start_as(ns, BY_ADDRESS)
    }

    fn start_as(ns: &Netns, naming: Naming) -> Result<Controller> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let bundle = dir.path().join("operator.pem");
        let bin = workspace_bin("palisade-controller")?;
        let out = Command::new(&bin)
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
                naming.name,
                "--url",
                naming.url,
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("controller.log"))?);
        let guard = ns.spawn(cmd)?;
        let ctl = Controller {
            _guard: guard,
            dir,
            bundle,
            url: naming.url.to_owned(),
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

    /// `palisade --controller URL --cert BUNDLE ARGS` in `ns`, to run.
    fn operator_command(&self, ns: &Netns, args: &[&str]) -> Result<Command> {
        let bin = workspace_bin("palisade")?;
        let mut cmd = ns.command(bin.to_str().expect("utf-8 path"));
        cmd.args(["--controller", &self.url, "--cert"])
            .arg(&self.bundle)
            .args(args);
        Ok(cmd)
    }

    /// `palisade --controller URL --cert BUNDLE ARGS` from the controller's
    /// namespace: its stdout and stderr.
    fn operator_out(&self, ns: &Netns, args: &[&str]) -> Result<(String, String)> {
        let out = self.operator_command(ns, args)?.output()?;
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
        self.host_column(ns, tenant, id, 6)
    }

    /// The ADDRESSES column of `palisade hosts --tenant T` for host `id`,
    /// split (an address only the controller saw ends in `*`).
    fn host_addresses(&self, ns: &Netns, tenant: &str, id: &str) -> Result<Vec<String>> {
        let column = self.host_column(ns, tenant, id, 5)?;
        Ok(column.split(',').map(str::to_owned).collect())
    }

    fn host_column(&self, ns: &Netns, tenant: &str, id: &str, n: usize) -> Result<String> {
        let out = self.operator(ns, &["hosts", "--tenant", tenant])?;
        out.lines()
            .find(|l| l.split('\t').next() == Some(id))
            .and_then(|l| l.split('\t').nth(n))
            .map(str::to_owned)
            .with_context(|| format!("no column {n} for {id} in {out:?}"))
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

/// The PBX configuration a site's discovery reads (never the test
/// machine's own).
#[derive(Clone, Copy)]
enum Pbx<'p> {
    None,
    /// A Kamailio configuration directory (a [`Registrar`]'s).
    Kamailio(&'p Path),
    /// An Asterisk configuration directory (`pjsip.conf`, ...).
    Asterisk(&'p Path),
}

impl<'a> Site<'a> {
    /// Writes the agent's config (`policy`, with discovery reading only
    /// `pbx`), enrols it with a fresh token and starts its daemon.
    fn start(
        ctl: &Controller,
        lab: &'a Lab,
        client: &str,
        id: &str,
        pbx: Pbx,
        policy: &str,
    ) -> Result<Site<'a>> {
        let host = lab.client(client);
        let addrs = (host.v4.to_string(), host.v6.to_string());
        Site::start_in(ctl, &lab.pbx, &host.ns, addrs, id, pbx, policy)
    }

    /// [`Site::start`] in any namespace `ns` whose own (v4, v6) addresses
    /// are `addrs`; `ctl_ns` is the controller's, where tokens are made.
    fn start_in(
        ctl: &Controller,
        ctl_ns: &Netns,
        ns: &'a Netns,
        addrs: (String, String),
        id: &str,
        pbx: Pbx,
        policy: &str,
    ) -> Result<Site<'a>> {
        let agent = AgentHost::new(ns)?;
        let none = agent.state_dir().join("no-pbx");
        let (mut kamailio, mut asterisk) = (none.join("kamailio"), none.join("asterisk"));
        match pbx {
            Pbx::None => {}
            Pbx::Kamailio(dir) => kamailio = dir.to_path_buf(),
            Pbx::Asterisk(dir) => asterisk = dir.to_path_buf(),
        }
        std::fs::write(
            agent.config_path(),
            format!(
                "[agent.discovery]\nkamailio = {:?}\nasterisk = {:?}\nfreeswitch = {:?}\n\n\
                 # Reconnect soon after the controller is reachable again, and\n\
                 # notice a dead connection soon (a heartbeat meets its reset).\n\
                 [agent.controller]\nmax_backoff = \"2s\"\nheartbeat = \"2s\"\n\n{policy}",
                kamailio.display().to_string(),
                asterisk.display().to_string(),
                none.join("freeswitch").display().to_string(),
            ),
        )?;
        let mut parts = id.splitn(3, '/');
        let (tenant, site, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let token = ctl.token(ctl_ns, tenant, site)?;
        let out = agent.ok(&["enroll", "--token", &token, "--hostname", name])?;
        if !out.contains(id) {
            bail!("enroll said: {out}");
        }
        let daemon = agent.start_daemon()?;
        Ok(Site {
            id: id.to_owned(),
            agent,
            daemon: Some(daemon),
            v4: addrs.0,
            v6: addrs.1,
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

/// Tenant acme's two sites: site A (discovery reading `a_pbx`, `a_policy`) on
/// the lab's client `a` and site B (the default policy) on `b`, both
/// connected.
fn start_acme<'a>(
    ctl: &Controller,
    lab: &'a Lab,
    a_pbx: Pbx,
    a_policy: &str,
) -> Result<(Site<'a>, Site<'a>)> {
    let a = Site::start(ctl, lab, "a", "acme/site-a/pbx-a", a_pbx, a_policy)?;
    let b = Site::start(ctl, lab, "b", "acme/site-b/pbx-b", Pbx::None, "")?;
    wait_connected(ctl, &lab.pbx, "acme", &[&a, &b])?;
    Ok((a, b))
}

/// Whether some element of `set` in `ns` is `ip` or a network holding it.
fn covers(ns: &Netns, set: &str, ip: IpAddr) -> bool {
    set_elements(ns, set).is_ok_and(|elems| elems.iter().any(|e| e.covers(ip)))
}

/// Polls (every 10 ms) until each of `conditions` has held once; how long
/// each took from now. Fails naming those that did not hold within `within`.
fn each_within(
    within: Duration,
    conditions: &mut [(&str, &mut dyn FnMut() -> bool)],
) -> Result<Vec<Duration>> {
    let start = Instant::now();
    let mut took: Vec<Option<Duration>> = vec![None; conditions.len()];
    loop {
        for (i, (_, ok)) in conditions.iter_mut().enumerate() {
            if took[i].is_none() && ok() {
                took[i] = Some(start.elapsed());
            }
        }
        if took.iter().all(Option::is_some) {
            return Ok(took.into_iter().flatten().collect());
        }
        if start.elapsed() > within {
            let late: Vec<&str> = conditions
                .iter()
                .zip(&took)
                .filter(|(_, t)| t.is_none())
                .map(|((what, _), _)| *what)
                .collect();
            bail!("not within {within:?}: {}", late.join("; "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The line of `palisade explain` output answered by host `id`.
fn answer_of<'o>(out: &'o str, id: &str) -> Result<&'o str> {
    out.lines()
        .map(str::trim)
        .find(|l| l.split('\t').next() == Some(id))
        .with_context(|| format!("no answer from {id} in:\n{out}"))
}

/// `palisade events --tenant T` running in the controller's namespace, its
/// output going to a file; stopped (killed) when dropped.
struct Events {
    child: ChildGuard,
    out: PathBuf,
}

impl Events {
    /// Starts following and returns once the CLI says it is subscribed
    /// (nothing after that is missed).
    fn follow(ctl: &Controller, ns: &Netns, tenant: &str, dir: &Path) -> Result<Events> {
        let out = dir.join(format!("events-{tenant}.txt"));
        let mut cmd = ctl.operator_command(ns, &["events", "--tenant", tenant])?;
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::piped());
        let mut child = ns.spawn(cmd)?;
        let stderr = child
            .child_mut()
            .stderr
            .take()
            .context("stderr was piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads to the end (the process's death) so it never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("following the events of ") => break,
                Ok(line) => said.push(line),
                Err(_) => bail!(
                    "palisade events did not say it was subscribed within 15 s: {said:?} ({:?})",
                    child.try_wait()
                ),
            }
        }
        Ok(Events { child, out })
    }

    /// The events so far, one line each (`time host kind address summary`,
    /// tab-separated; evidence lines left out).
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('\t'))
            .map(str::to_owned)
            .collect()
    }

    /// The first event of `kind` about `address` (from `host`, if given).
    fn find(&self, kind: &str, address: &str, host: Option<&str>) -> Option<String> {
        self.lines().into_iter().find(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            f.len() >= 4 && f[2] == kind && f[3] == address && host.is_none_or(|h| f[1] == h)
        })
    }

    fn stop(mut self) -> Result<Vec<String>> {
        self.child.kill()?;
        Ok(self.lines())
    }
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
    let (a, b) = start_acme(
        &ctl,
        &lab,
        Pbx::Kamailio(registrar.config_dir()),
        SIP_POLICY,
    )?;
    let x = Site::start(&ctl, &lab, "x", "globex/site-1/pbx-x", Pbx::None, "")?;
    let y = Site::start(&ctl, &lab, "y", "globex/site-2/pbx-y", Pbx::None, "")?;
    assert!(state_has_key(&a.agent, "key.pem") && state_has_key(&a.agent, "ca.pem"));
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
    require_dns_tools()?;
    let lab = Lab::new("ctlpol", &[("a", "c-a"), ("b", "c-b")])?;
    let (site_a, site_b) = (lab.client("a"), lab.client("b"));
    // The middle namespace is each site's router and resolver: dnsmasq on
    // its address on each link, serving the controller's name. Each site
    // (and the operator, in the controller's namespace) resolves through
    // the router on its own link, through the system resolver.
    let controller_ip: IpAddr = CONTROLLER.into();
    let (resolver_a, resolver_b): (IpAddr, IpAddr) = (site_a.pbx_v4.into(), site_b.pbx_v4.into());
    let _dns = Dnsmasq::start(
        &lab.pbx,
        &[resolver_a, resolver_b],
        &[(CONTROLLER_NAME, controller_ip)],
    )?;
    let _resolv = ResolvConf::write(&[
        (&lab.pbx, resolver_a),
        (&site_a.ns, resolver_a),
        (&site_b.ns, resolver_b),
    ])?;
    for ns in [&lab.pbx, &site_a.ns, &site_b.ns] {
        assert_eq!(resolve(ns, CONTROLLER_NAME)?, vec![controller_ip]);
    }
    let ctl = Controller::start_as(&lab.pbx, BY_NAME)?;
    let (a, b) = start_acme(&ctl, &lab, Pbx::None, "")?;
    let logs = || format!("{}\n{}\ncontroller: {}", a.log(), b.log(), ctl.log());
    wait_for("site A trusted at site B", Duration::from_secs(10), || {
        b.trusts(&a)
    })?;
    // Enrolled by name: the agents found the controller's address by DNS.
    let controller = CONTROLLER.to_string();
    wait_for(
        "the controller's resolved address in both controller sets",
        Duration::from_secs(10),
        || a.has("controller_v4", &controller) && b.has("controller_v4", &controller),
    )
    .with_context(logs)?;
    let controller = SocketAddr::new(controller_ip, PORT);
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
    assert_eq!(resolve(b.ns(), CONTROLLER_NAME)?, vec![controller_ip]);

    // A policy that cuts site B off its controller all the same: the
    // operator blocks the router, which answered last night's scans, and it
    // is also the site's resolver. The controller's own address is
    // accepted first, so the stream in progress survives; but no new
    // connection can find the controller by name, so the change cannot be
    // confirmed.
    let bad = format!(
        "{good}\n# {resolver_b} answered last night's scans: block it.\n\
         [zones.blocked]\nnetworks = [\"{resolver_b}/32\"]\n"
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
        || covers(b.ns(), "zone_blocked_v4", resolver_b),
    )
    .with_context(logs)?;
    // DNS from site B is blocked: its resolver's answers are dropped.
    let asked = Instant::now();
    let lookup = resolve(b.ns(), CONTROLLER_NAME);
    eprintln!(
        "site B resolving {CONTROLLER_NAME} under the cutting policy ({:?}): {:?}",
        asked.elapsed(),
        lookup.as_ref().map_err(|e| format!("{e:#}"))
    );
    assert!(
        lookup.is_err(),
        "the policy was to block site B's resolver: {lookup:?}\n{}",
        logs()
    );
    assert_eq!(
        resolve(a.ns(), CONTROLLER_NAME)?,
        vec![controller_ip],
        "site A's resolver is not blocked"
    );
    // The controller itself is still reachable, and site B still connected:
    // what cuts it off is the name.
    assert!(
        reaches_controller(),
        "the controller's address is accepted before the blocked zone\n{}",
        logs()
    );
    assert!(
        ctl.connected(&lab.pbx, "acme")?.contains(&b.id),
        "site B's stream survives the cutting policy\n{}",
        logs()
    );

    // Rolled back at the deadline: the previous ruleset, the name resolving
    // again, connected, and the reason in the controller's audit.
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
            && line.contains("the controller could not be reached")
            && line.contains("name resolution"),
        "{line}"
    );
    let listed = ctl.host_policy(&lab.pbx, "acme", &b.id)?;
    assert!(
        listed.starts_with(&format!("r{bad_rev} NOT APPLIED: rolled back"))
            && listed.contains("name resolution"),
        "palisade hosts: {listed}"
    );
    assert_eq!(
        ruleset_of(&b)?,
        good_ruleset,
        "site B's ruleset is the previous one again\n{}",
        logs()
    );
    assert!(!covers(b.ns(), "zone_blocked_v4", resolver_b));
    assert_eq!(resolve(b.ns(), CONTROLLER_NAME)?, vec![controller_ip]);
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

/// Bans the controller's address every way there is: the operator's ban is
/// refused by the controller, and the address put straight into site A's
/// kernel ban set changes nothing either, as the `controller` set is
/// accepted before the bans: A still reaches its controller, and its
/// stream still brings the next ban within the budget.
#[test]
fn an_operator_ban_on_the_controller_does_not_cut_the_fleet_off() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("ctlban", &[("a", "c-a"), ("b", "c-b")])?;
    let ctl = Controller::start(&lab.pbx)?;
    let (a, b) = start_acme(&ctl, &lab, Pbx::None, "")?;
    let logs = || format!("{}\n{}\ncontroller: {}", a.log(), b.log(), ctl.log());
    let controller = SocketAddr::new(CONTROLLER.into(), PORT);
    let me = CONTROLLER.to_string();

    // A slip of the operator, the address or a network holding it: refused,
    // naming the controller's address, and audited as refused.
    for target in [me.as_str(), "10.200.0.0/16"] {
        let refused = ctl
            .operator(
                &lab.pbx,
                &["ban", "add", "--tenant", "acme", target, "--reason", "typo"],
            )
            .expect_err("a ban on the controller's address must be refused");
        let refused = format!("{refused:#}");
        eprintln!("ban add {target}: {refused}");
        assert!(
            refused.contains("FailedPrecondition")
                && refused.contains(&format!("the controller's own address {me}")),
            "{refused}"
        );
    }
    let audit = ctl.audit(&lab.pbx, "acme")?;
    assert!(
        audit
            .iter()
            .any(|l| l.contains("ban.add (refused)") && l.contains(&me)),
        "the refusal is in the audit trail: {audit:#?}"
    );

    // The controller comes first at site A: its address in the set
    // accepted before the bans.
    wait_for(
        "the controller's address in site A's controller set",
        Duration::from_secs(10),
        || a.has("controller_v4", &me),
    )
    .with_context(logs)?;

    // The controller's address in site A's kernel ban set all the same, as
    // a shared ban (by hand: the controller would not send one).
    a.agent.ok(&[
        "set",
        "add",
        "ban-shared",
        &me,
        "--comment",
        "test: the controller banned by hand",
    ])?;
    assert!(a.has("ban_shared_v4", &me), "{:?}", {
        set_elements(a.ns(), "ban_shared_v4")
    });
    let explain = a.agent.ok(&["explain", &me, "7443/tcp"])?;
    eprintln!("site A: {}", explain.trim());
    assert!(
        explain.contains("ALLOWED at stage management") && explain.contains("set controller"),
        "{explain}"
    );
    // A fresh connection from A gets through to the controller.
    assert!(
        probe(a.ns(), Proto::Tcp, controller, Duration::from_secs(1)),
        "{} cannot reach the controller: ban_shared_v4 {:?}\n{}",
        a.id,
        set_elements(a.ns(), "ban_shared_v4")?,
        logs()
    );
    assert!(
        a.has("ban_shared_v4", &me),
        "the controller is still in site A's ban set while A reaches it"
    );

    // The sync streams still work: a later ban reaches both sites within
    // the budget, counted from the controller's acknowledgement.
    let later = "203.0.113.9";
    let asked = Instant::now();
    ctl.operator(
        &lab.pbx,
        &["ban", "add", "--tenant", "acme", later, "--for", "1h"],
    )?;
    let acked = asked.elapsed();
    let took = each_within(
        Duration::from_secs(5),
        &mut [
            ("the later ban at site A", &mut || {
                a.has("ban_shared_v4", later)
            }),
            ("the later ban at site B", &mut || {
                b.has("ban_shared_v4", later)
            }),
        ],
    )
    .with_context(logs)?;
    eprintln!(
        "operator ban with the controller banned in A's kernel: in A's kernel {:?}, \
         in B's {:?} after the controller's acknowledgement (the CLI took {acked:?})",
        took[0], took[1]
    );
    assert!(
        took.iter().all(|t| *t <= BUDGET),
        "{took:?} (must be within {BUDGET:?})"
    );
    assert!(
        a.has("ban_shared_v4", &me),
        "{:?}",
        set_elements(a.ns(), "ban_shared_v4")
    );
    // Nothing of the refused bans went anywhere.
    assert!(!b.has("ban_shared_v4", &me) && !covers(b.ns(), "ban_shared_v4", CONTROLLER.into()));
    wait_connected(&ctl, &lab.pbx, "acme", &[&a, &b])?;
    Ok(())
}

#[test]
fn operators_explain_lift_and_set_user_rules_across_real_agents() -> Result<()> {
    let _heavy = exclusive()?;
    require_root_tools()?;
    require_sip_tools()?;
    let lab = Lab::new("ctlops", &[("a", "c-a"), ("b", "c-b"), ("phone", "c-ph")])?;
    // The middle namespace is the internet: it routes the phone to site A.
    lab.pbx.sysctl("net.ipv4.ip_forward", "1")?;
    lab.pbx.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let ctl = Controller::start(&lab.pbx)?;
    let site_a = lab.client("a");
    let registrar = Registrar::start_on(&site_a.ns, &site_a.addrs(), &[])?;
    let (a, b) = start_acme(
        &ctl,
        &lab,
        Pbx::Kamailio(registrar.config_dir()),
        SIP_POLICY,
    )?;
    a.agent
        .wait_for_log("SIP watch started", Duration::from_secs(10))?;
    let logs = || {
        format!(
            "{}\n{}\ncontroller: {}\nregistrar: {}",
            a.log(),
            b.log(),
            ctl.log(),
            registrar.log_tail(20)
        )
    };
    wait_for(
        "the acme hosts trusting each other",
        Duration::from_secs(10),
        || a.trusts(&b) && b.trusts(&a),
    )
    .with_context(logs)?;
    let dir = tempfile::tempdir()?;
    let events = Events::follow(&ctl, &lab.pbx, "acme", dir.path())?;

    // A ban by hand at site A goes to site B.
    let banned = "198.51.100.23";
    let banned_ip: IpAddr = banned.parse()?;
    a.agent
        .ok(&["ban", banned, "--for", "1h", "--reason", "test"])?;
    assert!(ban_of(a.ns(), banned_ip)?.is_some());
    let took = wait_for(
        "site A's ban in site B's ban_shared_v4",
        Duration::from_secs(5),
        || b.has("ban_shared_v4", banned),
    )
    .with_context(logs)?;
    eprintln!("hand ban at site A → site B's kernel: {took:?}");

    // Every host answers from its own kernel and policy.
    let out = ctl.operator(
        &lab.pbx,
        &["explain", "--tenant", "acme", banned, "5060/udp"],
    )?;
    eprintln!("{out}");
    let (at_a, at_b) = (answer_of(&out, &a.id)?, answer_of(&out, &b.id)?);
    assert!(
        at_a.contains("BLOCKED at stage bans") && at_a.contains("set ban:"),
        "site A's own ban: {at_a}"
    );
    assert!(
        at_b.contains("BLOCKED at stage bans") && at_b.contains("set ban_shared:"),
        "site B's shared copy: {at_b}"
    );
    let out = ctl.operator(&lab.pbx, &["explain", "--tenant", "acme", &b.v4, "22/tcp"])?;
    eprintln!("{out}");
    let at_a = answer_of(&out, &a.id)?;
    assert!(
        at_a.contains("ALLOWED at stage trusted") && at_a.contains("tenant_peer"),
        "site B's address at site A: {at_a}"
    );

    // The operator lifts it: gone from the shared copy and from the ban of
    // the host that proved it, within the budget.
    let asked = Instant::now();
    ctl.operator(&lab.pbx, &["ban", "lift", "--tenant", "acme", banned])?;
    let acked = asked.elapsed();
    let took = each_within(
        Duration::from_secs(5),
        &mut [
            ("the lift at site B (ban_shared_v4)", &mut || {
                !b.has("ban_shared_v4", banned)
            }),
            ("the lift at site A (its own ban_v4)", &mut || {
                !a.has("ban_v4", banned)
            }),
        ],
    )
    .with_context(logs)?;
    eprintln!(
        "ban lift after the controller's acknowledgement: site B's shared copy gone in {:?}, \
         site A's own ban in {:?} (the CLI took {acked:?})",
        took[1], took[0]
    );
    assert!(
        took.iter().all(|t| *t <= BUDGET),
        "{took:?} (must be within {BUDGET:?})\n{}",
        logs()
    );
    let explain = a.agent.ok(&["explain", banned, "5060/udp"])?;
    eprintln!("site A after the lift: {}", explain.trim());
    assert!(
        !explain.contains("banned") && !explain.contains("stage bans"),
        "{explain}"
    );

    // Per-user rules for the tenant: 333 gets SSH wherever it registers,
    // though site A's own policy has no [users].
    let followed = || {
        a.agent
            .daemon_log()
            .matches("policy from the controller: following it")
            .count()
    };
    let before = followed();
    ctl.operator(&lab.pbx, &["users", "set", "--tenant", "acme", "333=ssh"])?;
    assert_eq!(
        ctl.operator(&lab.pbx, &["users", "get", "--tenant", "acme"])?,
        "333 = ssh"
    );
    wait_for(
        "site A following the tenant's per-user rules",
        Duration::from_secs(5),
        || state_has_key(&a.agent, "user-rules.json") && followed() > before,
    )
    .with_context(logs)?;
    // The daemon reconfigures its SIP watch right after saying so.
    std::thread::sleep(Duration::from_millis(300));
    let phone = lab.client("phone");
    let phone_ip: IpAddr = phone.v4.into();
    let stats = Sipp::phone(
        SocketAddr::new(phone_ip, 5062),
        SocketAddr::new(site_a.v4.into(), palisade_tests::SIP_PORT),
        "333",
        password("333"),
    )
    .run(&phone.ns, dir.path())?;
    let registered = SystemTime::now();
    assert_eq!(
        stats.successful,
        1,
        "333 did not register: {stats:?}\n{}",
        logs()
    );
    let ssh_granted = || {
        grant_elements(a.ns()).is_ok_and(|g| {
            g.iter()
                .any(|g| g.addr == phone_ip && g.proto == "tcp" && g.port == 22)
        })
    };
    let took = wait_for(
        "22/tcp granted to 333's address at site A",
        Duration::from_secs(3),
        ssh_granted,
    )
    .with_context(logs)?;
    eprintln!(
        "333 registered from {phone_ip}: 22/tcp granted at site A {took:?} after SIPp ended ({:?} after the 200 was logged)",
        registrar
            .requests_from(phone_ip)?
            .into_iter()
            .rfind(|r| r.is_success())
            .and_then(|r| registered.duration_since(r.at).ok())
    );
    let grants: Vec<_> = grant_elements(a.ns())?
        .into_iter()
        .filter(|g| g.addr == phone_ip)
        .collect();
    eprintln!("site A's grants for {phone_ip}: {grants:?}");
    assert!(
        grants.iter().all(|g| g.proto == "tcp" && g.port == 22),
        "333 gets SSH only: {grants:?}"
    );
    assert!(
        grant_elements(b.ns())?.iter().all(|g| g.addr != phone_ip),
        "the registration was at site A, not B"
    );

    // The operator saw all of it happen.
    let phone = phone_ip.to_string();
    wait_for(
        "the ban, the lift and the registration among the events",
        Duration::from_secs(5),
        || {
            events.find("ban", banned, Some(&a.id)).is_some()
                && events.find("lift", banned, None).is_some()
                && (events.find("known-good", &phone, Some(&a.id)).is_some()
                    || events.find("grant-open", &phone, Some(&a.id)).is_some())
        },
    )
    .with_context(|| format!("events: {:#?}\n{}", events.lines(), logs()))?;
    let lines = events.stop()?;
    eprintln!("palisade events --tenant acme:\n{}", lines.join("\n"));
    Ok(())
}

/// A branch office behind NAT, as most are: site B's PBX has only a private
/// address (192.168.50.2) behind a gateway that masquerades to its public
/// one. B reports the private address; the controller sees B's stream come
/// from the public one, and that is what site A must trust, since B's trunk
/// traffic arrives from there. Nothing is configured for it.
#[test]
fn a_site_behind_nat_is_trusted_at_its_public_address() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("ctlnat", &[("a", "c-a"), ("gw", "c-gw"), ("x", "c-x")])?;
    // The middle namespace is the internet between the sites.
    lab.pbx.sysctl("net.ipv4.ip_forward", "1")?;
    let (site_a, gw, stranger) = (lab.client("a"), lab.client("gw"), lab.client("x"));
    // Site B's LAN behind its gateway (the lab's client "gw", whose eth0
    // address is the site's public one).
    let lan = Netns::new("ctlnatb")?;
    let private = "192.168.50.2";
    veth(
        &gw.ns,
        "lan0",
        &["192.168.50.1/24"],
        &lan,
        "eth0",
        &[&format!("{private}/24")],
    )?;
    lan.ip(&["route", "add", "default", "via", "192.168.50.1"])?;
    gw.ns.sysctl("net.ipv4.ip_forward", "1")?;
    // A second address on eth0 survives the first one's removal (the
    // lease change below).
    gw.ns
        .sysctl("net.ipv4.conf.eth0.promote_secondaries", "1")?;
    gw.ns.nft(
        "table ip nat {\n\
           chain post {\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             oifname \"eth0\" masquerade\n\
           }\n\
         }\n",
    )?;

    let ctl = Controller::start(&lab.pbx)?;
    let a = Site::start(&ctl, &lab, "a", "acme/site-a/pbx-a", Pbx::None, "")?;
    let _ssh = Listener::start(&site_a.ns, &[(Proto::Tcp, 22)])?;
    let ssh_a = SocketAddr::new(site_a.v4.into(), 22);
    let reaches_a = |ns: &Netns| probe(ns, Proto::Tcp, ssh_a, Duration::from_millis(500));
    wait_for("site A's table in force", Duration::from_secs(10), || {
        !reaches_a(&stranger.ns)
    })?;
    assert!(
        !reaches_a(&lan),
        "site B's LAN reaches A before B is enrolled"
    );

    let b = Site::start_in(
        &ctl,
        &lab.pbx,
        &lan,
        (private.to_owned(), String::new()),
        "acme/site-b/pbx-b",
        Pbx::None,
        "",
    )?;
    wait_connected(&ctl, &lab.pbx, "acme", &[&a, &b])?;
    let logs = || format!("{}\n{}\ncontroller: {}", a.log(), b.log(), ctl.log());
    let public = gw.v4.to_string();
    let took = wait_for(
        "site B's public address trusted at site A",
        Duration::from_secs(5),
        || a.has("tenant_peer_v4", &public),
    )
    .with_context(logs)?;
    eprintln!(
        "site B's public address {public} in site A's tenant_peer_v4 {took:?} after B connected"
    );
    assert!(a.has("tenant_peer_v4", private), "B's reported address too");
    assert!(b.has("tenant_peer_v4", &a.v4), "A (not behind NAT) at B");
    // The operator sees which address only the controller saw.
    let listed = ctl.host_addresses(&lab.pbx, "acme", &b.id)?;
    assert!(
        listed.contains(&format!("{public}*")) && listed.contains(&private.to_owned()),
        "palisade hosts: {listed:?}"
    );
    let listed_a = ctl.host_addresses(&lab.pbx, "acme", &a.id)?;
    assert!(
        listed_a.iter().all(|x| !x.ends_with('*')),
        "A reported the address it connects from: {listed_a:?}"
    );

    // Traffic: B's PBX, through its NAT, reaches A; a stranger does not.
    assert!(reaches_a(&lan), "site B's PBX through its NAT\n{}", logs());
    assert!(!reaches_a(&stranger.ns), "a stranger reaches A's SSH");
    let out = ctl.operator(
        &lab.pbx,
        &["explain", "--tenant", "acme", &public, "22/tcp"],
    )?;
    eprintln!("{out}");
    let at_a = answer_of(&out, &a.id)?;
    assert!(
        at_a.contains("ALLOWED at stage trusted") && at_a.contains("tenant_peer"),
        "{at_a}"
    );

    // A new lease: the gateway's public address changes. The masquerade
    // forgets its mappings, B's stream meets a reset at its next heartbeat
    // and B connects again from the new address; A follows.
    let new_public = "10.200.2.3";
    gw.ns
        .ip(&["addr", "add", &format!("{new_public}/24"), "dev", "eth0"])?;
    gw.ns
        .ip(&["addr", "del", &format!("{public}/24"), "dev", "eth0"])?;
    gw.ns
        .ip(&["route", "replace", "default", "via", &gw.pbx_v4.to_string()])?;
    let took = each_within(
        Duration::from_secs(30),
        &mut [
            ("the new public address at site A", &mut || {
                a.has("tenant_peer_v4", new_public)
            }),
            ("the old public address gone from site A", &mut || {
                !a.has("tenant_peer_v4", &public)
            }),
        ],
    )
    .with_context(logs)?;
    eprintln!(
        "gateway {public} → {new_public}: the new address trusted at site A {:?} after the change, the old one gone after {:?}",
        took[0], took[1]
    );
    assert!(
        reaches_a(&lan),
        "site B's PBX through its new address\n{}",
        logs()
    );
    let listed = ctl.host_addresses(&lab.pbx, "acme", &b.id)?;
    assert!(
        listed.contains(&format!("{new_public}*"))
            && !listed.iter().any(|x| x.starts_with(&public)),
        "palisade hosts: {listed:?}"
    );
    Ok(())
}

/// A PBX's own configuration names the public address it goes out from
/// (pjsip's `external_signaling_address`, set behind a NAT with a fixed
/// public address): that is where the tenant's other sites see its trunks
/// come from, so they trust it, with nothing configured in Palisade; an
/// edit of the PBX's file is followed.
#[test]
fn a_pbx_s_advertised_public_address_is_trusted_at_the_other_sites() -> Result<()> {
    require_root_tools()?;
    let lab = Lab::new("ctladv", &[("a", "c-a"), ("b", "c-b")])?;
    let ctl = Controller::start(&lab.pbx)?;
    let asterisk = tempfile::tempdir()?;
    let pjsip = asterisk.path().join("pjsip.conf");
    let conf = |public: &str| {
        format!(
            "[transport-udp]\ntype=transport\nprotocol=udp\nbind=0.0.0.0:5060\n\
             external_media_address={public}\nexternal_signaling_address={public}\n"
        )
    };
    let (public, new_public) = ("198.51.100.50", "198.51.100.51");
    std::fs::write(&pjsip, conf(public))?;
    let a = Site::start(&ctl, &lab, "a", "acme/site-a/pbx-a", Pbx::None, "")?;
    let b = Site::start(
        &ctl,
        &lab,
        "b",
        "acme/site-b/pbx-b",
        Pbx::Asterisk(asterisk.path()),
        "",
    )?;
    wait_connected(&ctl, &lab.pbx, "acme", &[&a, &b])?;
    let logs = || format!("{}\n{}\ncontroller: {}", a.log(), b.log(), ctl.log());
    let took = wait_for(
        "site B's advertised address trusted at site A",
        Duration::from_secs(5),
        || a.has("tenant_peer_v4", public) && a.trusts(&b),
    )
    .with_context(logs)?;
    eprintln!("site B's advertised {public} in site A's tenant_peer_v4 {took:?} after B connected");
    let listed = ctl.host_addresses(&lab.pbx, "acme", &b.id)?;
    assert!(
        listed.contains(&public.to_owned()),
        "reported by the agent, not only seen: {listed:?}"
    );
    let shown = b.agent.ok(&["show"])?;
    assert!(
        shown.contains(&format!("public address {public}")) && shown.contains("pjsip.conf:"),
        "{shown}"
    );
    assert!(
        !b.has("tenant_peer_v4", public),
        "a host's own address is no peer of its own"
    );

    // The PBX's public address changes (a new fixed address): the file is
    // edited, discovery follows it, and so does site A. Well after the
    // start, so that it is the watch on the file that sees the edit.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&pjsip, conf(new_public))?;
    let took = each_within(
        Duration::from_secs(10),
        &mut [
            ("the new address at site A", &mut || {
                a.has("tenant_peer_v4", new_public)
            }),
            ("the old address gone from site A", &mut || {
                !a.has("tenant_peer_v4", public)
            }),
        ],
    )
    .with_context(logs)?;
    eprintln!(
        "pjsip.conf edited {public} → {new_public}: the new address at site A after {:?}, the old one gone after {:?}",
        took[0], took[1]
    );
    Ok(())
}
