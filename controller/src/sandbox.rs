//! An in-process controller and simulated agents, for tests (this crate's
//! and the agent's).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use palisade_controller::sandbox::Sandbox;
//! use std::time::Duration;
//! let sb = Sandbox::start().await?;                 // 127.0.0.1:0, temp dir, real TLS
//! let token = sb.token("acme", "hq").await?;        // "pal1.…"
//! let a = sb.enroll("acme", "hq", "pbx1").await?;   // key + CSR + Enroll
//! let mut s = a.sync(0, &["198.51.100.1"]).await?;  // Sync over mutual TLS
//! s.report_ban("203.0.113.9", "scanner").await?;
//! s.wait_until(Duration::from_secs(1), |s| s.bans.contains_key("203.0.113.9")).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use palisade_proto::v1 as pb;
use pb::agent_message::Body as Up;
use pb::controller_message::Body as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::client::{self, OperatorAuth, OperatorClient};
use crate::identity::{HostId, OperatorId};
use crate::server::{self, Running, ServerOptions};
use crate::store::Store;

mod process;
pub use process::{free_port, ControllerProcess};

/// A controller on 127.0.0.1 with its data in a temporary directory.
pub struct Sandbox {
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    running: Option<Running>,
    operator: OperatorClient,
    /// The operator bundle (PEM) the sandbox's client uses (operator "sandbox").
    pub operator_bundle: String,
    /// The options it was started with (a restart reuses them).
    opts: ServerOptions,
}

