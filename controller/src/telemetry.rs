//! Logs, traces and metrics for the controller and the CLI (the agent's
//! pattern: logs to stderr, spans over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, metrics for Prometheus).

use std::net::SocketAddr;

use metrics_exporter_prometheus::Matcher;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Keeps the OTLP pipeline alive; flushes it on drop.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the subscriber. Call once, inside a Tokio runtime when OTLP is wanted.
pub fn init(service: &'static str, default_level: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let provider = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .ok()?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build(),
        )
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

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
