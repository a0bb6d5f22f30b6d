//! `palisade-controller`: the control plane daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palisade_controller::identity::OperatorId;
use palisade_controller::pki::{write_private, Pki};
use palisade_controller::server::{self, Paths, ServerOptions};
use palisade_controller::telemetry;

#[derive(Parser)]
#[command(
    name = "palisade-controller",
    version,
    about = "Palisade's control plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve agents and operators (gRPC over mutual TLS).
    Run {
        /// Data directory: CA, store.
        #[arg(long, env = "PALISADE_DATA")]
        data: PathBuf,
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Names and addresses the server certificate is valid for (beyond
        /// localhost, 127.0.0.1, ::1 and the listen address). Repeatable.
        #[arg(long = "name")]
        names: Vec<String>,
        /// The URL agents reach this controller at (written into tokens);
        /// default https://<first --name or the listen address>:<port>.
        #[arg(long)]
        url: Option<String>,
        /// Operator bearer tokens: a file of `NAME TOKEN` lines.
        #[arg(long)]
        operator_tokens: Option<PathBuf>,
        /// Serve Prometheus metrics here.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Revision log entries kept per tenant (older agents get a snapshot).
        #[arg(long, default_value_t = 1_000_000)]
        revlog_keep: u64,
        /// How often expired bans are swept and revision logs compacted.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        housekeeping_every: Duration,
        /// How long after it expired a ban is removed from the store.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        ban_sweep_grace: Duration,
        /// Do not count the address an agent connects from among its host's
        /// addresses (by default it is, so a site behind NAT is trusted at
        /// its public address): for a controller behind a proxy or load
        /// balancer, where every agent seems to come from the proxy.
        #[arg(long)]
        ignore_seen_addresses: bool,
    },
    /// Write an operator's certificate bundle (certificate, key, CA) for `palisade --cert`.
    OperatorCert {
        #[arg(long, env = "PALISADE_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
        /// Limit the operator to this tenant (a customer's own IT); without
        /// it the operator acts on every tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let _telemetry = telemetry::init("palisade-controller", "info");
        match cli.cmd {
            Cmd::Run {
                data,
                listen,
                names,
                url,
                operator_tokens,
                metrics_listen,
                revlog_keep,
                housekeeping_every,
                ban_sweep_grace,
                ignore_seen_addresses,
            } => {
                if let Some(m) = metrics_listen {
                    telemetry::serve_metrics(m)?;
                }
                let mut opts = ServerOptions::new(&data, listen);
                opts.names = names;
                opts.url = url;
                opts.operator_tokens = operator_tokens;
                opts.revlog_keep = revlog_keep;
                opts.housekeeping_every = housekeeping_every;
                opts.ban_sweep_grace = ban_sweep_grace;
                opts.trust_seen_addresses = !ignore_seen_addresses;
                let mut running = server::start(opts)
                    .await
                    .with_context(|| format!("starting the controller on {}", data.display()))?;
                let paths = &running.paths;
                println!("palisade-controller listening on {}", running.addr);
                println!("  URL (in tokens):  {}", running.url);
                println!("  data directory:   {}", paths.data_dir.display());
                println!(
                    "  CA certificate:   {} (sha256 {})",
                    paths.ca.display(),
                    running.fleet.pki.ca_sha256()
                );
                println!("  store:            {}", paths.store.display());
                if let Some(m) = metrics_listen {
                    println!("  metrics:          http://{m}/metrics");
                }
                println!(
                    "  operator access:  palisade-controller operator-cert --data {} --name NAME --out FILE",
                    paths.data_dir.display()
                );
                let stop = async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                    tokio::select! {
                        r = tokio::signal::ctrl_c() => r,
                        _ = term.recv() => Ok(()),
                    }
                };
                tokio::select! {
                    r = running.wait() => r.context("the server stopped")?,
                    r = stop => {
                        r?;
                        tracing::info!("stopping");
                        running.shutdown().await?;
                    }
                }
                Ok(())
            }
            Cmd::OperatorCert {
                data,
                name,
                tenant,
                out,
            } => {
                let op = match &tenant {
                    Some(t) => OperatorId::of_tenant(&name, t),
                    None => OperatorId::fleet(&name),
                };
                op.check()?;
                let pki = Pki::open_or_create(&data)
                    .with_context(|| format!("the CA in {}", data.display()))?;
                let bundle = pki.operator_bundle(&op)?;
                write_private(&out, &bundle)?;
                let scope = match &tenant {
                    Some(t) => format!("tenant {t:?} only"),
                    None => "every tenant".into(),
                };
                println!(
                    "operator {name:?} ({scope}): certificate, key and CA written to {} (mode 0600)",
                    out.display()
                );
                println!("CA: {}", Paths::new(&data).ca.display());
                println!("use: palisade --controller URL --cert {} tenants", out.display());
                Ok(())
            }
        }
    })
}
