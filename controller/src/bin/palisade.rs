//! `palisade`: the operator CLI.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use palisade_controller::client::{self, OperatorAuth};
use palisade_proto::v1 as pb;

#[derive(Parser)]
#[command(name = "palisade", version, about = "Operate a Palisade fleet")]
struct Cli {
    /// The controller, e.g. https://ctl.example.com:7443
    #[arg(long, global = true, env = "PALISADE_CONTROLLER")]
    controller: Option<String>,
    /// Certificate bundle from `palisade-controller operator-cert`.
    #[arg(long, global = true, env = "PALISADE_CERT")]
    cert: Option<PathBuf>,
    /// Bearer token file (instead of --cert); needs --ca.
    #[arg(long, global = true, env = "PALISADE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The controller's CA (with --token-file).
    #[arg(long, global = true, env = "PALISADE_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrolment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// List tenants and their sites.
    Tenants,
    /// List hosts (connected, last seen, addresses).
    Hosts {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Act on one host.
    Host {
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// List a tenant's bans.
    Bans {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        site: Option<String>,
    },
    /// Add or lift a ban.
    Ban {
        #[command(subcommand)]
        cmd: BanCmd,
    },
    /// The audit trail, newest first.
    Audit {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A tenant's (or site's) policy.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// A tenant's per-user rules: which services an extension gets at the
    /// address it registers from.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Why is an address allowed or blocked, at every host of the tenant?
    /// e.g. `explain --tenant acme 203.0.113.7 5060/udp`.
    Explain {
        #[arg(long)]
        tenant: String,
        address: String,
        /// PORT/PROTO, e.g. 22/tcp.
        port: Option<String>,
    },
    /// Follow the fleet's events as they happen (bans, lifts, hosts going
    /// on- and offline, policy results, refusals) until interrupted.
    Events {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Print the tenant's rules, one `EXTENSION = SERVICE,...` per line.
    Get {
        #[arg(long)]
        tenant: String,
    },
    /// Replace the tenant's rules: `300=ucp 301=ucp,webrtc 333=admin,ssh`
    /// (an extension with nothing after `=` gets nothing).
    Set {
        #[arg(long)]
        tenant: String,
        rules: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a one-time enrolment token (printed on stdout).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        site: String,
        /// How long it stays valid, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        valid: humantime::Duration,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Revoke a host: its stream is cut and it can't connect again.
    Revoke {
        tenant: String,
        site: String,
        host: String,
    },
}

#[derive(Subcommand)]
enum BanCmd {
    Add {
        #[arg(long)]
        tenant: String,
        address: String,
        #[arg(long, default_value = "manual")]
        reason: String,
        #[arg(long, default_value = "")]
        detail: String,
        /// Duration (default: until lifted).
        #[arg(long = "for")]
        duration: Option<humantime::Duration>,
    },
    Lift {
        #[arg(long)]
        tenant: String,
        address: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    Get {
        #[arg(long)]
        tenant: String,
        /// Omit for the tenant's default policy.
        #[arg(long, default_value = "")]
        site: String,
    },
    /// Validate and store a policy (TOML from FILE, or stdin).
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        site: String,
        file: Option<PathBuf>,
    },
    /// Edit the stored policy in $EDITOR; it is validated before it is
    /// stored, and a document that does not validate is offered again.
    Edit {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        site: String,
    },
}

fn when(secs: u64) -> String {
    if secs == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(cli))
        .map_err(|e| match e.downcast::<tonic::Status>() {
            // The controller's answer, without tonic's debug dressing.
            Ok(st) => anyhow::anyhow!("the controller refused ({:?}): {}", st.code(), st.message()),
            Err(e) => e,
        })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli
        .controller
        .clone()
        .context("--controller URL (or PALISADE_CONTROLLER) is required")?;
    let auth = match (&cli.cert, &cli.token_file) {
        (Some(c), _) => OperatorAuth::Bundle(read(c)?),
        (None, Some(t)) => {
            let ca = cli
                .ca
                .as_ref()
                .context("--token-file needs --ca (the controller's ca.pem)")?;
            OperatorAuth::Token {
                token: read(t)?,
                ca_pem: read(ca)?,
            }
        }
        (None, None) => bail!("--cert FILE (or --token-file FILE --ca FILE) is required"),
    };
    let mut op = client::operator(&url, auth).await?;
    match cli.cmd {
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    tenant,
                    site,
                    valid,
                },
        } => {
            let r = op
                .create_token(pb::CreateTokenRequest {
                    tenant,
                    site,
                    valid_secs: u32::try_from(valid.as_secs()).unwrap_or(u32::MAX),
                })
                .await?
                .into_inner();
            eprintln!("valid until {} (one use)", when(r.expires_at));
            println!("{}", r.token);
        }
        Cmd::Tenants => {
            for t in op
                .list_tenants(pb::ListRequest {})
                .await?
                .into_inner()
                .tenants
            {
                println!("{}\t{}", t.name, t.sites.join(","));
            }
        }
        Cmd::Hosts { tenant } => {
            let hosts = op
                .list_hosts(pb::ListHostsRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .hosts;
            println!("HOST\tSTATE\tLAST SEEN\tREVISION\tVERSION\tADDRESSES (*: seen by the controller only)\tPOLICY");
            for h in hosts {
                let state = if h.revoked {
                    "revoked"
                } else if h.connected {
                    "connected"
                } else {
                    "offline"
                };
                let policy = match (h.policy_revision, h.policy_error.as_str()) {
                    (0, _) => "local".to_string(),
                    (r, "") => format!("r{r} applied"),
                    (r, e) => format!("r{r} NOT APPLIED: {e}"),
                };
                println!(
                    "{}/{}/{}\t{state}\t{}\t{}\t{}\t{}\t{policy}",
                    h.tenant,
                    h.site,
                    h.name,
                    when(h.last_seen),
                    h.revision,
                    h.agent_version,
                    h.addresses
                        .iter()
                        .map(|a| if *a == h.seen_from {
                            format!("{a}*")
                        } else {
                            a.clone()
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        Cmd::Host {
            cmd: HostCmd::Revoke { tenant, site, host },
        } => {
            op.revoke_host(pb::HostRef {
                tenant: tenant.clone(),
                site: site.clone(),
                host: host.clone(),
            })
            .await?;
            println!("revoked {tenant}/{site}/{host}");
        }
        Cmd::Bans { tenant, site } => {
            let bans = op
                .list_bans(pb::ScopeRef {
                    tenant,
                    site: site.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .bans;
            println!("ADDRESS\tREASON\tORIGIN\tBANNED\tEXPIRES\tDETAIL");
            for b in bans {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    b.address,
                    b.reason,
                    b.origin,
                    when(b.banned_at),
                    when(b.expires_at),
                    b.detail
                );
                for e in b.evidence {
                    println!("\t  evidence: {e}");
                }
            }
        }
        Cmd::Ban {
            cmd:
                BanCmd::Add {
                    tenant,
                    address,
                    reason,
                    detail,
                    duration,
                },
        } => {
            let expires_at = duration.map(|d| now() + d.as_secs()).unwrap_or(0);
            op.add_ban(pb::AddBanRequest {
                tenant: tenant.clone(),
                ban: Some(pb::Ban {
                    address: address.clone(),
                    reason,
                    detail,
                    expires_at,
                    ..pb::Ban::default()
                }),
            })
            .await?;
            println!("banned {address} in {tenant} until {}", when(expires_at));
        }
        Cmd::Ban {
            cmd: BanCmd::Lift { tenant, address },
        } => {
            op.lift_ban(pb::LiftBanRequest {
                tenant: tenant.clone(),
                address: address.clone(),
            })
            .await?;
            println!("lifted {address} in {tenant}");
        }
        Cmd::Audit { tenant, limit } => {
            let entries = op
                .audit(pb::AuditRequest {
                    tenant: tenant.unwrap_or_default(),
                    limit,
                })
                .await?
                .into_inner()
                .entries;
            for e in entries {
                println!(
                    "{}\t{}\t{}{}\t{}",
                    when(e.at),
                    e.actor,
                    e.action,
                    if e.refused { " (refused)" } else { "" },
                    e.detail
                );
            }
        }
        Cmd::Policy {
            cmd: PolicyCmd::Get { tenant, site },
        } => {
            let p = op
                .get_policy(pb::ScopeRef { tenant, site })
                .await?
                .into_inner();
            eprintln!("# revision {}", p.revision);
            print!("{}", p.toml);
        }
        Cmd::Policy {
            cmd: PolicyCmd::Set { tenant, site, file },
        } => {
            let toml = match file {
                Some(f) => read(&f)?,
                None => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
            };
            store_policy(&mut op, &tenant, &site, toml).await?;
        }
        Cmd::Policy {
            cmd: PolicyCmd::Edit { tenant, site },
        } => {
            let current = match op
                .get_policy(pb::ScopeRef {
                    tenant: tenant.clone(),
                    site: site.clone(),
                })
                .await
            {
                Ok(p) => p.into_inner().toml,
                Err(st) if st.code() == tonic::Code::NotFound => String::new(),
                Err(st) => return Err(st.into()),
            };
            let Some(toml) = edit_policy(&current, &format!("{tenant}/{site}"))? else {
                println!("unchanged; nothing stored");
                return Ok(());
            };
            store_policy(&mut op, &tenant, &site, toml).await?;
        }
        Cmd::Users {
            cmd: UsersCmd::Get { tenant },
        } => {
            let rules = op
                .get_user_rules(pb::ScopeRef {
                    tenant,
                    site: String::new(),
                })
                .await?
                .into_inner();
            let sorted: std::collections::BTreeMap<_, _> = rules.users.into_iter().collect();
            for (ext, list) in sorted {
                println!("{ext} = {}", list.services.join(","));
            }
        }
        Cmd::Users {
            cmd: UsersCmd::Set { tenant, rules },
        } => {
            let users = parse_user_rules(&rules)?;
            let n = users.len();
            op.set_user_rules(pb::UserRulesRequest {
                tenant: tenant.clone(),
                rules: Some(pb::UserRules { users }),
            })
            .await?;
            println!("per-user rules of {tenant} stored ({n} extensions)");
        }
        Cmd::Explain {
            tenant,
            address,
            port,
        } => {
            let r = op
                .explain(pb::ExplainRequest {
                    tenant,
                    address: address.clone(),
                    port: port.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            let target = port.map(|p| format!(" {p}")).unwrap_or_default();
            println!("{address}{target}:");
            for h in &r.hosts {
                let decision = h.decision.to_uppercase().replace('-', " ");
                let stage = if h.stage.is_empty() {
                    String::new()
                } else {
                    format!(" at stage {}", h.stage)
                };
                println!("  {}\t{decision}{stage}: {}", h.host, h.why);
                if !h.open_services.is_empty() {
                    println!("  \t  open: {}", h.open_services.join(", "));
                }
            }
            if !r.peer_of.is_empty() {
                println!("an address of the tenant's host {}", r.peer_of);
            }
            for b in &r.bans {
                println!(
                    "banned in the tenant: {} ({}{}) from {}, expires {}",
                    b.address,
                    b.reason,
                    if b.detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", b.detail)
                    },
                    b.origin,
                    when(b.expires_at)
                );
                for e in &b.evidence {
                    println!("  evidence: {e}");
                }
            }
        }
        Cmd::Events {
            tenant,
            site,
            count,
        } => {
            let scope = match (&tenant, &site) {
                (None, _) => "every tenant".to_string(),
                (Some(t), None) => t.clone(),
                (Some(t), Some(s)) => format!("{t}/{s}"),
            };
            let mut stream = op
                .events(pb::ScopeRef {
                    tenant: tenant.unwrap_or_default(),
                    site: site.unwrap_or_default(),
                })
                .await?
                .into_inner();
            // The controller subscribed before it answered: from here on
            // nothing is missed.
            eprintln!("following the events of {scope} (Ctrl-C ends)");
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let Some(e) = stream.message().await? else {
                    break;
                };
                seen += 1;
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    when(e.at),
                    e.host,
                    e.kind,
                    if e.address.is_empty() {
                        "-"
                    } else {
                        &e.address
                    },
                    e.summary
                );
                for line in &e.evidence {
                    println!("\t  evidence: {line}");
                }
                use std::io::Write;
                std::io::stdout().flush()?;
            }
        }
    }
    Ok(())
}

async fn store_policy(
    op: &mut client::OperatorClient,
    tenant: &str,
    site: &str,
    toml: String,
) -> anyhow::Result<()> {
    op.set_policy(pb::PolicyDocument {
        tenant: tenant.to_string(),
        site: site.to_string(),
        toml,
        revision: 0,
    })
    .await?;
    println!(
        "policy stored for {tenant}{}",
        if site.is_empty() {
            String::new()
        } else {
            format!("/{site}")
        }
    );
    Ok(())
}

/// Opens `current` in $VISUAL/$EDITOR (vi) until it validates or the
/// operator leaves it unchanged; `None`: unchanged.
fn edit_policy(current: &str, scope: &str) -> anyhow::Result<Option<String>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, current)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    loop {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&path)
            .status()
            .with_context(|| format!("running the editor {editor:?}"))?;
        if !status.success() {
            bail!("the editor {editor:?} failed ({status}); nothing stored");
        }
        let text = read(&path)?;
        if text == current {
            return Ok(None);
        }
        match palisade_model::parse_policy(&text, &format!("policy of {scope}")) {
            Ok(_) => return Ok(Some(text)),
            Err(e) => {
                eprintln!("{e}");
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    bail!("the edited policy does not validate; nothing stored");
                }
                eprint!("edit again? [Y/n] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if answer.trim().eq_ignore_ascii_case("n") {
                    bail!("the edited policy does not validate; nothing stored");
                }
            }
        }
    }
}

/// `EXT=SERVICE,SERVICE` words into the wire's map.
fn parse_user_rules(
    words: &[String],
) -> anyhow::Result<std::collections::HashMap<String, pb::ServiceList>> {
    let mut users = std::collections::HashMap::new();
    for w in words {
        let Some((ext, list)) = w.split_once('=') else {
            bail!("{w:?}: expected EXTENSION=SERVICE,SERVICE (e.g. 301=ucp,webrtc)");
        };
        let services = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if users
            .insert(ext.trim().to_string(), pb::ServiceList { services })
            .is_some()
        {
            bail!("extension {} given twice", ext.trim());
        }
    }
    Ok(users)
}
