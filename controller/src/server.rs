//! The controller's gRPC server: tonic over rustls with mutual TLS.
//!
//! The TLS layer verifies any client certificate against the controller's
//! CA and also accepts connections without one (only `Enroll` works
//! without; every other RPC checks the identity in the peer certificate).
//! The server presents its certificate followed by the CA's, so an agent
//! enrolling with a token can pin the CA by its SHA-256.
//!
//! Data directory: `ca.pem`, `ca.key` (0600) and the sled store in `store/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade_proto::v1 as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::agent_service::AgentApi;
use crate::auth::OperatorTokens;
use crate::fleet::Fleet;
use crate::operator_service::OperatorApi;
use crate::pki::{Pki, PkiError};
use crate::store::{now_secs, SledStore, Store, StoreError};

/// Largest gRPC message accepted (anything bigger gets `resource_exhausted`).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest message sent (snapshots are chunked well below this).
const MAX_SEND: usize = 4 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expired bans are swept and the revision logs compacted.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// How long after it expired a ban leaves the store.
pub const BAN_SWEEP_GRACE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra names/addresses for the server certificate.
    pub names: Vec<String>,
    /// The URL written into tokens; default from the first name or the
    /// listen address.
    pub url: Option<String>,
    pub operator_tokens: Option<PathBuf>,
    pub max_message: usize,
    /// Revision log entries kept per tenant.
    pub revlog_keep: u64,
    pub confirm_within_secs: u32,
    /// How often housekeeping runs (expired bans swept, revision logs
    /// compacted); tests and benches run it more often.
    pub housekeeping_every: Duration,
    /// A ban is swept from the store this long after it expired (agents
    /// expire bans on their own; a swept ban gets no revision).
    pub ban_sweep_grace: Duration,
    /// The address an agent connects from is one of its host's addresses,
    /// trusted by the tenant's other hosts (a site behind NAT). Off when
    /// agents reach the controller through a proxy that hides them.
    pub trust_seen_addresses: bool,
}

impl ServerOptions {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> ServerOptions {
        ServerOptions {
            data_dir: data_dir.into(),
            listen,
            names: vec![],
            url: None,
            operator_tokens: None,
            max_message: MAX_MESSAGE,
            revlog_keep: 1_000_000,
            confirm_within_secs: 30,
            housekeeping_every: HOUSEKEEPING_EVERY,
            ban_sweep_grace: BAN_SWEEP_GRACE,
            trust_seen_addresses: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Config(String),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Where the controller keeps things.
#[derive(Clone, Debug)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub ca: PathBuf,
    pub store: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        Paths {
            data_dir: data_dir.to_path_buf(),
            ca: data_dir.join("ca.pem"),
            store: data_dir.join("store"),
        }
    }
}

/// A running controller.
pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    pub paths: Paths,
    pub fleet: Arc<Fleet>,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), ServerError>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the server, cuts every agent stream and releases the store (the
    /// data directory can be opened again when this returns).
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.fleet
            .cut_all(Code::Unavailable, "the controller is shutting down");
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
        let abort = self.serve.abort_handle();
        let res = match tokio::time::timeout(Duration::from_secs(10), &mut self.serve).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                tracing::warn!("connections did not close within 10 s; dropping them");
                abort.abort();
                Ok(())
            }
        };
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        // Sessions still winding down hold the fleet (and the store).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.fleet) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.fleet.store.flush().await?;
        res
    }

    /// Waits for the server to stop on its own (an error).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        match (&mut self.serve).await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Config(format!("server task: {e}"))),
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |error| ServerError::Io { what, error }
}

