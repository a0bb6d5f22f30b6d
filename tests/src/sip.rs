//! Real SIP traffic in a [`Lab`]: a registrar, phones, floods and attack
//! tools, and counters that tell what reached the PBX.
//!
//! The responsive firewall is judged by what real attack tools achieve
//! against a real registrar, so nothing here is simulated:
//!
//! * [`Registrar`] — Kamailio as a registrar with digest authentication in
//!   the PBX namespace, logging one line per request ([`SipRequest`]): the
//!   registrar's log is the ground truth for "how many guesses got through".
//! * [`Meter`] — nft counters in the PBX namespace before and after any
//!   chain the agent may add: packets that arrived versus packets that got
//!   through, per client address, independent of any tool's own report.
//! * [`Sipp`] — SIPp phones (register, wrong password), REGISTER floods and
//!   password-guess floods, with SIPp's own call statistics ([`SippStats`]).
//! * [`svcrack`], [`svmap`], [`svwar`] — SIPVicious 0.3.8, the tools
//!   attackers actually run, with their findings parsed.
//! * [`SetWatch`], [`ban_of`], [`known_good_of`] — the agent's dynamic sets
//!   in `inet palisade`: what is banned, with which reason, and when the ban
//!   appeared.
//! * [`Rig`] — all of the above around one lab, with the agent daemon
//!   running or absent ([`AgentMode`]), and the scenarios of the responsive
//!   firewall issue as functions returning their measurements
//!   ([`svcrack_scenario`], [`flood_scenario`], ...). The end-to-end tests
//!   assert bounds on those measurements; the `responsive` bench prints them.
//!
//! Every process started here runs under `timeout` and in a [`ChildGuard`],
//! and every file lives in a temporary directory, so a failing test leaves
//! nothing behind. The scenarios are heavy (thousands of packets per second
//! on a 2-core machine): take [`exclusive`] first so that two never overlap.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::host::require_programs;
use crate::{AgentHost, ChildGuard, Client, Lab, Netns, Signal};

/// The SIP port the registrar listens on (UDP and TCP).
pub const SIP_PORT: u16 = 5060;
/// The registrar's digest realm.
pub const REALM: &str = "palisade.lab";
/// The registrar's users and their passwords. None of them is a number, so
/// a numeric dictionary never contains one by accident.
pub const USERS: [(&str, &str); 3] = [
    ("300", "Tr0ub4dor-300"),
    ("301", "c0rrect-h0rse-301"),
    ("333", "b4ttery-st4ple-333"),
];
/// The User-Agent of a normal desk phone, for phones and for attackers who
/// disguise themselves as one.
pub const PHONE_UA: &str = "Yealink SIP-T46S 66.86.0.15";
/// SIPVicious's default User-Agent, the one every filter list knows.
pub const SCANNER_UA: &str = "friendly-scanner";
/// The nft table of the [`Meter`]; the agent owns only `inet palisade`.
pub const METER_TABLE: &str = "lab_meter";

const KAMAILIO_CFG: &str = include_str!("../sip/registrar.cfg");
const KAMAILIO_MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/";
const SCENARIO_REGISTER: &str = include_str!("../sip/register.xml");
const SCENARIO_FLOOD: &str = include_str!("../sip/flood.xml");
const SCENARIO_GUESS: &str = include_str!("../sip/guess.xml");
const SCENARIO_CALL: &str = include_str!("../sip/call.xml");
const SCENARIO_TOLL: &str = include_str!("../sip/toll.xml");
/// The registrar's permissions address list (its trunks), next to its config.
const ADDRESS_FILE: &str = "address.list";
/// How long the registrar may take to answer its first probes.
const REGISTRAR_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time given to a tool beyond its own bound before `timeout` kills
/// it, and again before the harness kills `timeout`.
const TOOL_GRACE: Duration = Duration::from_secs(10);

/// The password of one of [`USERS`]; panics for an unknown user (a bug in
/// the test).
pub fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("the registrar has no user {user:?}"))
}

/// Fails with an explanation unless Kamailio, SIPp and SIPVicious are
/// installed (`.ci/run` installs them): like [`crate::require_root_tools`],
/// a missing tool fails the test loudly instead of skipping it.
pub fn require_sip_tools() -> Result<()> {
    let tools: [(&str, &[&str], &str); 6] = [
        ("kamailio", &["-v"], "apt-get install kamailio"),
        ("sipp", &["-v"], "apt-get install sip-tester"),
        (
            "sipvicious_svcrack",
            &["--version"],
            "python3 -m pip install sipvicious==0.3.8",
        ),
        (
            "sipvicious_svmap",
            &["--version"],
            "python3 -m pip install sipvicious==0.3.8",
        ),
        (
            "sipvicious_svwar",
            &["--version"],
            "python3 -m pip install sipvicious==0.3.8",
        ),
        ("timeout", &["--version"], "apt-get install coreutils"),
    ];
    require_programs(&tools)
}

/// Holds the right to run a heavy SIP scenario; see [`exclusive`].
pub struct Exclusive {
    _across_processes: Flock<File>,
    _in_process: MutexGuard<'static, ()>,
}

static HEAVY: Mutex<()> = Mutex::new(());

/// Serialises heavy scenarios: a flood measured while another runs measures
/// both, and two at once can starve the 2-core machine enough to make a
/// phone's registration time out. Cargo runs the tests of one binary as
/// threads (the mutex) and nextest runs them as processes (the file lock in
/// the temporary directory); both are released when the guard drops, also
/// when a test panics.
pub fn exclusive() -> Result<Exclusive> {
    let in_process = HEAVY.lock().unwrap_or_else(PoisonError::into_inner);
    let path = std::env::temp_dir().join("palisade-tests-sip.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let flock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(Exclusive {
        _across_processes: flock,
        _in_process: in_process,
    })
}

/// IPv4 or IPv6: which of a client's addresses a scenario uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The client's own address of this family.
    pub fn addr(self, client: &Client) -> IpAddr {
        client.addrs()[self.index()]
    }

    /// The PBX's address of this family on the client's link.
    pub fn pbx(self, client: &Client) -> IpAddr {
        client.pbx_addrs()[self.index()]
    }

    fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

/// An address as the host part of a SIP URI or a `host:port`: IPv6 in
/// brackets.
pub fn uri_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

// ---------------------------------------------------------------------------
// Bounded runs of external tools
// ---------------------------------------------------------------------------

/// What one run of an external tool did.
#[derive(Debug, Clone)]
pub struct ToolRun {
    /// The command line, for messages.
    pub command: String,
    /// The exit code; `None` if it was killed by a signal.
    pub exit_code: Option<i32>,
    /// Whether it ran into its time bound (and was killed).
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock time it was started, to compare with log timestamps.
    pub started: SystemTime,
    pub elapsed: Duration,
}

impl ToolRun {
    /// The last `lines` lines of stderr and stdout, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        format!(
            "{} -> exit {:?}{}\nstdout: {}\nstderr: {}",
            self.command,
            self.exit_code,
            if self.timed_out { " (timed out)" } else { "" },
            tail_lines(&self.stdout, lines),
            tail_lines(&self.stderr, lines)
        )
    }
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `program args...` in `ns` with its working directory, stdout and
/// stderr in `dir`, under `timeout` with `limit`, and waits for it. A run
/// that outlives even `timeout` is killed by the harness.
fn run_tool(
    ns: &Netns,
    dir: &Path,
    program: &str,
    args: &[String],
    limit: Duration,
) -> Result<ToolRun> {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let stem = format!("{n:04}-{program}");
    let out_path = dir.join(format!("{stem}.out"));
    let err_path = dir.join(format!("{stem}.err"));
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5"])
        .arg(limit.as_secs().max(1).to_string())
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    let started = SystemTime::now();
    let t0 = Instant::now();
    let mut child = ns
        .spawn(cmd)
        .with_context(|| format!("cannot start {command}"))?;
    let status: Option<ExitStatus> = child.wait_timeout(limit + TOOL_GRACE)?;
    let status = match status {
        Some(status) => Some(status),
        None => {
            child.kill()?;
            None
        }
    };
    let elapsed = t0.elapsed();
    let exit_code = status.and_then(|s| s.code());
    // GNU timeout exits 124 when it stopped the command, 137 after -k.
    let timed_out = status.is_none() || matches!(exit_code, Some(124) | Some(137));
    Ok(ToolRun {
        command,
        exit_code,
        timed_out,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        started,
        elapsed,
    })
}

fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Registrar
// ---------------------------------------------------------------------------

/// Kamailio as the PBX's registrar, in the PBX namespace.
///
/// It listens on UDP and TCP port 5060 of the given addresses, knows the
/// [`USERS`], challenges with `qop=auth`, answers 404 to unknown users
/// (so svwar can enumerate, as against Asterisk with `alwaysauthreject=no`),
/// 401 with a fresh challenge to a wrong password, 200 to a right one (the
/// contact is saved in memory) and 200 to OPTIONS. INVITEs from its trunks
/// (its permissions address list) are answered with 200, anyone else's are
/// challenged (407) unless they carry a user's credentials. Its config comes from
/// `tests/sip/registrar.cfg`; its run directory and log are in a temporary
/// directory. Killed (with its children) when dropped.
pub struct Registrar {
    child: ChildGuard,
    config_dir: PathBuf,
    log: PathBuf,
    addrs: Vec<IpAddr>,
    _dir: tempfile::TempDir,
}

/// One request as the registrar logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipRequest {
    /// When the registrar handled it.
    pub at: SystemTime,
    pub method: String,
    pub src: SocketAddr,
    /// `udp` or `tcp`.
    pub proto: String,
    /// The To user of a REGISTER, the request-URI user otherwise; `-` if none.
    pub user: String,
    /// Whether it carried an Authorization header.
    pub auth: bool,
    /// `ok`, `challenge` (no credentials), `fail` (wrong password),
    /// `notfound` (unknown user), `stale` (expired nonce), `error<rc>`
    /// (other authentication errors), `wronguser`, `refused` (other
    /// methods), `trunk` (an INVITE from a trunk, answered unauthenticated).
    pub result: String,
    pub user_agent: String,
}

