//! Logs, traces and metrics for the controller and the CLI: logs and traces as
//! every Palisade binary sets them up ([`palisade_telemetry`]), metrics served
//! for Prometheus by the controller.

pub use palisade_telemetry::{init, Telemetry};
use std::net::SocketAddr;

use metrics_exporter_prometheus::Matcher;

/// Fan-out latency buckets (seconds).
const FANOUT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Serves `/metrics` for Prometheus on `addr`.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("palisade_controller_fanout_seconds".into()),
            FANOUT_BUCKETS,
        )
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    metrics::describe_gauge!(
        "palisade_controller_connected_agents",
        "Agents with a live Sync stream"
    );
    metrics::describe_counter!(
        "palisade_controller_bans_received_total",
        "Bans reported by agents or added by operators"
    );
    metrics::describe_counter!(
        "palisade_controller_bans_fanned_out_total",
        "Ban deltas delivered to other hosts (one per recipient)"
    );
    metrics::describe_histogram!(
        "palisade_controller_fanout_seconds",
        "From a ban reaching the controller to its delta queued for another host"
    );
    metrics::describe_counter!(
        "palisade_controller_refusals_total",
        "Requests refused (bad token, certificate, input), by action"
    );
    metrics::describe_counter!(
        "palisade_controller_tls_handshake_failures_total",
        "TLS handshakes that failed (unknown CA, expired, not TLS, timeout)"
    );
    metrics::describe_counter!(
        "palisade_controller_agent_events_total",
        "Events reported by agents"
    );
    Ok(())
}
