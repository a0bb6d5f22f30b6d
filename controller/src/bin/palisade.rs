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
            println!("HOST\tSTATE\tLAST SEEN\tREVISION\tVERSION\tADDRESSES");
            for h in hosts {
                let state = if h.revoked {
                    "revoked"
                } else if h.connected {
                    "connected"
                } else {
                    "offline"
                };
                println!(
                    "{}/{}/{}\t{state}\t{}\t{}\t{}\t{}",
                    h.tenant,
                    h.site,
                    h.name,
                    when(h.last_seen),
                    h.revision,
                    h.agent_version,
                    h.addresses.join(",")
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
            op.set_policy(pb::PolicyDocument {
                tenant: tenant.clone(),
                site: site.clone(),
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
        }
    }
    Ok(())
}