impl SipRequest {
    /// A REGISTER with credentials that did not authenticate: a password
    /// guess that reached the registrar and was judged.
    pub fn is_guess(&self) -> bool {
        self.method == "REGISTER" && self.auth && self.result != "ok"
    }

    /// A REGISTER that authenticated and was saved.
    pub fn is_success(&self) -> bool {
        self.method == "REGISTER" && self.result == "ok"
    }

    /// Parses the registrar's log line
    /// `... PAL t=<s.us> method=M src=IP:PORT proto=P user=U auth=yes|no result=R ua=<rest>`.
    pub fn parse(line: &str) -> Option<SipRequest> {
        let rest = &line[line.find("PAL t=")? + 4..];
        let (fields, user_agent) = match rest.split_once(" ua=") {
            Some((fields, ua)) => (fields, ua.trim_end().to_owned()),
            None => (rest.trim_end(), String::new()),
        };
        let mut map = HashMap::new();
        for field in fields.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            map.insert(k, v);
        }
        let (secs, micros) = map.get("t")?.split_once('.')?;
        let at = UNIX_EPOCH
            + Duration::from_secs(secs.parse().ok()?)
            + Duration::from_micros(micros.parse().ok()?);
        let (ip, port) = map.get("src")?.rsplit_once(':')?;
        Some(SipRequest {
            at,
            method: (*map.get("method")?).to_owned(),
            src: SocketAddr::new(ip.parse().ok()?, port.parse().ok()?),
            proto: (*map.get("proto")?).to_owned(),
            user: (*map.get("user")?).to_owned(),
            auth: *map.get("auth")? == "yes",
            result: (*map.get("result")?).to_owned(),
            user_agent,
        })
    }
}

impl Registrar {
    /// Starts the registrar on every PBX address of `lab` (each client's
    /// link, IPv4 and IPv6) and waits until it answers on all of them.
    pub fn start(lab: &Lab) -> Result<Registrar> {
        Registrar::start_with_trunks(lab, &[])
    }

    /// [`Registrar::start`] with `trunks` in its permissions address list
    /// (group 1, tag `trunk`): their INVITEs are answered without
    /// authentication, and the agent's discovery learns them as trunks.
    pub fn start_with_trunks(lab: &Lab, trunks: &[IpAddr]) -> Result<Registrar> {
        let addrs: Vec<IpAddr> = lab.clients.iter().flat_map(|c| c.pbx_addrs()).collect();
        Registrar::start_on(&lab.pbx, &addrs, trunks)
    }

    /// Starts the registrar in `ns` on `addrs` (port 5060, UDP and TCP),
    /// with `trunks` in its address list, and waits until it answers an
    /// OPTIONS on every address over UDP and accepts a TCP connection;
    /// fails with the tail of its log otherwise.
    pub fn start_on(ns: &Netns, addrs: &[IpAddr], trunks: &[IpAddr]) -> Result<Registrar> {
        if addrs.is_empty() {
            bail!("the registrar needs at least one address");
        }
        let dir = tempfile::Builder::new().prefix("pal-registrar").tempdir()?;
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir)?;
        // The config alone in its directory, like /etc/kamailio: the agent's
        // discovery reads and watches it, and must not see the log grow.
        let config_dir = dir.path().join("etc");
        std::fs::create_dir(&config_dir)?;
        let cfg_path = config_dir.join("kamailio.cfg");
        let address_file = config_dir.join(ADDRESS_FILE);
        std::fs::write(&address_file, render_address_list(trunks))?;
        std::fs::write(&cfg_path, render_registrar_config(addrs, &address_file))?;
        let log = dir.path().join("kamailio.log");
        let log_file = OpenOptions::new().create(true).append(true).open(&log)?;

        let mut cmd = Command::new("kamailio");
        cmd.arg("-f")
            .arg(&cfg_path)
            // Foreground, logging to stderr: there is no syslog here.
            .args(["-DD", "-E"])
            .arg("-Y")
            .arg(&run_dir)
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .args(["-m", "64", "-M", "8"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = ns.spawn(cmd)?;
        let mut registrar = Registrar {
            child,
            config_dir,
            log,
            addrs: addrs.to_vec(),
            _dir: dir,
        };
        registrar.wait_ready(ns)?;
        Ok(registrar)
    }

    fn wait_ready(&mut self, ns: &Netns) -> Result<()> {
        let deadline = Instant::now() + REGISTRAR_START_TIMEOUT;
        let mut pending: Vec<IpAddr> = self.addrs.clone();
        while !pending.is_empty() {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "kamailio exited during start-up ({status}); its log ends with:\n{}",
                    self.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "kamailio did not answer on {pending:?} within {REGISTRAR_START_TIMEOUT:?}; \
                     its log ends with:\n{}",
                    self.log_tail(30)
                );
            }
            let mut still = Vec::new();
            for ip in pending {
                let target = SocketAddr::new(ip, SIP_PORT);
                let udp = options_ping(ns, ip, target, Duration::from_millis(300))?;
                let tcp = ns
                    .enter(|| TcpStream::connect_timeout(&target, Duration::from_millis(300)))
                    .is_ok();
                if !(udp && tcp) {
                    still.push(ip);
                }
            }
            pending = still;
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The addresses it listens on.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// The directory holding its `kamailio.cfg` and address list and
    /// nothing else: what the agent's discovery reads in place of
    /// `/etc/kamailio`.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// Path of its log (Kamailio's stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            lines,
        )
    }

    /// Whether Kamailio still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Every request it has logged so far, in log order.
    pub fn requests(&self) -> Result<Vec<SipRequest>> {
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("cannot read {}", self.log.display()))?;
        Ok(text.lines().filter_map(SipRequest::parse).collect())
    }

    /// The requests that came from `ip` (any port, any transport).
    pub fn requests_from(&self, ip: IpAddr) -> Result<Vec<SipRequest>> {
        Ok(self
            .requests()?
            .into_iter()
            .filter(|r| r.src.ip() == ip)
            .collect())
    }

    /// Password guesses from `ip` that reached the registrar: REGISTERs
    /// with credentials that failed ([`SipRequest::is_guess`]).
    pub fn guesses_from(&self, ip: IpAddr) -> Result<usize> {
        Ok(self
            .requests_from(ip)?
            .iter()
            .filter(|r| r.is_guess())
            .count())
    }

    /// Successful registrations of `user`, from anywhere.
    pub fn successes(&self, user: &str) -> Result<usize> {
        Ok(self
            .requests()?
            .iter()
            .filter(|r| r.is_success() && r.user == user)
            .count())
    }

    /// The first request from `ip`, if any reached the registrar.
    pub fn first_from(&self, ip: IpAddr) -> Result<Option<SipRequest>> {
        Ok(self.requests_from(ip)?.into_iter().next())
    }
}

/// The permissions address list: one `group address netmask port tag` line
/// per trunk, group 1, any port.
fn render_address_list(trunks: &[IpAddr]) -> String {
    let mut out = String::from("# group address netmask port tag\n");
    for ip in trunks {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        out.push_str(&format!("1 {ip} {len} 0 trunk\n"));
    }
    out
}

fn render_registrar_config(addrs: &[IpAddr], address_file: &Path) -> String {
    let mut listen = String::new();
    for ip in addrs {
        for proto in ["udp", "tcp"] {
            listen.push_str(&format!("listen={proto}:{}:{SIP_PORT}\n", uri_host(*ip)));
        }
    }
    let users: String = USERS
        .iter()
        .map(|(user, pass)| format!("\t$sht(users=>{user}) = \"{pass}\";\n"))
        .collect();
    KAMAILIO_CFG
        .replace("@LISTEN@", &listen)
        .replace("@USERS@", users.trim_end())
        .replace("@REALM@", REALM)
        .replace("@MODULES@", KAMAILIO_MODULES)
        .replace("@CHILDREN@", "3")
        .replace("@ADDRESS_FILE@", &address_file.display().to_string())
}

/// Sends one SIP OPTIONS over UDP from `from` (an address of `ns`; port
/// chosen by the kernel) to `to` and reports whether a `200` came back
/// within `timeout`. The registrar's liveness probe; from a client it also
/// tells whether that client still gets through the firewall.
pub fn options_ping(ns: &Netns, from: IpAddr, to: SocketAddr, timeout: Duration) -> Result<bool> {
    ns.try_enter(|| -> Result<bool> {
        let socket = UdpSocket::bind(SocketAddr::new(from, 0))
            .with_context(|| format!("cannot bind a UDP socket to {from}"))?;
        socket.set_read_timeout(Some(timeout))?;
        let local = socket.local_addr()?;
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let host = uri_host(to.ip());
        let msg = format!(
            "OPTIONS sip:ping@{host} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-ping{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:ping@{host}>;tag=ping{n}\r\n\
             To: <sip:ping@{host}>\r\n\
             Call-ID: ping-{n}@palisade-tests\r\n\
             CSeq: 1 OPTIONS\r\n\
             User-Agent: palisade-tests\r\n\
             Content-Length: 0\r\n\r\n"
        );
        socket.send_to(msg.as_bytes(), to)?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((len, _)) if buf[..len].starts_with(b"SIP/2.0 200") => return Ok(true),
                Ok(_) => continue,
                Err(_) => return Ok(false),
            }
        }
        Ok(false)
    })?
}

// ---------------------------------------------------------------------------
// Meter
// ---------------------------------------------------------------------------

/// Packet counters in the PBX namespace, per client address, for SIP
/// (UDP and TCP port 5060): `arrived` at hook prerouting priority -450,
/// before anything the agent can hook (raw is -300, conntrack -200, the
/// agent's input chain 0), and `passed` at hook input priority +300, after
/// every chain the agent may add. What the firewall dropped is the
/// difference, measured without trusting any tool or the agent itself.
///
/// It lives in its own table, `inet lab_meter`, which the agent never
/// touches; the table is deleted on drop (and with the namespace anyway).
pub struct Meter<'a> {
    ns: &'a Netns,
    addrs: Vec<IpAddr>,
}

