//! Logs, traces and metrics for the daemon and the CLI: logs and traces as
//! every Palisade binary sets them up ([`palisade_telemetry`]), metrics served
//! for Prometheus by the daemon.

pub use palisade_telemetry::{init, Telemetry};
use std::net::SocketAddr;

/// Serves `/metrics` for Prometheus on `addr`.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    metrics::describe_counter!(
        "palisade_ruleset_applies_total",
        "Ruleset transactions that changed the table"
    );
    metrics::describe_counter!(
        "palisade_ruleset_rollbacks_total",
        "Unconfirmed changes rolled back"
    );
    metrics::describe_counter!(
        "palisade_nft_transactions_rejected_total",
        "Transactions nft refused"
    );
    metrics::describe_histogram!(
        "palisade_nft_transaction_seconds",
        "Time to run one nft transaction"
    );
    metrics::describe_gauge!("palisade_set_elements", "Elements per dynamic set");
    Ok(())
}
