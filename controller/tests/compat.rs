//! A newer controller serves an older agent. The "older agent" here speaks
//! the first cut of protocol 1, written out by hand below: Hello, ban
//! reports and heartbeats up; Welcome, ban and trust deltas down. It knows
//! nothing of what was added since (events, policy results, explain, pushed
//! policy, per-user rules, lifts' `lifted_at`, bans' evidence), exactly as
//! an agent built from that `.proto` would not. Over real mutual TLS
//! against the in-process controller, it must still be welcomed, get and
//! give bans, keep its stream through messages it cannot read, and resume
//! from its revision.

use std::time::Duration;

use palisade_controller::client;
use palisade_controller::sandbox::{AgentCreds, Sandbox};
use palisade_controller::store::now_secs;
use palisade_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Streaming;

const SECOND: Duration = Duration::from_secs(1);

/// The messages of protocol 1's first cut, with only the fields it had.
mod old {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AgentMessage {
        #[prost(oneof = "agent_message::Body", tags = "1, 2, 3")]
        pub body: Option<agent_message::Body>,
    }

    pub mod agent_message {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Body {
            #[prost(message, tag = "1")]
            Hello(super::Hello),
            #[prost(message, tag = "2")]
            Ban(super::BanReport),
            #[prost(message, tag = "3")]
            Heartbeat(super::Heartbeat),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Hello {
        #[prost(uint32, tag = "1")]
        pub protocol_version: u32,
        #[prost(string, tag = "2")]
        pub agent_version: String,
        #[prost(uint64, tag = "3")]
        pub last_revision: u64,
        #[prost(string, repeated, tag = "4")]
        pub addresses: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BanReport {
        #[prost(message, optional, tag = "1")]
        pub ban: Option<Ban>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ban {
        #[prost(string, tag = "1")]
        pub address: String,
        #[prost(string, tag = "2")]
        pub reason: String,
        #[prost(uint64, tag = "5")]
        pub banned_at: u64,
        #[prost(uint64, tag = "6")]
        pub expires_at: u64,
        #[prost(string, tag = "7")]
        pub origin: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Heartbeat {
        #[prost(uint64, tag = "1")]
        pub at: u64,
        #[prost(string, repeated, tag = "2")]
        pub addresses: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ControllerMessage {
        #[prost(uint64, tag = "1")]
        pub revision: u64,
        #[prost(oneof = "controller_message::Body", tags = "2, 3, 4")]
        pub body: Option<controller_message::Body>,
    }

    pub mod controller_message {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Body {
            #[prost(message, tag = "2")]
            Welcome(super::Welcome),
            #[prost(message, tag = "3")]
            Bans(super::BanDelta),
            #[prost(message, tag = "4")]
            Trust(super::TrustDelta),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Welcome {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub site: String,
        #[prost(string, tag = "3")]
        pub host: String,
        #[prost(bool, tag = "4")]
        pub snapshot: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BanDelta {
        #[prost(message, repeated, tag = "1")]
        pub added: Vec<Ban>,
        #[prost(string, repeated, tag = "2")]
        pub lifted: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrustDelta {
        #[prost(message, repeated, tag = "1")]
        pub added: Vec<TrustedPeer>,
        #[prost(string, repeated, tag = "2")]
        pub removed: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrustedPeer {
        #[prost(string, tag = "1")]
        pub address: String,
        #[prost(string, tag = "2")]
        pub host: String,
    }
}

use old::agent_message::Body as OldUp;
use old::controller_message::Body as OldDown;

/// An agent of the first cut: its Sync stream and what it has applied.
struct OldAgent {
    up: mpsc::Sender<old::AgentMessage>,
    down: Streaming<old::ControllerMessage>,
    welcome: old::Welcome,
    revision: u64,
    bans: Vec<String>,
    lifted: Vec<String>,
    peers: Vec<String>,
    /// Messages it could not read (a body of a kind added after it).
    unreadable: usize,
}

impl OldAgent {
    async fn connect(creds: &AgentCreds, last_revision: u64, address: &str) -> OldAgent {
        let ch = client::channel(
            &creds.url,
            &creds.ca_pem,
            Some((&creds.cert_pem, &creds.key_pem)),
        )
        .await
        .unwrap();
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        let (up, rx) = mpsc::channel(16);
        up.send(old::AgentMessage {
            body: Some(OldUp::Hello(old::Hello {
                protocol_version: 1,
                agent_version: "0.0.1-first-cut".into(),
                last_revision,
                addresses: vec![address.into()],
            })),
        })
        .await
        .unwrap();
        let codec = tonic_prost::ProstCodec::<old::AgentMessage, old::ControllerMessage>::default();
        let mut down = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static("/palisade.v1.AgentService/Sync"),
                codec,
            )
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(5 * SECOND, down.message())
            .await
            .expect("a Welcome within 5 s")
            .unwrap()
            .expect("the stream is open");
        let Some(OldDown::Welcome(welcome)) = first.body else {
            panic!("expected a Welcome, got {first:?}");
        };
        OldAgent {
            up,
            down,
            welcome,
            revision: first.revision,
            bans: vec![],
            lifted: vec![],
            peers: vec![],
            unreadable: 0,
        }
    }

    /// Reads until `done` holds (or fails after `within`); the stream must
    /// stay open all along.
    async fn until(&mut self, within: Duration, done: impl Fn(&OldAgent) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            let m = tokio::time::timeout_at(deadline, self.down.message())
                .await
                .unwrap_or_else(|_| panic!("not within {within:?}: {:?}", self.state()))
                .expect("the controller ended the old agent's stream")
                .expect("the stream is open");
            match m.body {
                Some(OldDown::Welcome(_)) => panic!("a second Welcome"),
                Some(OldDown::Bans(d)) => {
                    self.bans.extend(d.added.into_iter().map(|b| b.address));
                    self.lifted.extend(d.lifted);
                }
                Some(OldDown::Trust(d)) => {
                    self.peers.extend(d.added.into_iter().map(|p| p.address));
                    self.peers.retain(|p| !d.removed.contains(p));
                }
                None => self.unreadable += 1,
            }
            // A question (revision 0) leaves the revision where it is.
            self.revision = self.revision.max(m.revision);
        }
    }

    fn state(&self) -> (u64, &[String], &[String], &[String], usize) {
        (
            self.revision,
            &self.bans,
            &self.lifted,
            &self.peers,
            self.unreadable,
        )
    }

    async fn send(&self, body: OldUp) {
        self.up
            .send(old::AgentMessage { body: Some(body) })
            .await
            .expect("the stream is open");
    }
}

#[tokio::test]
async fn a_newer_controller_serves_an_agent_of_the_first_cut() {
    let sb = Sandbox::start().await.unwrap();
    let mut op = sb.operator();
    let new = sb.enroll("t1", "hq", "pbx1").await.unwrap();
    let old_creds = sb.enroll("t1", "branch", "pbx2").await.unwrap();
    let mut new = new.sync(0, &["198.51.100.1"]).await.unwrap();
    let mut old = OldAgent::connect(&old_creds, 0, "198.51.100.2").await;
    assert_eq!(
        (
            old.welcome.tenant.as_str(),
            old.welcome.site.as_str(),
            old.welcome.host.as_str()
        ),
        ("t1", "branch", "pbx2")
    );
    assert!(old.welcome.snapshot);

    // Trust both ways.
    old.until(SECOND, |o| o.peers.contains(&"198.51.100.1".to_string()))
        .await;
    new.wait_until(SECOND, |s| s.peers.contains_key("198.51.100.2"))
        .await
        .unwrap();

    // Bans both ways, within the fan-out budget.
    new.report_ban("203.0.113.1", "scanner").await.unwrap();
    old.until(SECOND, |o| o.bans.contains(&"203.0.113.1".to_string()))
        .await;
    old.send(OldUp::Ban(old::BanReport {
        ban: Some(old::Ban {
            address: "203.0.113.2".into(),
            reason: "password-guessing".into(),
            banned_at: now_secs(),
            expires_at: now_secs() + 3600,
            origin: String::new(),
        }),
    }))
    .await;
    new.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.2"))
        .await
        .unwrap();
    let listed = sb.bans("t1").await.unwrap();
    let theirs = listed
        .iter()
        .find(|b| b.address == "203.0.113.2")
        .expect("the old agent's ban is stored");
    assert_eq!(theirs.origin, "t1/branch/pbx2");
    assert_eq!(theirs.reason, "password-guessing");

    // What it cannot read: a policy for its site, per-user rules, a
    // question. Its stream stays open through them, and the question is
    // answered for it ("did not answer"), not waited on for ever.
    op.set_policy(pb::PolicyDocument {
        tenant: "t1".into(),
        site: "branch".into(),
        toml: "management = [\"192.0.2.10\"]\n".into(),
        revision: 0,
    })
    .await
    .unwrap();
    let mut rules = pb::UserRules::default();
    rules.users.insert(
        "300".into(),
        pb::ServiceList {
            services: vec!["ucp".into()],
        },
    );
    op.set_user_rules(pb::UserRulesRequest {
        tenant: "t1".into(),
        rules: Some(rules),
    })
    .await
    .unwrap();
    old.until(5 * SECOND, |o| o.unreadable >= 2).await;
    let asked = tokio::time::Instant::now();
    let explain = tokio::spawn({
        let mut op = op.clone();
        async move {
            op.explain(pb::ExplainRequest {
                tenant: "t1".into(),
                address: "203.0.113.1".into(),
                port: "5060/udp".into(),
            })
            .await
        }
    });
    old.until(5 * SECOND, |o| o.unreadable >= 3).await;
    // The newer agent (the sandbox's) answers nothing either: only the
    // controller's side is under test.
    let verdicts = explain.await.unwrap().unwrap().into_inner().hosts;
    eprintln!("explain with an old agent: {:?}", asked.elapsed());
    let v = verdicts
        .iter()
        .find(|v| v.host == "t1/branch/pbx2")
        .expect("the old agent is listed");
    assert!(!v.answered && v.decision == "unknown", "{v:?}");

    // Still served: a lift reaches it, and the revision it reached is one
    // it resumes from, with no snapshot.
    op.lift_ban(pb::LiftBanRequest {
        tenant: "t1".into(),
        address: "203.0.113.1".into(),
    })
    .await
    .unwrap();
    old.until(SECOND, |o| o.lifted.contains(&"203.0.113.1".to_string()))
        .await;
    let reached = old.revision;
    drop(old);
    new.report_ban("203.0.113.3", "scanner").await.unwrap();
    // Missed while it was away (stored: the controller acknowledges nothing
    // it has not flushed).
    let stored = tokio::time::Instant::now() + SECOND;
    while !sb
        .bans("t1")
        .await
        .unwrap()
        .iter()
        .any(|b| b.address == "203.0.113.3")
    {
        assert!(
            tokio::time::Instant::now() < stored,
            "the ban was not stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut old = OldAgent::connect(&old_creds, reached, "198.51.100.2").await;
    assert!(!old.welcome.snapshot, "resumed from revision {reached}");
    old.until(SECOND, |o| o.bans.contains(&"203.0.113.3".to_string()))
        .await;
    assert!(
        !old.bans.contains(&"203.0.113.1".to_string()),
        "only what it missed: {:?}",
        old.state()
    );
}