/// One reading of all the meter's counters.
#[derive(Debug, Clone, Default)]
pub struct MeterReading {
    packets: HashMap<String, u64>,
}

impl MeterReading {
    /// SIP packets from `ip` that arrived at the PBX.
    pub fn arrived(&self, ip: IpAddr) -> u64 {
        self.packets
            .get(&counter_name("arrived", ip))
            .copied()
            .unwrap_or(0)
    }

    /// SIP packets from `ip` that got through every input chain.
    pub fn passed(&self, ip: IpAddr) -> u64 {
        self.packets
            .get(&counter_name("passed", ip))
            .copied()
            .unwrap_or(0)
    }
}

fn counter_name(point: &str, ip: IpAddr) -> String {
    let ip = ip.to_string().replace(['.', ':'], "_");
    format!("{point}_{ip}")
}

impl<'a> Meter<'a> {
    /// Installs counters for every client address of `lab` in its PBX.
    pub fn install(lab: &'a Lab) -> Result<Meter<'a>> {
        let addrs: Vec<IpAddr> = lab.clients.iter().flat_map(|c| c.addrs()).collect();
        Meter::install_for(&lab.pbx, &addrs)
    }

    /// Installs counters for `sources` in `ns`.
    pub fn install_for(ns: &'a Netns, sources: &[IpAddr]) -> Result<Meter<'a>> {
        let mut script = format!("table inet {METER_TABLE} {{\n");
        for ip in sources {
            for point in ["arrived", "passed"] {
                script.push_str(&format!("  counter {} {{ }}\n", counter_name(point, *ip)));
            }
        }
        for (chain, hook, priority) in [("arrived", "prerouting", -450), ("passed", "input", 300)] {
            script.push_str(&format!(
                "  chain {chain} {{\n    type filter hook {hook} priority {priority}; policy accept;\n"
            ));
            for ip in sources {
                let family = if ip.is_ipv4() { "ip" } else { "ip6" };
                script.push_str(&format!(
                    "    {family} saddr {ip} meta l4proto {{ tcp, udp }} th dport {SIP_PORT} counter name \"{}\"\n",
                    counter_name(chain, *ip)
                ));
            }
            script.push_str("  }\n");
        }
        script.push_str("}\n");
        ns.nft(&script).context("cannot install the meter")?;
        Ok(Meter {
            ns,
            addrs: sources.to_vec(),
        })
    }

    /// The addresses it counts.
    pub fn sources(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// Reads every counter at once.
    pub fn read(&self) -> Result<MeterReading> {
        let out = self
            .ns
            .run("nft", &["-j", "list", "table", "inet", METER_TABLE])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        let mut packets = HashMap::new();
        for item in json["nftables"].as_array().into_iter().flatten() {
            let counter = &item["counter"];
            if let (Some(name), Some(n)) = (counter["name"].as_str(), counter["packets"].as_u64()) {
                packets.insert(name.to_owned(), n);
            }
        }
        Ok(MeterReading { packets })
    }

    /// SIP packets from `ip` that arrived at the PBX.
    pub fn arrived(&self, ip: IpAddr) -> Result<u64> {
        Ok(self.read()?.arrived(ip))
    }

    /// SIP packets from `ip` that got through the firewall.
    pub fn passed(&self, ip: IpAddr) -> Result<u64> {
        Ok(self.read()?.passed(ip))
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .run("nft", &["delete", "table", "inet", METER_TABLE]);
    }
}

// ---------------------------------------------------------------------------
// SIPp
// ---------------------------------------------------------------------------

/// The SIPp scenarios in `tests/sip/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SippScenario {
    /// `register.xml`: REGISTER, 401, REGISTER with credentials, 200. A call
    /// succeeds when the phone registered.
    Register,
    /// `flood.xml`: one REGISTER without credentials and its 401. A call
    /// succeeds when the request was answered.
    Flood,
    /// `guess.xml`: REGISTER, 401, REGISTER with (wrong) credentials, 401 or
    /// 403. A call succeeds when the guess was judged by the registrar.
    Guess,
    /// `call.xml`: a trunk's call to the number `user`: INVITE, 200, ACK,
    /// BYE, 200. A call succeeds when it was answered and hung up.
    Call,
    /// `toll.xml`: one INVITE without credentials to the number `user` and
    /// the registrar's challenge. A call succeeds when the INVITE was
    /// answered (reached the registrar).
    Toll,
}

impl SippScenario {
    fn file_name(self) -> &'static str {
        match self {
            SippScenario::Register => "register.xml",
            SippScenario::Flood => "flood.xml",
            SippScenario::Guess => "guess.xml",
            SippScenario::Call => "call.xml",
            SippScenario::Toll => "toll.xml",
        }
    }

    fn text(self) -> &'static str {
        match self {
            SippScenario::Register => SCENARIO_REGISTER,
            SippScenario::Flood => SCENARIO_FLOOD,
            SippScenario::Guess => SCENARIO_GUESS,
            SippScenario::Call => SCENARIO_CALL,
            SippScenario::Toll => SCENARIO_TOLL,
        }
    }
}

/// The SIP transport of a SIPp run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SipTransport {
    /// UDP from one socket (`-t u1`).
    Udp,
    /// Every call over one TCP connection (`-t t1`).
    Tcp,
}

/// One SIPp run: a scenario, who sends it where, how fast and how often.
#[derive(Clone, Debug)]
pub struct Sipp {
    pub scenario: SippScenario,
    /// The client's address and source port (`-i`, `-p`).
    pub local: SocketAddr,
    /// The registrar.
    pub target: SocketAddr,
    pub user: String,
    /// The password used for the digest (`-ap`); wrong on purpose for
    /// [`SippScenario::Guess`].
    pub password: String,
    pub user_agent: String,
    pub transport: SipTransport,
    /// New calls per second.
    pub rate: f64,
    /// Calls in all (`-m`).
    pub calls: u64,
    /// How long a call waits for an answer before it fails.
    pub recv_timeout: Duration,
    /// Whether UDP requests are retransmitted (phones do; attack tools and
    /// floods run with `-nr`).
    pub retransmit: bool,
    /// The Expires of a registration.
    pub expires: u32,
    /// Most calls in progress at once (`-l`).
    pub max_concurrent: u64,
}

/// SIPp's own account of a run, from its `-trace_stat` file.
#[derive(Debug, Clone, Default)]
pub struct SippStats {
    /// Calls started: for [`SippScenario::Flood`] and [`SippScenario::Guess`]
    /// under `-nr`, the first REGISTERs sent.
    pub created: u64,
    pub successful: u64,
    pub failed: u64,
    /// SIPp's exit code: 0 all calls succeeded, 1 some failed.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub started: Option<SystemTime>,
    pub elapsed: Duration,
    /// The end of SIPp's stderr, for failure messages.
    pub log_tail: String,
}

impl Sipp {
    /// A phone that registers `user` with `password` once (use
    /// [`Sipp::repeat`] for more), retransmitting like a real phone and
    /// waiting up to 4 s for each answer.
    pub fn phone(local: SocketAddr, target: SocketAddr, user: &str, password: &str) -> Sipp {
        Sipp {
            scenario: SippScenario::Register,
            local,
            target,
            user: user.to_owned(),
            password: password.to_owned(),
            user_agent: PHONE_UA.to_owned(),
            transport: SipTransport::Udp,
            rate: 10.0,
            calls: 1,
            recv_timeout: Duration::from_secs(4),
            retransmit: true,
            expires: 120,
            max_concurrent: 10,
        }
    }

    /// A REGISTER flood without credentials for user 300 at `rate` per
    /// second for `duration`, with SIPVicious's User-Agent.
    pub fn flood(local: SocketAddr, target: SocketAddr, rate: f64, duration: Duration) -> Sipp {
        Sipp {
            scenario: SippScenario::Flood,
            user: "300".to_owned(),
            password: String::new(),
            user_agent: SCANNER_UA.to_owned(),
            rate,
            calls: calls_for(rate, duration),
            recv_timeout: Duration::from_secs(1),
            retransmit: false,
            max_concurrent: 20_000,
            ..Sipp::phone(local, target, "300", "")
        }
    }

    /// `calls` password guesses for `user` at `rate` per second, each with
    /// the wrong password `wrong`, with SIPVicious's User-Agent.
    pub fn guesses(
        local: SocketAddr,
        target: SocketAddr,
        user: &str,
        wrong: &str,
        rate: f64,
        calls: u64,
    ) -> Sipp {
        Sipp {
            scenario: SippScenario::Guess,
            user_agent: SCANNER_UA.to_owned(),
            rate,
            calls,
            recv_timeout: Duration::from_secs(1),
            retransmit: false,
            max_concurrent: 20_000,
            ..Sipp::phone(local, target, user, wrong)
        }
    }

    /// A phone that unregisters `user` (REGISTER with `Expires: 0`, 401,
    /// the same with credentials, 200), once.
    pub fn unregister(local: SocketAddr, target: SocketAddr, user: &str, password: &str) -> Sipp {
        Sipp {
            expires: 0,
            ..Sipp::phone(local, target, user, password)
        }
    }

    /// A trunk's call to `number` (answered, then hung up), once,
    /// retransmitting like a real SIP stack.
    pub fn call(local: SocketAddr, target: SocketAddr, number: &str) -> Sipp {
        Sipp {
            scenario: SippScenario::Call,
            user_agent: "palisade-test-trunk".to_owned(),
            ..Sipp::phone(local, target, number, "")
        }
    }

    /// `calls` INVITEs without credentials to `number` at `rate` per
    /// second, each sent once: a toll-fraud burst.
    pub fn toll_fraud(
        local: SocketAddr,
        target: SocketAddr,
        number: &str,
        rate: f64,
        calls: u64,
    ) -> Sipp {
        Sipp {
            scenario: SippScenario::Toll,
            user_agent: "Grandstream GXP2160 1.0.11.6".to_owned(),
            rate,
            calls,
            recv_timeout: Duration::from_secs(1),
            retransmit: false,
            max_concurrent: 20_000,
            ..Sipp::phone(local, target, number, "")
        }
    }

