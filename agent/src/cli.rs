//! `palisade-agent`: the command line and the daemon loop.

use crate::engine::{Agent, AgentError};
use crate::ruleset::plan::plan;
use crate::ruleset::{render, DynMode, Nft};
use crate::settings::{parse_settings, AgentSettings, DEFAULT_CONFIG};
use crate::state::StateDir;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use palisade_model::{
    parse_policy, DynSet, DynamicState, Grant, PortSpec, Proto, Query, TimedAddr,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "palisade-agent",
    version,
    about = "Palisade agent: a VoIP-aware nftables firewall for a PBX host"
)]
struct Cli {
    /// The agent's config file: `[agent]` settings plus the policy.
    #[arg(long, short, global = true, env = "PALISADE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Overrides `[agent] state_dir`.
    #[arg(long, global = true, env = "PALISADE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: restore the last good policy, apply the config, keep it in force.
    Run {
        /// Overrides `[agent] metrics_listen`; `none` disables the metrics listener.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Validate a policy file and print the nft transaction it would load.
    Check { file: Option<PathBuf> },
    /// Show the live table as the agent understands it.
    Show,
    /// Read the PBX configuration now and print what it needs (changes nothing).
    Discover,
    /// Apply a policy file now, atomically.
    Apply {
        file: PathBuf,
        /// Roll back unless `palisade-agent confirm` runs within this time (e.g. 60s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        confirm_within: Option<Duration>,
    },
    /// Confirm the pending change made with `apply --confirm-within`.
    Confirm,
    /// Why is an address allowed or blocked? e.g. `explain 203.0.113.7 5060/udp`.
    Explain {
        addr: IpAddr,
        /// PORT/PROTO, e.g. 22/tcp.
        port: Option<PortSpec>,
        /// The interface the traffic arrives on (default: the route back to the address).
        #[arg(long)]
        iface: Option<String>,
    },
    /// Add or remove elements of a dynamic set (ban, ban-shared, known-good, ...).
    Set {
        #[command(subcommand)]
        op: SetOp,
    },
    /// Ban an address now, by hand: into the kernel at once, kept across
    /// restarts, known to the detectors. Management and allow-listed
    /// addresses are refused.
    Ban {
        addr: IpAddr,
        /// How long (e.g. 1h, 7d).
        #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "1d")]
        duration: Duration,
        /// Why, for `show`, `explain` and the audit trail.
        #[arg(long, default_value = "banned by hand")]
        reason: String,
    },
    /// Lift a ban (the agent's or the kernel tier's), and make the detectors
    /// forget what they held against the address.
    Unban { addr: IpAddr },
    /// Open or close one service port for one address (per-user grant).
    Grant {
        #[command(subcommand)]
        op: GrantOp,
    },
    /// Remove the agent's table (and nothing else). The last good policy is kept.
    Disable {
        /// Also forget the stored policy, as a package removal does.
        #[arg(long)]
        uninstall: bool,
    },
    /// Enrol this host with a controller: a key made here, a certificate from
    /// the controller's CA. The daemon then keeps a sync stream with it.
    Enroll {
        /// The token from `palisade token create` (`pal1.…`).
        #[arg(long, env = "PALISADE_TOKEN")]
        token: String,
        /// The controller's URL, when not the token's (https://HOST:PORT).
        #[arg(long)]
        controller: Option<String>,
        /// The name this host is known by (default: its host name).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Internal: waits for a pending change's deadline and rolls it back.
    #[command(hide = true)]
    RollbackWatch { id: String },
}

#[derive(Subcommand)]
enum SetOp {
    Add {
        set: String,
        addrs: Vec<IpAddr>,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        comment: Option<String>,
    },
    Del {
        set: String,
        addrs: Vec<IpAddr>,
    },
}

#[derive(Subcommand)]
enum GrantOp {
    Add {
        addr: IpAddr,
        port: PortSpec,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        comment: Option<String>,
    },
    Del {
        addr: IpAddr,
        port: PortSpec,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Settings from the config file if it exists (defaults otherwise), with overrides.
fn settings(cli: &Cli) -> anyhow::Result<AgentSettings> {
    let mut s = match std::fs::read_to_string(&cli.config) {
        Ok(text) => parse_settings(&text, &cli.config.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentSettings::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cli.config.display())),
    };
    if let Some(dir) = &cli.state_dir {
        s.state_dir = dir.clone();
    }
    Ok(s)
}

fn agent(settings: &AgentSettings) -> anyhow::Result<Agent> {
    Ok(Agent::new(
        Nft::default(),
        StateDir::open(&settings.state_dir)?,
    ))
}

/// The policy in force (pending or last good), else the config file.
fn current_policy(cli: &Cli, agent: &Agent) -> anyhow::Result<palisade_model::Policy> {
    if let Some((text, source)) = agent.current_text()? {
        return Ok(parse_policy(&text, &source)?);
    }
    let text = match std::fs::read_to_string(&cli.config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cli.config.display())),
    };
    Ok(parse_policy(&text, &cli.config.display().to_string())?)
}

fn parse_set(name: &str) -> anyhow::Result<DynSet> {
    DynSet::parse(name).with_context(|| {
        let names: Vec<String> = DynSet::ALL
            .iter()
            .map(|s| s.base_name().replace('_', "-"))
            .collect();
        format!("unknown set `{name}`; sets are: {}", names.join(", "))
    })
}

fn single_port(spec: PortSpec) -> anyhow::Result<(Proto, u16)> {
    if spec.range.first != spec.range.last {
        bail!("a grant opens one port, not the range {spec}");
    }
    Ok((spec.proto, spec.range.first))
}

/// Starts a detached process that rolls the pending change back at its deadline,
/// so the rollback happens even when the operator's SSH session (and this CLI) dies.
fn spawn_watchdog(cli: &Cli, settings: &AgentSettings, id: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let log = std::fs::File::create(settings.state_dir.join("rollback-watch.log"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config")
        .arg(&cli.config)
        .arg("--state-dir")
        .arg(&settings.state_dir)
        .args(["rollback-watch", id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it only detaches the child from our
    // session so a hang-up of the operator's terminal does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().context("cannot start the rollback watchdog")?;
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run { .. } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the runtime")
            .and_then(|rt| rt.block_on(run(&cli))),
        _ => {
            let _telemetry = crate::telemetry::init("palisade-agent", "warn");
            command(&cli)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn command(cli: &Cli) -> anyhow::Result<()> {
    let settings = settings(cli)?;
    match &cli.command {
        Command::Run { .. } => unreachable!("handled in main"),
        Command::Check { file } => {
            let path = file.as_ref().unwrap_or(&cli.config);
            let text = read(path)?;
            let policy = parse_policy(&text, &path.display().to_string())?;
            parse_settings(&text, &path.display().to_string())?;
            let desired = render(&policy);
            let fresh = plan(&desired, None, &DynamicState::default(), DynMode::Merge);
            println!("{}", serde_json::to_string_pretty(&fresh.batch)?);
            eprintln!("{}: valid; policy {}", path.display(), desired.fingerprint);
        }
        Command::Show => {
            let agent = agent(&settings)?;
            let policy = match current_policy(cli, &agent) {
                Ok(p) => Some(agent.effective(&p)?),
                Err(_) => None,
            };
            let pending = agent.state.pending()?;
            print!(
                "{}",
                crate::show::report(agent.live()?.as_ref(), policy.as_ref(), pending.as_ref())
            );
            let errors = agent.state.discovery_errors()?;
            let facts = policy.as_ref().and_then(|p| p.discovered.as_ref());
            print!("{}", crate::show::discovery(facts, &errors));
        }
        Command::Discover => {
            let found = crate::discover::discover_all(&settings.discovery);
            print!(
                "{}",
                crate::show::discovery(Some(&found.facts), &found.errors)
            );
            println!("\nfiles read or watched:");
            for f in &found.files {
                println!("  {}", f.display());
            }
            if !found.is_ok() {
                bail!("{} error(s) in the PBX configuration", found.errors.len());
            }
        }
        Command::Apply {
            file,
            confirm_within,
        } => {
            let agent = agent(&settings)?;
            let text = read(file)?;
            let applied = agent.apply_text(&text, &file.display().to_string(), *confirm_within)?;
            let what = if applied.summary.is_noop() {
                "already in force"
            } else {
                "applied"
            };
            println!("policy {}: {what}", applied.fingerprint);
            if let Some(p) = &applied.pending {
                spawn_watchdog(cli, &settings, &p.id)?;
                println!(
                    "waiting for `palisade-agent confirm` within {}s, else it rolls back",
                    confirm_within.map(|d| d.as_secs()).unwrap_or_default()
                );
            }
        }
        Command::Confirm => {
            let agent = agent(&settings)?;
            let p = agent.confirm()?;
            println!("change {} confirmed; it is now the last good policy", p.id);
        }
        Command::RollbackWatch { id } => {
            let agent = agent(&settings)?;
            loop {
                match agent.state.pending()? {
                    Some(p) if p.id == *id => {
                        let now = crate::state::now_unix();
                        if now >= p.deadline {
                            agent.rollback_due()?;
                            break;
                        }
                        std::thread::sleep(
                            Duration::from_millis(200).min(Duration::from_secs(p.deadline - now)),
                        );
                    }
                    _ => break,
                }
            }
        }
        Command::Explain { addr, port, iface } => {
            let agent = agent(&settings)?;
            let policy = current_policy(cli, &agent)?;
            let port = port.map(single_port).transpose()?;
            let iface = iface.clone().or_else(|| crate::engine::route_iface(*addr));
            let verdict = agent.explain(
                &policy,
                &Query {
                    addr: *addr,
                    iface: iface.clone(),
                    port,
                },
            )?;
            let target = port.map(|(p, n)| format!(" {n}/{p}")).unwrap_or_default();
            let via = iface.map(|i| format!(" via {i}")).unwrap_or_default();
            println!("{addr}{target}{via}: {verdict}");
        }
        Command::Ban {
            addr,
            duration,
            reason,
        } => {
            let agent = agent(&settings)?;
            if crate::controller::addrs::known_controller_addresses(agent.state.path())
                .contains(addr)
            {
                bail!(
                    "refusing to ban {addr}: it is the controller's address (a ban would cut this host off from it)"
                );
            }
            if let Some(policy) = policy_in_force(&agent) {
                let why = if policy.management.iter().any(|m| m.value.contains(addr)) {
                    Some("a management address")
                } else if policy.responsive.allows(*addr) {
                    Some("on the allow-list ([responsive] allow)")
                } else {
                    None
                };
                if let Some(why) = why {
                    bail!("refusing to ban {addr}: it is {why}");
                }
            }
            let now = crate::state::now_unix();
            let comment = palisade_model::dynamic::clip_comment(&format!("manual: {reason}"));
            agent.add_elements(
                DynSet::Ban,
                &[TimedAddr {
                    addr: *addr,
                    ttl: Some(*duration),
                    expires: None,
                    comment: Some(comment.clone()),
                }],
            )?;
            crate::bans::BanBook::new(agent.state.path()).append(&[crate::bans::Entry::Ban(
                crate::bans::BanRecord {
                    addr: *addr,
                    at: now,
                    until: now + duration.as_secs(),
                    reason: crate::bans::MANUAL.into(),
                    comment,
                    offence: 0,
                    evidence: Vec::new(),
                },
            )])?;
            println!(
                "{addr} banned for {} ({reason})",
                humantime::format_duration(*duration)
            );
        }
        Command::Unban { addr } => {
            agent(&settings)?.unban(*addr)?;
            println!("{addr} unbanned");
        }
        Command::Set { op } => {
            let agent = agent(&settings)?;
            match op {
                SetOp::Add {
                    set,
                    addrs,
                    timeout,
                    comment,
                } => {
                    let set = parse_set(set)?;
                    let elems: Vec<TimedAddr> = addrs
                        .iter()
                        .map(|a| TimedAddr {
                            addr: *a,
                            ttl: *timeout,
                            expires: None,
                            comment: comment.clone(),
                        })
                        .collect();
                    agent.add_elements(set, &elems)?;
                }
                SetOp::Del { set, addrs } => {
                    let set = parse_set(set)?;
                    let elems: Vec<TimedAddr> = addrs
                        .iter()
                        .map(|a| TimedAddr {
                            addr: *a,
                            ttl: None,
                            expires: None,
                            comment: None,
                        })
                        .collect();
                    agent.delete_elements(set, &elems)?;
                }
            }
        }
        Command::Grant { op } => {
            let agent = agent(&settings)?;
            match op {
                GrantOp::Add {
                    addr,
                    port,
                    timeout,
                    comment,
                } => {
                    let (proto, port) = single_port(*port)?;
                    agent.add_grants(&[Grant {
                        addr: *addr,
                        proto,
                        port,
                        ttl: *timeout,
                        expires: None,
                        comment: comment.clone(),
                    }])?;
                }
                GrantOp::Del { addr, port } => {
                    let (proto, port) = single_port(*port)?;
                    agent.delete_grants(&[Grant {
                        addr: *addr,
                        proto,
                        port,
                        ttl: None,
                        expires: None,
                        comment: None,
                    }])?;
                }
            }
        }
        Command::Enroll {
            token,
            controller,
            hostname,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            let opts = crate::controller::enroll::EnrollOptions {
                token: token.clone(),
                controller: controller.clone(),
                hostname: hostname.clone(),
            };
            let id = rt.block_on(crate::controller::enroll::enroll(&settings.state_dir, opts))?;
            println!(
                "enrolled as {} with {}; the daemon keeps in sync with it",
                id.name(),
                id.url
            );
        }
        Command::Disable { uninstall } => {
            let agent = agent(&settings)?;
            if agent.disable(*uninstall)? {
                println!("table inet palisade removed; no other table was touched");
            } else {
                println!("table inet palisade was not loaded");
            }
        }
    }
    Ok(())
}

/// Applies the config file if it validates; a broken file keeps what is in force.
fn apply_config(cli: &Cli, agent: &Agent) {
    if crate::controller::sync::manages_policy(agent.state.path()) {
        info!("the policy comes from the controller; the config file's policy is not applied");
        return;
    }
    let source = cli.config.display().to_string();
    let text = match std::fs::read_to_string(&cli.config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if agent.current_text().ok().flatten().is_some() {
                return;
            }
            warn!(config = %source, "no config file: enforcing the default policy");
            String::new()
        }
        Err(e) => {
            error!(config = %source, error = %e, "cannot read the config; keeping the ruleset in force");
            return;
        }
    };
    match agent.apply_text(&text, &source, None) {
        Ok(a) => info!(policy = %a.fingerprint, changed = !a.summary.is_noop(), "config in force"),
        Err(AgentError::Config(e)) => {
            error!(error = %e, "config rejected; keeping the ruleset in force")
        }
        Err(e) => error!(error = %e, "cannot apply the config; keeping the ruleset in force"),
    }
}

fn apply_name_deltas(agent: &Agent, deltas: Vec<(DynSet, crate::resolve::Delta)>) {
    for (set, delta) in deltas {
        delta.log_events();
        if let Err(e) = agent.apply_resolved(set, &delta) {
            error!(%set, error = %e, "cannot update resolved addresses");
        }
    }
}

/// Reads the PBX configuration again, follows every file it read, and points
/// the name trackers at the host names of the resulting policy.
fn rediscover(
    cli: &Cli,
    agent: &Agent,
    settings: &AgentSettings,
    watcher: Option<&mut crate::follow::ConfigWatcher>,
    names: Option<&mut crate::names::NameSets>,
) {
    let policy = match current_policy(cli, agent) {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "no policy to merge discovered facts into");
            return;
        }
    };
    let d = &settings.discovery;
    let roots = [d.asterisk.as_path(), &d.freeswitch, &d.kamailio];
    match agent.rediscover(d, &policy) {
        Ok(found) => {
            // Watched only after the read: a directory watched for the first
            // time is read once more, or an edit in between would wait for
            // the next one (at start, an include in a new directory).
            if let Some(w) = watcher {
                if w.follow(&roots, &found.files) {
                    match agent.rediscover(d, &policy) {
                        Ok(again) => {
                            w.follow(&roots, &again.files);
                        }
                        Err(e) => error!(error = %e, "discovery failed"),
                    }
                }
            }
        }
        Err(e) => error!(error = %e, "discovery failed"),
    }
    let Some(names) = names else { return };
    match agent.effective(&policy) {
        Ok(effective) => apply_name_deltas(
            agent,
            names.set_policy(&effective, std::time::Instant::now()),
        ),
        Err(e) => error!(error = %e, "cannot read the policy's host names"),
    }
}

/// The ban book is compacted when it grows past this (about 20,000 lines).
const BAN_BOOK_COMPACT_AT: u64 = 4 << 20;

/// Compacts the ban book and returns the bans still running (the enforce
/// that just ran put them back in the kernel if a reboot had emptied it).
fn restore_bans(agent: &Agent) -> Vec<crate::bans::BanRecord> {
    match crate::bans::BanBook::new(agent.state.path()).compact(crate::state::now_unix()) {
        Ok(live) => {
            if !live.is_empty() {
                info!(bans = live.len(), "bans in force from the ban book");
            }
            live
        }
        Err(e) => {
            error!(error = %e, "cannot read the ban book");
            Vec::new()
        }
    }
}

/// The policy in force (last good, with discovered facts), as the watch needs it.
fn policy_in_force(agent: &Agent) -> Option<palisade_model::Policy> {
    let (text, source) = agent.current_text().ok().flatten()?;
    let policy = palisade_model::parse_policy(&text, &source).ok()?;
    agent.effective(&policy).ok()
}

/// Starts, retunes or stops the SIP watch to match the policy in force.
fn follow_watch(
    agent: &Agent,
    watch: &mut Option<crate::watch::Watch>,
    logs: &palisade_model::pbxlog::PbxLogs,
) {
    let Some(policy) = policy_in_force(agent) else {
        return;
    };
    let r = &policy.responsive;
    match watch {
        Some(w) if r.enabled && w.fits(r) => w.reconfigure(&policy),
        _ if !r.enabled => {
            if watch.take().is_some() {
                info!("responsive firewall off: SIP watch stopped");
            }
        }
        _ => {
            // Dropping the old watch first frees its NFLOG group.
            *watch = None;
            let book = crate::bans::BanBook::new(agent.state.path());
            match crate::watch::Watch::start(agent.nft.clone(), &policy, book, logs) {
                Ok(w) => *watch = Some(w),
                Err(e) => {
                    error!(error = %e, "cannot start the SIP watch; the kernel's rate tiers still apply")
                }
            }
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init("palisade-agent", "info");
    // First of all: a SIGHUP (logrotate, a reload) during the first apply or
    // discovery must wait for the loop, not end the process by default.
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut settings = settings(cli)?;
    if let Command::Run {
        metrics_listen: Some(m),
    } = &cli.command
    {
        settings.metrics_listen = if m == "none" {
            None
        } else {
            Some(m.parse().context("--metrics-listen")?)
        };
    }
    if let Some(addr) = settings.metrics_listen {
        if let Err(e) = crate::telemetry::serve_metrics(addr) {
            warn!(error = %e, "metrics disabled");
        }
    }
    let agent = agent(&settings)?;
    match agent.restore() {
        Ok(Some(a)) => info!(policy = %a.fingerprint, "last good policy restored"),
        Ok(None) => info!("no stored policy yet"),
        Err(e) => error!(error = %e, "cannot restore the last good policy"),
    }
    apply_config(cli, &agent);
    let restored = restore_bans(&agent);
    // The watch first: discovery below may take a while, attackers do not wait.
    let mut watch = None;
    follow_watch(&agent, &mut watch, &settings.pbx_logs);
    if let Some(w) = &watch {
        let now = crate::state::now_unix();
        for b in &restored {
            w.note_ban(b.addr, Duration::from_secs(b.until.saturating_sub(now)));
        }
    }
    // After the ban book's compaction above: the sync task tails it.
    let mut controller = crate::controller::sync::start(&agent, settings.controller.clone());
    let book = crate::bans::BanBook::new(agent.state.path());
    let mut book_offset = book.read_from(0).map(|(_, o)| o).unwrap_or(0);
    let mut watcher = match crate::follow::ConfigWatcher::new() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch the PBX configuration; changes apply on SIGHUP");
            None
        }
    };
    let mut names = match crate::names::NameSets::new(&settings.resolver) {
        Ok(n) => Some(n),
        Err(e) => {
            error!(error = %e, "no DNS resolver: host names in the policy stay unresolved");
            None
        }
    };
    rediscover(cli, &agent, &settings, watcher.as_mut(), names.as_mut());
    follow_watch(&agent, &mut watch, &settings.pbx_logs);

    let mut tick = tokio::time::interval(
        settings
            .check_interval
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(200)),
    );
    let mut since_check = Duration::ZERO;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                apply_config(cli, &agent);
                rediscover(cli, &agent, &settings, watcher.as_mut(), names.as_mut());
                follow_watch(&agent, &mut watch, &settings.pbx_logs);
            }
            changed = async {
                match watcher.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                info!(files = changed.len(), "PBX configuration changed on disk");
                rediscover(cli, &agent, &settings, watcher.as_mut(), names.as_mut());
                follow_watch(&agent, &mut watch, &settings.pbx_logs);
            }
            _ = async {
                match names.as_ref().and_then(|n| n.next_due(std::time::Instant::now())) {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(n) = names.as_mut() {
                    let deltas = n.refresh(std::time::Instant::now()).await;
                    apply_name_deltas(&agent, deltas);
                }
            }
            _ = controller.policy_changed() => {
                info!("policy from the controller: following it");
                rediscover(cli, &agent, &settings, watcher.as_mut(), names.as_mut());
                follow_watch(&agent, &mut watch, &settings.pbx_logs);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                if let Err(e) = agent.rollback_due() {
                    error!(error = %e, "rollback failed");
                }
                // An operator's `ban`/`unban` from another process.
                match book.read_from(book_offset) {
                    Ok((entries, offset)) => {
                        book_offset = offset;
                        if let Some(w) = &watch {
                            for e in entries {
                                match e {
                                    crate::bans::Entry::Lift { addr, .. } => w.forgive(addr),
                                    crate::bans::Entry::Ban(b) if b.reason == crate::bans::MANUAL => {
                                        let left = b.until.saturating_sub(crate::state::now_unix());
                                        w.note_ban(b.addr, Duration::from_secs(left));
                                    }
                                    crate::bans::Entry::Ban(_) => {}
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot read the ban book"),
                }
                since_check += tick.period();
                if since_check >= settings.check_interval {
                    since_check = Duration::ZERO;
                    // Expired bans and lifts leave the book now and then.
                    if book.size() > BAN_BOOK_COMPACT_AT {
                        match book.compact(crate::state::now_unix()) {
                            Ok(_) => book_offset = book.size(),
                            Err(e) => warn!(error = %e, "cannot compact the ban book"),
                        }
                    }
                    // Repairs drift (someone flushed our table) and refreshes gauges.
                    if let Err(e) = agent.restore() {
                        error!(error = %e, "periodic check failed");
                    }
                    // A recreated table has empty name sets: refill (adding
                    // present elements changes nothing).
                    if let Some(n) = names.as_ref() {
                        apply_name_deltas(&agent, n.refill(std::time::Instant::now()));
                    }
                    if let Ok(Some(live)) = agent.live() {
                        for (name, elems) in &live.sets {
                            metrics::gauge!("palisade_set_elements", "set" => name.clone()).set(elems.len() as f64);
                        }
                    }
                }
            }
        }
    }
    drop(controller);
    drop(watch);
    info!("stopping; the ruleset stays in force");
    Ok(())
}