impl Sandbox {
    /// Starts a controller in a new temporary directory.
    pub async fn start() -> anyhow::Result<Sandbox> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("controller");
        Self::start_at(Some(dir), data, "127.0.0.1:0".parse()?, vec![]).await
    }

    /// Starts a controller on an existing data directory (kept afterwards).
    pub async fn start_in(data: &Path) -> anyhow::Result<Sandbox> {
        Self::start_at(None, data.to_path_buf(), "127.0.0.1:0".parse()?, vec![]).await
    }

    /// Starts a controller in a new temporary directory with options
    /// adjusted by `f` (operator tokens, revision log size, …).
    pub async fn start_with(f: impl FnOnce(&mut ServerOptions)) -> anyhow::Result<Sandbox> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("controller");
        let mut opts = ServerOptions::new(&data, "127.0.0.1:0".parse()?);
        f(&mut opts);
        Self::start_opts(Some(dir), opts).await
    }

    async fn start_at(
        dir: Option<tempfile::TempDir>,
        data: PathBuf,
        listen: SocketAddr,
        names: Vec<String>,
    ) -> anyhow::Result<Sandbox> {
        let mut opts = ServerOptions::new(&data, listen);
        opts.names = names;
        Self::start_opts(dir, opts).await
    }

    async fn start_opts(
        dir: Option<tempfile::TempDir>,
        opts: ServerOptions,
    ) -> anyhow::Result<Sandbox> {
        let data = opts.data_dir.clone();
        let running = server::start(opts.clone()).await?;
        let operator_bundle = running
            .fleet
            .pki
            .operator_bundle(&OperatorId::fleet("sandbox"))?;
        let operator =
            client::operator(&running.url, OperatorAuth::Bundle(operator_bundle.clone())).await?;
        Ok(Sandbox {
            dir,
            data,
            running: Some(running),
            operator,
            operator_bundle,
            opts,
        })
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("sandbox is running")
    }

    pub fn url(&self) -> &str {
        &self.running().url
    }

    pub fn addr(&self) -> SocketAddr {
        self.running().addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn ca_pem(&self) -> String {
        self.running().fleet.pki.ca_pem().to_string()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.running().fleet.store.clone()
    }

    /// How many agents have a live Sync stream.
    pub fn connected(&self) -> usize {
        self.running().fleet.connected()
    }

    /// An operator client (operator "sandbox", client certificate).
    pub fn operator(&self) -> OperatorClient {
        self.operator.clone()
    }

    /// Every ban of `tenant`, as operators list them (`ListBans`).
    pub async fn bans(&self, tenant: &str) -> Result<Vec<pb::Ban>, Status> {
        Ok(self
            .operator()
            .list_bans(pb::ScopeRef {
                tenant: tenant.into(),
                site: String::new(),
            })
            .await?
            .into_inner()
            .bans)
    }

    /// An operator bundle for another operator (of the fleet, or of one
    /// tenant).
    pub fn operator_bundle_for(&self, op: &OperatorId) -> anyhow::Result<String> {
        Ok(self.running().fleet.pki.operator_bundle(op)?)
    }

    /// A one-hour enrolment token.
    pub async fn token(&self, tenant: &str, site: &str) -> anyhow::Result<String> {
        self.token_valid(tenant, site, 3600).await
    }

    pub async fn token_valid(&self, tenant: &str, site: &str, secs: u32) -> anyhow::Result<String> {
        let r = self
            .operator()
            .create_token(pb::CreateTokenRequest {
                tenant: tenant.into(),
                site: site.into(),
                valid_secs: secs,
            })
            .await?;
        Ok(r.into_inner().token)
    }

    /// A token, then an enrolment as `host`.
    pub async fn enroll(&self, tenant: &str, site: &str, host: &str) -> anyhow::Result<AgentCreds> {
        let token = self.token(tenant, site).await?;
        Ok(AgentCreds::enroll(self.url(), &self.ca_pem(), &token, host).await?)
    }

    /// Stops the controller and starts it again on the same data directory
    /// and port (agents reconnect to the same URL).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let running = self.running.take().expect("sandbox is running");
        let addr = running.addr;
        running.shutdown().await?;
        let mut last = None;
        for _ in 0..50 {
            let mut opts = self.opts.clone();
            opts.listen = addr;
            match server::start(opts).await {
                Ok(r) => {
                    self.operator = client::operator(
                        &r.url,
                        OperatorAuth::Bundle(self.operator_bundle.clone()),
                    )
                    .await?;
                    self.running = Some(r);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(anyhow!(
            "restarting the sandbox: {}",
            last.expect("an error")
        ))
    }

    /// Stops the controller (the store is released); the temporary
    /// directory, if any, is returned so the caller can keep it.
    pub async fn stop(mut self) -> anyhow::Result<Option<tempfile::TempDir>> {
        if let Some(r) = self.running.take() {
            r.shutdown().await?;
        }
        Ok(self.dir.take())
    }
}

/// An enrolled agent's credentials.
#[derive(Clone)]
pub struct AgentCreds {
    pub id: HostId,
    pub url: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl AgentCreds {
    /// Makes a key and CSR, enrols with `token` (TLS without a client
    /// certificate, trusting `ca_pem`), and checks the returned CA against
    /// the token's pin.
    pub async fn enroll(
        url: &str,
        ca_pem: &str,
        token: &str,
        host: &str,
    ) -> Result<AgentCreds, Status> {
        let (key_pem, csr_pem) =
            crate::pki::new_key_and_csr(host).map_err(|e| Status::internal(e.to_string()))?;
        let ch = client::channel(url, ca_pem, None)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let r = client::agent(ch)
            .enroll(pb::EnrollRequest {
                token: token.into(),
                csr_pem,
                hostname: host.into(),
            })
            .await?
            .into_inner();
        if let Ok(claims) = crate::token::TokenClaims::decode(token) {
            let der = crate::pki::pem_blocks(&r.ca_pem)
                .into_iter()
                .next()
                .map(|b| b.der)
                .unwrap_or_default();
            if crate::pki::sha256_hex(&der) != claims.ca_sha256 {
                return Err(Status::internal("the CA does not match the token's pin"));
            }
        }
        Ok(AgentCreds {
            id: HostId::new(&r.tenant, &r.site, &r.host),
            url: url.into(),
            cert_pem: r.certificate_pem,
            key_pem,
            ca_pem: r.ca_pem,
        })
    }

    /// Opens Sync with a Hello (protocol 1) and waits for the Welcome.
    pub async fn sync(&self, last_revision: u64, addresses: &[&str]) -> Result<SimAgent, Status> {
        self.sync_with(pb::Hello {
            protocol_version: palisade_proto::PROTOCOL_VERSION,
            agent_version: "sim".into(),
            last_revision,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        })
        .await
    }

    /// Opens Sync with this Hello.
    pub async fn sync_with(&self, hello: pb::Hello) -> Result<SimAgent, Status> {
        self.sync_raw(pb::AgentMessage {
            body: Some(Up::Hello(hello)),
        })
        .await
    }

    /// Opens Sync sending `first` as the first message.
    pub async fn sync_raw(&self, first: pb::AgentMessage) -> Result<SimAgent, Status> {
        let ch = client::channel(
            &self.url,
            &self.ca_pem,
            Some((&self.cert_pem, &self.key_pem)),
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        SimAgent::open(self.clone(), ch, first).await
    }
}

/// A simulated agent: a real Sync stream, and the state an agent would keep.
pub struct SimAgent {
    pub creds: AgentCreds,
    pub welcome: pb::Welcome,
    /// The revision of the last message applied.
    pub revision: u64,
    /// Shared bans by address.
    pub bans: BTreeMap<String, pb::Ban>,
    /// Trusted peers: address → `tenant/site/host`.
    pub peers: BTreeMap<String, String>,
    pub policy: Option<String>,
    pub user_rules: Option<pb::UserRules>,
    /// Every message after the Welcome, in order (questions aside).
    pub log: Vec<pb::ControllerMessage>,
    /// Explain questions received, in order.
    pub questions: Vec<pb::ExplainQuery>,
    up: mpsc::Sender<pb::AgentMessage>,
    down: Streaming<pb::ControllerMessage>,
}

impl SimAgent {
    async fn open(
        creds: AgentCreds,
        ch: tonic::transport::Channel,
        first: pb::AgentMessage,
    ) -> Result<SimAgent, Status> {
        let (up, rx) = mpsc::channel(1024);
        up.send(first)
            .await
            .map_err(|_| Status::internal("queue"))?;
        let mut down = client::agent(ch)
            .sync(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let m = tokio::time::timeout(Duration::from_secs(5), down.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Welcome within 5 s"))??
            .ok_or_else(|| Status::unavailable("stream ended before the Welcome"))?;
        let Some(Down::Welcome(welcome)) = m.body else {
            return Err(Status::internal(format!("expected a Welcome, got {m:?}")));
        };
        Ok(SimAgent {
            creds,
            welcome,
            revision: m.revision,
            bans: BTreeMap::new(),
            peers: BTreeMap::new(),
            policy: None,
            user_rules: None,
            log: vec![],
            questions: vec![],
            up,
            down,
        })
    }

    pub async fn send(&self, body: Up) -> anyhow::Result<()> {
        self.up
            .send(pb::AgentMessage { body: Some(body) })
            .await
            .map_err(|_| anyhow!("the stream is closed"))
    }

    /// The stream's upward queue, to send from another task while this one
    /// keeps reading (a sender that waits on a full queue while nobody reads
    /// the downward stream would stall both ends).
    pub fn sender(&self) -> mpsc::Sender<pb::AgentMessage> {
        self.up.clone()
    }

    /// Reports a permanent ban on `address`.
    pub async fn report_ban(&self, address: &str, reason: &str) -> anyhow::Result<()> {
        self.send(Up::Ban(pb::BanReport {
            ban: Some(pb::Ban {
                address: address.into(),
                reason: reason.into(),
                evidence: vec![format!("sim evidence for {address}")],
                ..pb::Ban::default()
            }),
        }))
        .await
    }

    pub async fn heartbeat(&self, addresses: &[&str]) -> anyhow::Result<()> {
        self.send(Up::Heartbeat(pb::Heartbeat {
            at: crate::store::now_secs(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        }))
        .await
    }

    fn apply(&mut self, m: &pb::ControllerMessage) {
        // A question changes nothing (its revision is 0).
        if let Some(Down::Explain(q)) = &m.body {
            self.questions.push(q.clone());
            return;
        }
        self.revision = m.revision;
        match &m.body {
            Some(Down::Bans(d)) => {
                for b in &d.added {
                    self.bans.insert(b.address.clone(), b.clone());
                }
                for a in &d.lifted {
                    self.bans.remove(a);
                }
            }
            Some(Down::Trust(d)) => {
                for p in &d.added {
                    self.peers.insert(p.address.clone(), p.host.clone());
                }
                for a in &d.removed {
                    self.peers.remove(a);
                }
            }
            Some(Down::Policy(p)) => self.policy = Some(p.toml.clone()),
            Some(Down::UserRules(u)) => self.user_rules = Some(u.clone()),
            Some(Down::Welcome(_) | Down::Explain(_)) | None => {}
        }
        self.log.push(m.clone());
    }

    /// The next message (applied), `Ok(None)` when nothing came within
    /// `within`; the stream's end is an error: its status.
    pub async fn next(
        &mut self,
        within: Duration,
    ) -> Result<Option<pb::ControllerMessage>, Status> {
        match tokio::time::timeout(within, self.down.message()).await {
            Err(_) => Ok(None),
            Ok(Err(st)) => Err(st),
            Ok(Ok(None)) => Err(Status::ok("the stream ended")),
            Ok(Ok(Some(m))) => {
                self.apply(&m);
                Ok(Some(m))
            }
        }
    }

    /// Applies messages until `pred` holds; fails after `within`.
    pub async fn wait_until(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&SimAgent) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while !pred(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(anyhow!(
                    "{}: condition not met within {within:?}; received {:?}",
                    self.creds.id,
                    self.log
                ));
            }
            self.next(left)
                .await
                .with_context(|| format!("{}: stream", self.creds.id))?;
        }
        Ok(())
    }

    /// Everything that arrives until the stream has been quiet for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Result<Vec<pb::ControllerMessage>, Status> {
        let mut out = vec![];
        while let Some(m) = self.next(quiet).await? {
            out.push(m);
        }
        Ok(out)
    }

    /// Waits for the controller to end the stream; its status (`None` when
    /// it stayed open for `within`).
    pub async fn ended(&mut self, within: Duration) -> Option<Status> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next(left).await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(st) => return Some(st),
            }
        }
    }
}