    /// The same run repeated `calls` times at `rate` per second.
    pub fn repeat(mut self, calls: u64, rate: f64) -> Sipp {
        self.calls = calls;
        self.rate = rate;
        self
    }

    pub fn user_agent(mut self, user_agent: &str) -> Sipp {
        self.user_agent = user_agent.to_owned();
        self
    }

    pub fn transport(mut self, transport: SipTransport) -> Sipp {
        self.transport = transport;
        self
    }

    /// How long the run should take if every call is answered at once.
    pub fn nominal_duration(&self) -> Duration {
        Duration::from_secs_f64(self.calls as f64 / self.rate.max(0.001))
    }

    /// Runs SIPp in `ns` (files in `dir`) to completion, bounded by SIPp's
    /// own `-timeout` and by `timeout`, and returns its statistics. A run
    /// where some calls failed is not an error: that is what is measured.
    pub fn run(&self, ns: &Netns, dir: &Path) -> Result<SippStats> {
        let scenario = dir.join(self.scenario.file_name());
        if !scenario.exists() {
            std::fs::write(&scenario, self.scenario.text())?;
        }
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let stat = dir.join(format!("sipp-{n:04}.csv"));
        // Long enough for every call to be made and, at worst, time out
        // with all its retransmissions.
        let bound = self.nominal_duration() + self.recv_timeout * 2 + Duration::from_secs(10);
        let mut args: Vec<String> = vec![
            "-sf".into(),
            scenario.display().to_string(),
            "-t".into(),
            match self.transport {
                SipTransport::Udp => "u1",
                SipTransport::Tcp => "t1",
            }
            .into(),
            "-i".into(),
            self.local.ip().to_string(),
            "-p".into(),
            self.local.port().to_string(),
            "-s".into(),
            self.user.clone(),
            "-au".into(),
            self.user.clone(),
            "-ap".into(),
            self.password.clone(),
            "-key".into(),
            "ua".into(),
            self.user_agent.clone(),
            "-key".into(),
            "expires".into(),
            self.expires.to_string(),
            "-m".into(),
            self.calls.to_string(),
            "-l".into(),
            self.max_concurrent.to_string(),
            "-recv_timeout".into(),
            self.recv_timeout.as_millis().to_string(),
            "-timeout".into(),
            format!("{}s", bound.as_secs()),
            // "all but BYE": with `-bye` alone an unexpected 401 would not
            // abort the call, and a wrong password would be retried.
            "-default_behaviors".into(),
            "all,-bye".into(),
            "-nostdin".into(),
            "-trace_stat".into(),
            "-stf".into(),
            stat.display().to_string(),
        ];
        args.extend(pace_args(self.rate));
        if !self.retransmit {
            args.push("-nr".into());
        }
        args.push(format!(
            "{}:{}",
            uri_host(self.target.ip()),
            self.target.port()
        ));
        let run = run_tool(ns, dir, "sipp", &args, bound + TOOL_GRACE)?;
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        let mut stats = parse_sipp_stats(&text).with_context(|| {
            format!(
                "SIPp wrote no statistics to {}: {}",
                stat.display(),
                run.tail(15)
            )
        })?;
        stats.exit_code = run.exit_code;
        stats.timed_out = run.timed_out;
        stats.started = Some(run.started);
        stats.elapsed = run.elapsed;
        stats.log_tail = tail_lines(&run.stderr, 10);
        Ok(stats)
    }
}

fn calls_for(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).round().max(1.0) as u64
}

/// `-r`/`-rp` for a rate in calls per second, also below one per second.
fn pace_args(rate: f64) -> Vec<String> {
    if rate >= 1.0 && rate.fract() == 0.0 {
        vec!["-r".into(), format!("{rate}"), "-rp".into(), "1000".into()]
    } else {
        let period_ms = (1000.0 / rate).round().max(1.0) as u64;
        vec!["-r".into(), "1".into(), "-rp".into(), period_ms.to_string()]
    }
}

/// The last line of a SIPp `-trace_stat` CSV file, by column name.
fn parse_sipp_stats(text: &str) -> Option<SippStats> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let column = |name: &str| -> Option<u64> {
        let i = header.iter().position(|h| *h == name)?;
        last.get(i)?.trim().parse().ok()
    };
    Some(SippStats {
        created: column("TotalCallCreated")?,
        successful: column("SuccessfulCall(C)")?,
        failed: column("FailedCall(C)")?,
        ..SippStats::default()
    })
}

// ---------------------------------------------------------------------------
// SIPVicious
// ---------------------------------------------------------------------------

/// `count` distinct wrong passwords for a dictionary (numbers from 100000 on,
/// none of which is a password in [`USERS`]).
pub fn wrong_passwords(count: usize) -> Vec<String> {
    (100_000..)
        .take(count)
        .map(|n: u64| n.to_string())
        .collect()
}

/// What svcrack did.
#[derive(Debug, Clone)]
pub struct CrackReport {
    /// The password svcrack reports having found.
    pub found: Option<String>,
    pub run: ToolRun,
}

/// What svmap found.
#[derive(Debug, Clone)]
pub struct MapReport {
    /// `(device, user agent)` rows.
    pub devices: Vec<(String, String)>,
    pub run: ToolRun,
}

/// What svwar found.
#[derive(Debug, Clone)]
pub struct WarReport {
    /// `(extension, authentication)` rows, e.g. `("300", "reqauth")`.
    pub extensions: Vec<(String, String)>,
    pub run: ToolRun,
}

/// The options every SIPVicious tool needs to send from `bind` (port 5060)
/// to `target`.
///
/// `-x` goes into the Via header as is, and 0.3.8 does not bracket an IPv6
/// address there (`Via: SIP/2.0/UDP fd00::2:5060`, which Kamailio rejects as
/// malformed), so for IPv6 it is given in brackets; `-b` is the socket's
/// address and stays bare. `-6` selects an IPv6 socket.
fn sipvicious_common(bind: IpAddr) -> Vec<String> {
    let mut args = vec![
        "-x".into(),
        uri_host(bind),
        "-b".into(),
        bind.to_string(),
        "-P".into(),
        SIP_PORT.to_string(),
    ];
    if bind.is_ipv6() {
        args.push("-6".into());
    }
    args
}

/// svcrack against `user` on `target` from `bind`, with a dictionary of
/// `passwords`. svcrack sends its next guess after 5 ms without an answer
/// and, once nothing answers any more, keeps sending for `max_silence`
/// (`--maximumtime`) and then waits 10 s more for late answers: the run
/// takes about `passwords / 180 s + max_silence + 10 s`.
pub fn svcrack(
    ns: &Netns,
    dir: &Path,
    bind: IpAddr,
    target: IpAddr,
    user: &str,
    passwords: &[String],
    max_silence: Duration,
) -> Result<CrackReport> {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dictionary = dir.join(format!("dictionary-{n:04}.txt"));
    std::fs::write(&dictionary, passwords.join("\n") + "\n")?;
    let mut args = vec![
        "-u".into(),
        user.into(),
        "-d".into(),
        dictionary.display().to_string(),
    ];
    args.extend(sipvicious_common(bind));
    args.extend([
        "-p".into(),
        SIP_PORT.to_string(),
        "--maximumtime".into(),
        max_silence.as_secs().max(1).to_string(),
        target.to_string(),
    ]);
    let bound = Duration::from_secs(passwords.len() as u64 / 50 + 30) + max_silence;
    let run = run_tool(ns, dir, "sipvicious_svcrack", &args, bound)?;
    let found = parse_table(&run.stdout)
        .into_iter()
        .find(|row| row.len() >= 2 && row[0] == user)
        .map(|row| row[1].clone());
    Ok(CrackReport { found, run })
}

/// svmap (an OPTIONS scan) of `target` from `bind`.
pub fn svmap(ns: &Netns, dir: &Path, bind: IpAddr, target: IpAddr) -> Result<MapReport> {
    let mut args = sipvicious_common(bind);
    args.push(target.to_string());
    let run = run_tool(ns, dir, "sipvicious_svmap", &args, Duration::from_secs(60))?;
    let devices = parse_table(&run.stdout)
        .into_iter()
        .filter(|row| row.len() >= 2)
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    Ok(MapReport { devices, run })
}

/// svwar with REGISTER over the extensions `range` (e.g. `"100-999"`) on
/// `target` from `bind`, stopping after `max_silence` without an answer.
pub fn svwar(
    ns: &Netns,
    dir: &Path,
    bind: IpAddr,
    target: IpAddr,
    range: &str,
    max_silence: Duration,
) -> Result<WarReport> {
    let mut args = vec![format!("-e{range}"), "-m".into(), "REGISTER".into()];
    args.extend(sipvicious_common(bind));
    args.extend([
        "-p".into(),
        SIP_PORT.to_string(),
        "--maximumtime".into(),
        max_silence.as_secs().max(1).to_string(),
        target.to_string(),
    ]);
    let bound = Duration::from_secs(120) + max_silence;
    let run = run_tool(ns, dir, "sipvicious_svwar", &args, bound)?;
    let extensions = parse_table(&run.stdout)
        .into_iter()
        .filter(|row| row.len() >= 2)
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    Ok(WarReport { extensions, run })
}

/// The data rows of a SIPVicious result table (`| a | b |` lines after the
/// `+===+` line under the header).
fn parse_table(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_body = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("+=") {
            in_body = true;
        } else if in_body && line.starts_with('|') {
            rows.push(
                line.trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().to_owned())
                    .collect(),
            );
        }
    }
    rows
}

// ---------------------------------------------------------------------------
// The agent's sets
// ---------------------------------------------------------------------------

/// One element of a dynamic set of `inet palisade`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElement {
    /// The address, or the network as `addr/len`.
    pub value: String,
    pub comment: Option<String>,
    /// Seconds.
    pub timeout: Option<u64>,
    /// Seconds left.
    pub expires: Option<u64>,
}

