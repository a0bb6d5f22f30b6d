//! The agent's control-plane client against a stand-in controller (tonic
//! over rustls with its own rcgen CA, in this process) and a real nftables
//! table in a network namespace of its own: enrolment pinned by the token,
//! the sync stream over mutual TLS, shared bans and tenant peers in the
//! kernel, ban reports, reconnection with the revision, policy with
//! confirm-or-rollback.
//!
//! Needs root (a network namespace and nft), like the end-to-end tests.

use palisade_agent::bans::{BanBook, BanRecord, Entry};
use palisade_agent::controller::{enroll, identity, sync, token, ControllerSettings};
use palisade_agent::engine::Agent;
use palisade_agent::ruleset::Nft;
use palisade_agent::state::{now_unix, StateDir};
use palisade_proto::v1::agent_message::Body as Up;
use palisade_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use palisade_proto::v1::controller_message::Body as Down;
use palisade_proto::v1::{
    AgentMessage, Ban, BanDelta, ControllerMessage, EnrollRequest, EnrollResponse, ExplainQuery,
    Hello, PolicyResult, PolicyUpdate, ServiceList, TrustDelta, TrustedPeer, UserRules, Welcome,
};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("pal-ctl-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs");
        assert!(
            ok.success(),
            "cannot create network namespace {name}: this test needs root (ip netns, nft)"
        );
        Netns(name)
    }

    fn nft(&self) -> Nft {
        Nft::with_command(
            "ip",
            vec!["netns".into(), "exec".into(), self.0.clone(), "nft".into()],
        )
    }

    /// The addresses in one of the agent's sets.
    fn set(&self, name: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "nft", "list", "set", "inet", "palisade", name,
            ])
            .output()
            .expect("nft runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One Sync stream as the stand-in controller sees it.
struct Stream {
    up: Streaming<AgentMessage>,
    down: mpsc::Sender<Result<ControllerMessage, Status>>,
    client_cert: bool,
}

impl Stream {
    async fn next(&mut self) -> Up {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.up.message())
            .await
            .expect("a message from the agent within 5 s")
            .expect("the stream works")
            .expect("the stream is open");
        msg.body.expect("a body")
    }

    /// The next message that is not a heartbeat.
    async fn next_but_heartbeats(&mut self) -> Up {
        loop {
            match self.next().await {
                Up::Heartbeat(_) => continue,
                other => return other,
            }
        }
    }

    /// The next policy result (a reconnected agent may report again the
    /// bans of the last second it knows were received).
    async fn policy_result(&mut self) -> PolicyResult {
        loop {
            match self.next_but_heartbeats().await {
                Up::PolicyResult(r) => return r,
                Up::Ban(b) => {
                    let b = b.ban.unwrap();
                    assert!(
                        ["192.0.2.50", "192.0.2.52"].contains(&b.address.as_str())
                            && !b.reason.starts_with("shared"),
                        "only the host's own bans: {b:?}"
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn send(&self, revision: u64, body: Down) {
        self.down
            .send(Ok(ControllerMessage {
                revision,
                body: Some(body),
            }))
            .await
            .expect("the agent listens");
    }
}

struct Stand {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    streams: mpsc::UnboundedSender<Stream>,
}

#[tonic::async_trait]
impl AgentService for Stand {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let req = req.into_inner();
        let claims = token::Token::parse(&req.token, now_unix())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem)
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        csr.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.distinguished_name = rcgen::DistinguishedName::new();
        csr.params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{}/{}/{}", claims.tenant, claims.site, req.hostname),
        );
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(EnrollResponse {
            certificate_pem: cert.pem(),
            ca_pem: self.ca_pem.clone(),
            tenant: claims.tenant,
            site: claims.site,
            host: req.hostname,
        }))
    }

    type SyncStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ControllerMessage, Status>> + Send>>;

    async fn sync(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let client_cert = req.peer_certs().is_some_and(|c| !c.is_empty());
        let (tx, rx) = mpsc::channel(64);
        let _ = self.streams.send(Stream {
            up: req.into_inner(),
            down: tx,
            client_cert,
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct Controller {
    url: String,
    /// New connections are closed at once (the controller cut off; streams
    /// already open go on).
    refuse: Arc<std::sync::atomic::AtomicBool>,
    pin: [u8; 32],
    streams: mpsc::UnboundedReceiver<Stream>,
}

impl Controller {
    async fn start() -> Controller {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stand-in controller CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = refuse.clone();
        let stand = Arc::new(Stand {
            ca_pem: ca_cert.pem(),
            issuer,
            streams: tx,
        });
        // The chain the server presents holds its CA: what the agent pins.
        let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                chain,
                server_key.serialize_pem(),
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(ca_cert.pem()))
            .client_auth_optional(true);
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(AgentServiceServer::from_arc(stand));
        tokio::spawn(server.serve_with_incoming(tokio_stream::StreamExt::filter(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            move |_| !cut.load(std::sync::atomic::Ordering::SeqCst),
        )));
        Controller {
            url,
            pin: palisade_agent::controller::tls::fingerprint(ca_cert.der()),
            streams: rx,
            refuse,
        }
    }

    fn token(&self, pin: &[u8; 32]) -> String {
        token::encode(&self.url, "acme", "hq", "s3cret", pin, now_unix() + 600)
    }

    async fn stream(&mut self) -> Stream {
        tokio::time::timeout(Duration::from_secs(10), self.streams.recv())
            .await
            .expect("the agent opens a stream within 10 s")
            .expect("the server runs")
    }
}

async fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ban(addr: &str, reason: &str) -> Entry {
    let now = now_unix();
    Entry::Ban(BanRecord {
        addr: addr.parse().unwrap(),
        at: now,
        until: now + 600,
        reason: reason.into(),
        comment: format!("{reason}: test"),
        offence: 1,
        evidence: vec![format!("REGISTER from {addr}")],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_then_sync_with_a_stand_in_controller() {
    let ns = Netns::new();
    let mut ctl = Controller::start().await;
    let state = tempfile::tempdir().unwrap();
    let opts = |token: String| enroll::EnrollOptions {
        token,
        controller: None,
        hostname: Some("pbx-a".into()),
    };

    // A token pinning another CA: refused before anything is sent or stored.
    let e = enroll::enroll(state.path(), opts(ctl.token(&[7; 32])))
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("fingerprint"), "{text}");
    assert!(identity::load(state.path()).unwrap().is_none());

    let id = enroll::enroll(state.path(), opts(ctl.token(&ctl.pin)))
        .await
        .unwrap();
    assert_eq!(id.name(), "acme/hq/pbx-a");
    let enrolled = identity::load(state.path()).unwrap().unwrap();
    assert!(enrolled.key_pem.contains("PRIVATE KEY"));

    // The host's table, then the sync task as the daemon starts it.
    let agent = Agent::new(ns.nft(), StateDir::open(state.path()).unwrap());
    agent.apply_text("", "test.toml", None).unwrap();
    let _sync = sync::start(
        &agent,
        ControllerSettings {
            heartbeat: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
        },
    );

    let mut s = ctl.stream().await;
    assert!(s.client_cert, "the stream is mutual TLS");
    let Up::Hello(Hello {
        protocol_version,
        last_revision,
        ..
    }) = s.next().await
    else {
        panic!("hello first")
    };
    assert_eq!(protocol_version, palisade_proto::PROTOCOL_VERSION);
    assert_eq!(last_revision, 0);

    // A snapshot: a shared ban and a peer of the tenant.
    let welcome = |snapshot| {
        Down::Welcome(Welcome {
            tenant: "acme".into(),
            site: "hq".into(),
            host: "pbx-a".into(),
            snapshot,
        })
    };
    s.send(5, welcome(true)).await;
    s.send(
        5,
        Down::Bans(BanDelta {
            added: vec![
                Ban {
                    address: "203.0.113.7".into(),
                    reason: "scanner".into(),
                    origin: "acme/branch/pbx-b".into(),
                    expires_at: now_unix() + 600,
                    ..Ban::default()
                },
                // The controller's own address (an operator's slip).
                Ban {
                    address: "127.0.0.1".into(),
                    reason: "typo".into(),
                    origin: "acme/branch/pbx-b".into(),
                    ..Ban::default()
                },
            ],
            lifted: vec![],
            lifted_at: 0,
        }),
    )
    .await;
    s.send(
        5,
        Down::Trust(TrustDelta {
            added: vec![TrustedPeer {
                address: "198.51.100.20".into(),
                host: "acme/branch/pbx-b".into(),
            }],
            removed: vec![],
        }),
    )
    .await;
    eventually("shared ban in the kernel", Duration::from_secs(1), || {
        ns.set("ban_shared_v4").contains("203.0.113.7")
    })
    .await;
    let shared = ns.set("ban_shared_v4");
    assert!(
        shared.contains("shared: scanner from acme/branch/pbx-b"),
        "{shared}"
    );
    // Whatever is banned, the controller comes first: its set is accepted
    // with the management addresses.
    let controller = ns.set("controller_v4");
    assert!(controller.contains("127.0.0.1"), "{controller}");
    assert_eq!(
        palisade_agent::controller::addrs::known_controller_addresses(state.path()),
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    eventually("tenant peer in the kernel", Duration::from_secs(1), || {
        ns.set("tenant_peer_v4").contains("198.51.100.20")
    })
    .await;

    // The host's own ban goes up at once; one the controller shared does not.
    BanBook::new(state.path())
        .append(&[
            ban("192.0.2.51", "shared: scanner from acme/branch/pbx-b"),
            ban("192.0.2.50", "scanner"),
        ])
        .unwrap();
    let started = Instant::now();
    let Up::Ban(report) = s.next_but_heartbeats().await else {
        panic!("a ban report")
    };
    assert!(started.elapsed() < Duration::from_secs(1));
    let b = report.ban.unwrap();
    assert_eq!(
        (b.address.as_str(), b.reason.as_str()),
        ("192.0.2.50", "scanner")
    );
    assert_eq!(b.evidence, ["REGISTER from 192.0.2.50"], "evidence goes up");

    // The snapshot settles, the controller goes away: nothing is removed,
    // and the agent comes back saying where it is.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(s);
    let mut s = ctl.stream().await;
    assert!(ns.set("ban_shared_v4").contains("203.0.113.7"));
    assert!(ns.set("tenant_peer_v4").contains("198.51.100.20"));
    let Up::Hello(hello) = s.next().await else {
        panic!("hello first")
    };
    assert_eq!(hello.last_revision, 5, "resumes after what it applied");
    s.send(5, welcome(false)).await;
    s.send(
        6,
        Down::Bans(BanDelta {
            added: vec![],
            lifted: vec!["203.0.113.7".into()],
            lifted_at: now_unix(),
        }),
    )
    .await;
    eventually("the lift in the kernel", Duration::from_secs(1), || {
        !ns.set("ban_shared_v4").contains("203.0.113.7")
    })
    .await;

    // Someone empties the sets: the heartbeat notices and puts them back.
    let flushed = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "nft",
            "flush",
            "set",
            "inet",
            "palisade",
            "tenant_peer_v4",
        ])
        .status()
        .unwrap();
    assert!(flushed.success());
    eventually(
        "the peers back after a flush",
        Duration::from_secs(3),
        || ns.set("tenant_peer_v4").contains("198.51.100.20"),
    )
    .await;

    // A policy with confirm-or-rollback: confirmed by a fresh connection.
    let policy = "management = [\"192.0.2.99\"]\n";
    s.send(
        7,
        Down::Policy(PolicyUpdate {
            toml: policy.into(),
            confirm_within_secs: 10,
        }),
    )
    .await;
    let PolicyResult {
        revision,
        applied,
        error,
    } = s.policy_result().await;
    assert_eq!((revision, applied, error.as_str()), (7, true, ""));
    assert!(agent.state.pending().unwrap().is_none(), "confirmed");
    assert_eq!(agent.state.last_good().unwrap().as_deref(), Some(policy));
    assert!(sync::manages_policy(state.path()));

    // One that does not validate changes nothing and says why.
    s.send(
        8,
        Down::Policy(PolicyUpdate {
            toml: "management = [\"not an address\"]\n".into(),
            confirm_within_secs: 10,
        }),
    )
    .await;
    let r = s.policy_result().await;
    assert!(!r.applied && r.revision == 8, "{r:?}");
    assert!(r.error.contains("not an address"), "{}", r.error);
    assert_eq!(agent.state.last_good().unwrap().as_deref(), Some(policy));

    // One after which the controller cannot be reached again: rolled back
    // at its deadline, and the controller is told why.
    ctl.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    s.send(
        9,
        Down::Policy(PolicyUpdate {
            toml: "management = [\"192.0.2.98\"]\n".into(),
            confirm_within_secs: 2,
        }),
    )
    .await;
    let r = s.policy_result().await;
    assert!(!r.applied && r.revision == 9, "{r:?}");
    assert!(r.error.contains("rolled back"), "{}", r.error);
    assert!(agent.state.pending().unwrap().is_none());
    assert_eq!(
        agent.state.last_good().unwrap().as_deref(),
        Some(policy),
        "the previous policy is back"
    );
    let mgmt = ns.set("mgmt_v4");
    assert!(
        mgmt.contains("192.0.2.99") && !mgmt.contains("192.0.2.98"),
        "in the kernel too: {mgmt}"
    );

    // A question is answered from the policy in force and the kernel, and
    // moves no revision.
    for (id, address, port, decision, stage) in [
        (41, "192.0.2.99", "22/tcp", "allowed", "management"),
        (42, "198.51.100.20", "", "allowed", "trusted"),
    ] {
        s.send(
            0,
            Down::Explain(ExplainQuery {
                id,
                address: address.into(),
                port: port.into(),
            }),
        )
        .await;
        let a = loop {
            match s.next_but_heartbeats().await {
                Up::Explain(a) => break a,
                Up::Ban(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(a.id, id);
        assert_eq!(a.error, "", "{a:?}");
        let v = a.verdict.unwrap();
        assert_eq!(
            (v.decision.as_str(), v.stage.as_str()),
            (decision, stage),
            "{address}: {v:?}"
        );
        assert!(v.answered && !v.why.is_empty());
    }
    s.send(
        0,
        Down::Explain(ExplainQuery {
            id: 43,
            address: "not an address".into(),
            port: String::new(),
        }),
    )
    .await;
    let a = loop {
        if let Up::Explain(a) = s.next_but_heartbeats().await {
            break a;
        }
    };
    assert!(
        a.verdict.is_none() && a.error.contains("not an IP address"),
        "{a:?}"
    );

    // A lift made at the controller also ends the host's own ban, if it was
    // made before the lift; one made since stays.
    let book = BanBook::new(state.path());
    book.append(&[ban("192.0.2.52", "scanner")]).unwrap();
    s.send(
        10,
        Down::Bans(BanDelta {
            added: vec![],
            lifted: vec!["192.0.2.50".into(), "192.0.2.52".into()],
            lifted_at: now_unix() - 100,
        }),
    )
    .await;
    // ...192.0.2.50's ban was made in this test's first seconds, so it too is
    // younger than the lift: lift again with the time of now.
    s.send(
        11,
        Down::Bans(BanDelta {
            added: vec![],
            lifted: vec!["192.0.2.50".into()],
            lifted_at: now_unix() + 1,
        }),
    )
    .await;
    eventually("the own ban lifted", Duration::from_secs(2), || {
        let live = book.live(now_unix()).unwrap();
        !live.iter().any(|b| b.addr.to_string() == "192.0.2.50")
    })
    .await;
    let live = book.live(now_unix()).unwrap();
    assert!(
        live.iter().any(|b| b.addr.to_string() == "192.0.2.52"),
        "a ban made after the lift stays: {live:?}"
    );

    // Per-user rules from the controller take precedence over the host's.
    let mut users = std::collections::HashMap::new();
    users.insert(
        "300".to_string(),
        ServiceList {
            services: vec!["ucp".into(), "no-such-service".into()],
        },
    );
    s.send(12, Down::UserRules(UserRules { users })).await;
    eventually("the user rules stored", Duration::from_secs(2), || {
        sync::pushed_user_rules(state.path()).is_some()
    })
    .await;
    let effective = agent
        .effective(&palisade_model::parse_policy("[users]\n300 = [\"ssh\"]\n", "t.toml").unwrap())
        .unwrap();
    assert_eq!(
        effective.users["300"],
        ["ucp"],
        "the controller's, known services only"
    );

    // The policy that was rolled back, sent again as it is (a snapshot after
    // a compaction would): not applied again, and the controller is told.
    s.send(
        13,
        Down::Policy(PolicyUpdate {
            toml: "management = [\"192.0.2.98\"]\n".into(),
            confirm_within_secs: 2,
        }),
    )
    .await;
    let r = s.policy_result().await;
    assert!(!r.applied && r.revision == 13, "{r:?}");
    assert!(
        r.error.contains("rolled back on this host before"),
        "{}",
        r.error
    );
    assert!(agent.state.pending().unwrap().is_none(), "nothing applied");
    assert_eq!(agent.state.last_good().unwrap().as_deref(), Some(policy));
}