/// Opens the data directory (CA, store) and starts serving.
pub async fn start(opts: ServerOptions) -> Result<Running, ServerError> {
    let paths = Paths::new(&opts.data_dir);
    std::fs::create_dir_all(&paths.data_dir)
        .map_err(io_err(paths.data_dir.display().to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&paths.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let tokens = match &opts.operator_tokens {
        Some(p) => OperatorTokens::load(p).map_err(ServerError::Config)?,
        None => OperatorTokens::default(),
    };
    let pki = Pki::open_or_create(&paths.data_dir)?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&paths.store)?);

    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(io_err(format!("listening on {}", opts.listen)))?;
    let addr = listener.local_addr().map_err(io_err("listening socket"))?;
    let mut names = opts.names.clone();
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    let url = match &opts.url {
        Some(u) => u.clone(),
        None => {
            let host = match opts.names.first() {
                Some(n) => n.clone(),
                None if !addr.ip().is_unspecified() => addr.ip().to_string(),
                None => "localhost".to_string(),
            };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("https://{host}:{}", addr.port())
        }
    };
    let tls = tls_config(&pki, &names)?;
    let own = own_addresses(&names, &url).await;
    tracing::info!(addresses = ?own, "the controller's own addresses, never banned");
    let fleet = Arc::new(
        Fleet::new(store, pki, url.clone(), opts.confirm_within_secs)
            .with_own_addresses(own)
            .with_seen_addresses(opts.trust_seen_addresses),
    );

    let (conn_tx, conn_rx) = mpsc::channel(128);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let accept = tokio::spawn(accept_loop(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        conn_tx,
        fleet.clone(),
    ));
    let housekeeping = tokio::spawn(housekeeping(
        fleet.clone(),
        opts.revlog_keep,
        opts.housekeeping_every,
        opts.ban_sweep_grace,
    ));

    let agent = pb::agent_service_server::AgentServiceServer::new(AgentApi {
        fleet: fleet.clone(),
    })
    .max_decoding_message_size(opts.max_message)
    .max_encoding_message_size(MAX_SEND);
    let operator = pb::operator_service_server::OperatorServiceServer::new(OperatorApi {
        fleet: fleet.clone(),
        tokens,
    })
    .max_decoding_message_size(opts.max_message)
    .max_encoding_message_size(MAX_SEND);
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(agent)
        .add_service(operator);
    let serve = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async {
                let _ = shutdown_rx.await;
            })
            .await
            .map_err(ServerError::from)
    });
    tracing::info!(%addr, %url, "controller listening");
    Ok(Running {
        addr,
        url,
        paths,
        fleet,
        shutdown: Some(shutdown_tx),
        serve,
        tasks: vec![accept, housekeeping],
    })
}

fn tls_config(pki: &Pki, names: &[String]) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = pki.server_cert(names)?;
    let pem_err = |e: rustls::pki_types::pem::Error| ServerError::Config(format!("PEM: {e}"));
    let leaf = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).map_err(pem_err)?;
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).map_err(pem_err)?;
    let ca = CertificateDer::from(pki.ca_der().to_vec());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| ServerError::Config(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf, ca], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Accepts TCP connections and runs each TLS handshake in its own task
/// (with a deadline), handing finished ones to tonic. A failed handshake (a
/// certificate from another CA, an expired one, not TLS at all) is logged
/// and counted; the client sees the TLS alert.
async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    out: mpsc::Sender<Result<TlsConn, std::io::Error>>,
    fleet: Arc<Fleet>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let out = out.clone();
        let fleet = fleet.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = out.send(Ok(tls)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!("palisade_controller_tls_handshake_failures_total")
                        .increment(1);
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                    // A certificate that was presented and refused (expired,
                    // another CA's, not for a client) is someone's mistake
                    // worth an audit line; a scanner's garbage is not.
                    if let Some(why) = refused_certificate(&e) {
                        let st =
                            Status::unauthenticated(format!("client certificate refused: {why}"));
                        fleet.refused("", &format!("tls@{peer}"), "tls", &st);
                    }
                }
                Err(_) => {
                    metrics::counter!("palisade_controller_tls_handshake_failures_total")
                        .increment(1);
                    tracing::info!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// Why the client's certificate was refused, when that is what failed the
/// handshake.
fn refused_certificate(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(why) => Some(why.to_string()),
        _ => None,
    }
}

/// The addresses agents may reach the controller at: the certificate's
/// names (resolved when they are not addresses) and the URL's host. A name
/// that does not resolve within 2 s is left out (and said so).
async fn own_addresses(names: &[String], url: &str) -> Vec<std::net::IpAddr> {
    let url_host = url
        .parse::<tonic::codegen::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()));
    let mut out = std::collections::BTreeSet::new();
    for name in names.iter().cloned().chain(url_host) {
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            out.insert(ip);
            continue;
        }
        let lookup = tokio::net::lookup_host(format!("{name}:443"));
        match tokio::time::timeout(Duration::from_secs(2), lookup).await {
            Ok(Ok(addrs)) => out.extend(addrs.map(|a| a.ip())),
            _ => {
                tracing::warn!(%name, "cannot resolve the controller's name; its addresses are not protected from bans")
            }
        }
    }
    out.into_iter().collect()
}

/// Drops expired bans and trims the revision logs.
async fn housekeeping(fleet: Arc<Fleet>, keep: u64, every: Duration, grace: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = &fleet.store;
        match store.sweep_bans(now_secs().saturating_sub(grace.as_secs())) {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired bans removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping bans"),
        }
        if let Ok(tenants) = store.tenants() {
            for t in tenants {
                if let Err(e) = store.compact(&t.name, keep) {
                    tracing::warn!(tenant = %t.name, error = %e, "compacting the revision log");
                }
            }
        }
    }
}