impl SetElement {
    /// Whether this element is `ip` or a network holding it.
    pub fn covers(&self, ip: IpAddr) -> bool {
        match self.value.split_once('/') {
            None => self.value.parse::<IpAddr>().ok() == Some(ip),
            Some((net, len)) => match (net.parse::<IpAddr>(), len.parse::<u32>()) {
                (Ok(IpAddr::V4(net)), Ok(len)) if len <= 32 => match ip {
                    IpAddr::V4(ip) => {
                        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                        u32::from(ip) & mask == u32::from(net) & mask
                    }
                    IpAddr::V6(_) => false,
                },
                (Ok(IpAddr::V6(net)), Ok(len)) if len <= 128 => match ip {
                    IpAddr::V6(ip) => {
                        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                        u128::from(ip) & mask == u128::from(net) & mask
                    }
                    IpAddr::V4(_) => false,
                },
                _ => false,
            },
        }
    }
}

/// The elements of set `name` of `inet palisade` in `ns`; empty when the
/// table or the set does not exist (no agent: nothing is banned).
pub fn set_elements(ns: &Netns, name: &str) -> Result<Vec<SetElement>> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "set", "inet", "palisade", name])
        .output()?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut elements = Vec::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for elem in item["set"]["elem"].as_array().into_iter().flatten() {
            elements.push(parse_element(elem));
        }
    }
    Ok(elements)
}

fn parse_element(elem: &serde_json::Value) -> SetElement {
    // A bare value when the element has no timeout or comment, else
    // `{"elem": {"val": ..., "timeout": ..., "comment": ...}}`.
    let (val, meta) = match elem.get("elem") {
        Some(inner) => (&inner["val"], inner),
        None => (elem, elem),
    };
    let value = match val {
        serde_json::Value::String(s) => s.clone(),
        other => match (
            other["prefix"]["addr"].as_str(),
            other["prefix"]["len"].as_u64(),
        ) {
            (Some(addr), Some(len)) => format!("{addr}/{len}"),
            _ => other.to_string(),
        },
    };
    SetElement {
        value,
        comment: meta["comment"].as_str().map(str::to_owned),
        timeout: meta["timeout"].as_u64(),
        expires: meta["expires"].as_u64(),
    }
}

/// One per-user grant in `grant_v4`/`grant_v6` of `inet palisade`: `addr`
/// may open `proto`/`port`, for `timeout` seconds from when it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantElement {
    pub addr: IpAddr,
    /// `tcp` or `udp` (nft prints the protocol by name, or its number).
    pub proto: String,
    pub port: u16,
    pub comment: Option<String>,
    /// Seconds.
    pub timeout: Option<u64>,
    /// Seconds left.
    pub expires: Option<u64>,
}

/// Every element of `grant_v4` and `grant_v6` in `ns`; empty when the table
/// or the sets do not exist.
pub fn grant_elements(ns: &Netns) -> Result<Vec<GrantElement>> {
    let mut out = Vec::new();
    for set in ["grant_v4", "grant_v6"] {
        let cmd = ns
            .command("nft")
            .args(["-j", "list", "set", "inet", "palisade", set])
            .output()?;
        if !cmd.status.success() {
            continue;
        }
        let json: serde_json::Value = serde_json::from_slice(&cmd.stdout)?;
        for item in json["nftables"].as_array().into_iter().flatten() {
            for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                if let Some(g) = parse_grant(elem) {
                    out.push(g);
                }
            }
        }
    }
    Ok(out)
}

fn parse_grant(elem: &serde_json::Value) -> Option<GrantElement> {
    let (val, meta) = match elem.get("elem") {
        Some(inner) => (&inner["val"], inner),
        None => (elem, elem),
    };
    let parts = val["concat"].as_array()?;
    let [addr, proto, port] = parts.as_slice() else {
        return None;
    };
    let proto = match proto {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(6) => "tcp".to_owned(),
            Some(17) => "udp".to_owned(),
            _ => n.to_string(),
        },
        _ => return None,
    };
    Some(GrantElement {
        addr: addr.as_str()?.parse().ok()?,
        proto,
        port: u16::try_from(port.as_u64()?).ok()?,
        comment: meta["comment"].as_str().map(str::to_owned),
        timeout: meta["timeout"].as_u64(),
        expires: meta["expires"].as_u64(),
    })
}

fn family_set(prefix: &str, ip: IpAddr) -> String {
    format!("{prefix}_{}", if ip.is_ipv4() { "v4" } else { "v6" })
}

/// `ip`'s element in `ban_v4`/`ban_v6`, if it is banned.
pub fn ban_of(ns: &Netns, ip: IpAddr) -> Result<Option<SetElement>> {
    Ok(set_elements(ns, &family_set("ban", ip))?
        .into_iter()
        .find(|e| e.covers(ip)))
}

/// `ip`'s element in `known_good_v4`/`known_good_v6`, if it is there.
pub fn known_good_of(ns: &Netns, ip: IpAddr) -> Result<Option<SetElement>> {
    Ok(set_elements(ns, &family_set("known_good", ip))?
        .into_iter()
        .find(|e| e.covers(ip)))
}

/// One address seen added to a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetEvent {
    pub at: SystemTime,
    pub set: String,
    pub addr: IpAddr,
}

/// Records when addresses are added to the agent's sets, to the
/// millisecond: `nft monitor new elements` in the PBX namespace (events
/// arrive as the transaction commits), plus a poll of the ban and
/// known-good sets every 200 ms for elements the kernel adds from the
/// packet path, which may not be announced. Stopped on drop.
pub struct SetWatch {
    events: Arc<Mutex<Vec<SetEvent>>>,
    stop: Arc<AtomicBool>,
    monitor: ChildGuard,
    threads: Vec<JoinHandle<()>>,
}

const WATCHED_SETS: [&str; 4] = ["ban_v4", "ban_v6", "known_good_v4", "known_good_v6"];

impl SetWatch {
    pub fn start(ns: &Netns) -> Result<SetWatch> {
        let events: Arc<Mutex<Vec<SetEvent>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut cmd = Command::new("nft");
        cmd.args(["monitor", "new", "elements"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut monitor = ns.spawn(cmd)?;
        let stdout = monitor
            .child_mut()
            .stdout
            .take()
            .context("nft monitor's stdout was not piped")?;
        let reader = {
            let events = Arc::clone(&events);
            std::thread::Builder::new()
                .name("nft-monitor".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let at = SystemTime::now();
                        if let Some((set, addrs)) = parse_monitor_line(&line) {
                            let mut events = events.lock().unwrap_or_else(PoisonError::into_inner);
                            for addr in addrs {
                                events.push(SetEvent {
                                    at,
                                    set: set.clone(),
                                    addr,
                                });
                            }
                        }
                    }
                })?
        };
        let poller = {
            let events = Arc::clone(&events);
            let stop = Arc::clone(&stop);
            let netns = ns.name().to_owned();
            std::thread::Builder::new()
                .name("set-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for set in WATCHED_SETS {
                            let Ok(out) = Command::new("ip")
                                .args(["netns", "exec", &netns, "nft", "-j", "list", "set"])
                                .args(["inet", "palisade", set])
                                .stderr(Stdio::null())
                                .output()
                            else {
                                continue;
                            };
                            let at = SystemTime::now();
                            let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                            else {
                                continue;
                            };
                            let mut events = events.lock().unwrap_or_else(PoisonError::into_inner);
                            for item in json["nftables"].as_array().into_iter().flatten() {
                                for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                                    let Ok(addr) = parse_element(elem).value.parse::<IpAddr>()
                                    else {
                                        continue;
                                    };
                                    if !events.iter().any(|e| e.set == set && e.addr == addr) {
                                        events.push(SetEvent {
                                            at,
                                            set: set.to_owned(),
                                            addr,
                                        });
                                    }
                                }
                            }
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })?
        };
        Ok(SetWatch {
            events,
            stop,
            monitor,
            threads: vec![reader, poller],
        })
    }

    /// Everything seen so far.
    pub fn events(&self) -> Vec<SetEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When `ip` was first seen added to `ban_v4`/`ban_v6`.
    pub fn first_ban(&self, ip: IpAddr) -> Option<SystemTime> {
        self.first_in(&family_set("ban", ip), ip)
    }

    /// When `ip` was first seen added to `set`.
    pub fn first_in(&self, set: &str, ip: IpAddr) -> Option<SystemTime> {
        self.events()
            .into_iter()
            .filter(|e| e.set == set && e.addr == ip)
            .map(|e| e.at)
            .min()
    }
}

impl Drop for SetWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.monitor.kill();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `add element inet palisade ban_v4 { 10.0.0.1 timeout 1h comment "x", ... }`
/// → the set and the addresses in it (quoted comments are skipped).
fn parse_monitor_line(line: &str) -> Option<(String, Vec<IpAddr>)> {
    let rest = line.strip_prefix("add element inet palisade ")?;
    let (set, body) = rest.split_once(' ')?;
    let mut unquoted = String::new();
    let mut quoted = false;
    for c in body.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted {
            unquoted.push(c);
        }
    }
    let addrs = unquoted
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}'))
        .filter_map(|token| token.split('/').next()?.parse::<IpAddr>().ok())
        .collect();
    Some((set.to_owned(), addrs))
}

// ---------------------------------------------------------------------------
// Rig and scenarios
// ---------------------------------------------------------------------------

/// Whether a scenario runs with the agent daemon enforcing the default
/// policy on the PBX, or without any firewall (the baseline that proves
/// the harness: everything gets through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    Running,
    Absent,
}

impl AgentMode {
    /// `Absent` when the environment variable `var` is `1`, else `Running`.
    pub fn from_env(var: &str) -> AgentMode {
        if std::env::var(var).is_ok_and(|v| v == "1") {
            AgentMode::Absent
        } else {
            AgentMode::Running
        }
    }
}

/// The client names of [`standard_lab`].
pub const PHONE: &str = "phone";
pub const ATTACKER: &str = "attacker";

/// The lab every scenario runs in: a PBX, a phone host (10.200.1.2,
/// fd00:200:1::2) and an attacker host (10.200.2.2, fd00:200:2::2), both
/// in the internet zone of the default policy.
pub fn standard_lab(tag: &str) -> Result<Lab> {
    Lab::new(tag, &[(PHONE, "z-phone"), (ATTACKER, "z-attack")])
}

/// A lab's PBX with the registrar, the meter, a set watch and, in
/// [`AgentMode::Running`], the agent daemon with the default policy.
/// Everything it started is stopped when it drops (the lab itself belongs
/// to the caller).
pub struct Rig<'a> {
    pub lab: &'a Lab,
    pub mode: AgentMode,
    pub registrar: Registrar,
    pub meter: Meter<'a>,
    pub watch: SetWatch,
    // The daemon is stopped before its installation (config, state) goes.
    daemon: Option<ChildGuard>,
    agent: Option<AgentHost<'a>>,
    scratch: tempfile::TempDir,
}

/// What a [`Rig`] starts with beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    /// Policy text appended to the agent's config (which holds the policy),
    /// e.g. `"[responsive.inline]\nenabled = true\n"`. It must not repeat
    /// `[agent.discovery]`, which the rig writes.
    pub policy: String,
    /// Addresses in the registrar's permissions address list: its trunks,
    /// which the agent learns through discovery.
    pub trunks: Vec<IpAddr>,
}

impl<'a> Rig<'a> {
    /// Starts the meter, the registrar, then (in `Running` mode) the agent
    /// with the default policy, discovering the registrar's config, and the
    /// set watch.
    pub fn start(lab: &'a Lab, mode: AgentMode) -> Result<Rig<'a>> {
        Rig::start_opts(lab, mode, RigOptions::default())
    }

    /// [`Rig::start`] with `extra_policy` appended to the default policy.
    pub fn start_with(lab: &'a Lab, mode: AgentMode, extra_policy: &str) -> Result<Rig<'a>> {
        Rig::start_opts(
            lab,
            mode,
            RigOptions {
                policy: extra_policy.to_owned(),
                ..RigOptions::default()
            },
        )
    }

    /// [`Rig::start`] with extra policy and trunks.
    pub fn start_opts(lab: &'a Lab, mode: AgentMode, options: RigOptions) -> Result<Rig<'a>> {
        let scratch = tempfile::Builder::new().prefix("pal-sip").tempdir()?;
        let meter = Meter::install(lab)?;
        let registrar = Registrar::start_with_trunks(lab, &options.trunks)?;
        let (agent, daemon) = match mode {
            AgentMode::Running => {
                let agent = AgentHost::new(&lab.pbx)?;
                std::fs::write(
                    agent.config_path(),
                    agent_config(&registrar, scratch.path(), &options.policy),
                )?;
                let daemon = agent.start_daemon()?;
                // The table is in force before the watch reads: attack only
                // once the agent can see it.
                agent.wait_for_log("SIP watch started", Duration::from_secs(10))?;
                (Some(agent), Some(daemon))
            }
            AgentMode::Absent => (None, None),
        };
        let watch = SetWatch::start(&lab.pbx)?;
        Ok(Rig {
            lab,
            mode,
            registrar,
            meter,
            watch,
            agent,
            daemon,
            scratch,
        })
    }

    pub fn client(&self, name: &str) -> &'a Client {
        self.lab.client(name)
    }

    /// A temporary directory for tool files, removed with the rig.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The agent installation, in `Running` mode.
    pub fn agent(&self) -> Option<&AgentHost<'a>> {
        self.agent.as_ref()
    }

    /// Stops the agent daemon: SIGTERM (waits up to 5 s for it to exit) or
    /// SIGKILL (at once). Returns whether it had exited by then.
    pub fn stop_agent(&mut self, signal: Signal) -> Result<bool> {
        let Some(daemon) = self.daemon.as_mut() else {
            bail!("no agent daemon is running");
        };
        if signal == Signal::SIGKILL {
            daemon.kill()?;
            return Ok(true);
        }
        daemon.signal(signal)?;
        Ok(daemon.wait_timeout(Duration::from_secs(5))?.is_some())
    }

    /// Rewrites the agent's config with `extra_policy` in place of what it
    /// had on top of the default policy, and tells the daemon (SIGHUP) to
    /// reload it. Returns at once: wait for the effect.
    pub fn reconfigure(&self, extra_policy: &str) -> Result<()> {
        let (Some(agent), Some(daemon)) = (self.agent.as_ref(), self.daemon.as_ref()) else {
            bail!("no agent daemon is running");
        };
        // The daemon installs its SIGHUP handler only after its first
        // discovery, and until then SIGHUP's default action ends it.
        let pid = daemon.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !catches(pid, Signal::SIGHUP) {
            if Instant::now() > deadline {
                bail!(
                    "the agent (pid {pid}) did not catch SIGHUP within 10 s: {}",
                    tail_lines(&agent.daemon_log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(
            agent.config_path(),
            agent_config(&self.registrar, self.scratch.path(), extra_policy),
        )?;
        daemon.signal(Signal::SIGHUP)?;
        Ok(())
    }

    /// Whether the agent daemon still runs.
    pub fn agent_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.is_running())
    }

    /// `ip`'s ban, if it is banned now.
    pub fn ban_of(&self, ip: IpAddr) -> Result<Option<SetElement>> {
        ban_of(&self.lab.pbx, ip)
    }

    /// The per-user grants in force now ([`grant_elements`]).
    pub fn grants(&self) -> Result<Vec<GrantElement>> {
        grant_elements(&self.lab.pbx)
    }

    /// `ip`'s known-good element, if it has one now.
    pub fn known_good_of(&self, ip: IpAddr) -> Result<Option<SetElement>> {
        known_good_of(&self.lab.pbx, ip)
    }

    /// When the agent decided to ban `ip`: the timestamp of its first
    /// `banned addr=IP` log line (written as the verdict goes to the
    /// kernel, so a few hundred microseconds before the ban is in force).
    /// Sharper than [`Rig::ban_delay`], whose `nft monitor` may lag behind
    /// while it refreshes its cache of a large table.
    pub fn ban_logged(&self, ip: IpAddr) -> Option<SystemTime> {
        let log = self.agent.as_ref()?.daemon_log();
        let needle = format!("banned addr={ip} ");
        log.lines()
            .map(strip_ansi)
            .find(|l| l.contains(&needle))
            .and_then(|l| parse_rfc3339_utc(l.split_whitespace().next()?))
    }

    /// How long after `since` the watch saw `ip` banned.
    pub fn ban_delay(&self, ip: IpAddr, since: SystemTime) -> Option<Duration> {
        let at = self.watch.first_ban(ip)?;
        Some(at.duration_since(since).unwrap_or_default())
    }

    /// What to print when a bound is missed: the agent's view, the sets, the
    /// meter and the ends of the registrar's and the agent's logs.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("mode: {:?}\n", self.mode);
        if let Some(agent) = &self.agent {
            match agent.ok(&["show"]) {
                Ok(show) => out.push_str(&format!("palisade-agent show:\n{show}\n")),
                Err(e) => out.push_str(&format!("palisade-agent show failed: {e:#}\n")),
            }
            out.push_str(&format!(
                "agent log (end):\n{}\n",
                tail_lines(&agent.daemon_log(), 60)
            ));
        }
        out.push_str(&format!("set events: {:?}\n", self.watch.events()));
        if let Ok(reading) = self.meter.read() {
            for ip in self.meter.sources() {
                out.push_str(&format!(
                    "meter {ip}: arrived {} passed {}\n",
                    reading.arrived(*ip),
                    reading.passed(*ip)
                ));
            }
        }
        out.push_str(&format!(
            "registrar log (end):\n{}\n",
            self.registrar.log_tail(15)
        ));
        out
    }
}

/// `line` without ANSI colour sequences (`ESC [ ... m`), as the agent's
/// log has them.
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-25T03:59:35.895601Z` (UTC, as tracing writes it) as a time.
pub(crate) fn parse_rfc3339_utc(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(days * 86_400 + h * 3600 + min * 60 + sec, nanos))
}

/// Whether process `pid` has a handler for `signal` (its `SigCgt` mask in
/// `/proc/PID/status`).
fn catches(pid: u32, signal: Signal) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}

/// Where the registrar's log and the meter stood for one source before a
/// scenario, so that its outcome counts only what the scenario did (a rig
/// can run several scenarios one after the other).
struct Mark {
    ip: IpAddr,
    requests: usize,
    arrived: u64,
    passed: u64,
}

/// What one source did since a [`Mark`].
struct SinceMark {
    requests: Vec<SipRequest>,
    arrived: u64,
    passed: u64,
}

impl Mark {
    fn take(rig: &Rig, ip: IpAddr) -> Result<Mark> {
        let reading = rig.meter.read()?;
        Ok(Mark {
            ip,
            requests: rig.registrar.requests_from(ip)?.len(),
            arrived: reading.arrived(ip),
            passed: reading.passed(ip),
        })
    }

    fn since(&self, rig: &Rig) -> Result<SinceMark> {
        let mut requests = rig.registrar.requests_from(self.ip)?;
        requests.drain(..self.requests.min(requests.len()));
        let reading = rig.meter.read()?;
        Ok(SinceMark {
            requests,
            arrived: reading.arrived(self.ip).saturating_sub(self.arrived),
            passed: reading.passed(self.ip).saturating_sub(self.passed),
        })
    }
}

/// The agent's config in a rig: the default policy plus `extra_policy`,
/// with discovery reading the test registrar's config and nothing of the
/// host's (a machine with the kamailio package has an `/etc/kamailio` of
/// its own).
/// `@REGISTRAR_LOG@` in `extra_policy` stands for the registrar's log file.
fn agent_config(registrar: &Registrar, scratch: &Path, extra_policy: &str) -> String {
    let none = scratch.join("no-pbx");
    let extra_policy = extra_policy.replace(
        "@REGISTRAR_LOG@",
        &registrar.log_path().display().to_string(),
    );
    format!(
        "[agent.discovery]\nkamailio = {:?}\nasterisk = {:?}\nfreeswitch = {:?}\n\n{extra_policy}\n",
        registrar.config_dir().display().to_string(),
        none.join("asterisk").display().to_string(),
        none.join("freeswitch").display().to_string(),
    )
}

/// What a password-cracking run achieved.
#[derive(Debug, Clone)]
pub struct CrackOutcome {
    pub attacker: IpAddr,
    /// Passwords the tool was given.
    pub passwords: usize,
    /// Guesses the registrar judged ([`Registrar::guesses_from`]).
    pub guesses_reached: usize,
    /// All requests from the attacker the registrar saw.
    pub requests_reached: usize,
    /// SIP packets from the attacker at the PBX, before and after the firewall.
    pub arrived: u64,
    pub passed: u64,
    pub ban: Option<SetElement>,
    /// From the attacker's first request at the registrar (or the tool's
    /// start if none got there) to its ban appearing.
    pub ban_after: Option<Duration>,
    /// A password the tool found.
    pub cracked: Option<String>,
    pub elapsed: Duration,
    /// The tool's output, for messages.
    pub log: String,
    /// The attacker's requests the registrar saw, in order.
    pub requests: Vec<SipRequest>,
}

/// svcrack from the attacker against user 300 with `passwords` wrong
/// passwords, over IPv4 or IPv6.
pub fn svcrack_scenario(rig: &Rig, family: Family, passwords: usize) -> Result<CrackOutcome> {
    let attacker = rig.client(ATTACKER);
    let (src, dst) = (family.addr(attacker), family.pbx(attacker));
    let dictionary = wrong_passwords(passwords);
    let mark = Mark::take(rig, src)?;
    let report = svcrack(
        &attacker.ns,
        rig.dir(),
        src,
        dst,
        "300",
        &dictionary,
        Duration::from_secs(3),
    )?;
    crack_outcome(
        rig,
        mark,
        passwords,
        report.run.started,
        report.found,
        report.run.elapsed,
        report.run.tail(8),
    )
}

/// The same attack disguised as a phone: SIPp with a desk phone's
/// User-Agent guessing 300's password at svcrack's pace (~180 guesses/s;
/// svcrack itself has no option to change its User-Agent).
pub fn phone_ua_crack_scenario(
    rig: &Rig,
    family: Family,
    guesses: u64,
    rate: f64,
) -> Result<CrackOutcome> {
    let attacker = rig.client(ATTACKER);
    let (src, dst) = (family.addr(attacker), family.pbx(attacker));
    let mark = Mark::take(rig, src)?;
    let stats = Sipp::guesses(
        SocketAddr::new(src, SIP_PORT),
        SocketAddr::new(dst, SIP_PORT),
        "300",
        "123456",
        rate,
        guesses,
    )
    .user_agent(PHONE_UA)
    .run(&attacker.ns, rig.dir())?;
    let started = stats.started.unwrap_or_else(SystemTime::now);
    let log = format!("{stats:?}");
    crack_outcome(
        rig,
        mark,
        guesses as usize,
        started,
        None,
        stats.elapsed,
        log,
    )
}

fn crack_outcome(
    rig: &Rig,
    mark: Mark,
    passwords: usize,
    started: SystemTime,
    cracked: Option<String>,
    elapsed: Duration,
    log: String,
) -> Result<CrackOutcome> {
    let attacker = mark.ip;
    let done = mark.since(rig)?;
    let since = done.requests.first().map_or(started, |r| r.at);
    Ok(CrackOutcome {
        attacker,
        passwords,
        guesses_reached: done.requests.iter().filter(|r| r.is_guess()).count(),
        requests_reached: done.requests.len(),
        arrived: done.arrived,
        passed: done.passed,
        ban: rig.ban_of(attacker)?,
        ban_after: rig.ban_delay(attacker, since),
        cracked,
        elapsed,
        log,
        requests: done.requests,
    })
}

/// What a scan achieved.
#[derive(Debug, Clone)]
pub struct ScanOutcome {
    pub attacker: IpAddr,
    /// Devices svmap found.
    pub devices: Vec<(String, String)>,
    /// Extensions svwar found.
    pub extensions: Vec<(String, String)>,
    pub requests_reached: usize,
    pub arrived: u64,
    pub passed: u64,
    pub ban: Option<SetElement>,
    pub ban_after: Option<Duration>,
    pub elapsed: Duration,
    pub log: String,
}

/// svmap, then svwar over extensions 100-999 with REGISTER, from the
/// attacker over IPv4.
pub fn scan_scenario(rig: &Rig) -> Result<ScanOutcome> {
    let attacker = rig.client(ATTACKER);
    let (src, dst) = (attacker.v4.into(), attacker.pbx_v4.into());
    let t0 = Instant::now();
    let mark = Mark::take(rig, src)?;
    let map = svmap(&attacker.ns, rig.dir(), src, dst)?;
    let war = svwar(
        &attacker.ns,
        rig.dir(),
        src,
        dst,
        "100-999",
        Duration::from_secs(3),
    )?;
    let done = mark.since(rig)?;
    let since = done.requests.first().map_or(map.run.started, |r| r.at);
    Ok(ScanOutcome {
        attacker: src,
        devices: map.devices,
        extensions: war.extensions,
        requests_reached: done.requests.len(),
        arrived: done.arrived,
        passed: done.passed,
        ban: rig.ban_of(src)?,
        ban_after: rig.ban_delay(src, since),
        elapsed: t0.elapsed(),
        log: format!("{}\n{}", map.run.tail(8), war.run.tail(8)),
    })
}

/// One registration attempt of a phone.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Since the scenario started.
    pub at: Duration,
    pub user: String,
    /// Whether it was made with the right password.
    pub right_password: bool,
    pub registered: bool,
}

/// The wrong-password phone's story.
#[derive(Debug, Clone)]
pub struct PhoneOutcome {
    pub phone: IpAddr,
    /// Phone 300's attempts: wrong password first, then the right one.
    pub attempts: Vec<Attempt>,
    /// Phone 301's re-registrations from the same address, if it ran.
    pub second: Vec<Attempt>,
    /// When the phone's address was first seen in the ban set, since start.
    pub banned_at: Option<Duration>,
    /// The ban element at the end, if any.
    pub ban: Option<SetElement>,
    pub known_good: Option<SetElement>,
}

impl PhoneOutcome {
    /// Attempts with the right password until the first that registered
    /// (1 = at once); `None` if none did.
    pub fn attempts_to_recover(&self) -> Option<usize> {
        self.attempts
            .iter()
            .filter(|a| a.right_password)
            .position(|a| a.registered)
            .map(|i| i + 1)
    }
}

/// The timing of [`wrong_password_phone_scenario`].
#[derive(Debug, Clone, Copy)]
pub struct PhonePlan {
    /// How long the phone keeps the wrong password (3 min in the issue).
    pub wrong_for: Duration,
    /// Time between its attempts (10 s).
    pub retry: Duration,
    /// Attempts with the right password at most.
    pub right_attempts: usize,
    /// Whether phone 301 re-registers from the same address meanwhile, at
    /// the same interval, half an interval out of step.
    pub second_phone: bool,
}

impl Default for PhonePlan {
    fn default() -> PhonePlan {
        PhonePlan {
            wrong_for: Duration::from_secs(180),
            retry: Duration::from_secs(10),
            right_attempts: 3,
            second_phone: false,
        }
    }
}

/// Phone 300 (the phone host, port 5062) with a wrong password retrying
/// every `retry` for `wrong_for`, then fixed; optionally phone 301 on the
/// same host (port 5064) re-registering throughout with its right password.
pub fn wrong_password_phone_scenario(rig: &Rig, plan: PhonePlan) -> Result<PhoneOutcome> {
    let phone = rig.client(PHONE);
    let target = SocketAddr::new(phone.pbx_v4.into(), SIP_PORT);
    let ip: IpAddr = phone.v4.into();
    let t0 = Instant::now();
    let started = SystemTime::now();
    let done = AtomicBool::new(false);

    let attempt = |user: &str, port: u16, right: bool| -> Result<Attempt> {
        let at = t0.elapsed();
        let pass = if right {
            password(user)
        } else {
            "wrong-password"
        };
        let stats =
            Sipp::phone(SocketAddr::new(ip, port), target, user, pass).run(&phone.ns, rig.dir())?;
        Ok(Attempt {
            at,
            user: user.to_owned(),
            right_password: right,
            registered: stats.successful == 1,
        })
    };
    let sleep_until = |due: Duration| {
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    };

    let (attempts, second) = std::thread::scope(|scope| -> Result<_> {
        let second = plan.second_phone.then(|| {
            scope.spawn(|| -> Result<Vec<Attempt>> {
                let mut out = Vec::new();
                let mut due = plan.retry / 2;
                while !done.load(Ordering::Relaxed) {
                    sleep_until(due);
                    out.push(attempt("301", 5064, true)?);
                    due += plan.retry;
                }
                Ok(out)
            })
        });
        let mut attempts = Vec::new();
        let mut due = Duration::ZERO;
        let result = (|| -> Result<()> {
            while due < plan.wrong_for {
                sleep_until(due);
                attempts.push(attempt("300", 5062, false)?);
                due += plan.retry;
            }
            for _ in 0..plan.right_attempts {
                sleep_until(due);
                let a = attempt("300", 5062, true)?;
                due += plan.retry;
                let registered = a.registered;
                attempts.push(a);
                if registered {
                    break;
                }
            }
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        let second = match second {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))?,
            None => Vec::new(),
        };
        result?;
        Ok((attempts, second))
    })?;

    Ok(PhoneOutcome {
        phone: ip,
        attempts,
        second,
        banned_at: rig
            .watch
            .first_ban(ip)
            .map(|at| at.duration_since(started).unwrap_or_default()),
        ban: rig.ban_of(ip)?,
        known_good: rig.known_good_of(ip)?,
    })
}

/// What a flood achieved.
#[derive(Debug, Clone)]
pub struct FloodOutcome {
    pub attacker: IpAddr,
    pub transport: SipTransport,
    /// SIPp's account of the flood: `created` = first REGISTERs sent,
    /// `successful` = calls answered (flood) or guesses judged (guess flood).
    pub flood: SippStats,
    /// Requests from the attacker the registrar saw.
    pub requests_reached: usize,
    /// Guesses from the attacker the registrar judged.
    pub guesses_reached: usize,
    pub arrived: u64,
    pub passed: u64,
    /// The phone registering meanwhile from the other host, if it ran.
    pub phone: Option<SippStats>,
    pub ban: Option<SetElement>,
    pub ban_after: Option<Duration>,
}

impl FloodOutcome {
    /// Requests that reached the registrar, in percent of those sent.
    pub fn reached_percent(&self) -> f64 {
        100.0 * self.requests_reached as f64 / self.flood.created.max(1) as f64
    }
}

/// A REGISTER flood without credentials from the attacker at `rate` per
/// second for `duration`, while phone 300 on the phone host registers
/// `phone_rate` times per second for the same time.
pub fn flood_scenario(
    rig: &Rig,
    rate: f64,
    duration: Duration,
    phone_rate: f64,
) -> Result<FloodOutcome> {
    let attacker = rig.client(ATTACKER);
    let phone = rig.client(PHONE);
    let src: IpAddr = attacker.v4.into();
    let flood = Sipp::flood(
        SocketAddr::new(src, SIP_PORT),
        SocketAddr::new(attacker.pbx_v4.into(), SIP_PORT),
        rate,
        duration,
    );
    let registering = Sipp::phone(
        SocketAddr::new(phone.v4.into(), 5062),
        SocketAddr::new(phone.pbx_v4.into(), SIP_PORT),
        "300",
        password("300"),
    )
    .repeat(calls_for(phone_rate, duration), phone_rate);
    let mark = Mark::take(rig, src)?;
    let (flood, phone) = std::thread::scope(|scope| {
        let phone_run = scope.spawn(|| registering.run(&phone.ns, rig.dir()));
        let flood = flood.run(&attacker.ns, rig.dir());
        let phone = phone_run
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (flood, phone)
    });
    flood_outcome(rig, mark, SipTransport::Udp, flood?, Some(phone?))
}

/// A flood of password guesses for 300 (wrong credentials) from the
/// attacker at `rate` per second for `duration`, over UDP or over one TCP
/// connection.
pub fn guess_flood_scenario(
    rig: &Rig,
    transport: SipTransport,
    rate: f64,
    duration: Duration,
) -> Result<FloodOutcome> {
    let attacker = rig.client(ATTACKER);
    let src: IpAddr = attacker.v4.into();
    // Another source port per transport, so that both runs of one rig do
    // not share a socket's leftovers.
    let port = match transport {
        SipTransport::Udp => SIP_PORT,
        SipTransport::Tcp => 5070,
    };
    let mark = Mark::take(rig, src)?;
    let stats = Sipp::guesses(
        SocketAddr::new(src, port),
        SocketAddr::new(attacker.pbx_v4.into(), SIP_PORT),
        "300",
        "123456",
        rate,
        calls_for(rate, duration),
    )
    .transport(transport)
    .run(&attacker.ns, rig.dir())?;
    flood_outcome(rig, mark, transport, stats, None)
}

fn flood_outcome(
    rig: &Rig,
    mark: Mark,
    transport: SipTransport,
    flood: SippStats,
    phone: Option<SippStats>,
) -> Result<FloodOutcome> {
    let attacker = mark.ip;
    let SinceMark {
        requests,
        arrived,
        passed,
    } = mark.since(rig)?;
    let since = requests
        .first()
        .map(|r| r.at)
        .or(flood.started)
        .unwrap_or_else(SystemTime::now);
    Ok(FloodOutcome {
        attacker,
        transport,
        requests_reached: requests.len(),
        guesses_reached: requests.iter().filter(|r| r.is_guess()).count(),
        arrived,
        passed,
        phone,
        ban: rig.ban_of(attacker)?,
        ban_after: rig.ban_delay(attacker, since),
        flood,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrar_log_lines_parse() {
        let line = " 1(27828) ALERT: <script>: PAL t=1795571407.723780 method=REGISTER \
                    src=10.250.1.2:5062 proto=udp user=300 auth=yes result=fail \
                    ua=Yealink SIP-T46S 66.86.0.15";
        let r = SipRequest::parse(line).expect("parses");
        assert_eq!(r.method, "REGISTER");
        assert_eq!(r.src, "10.250.1.2:5062".parse().unwrap());
        assert!(r.auth && r.is_guess() && !r.is_success());
        assert_eq!(r.user_agent, "Yealink SIP-T46S 66.86.0.15");
        assert_eq!(
            r.at.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_795_571_407, 723_780_000)
        );
        let v6 = "PAL t=1.000001 method=OPTIONS src=fd00:250:1::2:5060 proto=udp user=- \
                  auth=no result=ok ua=<null>";
        let r = SipRequest::parse(v6).expect("parses");
        assert_eq!(r.src, "[fd00:250:1::2]:5060".parse().unwrap());
        assert!(!r.is_guess());
        assert!(SipRequest::parse(" 0(1) WARNING: something else").is_none());
    }

    #[test]
    fn sipp_stats_are_read_by_column_name() {
        let csv = "StartTime;TotalCallCreated;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);\n\
                   x;1;1;1;0;0;\n\
                   y;40000;5;39990;1;10;\n";
        let s = parse_sipp_stats(csv).expect("parses");
        assert_eq!((s.created, s.successful, s.failed), (40000, 39990, 10));
    }

    #[test]
    fn sipvicious_tables_are_read() {
        let out = "+-----------+----------+\n| Extension | Password |\n+===========+==========+\n\
                   | 300       | pw300    |\n+-----------+----------+\n";
        assert_eq!(
            parse_table(out),
            vec![vec!["300".to_owned(), "pw300".to_owned()]]
        );
        assert!(parse_table("").is_empty());
    }

    #[test]
    fn monitor_lines_name_set_and_addresses() {
        let (set, addrs) = parse_monitor_line(
            "add element inet palisade ban_v4 { 10.200.2.2 timeout 1h expires 1h comment \"svcrack from 10.9.9.9\" }",
        )
        .unwrap();
        assert_eq!(set, "ban_v4");
        assert_eq!(addrs, vec!["10.200.2.2".parse::<IpAddr>().unwrap()]);
        let (_, addrs) =
            parse_monitor_line("add element inet palisade ban_v6 { fd00::2, fd00::3 }").unwrap();
        assert_eq!(addrs.len(), 2);
        assert!(parse_monitor_line("add element inet other ban_v4 { 10.0.0.1 }").is_none());
    }

    #[test]
    fn grant_elements_are_read_by_name_or_number() {
        let g = parse_grant(&serde_json::json!({"elem": {
            "val": {"concat": ["10.200.1.2", "tcp", 22]},
            "timeout": 120, "expires": 118, "comment": "registered: 333"}}))
        .expect("parses");
        assert_eq!(g.addr, "10.200.1.2".parse::<IpAddr>().unwrap());
        assert_eq!((g.proto.as_str(), g.port), ("tcp", 22));
        assert_eq!((g.timeout, g.expires), (Some(120), Some(118)));
        let g = parse_grant(&serde_json::json!({"concat": ["fd00::2", 17, 69]})).expect("parses");
        assert_eq!((g.proto.as_str(), g.port, g.timeout), ("udp", 69, None));
        assert!(parse_grant(&serde_json::json!("10.0.0.1")).is_none());
    }

    #[test]
    fn set_elements_cover_addresses_and_networks() {
        let e = parse_element(
            &serde_json::json!({"elem": {"val": "10.0.0.1", "timeout": 3600, "comment": "x"}}),
        );
        assert!(e.covers("10.0.0.1".parse().unwrap()));
        assert_eq!(e.comment.as_deref(), Some("x"));
        let net =
            parse_element(&serde_json::json!({"prefix": {"addr": "fd00:200:2::", "len": 64}}));
        assert!(net.covers("fd00:200:2::2".parse().unwrap()));
        assert!(!net.covers("fd00:200:3::2".parse().unwrap()));
        assert!(!net.covers("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_registrar_config_has_every_placeholder_filled() {
        let cfg = render_registrar_config(
            &[
                "10.200.1.1".parse().unwrap(),
                "fd00:200:1::1".parse().unwrap(),
            ],
            Path::new("/etc/k/address.list"),
        );
        for needle in [
            "listen=udp:10.200.1.1:5060",
            "listen=tcp:[fd00:200:1::1]:5060",
            "$sht(users=>333)",
            "www_challenge(\"palisade.lab\", \"1\")",
            "proxy_challenge(\"palisade.lab\", \"1\")",
            "modparam(\"permissions\", \"address_file\", \"/etc/k/address.list\")",
        ] {
            assert!(cfg.contains(needle), "{needle} missing");
        }
        for placeholder in [
            "@LISTEN@",
            "@USERS@",
            "@REALM@",
            "@MODULES@",
            "@CHILDREN@",
            "@ADDRESS_FILE@",
        ] {
            assert!(!cfg.contains(placeholder), "{placeholder} left");
        }
        let list = render_address_list(&[
            "10.200.3.2".parse().unwrap(),
            "fd00:200:3::2".parse().unwrap(),
        ]);
        assert!(list.contains("\n1 10.200.3.2 32 0 trunk\n"), "{list}");
        assert!(list.contains("\n1 fd00:200:3::2 128 0 trunk\n"), "{list}");
    }

    #[test]
    fn agent_log_timestamps_parse() {
        let line = strip_ansi(
            "\u{1b}[2m2026-11-25T03:59:35.895601Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m banned addr=10.0.0.1 x",
        );
        assert!(
            line.starts_with("2026-11-25T03:59:35.895601Z  WARN banned"),
            "{line}"
        );
        let at = parse_rfc3339_utc("2026-11-25T03:59:35.895601Z").unwrap();
        assert_eq!(
            at.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_795_579_175, 895_601_000)
        );
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert!(parse_rfc3339_utc("yesterday").is_none());
    }

    #[test]
    fn pace_covers_slow_and_fast_rates() {
        assert_eq!(pace_args(2000.0), ["-r", "2000", "-rp", "1000"]);
        assert_eq!(pace_args(0.1), ["-r", "1", "-rp", "10000"]);
        assert_eq!(calls_for(2000.0, Duration::from_secs(20)), 40_000);
    }
}
