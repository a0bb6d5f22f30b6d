//! What operators do beyond storing things, in process on real sockets:
//! `explain` across a tenant (connected hosts are asked, offline ones are
//! reported as such), the live event stream, lifts that reach the host that
//! proved the ban, and per-user rules checked before they are stored.

use std::time::Duration;

use palisade_controller::sandbox::{Sandbox, SimAgent};
use palisade_proto::v1 as pb;
use pb::agent_message::Body as Up;
use pb::controller_message::Body as Down;

const SECOND: Duration = Duration::from_secs(1);

/// Tenant t1 with two sites and tenant t2 with one, all connected.
async fn fleet() -> (Sandbox, SimAgent, SimAgent, SimAgent) {
    let sb = Sandbox::start().await.unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let b = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    let x = sb.enroll("t2", "hq", "pbx9").await.unwrap();
    let a = a.sync(0, &["198.51.100.1"]).await.unwrap();
    let b = b.sync(0, &["198.51.100.2"]).await.unwrap();
    let x = x.sync(0, &["198.51.100.9"]).await.unwrap();
    (sb, a, b, x)
}

/// Waits for an explain question and answers it with `decision`.
async fn answer(agent: &mut SimAgent, decision: &str, why: &str) -> pb::ExplainQuery {
    agent
        .wait_until(SECOND * 2, |s| !s.questions.is_empty())
        .await
        .unwrap();
    let q = agent.questions.remove(0);
    agent
        .send(Up::Explain(pb::ExplainAnswer {
            id: q.id,
            verdict: Some(pb::HostVerdict {
                allowed: decision == "allowed",
                why: why.into(),
                decision: decision.into(),
                stage: "ban".into(),
                answered: true,
                // What a host says about itself is overwritten by the controller.
                host: "t2/hq/pbx9".into(),
                ..Default::default()
            }),
            error: String::new(),
        }))
        .await
        .unwrap();
    q
}

#[tokio::test]
async fn explain_asks_every_host_of_the_tenant_and_reports_the_offline_ones() {
    let (sb, mut a, mut b, mut x) = fleet().await;
    a.report_ban("203.0.113.5", "scanner").await.unwrap();
    b.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.5"))
        .await
        .unwrap();

    let mut op = sb.operator();
    let call = tokio::spawn(async move {
        op.explain(pb::ExplainRequest {
            tenant: "t1".into(),
            address: "203.0.113.5".into(),
            port: "5060/udp".into(),
        })
        .await
    });
    let qa = answer(&mut a, "blocked", "in ban_v4 \"scanner\"").await;
    let qb = answer(&mut b, "blocked", "in ban_shared_v4").await;
    assert_eq!(
        (qa.address.as_str(), qa.port.as_str()),
        ("203.0.113.5", "5060/udp")
    );
    assert_ne!(qa.id, qb.id);
    let r = call.await.unwrap().unwrap().into_inner();
    assert_eq!(r.hosts.len(), 2, "{r:?}");
    let by = |h: &str| r.hosts.iter().find(|v| v.host == h).unwrap().clone();
    let (va, vb) = (by("t1/siteA/pbx1"), by("t1/siteB/pbx2"));
    assert!(va.answered && !va.allowed && va.decision == "blocked");
    assert_eq!(va.why, "in ban_v4 \"scanner\"");
    assert_eq!(vb.why, "in ban_shared_v4");
    assert_eq!(r.bans.len(), 1);
    assert_eq!(r.bans[0].origin, "t1/siteA/pbx1");
    assert_eq!(r.bans[0].evidence, ["sim evidence for 203.0.113.5"]);
    // Nobody asked the other tenant.
    x.drain(Duration::from_millis(200)).await.unwrap();
    assert!(x.questions.is_empty(), "{:?}", x.questions);

    // B goes offline and A does not answer: neither is reported as if it
    // had; what the controller knows is said instead.
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    let r = sb
        .operator()
        .explain(pb::ExplainRequest {
            tenant: "t1".into(),
            address: "203.0.113.5".into(),
            port: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let vb = r.hosts.iter().find(|v| v.host == "t1/siteB/pbx2").unwrap();
    assert!(!vb.answered && vb.decision == "unknown", "{vb:?}");
    assert!(
        vb.why.contains("offline") && vb.why.contains("shared ban (scanner, from t1/siteA/pbx1)"),
        "{}",
        vb.why
    );
    let va = r.hosts.iter().find(|v| v.host == "t1/siteA/pbx1").unwrap();
    assert!(
        !va.answered && va.why.contains("no answer in time"),
        "{va:?}"
    );

    // An address of the tenant's own host is named as such.
    let r = sb
        .operator()
        .explain(pb::ExplainRequest {
            tenant: "t1".into(),
            address: "198.51.100.2".into(),
            port: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.peer_of, "t1/siteB/pbx2");

    // Bad input is refused, naming what was wrong.
    let mut op = sb.operator();
    for (addr, port, says) in [
        ("nope", "", "not an IP address"),
        ("192.0.2.1", "5060/sctp", "port"),
    ] {
        let st = op
            .explain(pb::ExplainRequest {
                tenant: "t1".into(),
                address: addr.into(),
                port: port.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert!(st.message().contains(says), "{}", st.message());
    }
    let st = op
        .explain(pb::ExplainRequest {
            tenant: "nobody".into(),
            address: "192.0.2.1".into(),
            port: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_host_cannot_answer_a_question_asked_of_another() {
    let (sb, mut a, b, _x) = fleet().await;
    let mut op = sb.operator();
    let call = tokio::spawn(async move {
        op.explain(pb::ExplainRequest {
            tenant: "t1".into(),
            address: "192.0.2.44".into(),
            port: String::new(),
        })
        .await
    });
    a.wait_until(SECOND * 2, |s| !s.questions.is_empty())
        .await
        .unwrap();
    let q = a.questions.remove(0);
    // B answers A's question (and never its own).
    b.send(Up::Explain(pb::ExplainAnswer {
        id: q.id,
        verdict: Some(pb::HostVerdict {
            decision: "allowed".into(),
            allowed: true,
            ..Default::default()
        }),
        error: String::new(),
    }))
    .await
    .unwrap();
    let r = call.await.unwrap().unwrap().into_inner();
    assert!(
        r.hosts.iter().all(|h| !h.answered && !h.allowed),
        "{:?}",
        r.hosts
    );
}

async fn next(events: &mut tonic::Streaming<pb::AgentEvent>) -> pb::AgentEvent {
    tokio::time::timeout(SECOND * 2, events.message())
        .await
        .expect("an event within 2 s")
        .unwrap()
        .expect("the stream stays open")
}

#[tokio::test]
async fn operators_watch_the_tenants_events_live() {
    let (sb, a, mut b, x) = fleet().await;
    let mut events = sb
        .operator()
        .events(pb::ScopeRef {
            tenant: "t1".into(),
            site: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The stream is open once the call returned; what happens from now on
    // is seen, in order, and the other tenant's events are not.
    x.report_ban("203.0.113.99", "scanner").await.unwrap();
    a.report_ban("203.0.113.7", "password-guessing")
        .await
        .unwrap();
    let e = next(&mut events).await;
    assert_eq!(
        (
            e.kind.as_str(),
            e.address.as_str(),
            e.host.as_str(),
            e.tenant.as_str()
        ),
        ("ban", "203.0.113.7", "t1/siteA/pbx1", "t1")
    );
    assert!(e.summary.starts_with("password-guessing"), "{}", e.summary);
    assert_eq!(e.evidence, ["sim evidence for 203.0.113.7"]);

    // An agent's own event: who it is comes from its certificate.
    b.send(Up::Event(pb::AgentEvent {
        at: 1,
        kind: "known-good".into(),
        address: "192.0.2.10".into(),
        summary: "301 registered".into(),
        host: "t2/hq/pbx9".into(),
        tenant: "t2".into(),
        evidence: vec![],
    }))
    .await
    .unwrap();
    let e = next(&mut events).await;
    assert_eq!(
        (e.kind.as_str(), e.host.as_str(), e.tenant.as_str()),
        ("known-good", "t1/siteB/pbx2", "t1")
    );

    sb.operator()
        .lift_ban(pb::LiftBanRequest {
            tenant: "t1".into(),
            address: "203.0.113.7".into(),
        })
        .await
        .unwrap();
    let e = next(&mut events).await;
    assert_eq!(
        (e.kind.as_str(), e.address.as_str()),
        ("lift", "203.0.113.7")
    );

    drop(a);
    let e = next(&mut events).await;
    assert_eq!(
        (e.kind.as_str(), e.host.as_str()),
        ("offline", "t1/siteA/pbx1")
    );
    b.drain(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn a_lift_reaches_every_host_including_the_one_that_proved_the_ban() {
    let (sb, mut a, mut b, mut x) = fleet().await;
    a.report_ban("203.0.113.8", "scanner").await.unwrap();
    b.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.8"))
        .await
        .unwrap();
    let before = a.log.len();
    sb.operator()
        .lift_ban(pb::LiftBanRequest {
            tenant: "t1".into(),
            address: "203.0.113.8".into(),
        })
        .await
        .unwrap();
    b.wait_until(SECOND, |s| !s.bans.contains_key("203.0.113.8"))
        .await
        .unwrap();
    // The origin is told too (its own ban is its to end), with the lift's time.
    a.wait_until(SECOND, |s| {
        s.log[before..].iter().any(|m| {
            matches!(&m.body, Some(Down::Bans(d))
                if d.lifted == ["203.0.113.8"] && d.lifted_at > 0)
        })
    })
    .await
    .unwrap();
    x.drain(Duration::from_millis(200)).await.unwrap();
    assert!(
        !x.log
            .iter()
            .any(|m| matches!(&m.body, Some(Down::Bans(d)) if !d.lifted.is_empty())),
        "a lift crossed tenants"
    );
}

#[tokio::test]
async fn user_rules_are_checked_against_the_catalogue_and_read_back() {
    let (sb, mut a, _b, _x) = fleet().await;
    let mut op = sb.operator();
    let rules = |pairs: &[(&str, &[&str])]| pb::UserRulesRequest {
        tenant: "t1".into(),
        rules: Some(pb::UserRules {
            users: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        pb::ServiceList {
                            services: v.iter().map(|s| s.to_string()).collect(),
                        },
                    )
                })
                .collect(),
        }),
    };
    op.set_user_rules(rules(&[("300", &["ucp"]), ("333", &["ssh", "admin"])]))
        .await
        .unwrap();
    a.wait_until(SECOND, |s| s.user_rules.is_some())
        .await
        .unwrap();
    let revision = a.revision;

    for (bad, says) in [
        (
            rules(&[("301", &["ucp", "telnet"])]),
            "unknown service \"telnet\"",
        ),
        (rules(&[("30 1", &["ucp"])]), "is not an extension"),
    ] {
        let st = op.set_user_rules(bad).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert!(st.message().contains(says), "{}", st.message());
    }
    // Nothing changed, nothing was pushed; the refusals are audited.
    let got = op
        .get_user_rules(pb::ScopeRef {
            tenant: "t1".into(),
            site: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.users.len(), 2);
    assert_eq!(got.users["333"].services, ["ssh", "admin"]);
    a.drain(Duration::from_millis(200)).await.unwrap();
    assert_eq!(a.revision, revision);
    let audit = op
        .audit(pb::AuditRequest {
            tenant: "t1".into(),
            limit: 20,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "user_rules.set" && e.refused)
            .count(),
        2,
        "{audit:?}"
    );

    // A service defined by one of the tenant's stored policies is known.
    op.set_policy(pb::PolicyDocument {
        tenant: "t1".into(),
        site: "siteA".into(),
        toml: "[[services]]\nname = \"fax\"\nports = [\"4000/tcp\"]\n".into(),
        revision: 0,
    })
    .await
    .unwrap();
    op.set_user_rules(rules(&[("301", &["fax"])]))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_operator_of_one_tenant_sees_and_acts_on_that_tenant_only() {
    use palisade_controller::client::{self, OperatorAuth};
    use palisade_controller::identity::OperatorId;
    let (sb, _a, _b, _x) = fleet().await;
    let bundle = sb
        .operator_bundle_for(&OperatorId::of_tenant("carol", "t1"))
        .unwrap();
    let mut carol = client::operator(sb.url(), OperatorAuth::Bundle(bundle))
        .await
        .unwrap();

    let tenants = carol
        .list_tenants(pb::ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(
        tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["t1"]
    );
    let hosts = carol
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 2);
    assert!(hosts.iter().all(|h| h.tenant == "t1"));

    // Its own tenant: as any operator.
    carol
        .add_ban(pb::AddBanRequest {
            tenant: "t1".into(),
            ban: Some(pb::Ban {
                address: "203.0.113.30".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // Another tenant: refused, whatever the call, and nothing changes there.
    let t2 = || pb::ScopeRef {
        tenant: "t2".into(),
        site: String::new(),
    };
    let refusals = [
        carol.list_bans(t2()).await.unwrap_err(),
        carol.get_user_rules(t2()).await.unwrap_err(),
        carol
            .add_ban(pb::AddBanRequest {
                tenant: "t2".into(),
                ban: Some(pb::Ban {
                    address: "203.0.113.31".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err(),
        carol
            .create_token(pb::CreateTokenRequest {
                tenant: "t2".into(),
                site: "hq".into(),
                valid_secs: 0,
            })
            .await
            .unwrap_err(),
        carol
            .create_token(pb::CreateTokenRequest {
                tenant: "t3".into(),
                site: "hq".into(),
                valid_secs: 0,
            })
            .await
            .unwrap_err(),
        carol
            .revoke_host(pb::HostRef {
                tenant: "t2".into(),
                site: "hq".into(),
                host: "pbx9".into(),
            })
            .await
            .unwrap_err(),
        carol
            .explain(pb::ExplainRequest {
                tenant: "t2".into(),
                address: "192.0.2.1".into(),
                port: String::new(),
            })
            .await
            .unwrap_err(),
        carol.events(t2()).await.unwrap_err(),
    ];
    for st in &refusals {
        assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
        assert!(
            st.message()
                .contains("operator t1/carol may act on tenant \"t1\" only"),
            "{}",
            st.message()
        );
    }
    let mut op = sb.operator();
    let all = op
        .list_tenants(pb::ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(all.len(), 2, "a refused token made no tenant: {all:?}");
    let t2_bans = op.list_bans(t2()).await.unwrap().into_inner().bans;
    assert!(t2_bans.is_empty(), "{t2_bans:?}");
    let hosts = op
        .list_hosts(pb::ListHostsRequest {
            tenant: "t2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert!(hosts.iter().all(|h| !h.revoked));
    // The refusals are in t2's audit trail, which carol cannot read.
    let audit = op
        .audit(pb::AuditRequest {
            tenant: "t2".into(),
            limit: 50,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        audit
            .iter()
            .filter(|e| e.refused && e.actor == "operator:t1/carol")
            .count()
            >= 6,
        "{audit:?}"
    );
    let own = carol
        .audit(pb::AuditRequest {
            tenant: String::new(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(own
        .iter()
        .any(|e| e.action == "ban.add" && e.actor == "operator:t1/carol"));
    assert!(
        !own.iter().any(|e| e.detail.contains("pbx9")),
        "another tenant's audit leaked: {own:?}"
    );
}

#[tokio::test]
async fn the_controller_and_the_tenants_hosts_are_never_banned() {
    // The controller is also known as 192.0.2.200 (a second name of its
    // certificate, as behind a NAT).
    let sb = Sandbox::start_with(|o| o.names = vec!["127.0.0.1".into(), "192.0.2.200".into()])
        .await
        .unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let b = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    let a = a.sync(0, &["198.51.100.1"]).await.unwrap();
    let mut b = b.sync(0, &["198.51.100.2"]).await.unwrap();
    let mut op = sb.operator();
    let ban = |address: &str| pb::AddBanRequest {
        tenant: "t1".into(),
        ban: Some(pb::Ban {
            address: address.into(),
            ..Default::default()
        }),
    };
    for (target, says) in [
        ("192.0.2.200", "the controller's own address 192.0.2.200"),
        ("192.0.2.0/24", "the controller's own address 192.0.2.200"),
        (
            "198.51.100.1",
            "an address of the tenant's host t1/siteA/pbx1",
        ),
        ("198.51.100.0/24", "an address of the tenant's host"),
    ] {
        let st = op.add_ban(ban(target)).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{target}");
        assert!(st.message().contains(says), "{target}: {}", st.message());
    }
    // An agent's report of the same is not shared either.
    a.report_ban("192.0.2.200", "scanner").await.unwrap();
    a.report_ban("203.0.113.77", "scanner").await.unwrap();
    b.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.77"))
        .await
        .unwrap();
    assert!(!b.bans.contains_key("192.0.2.200"), "{:?}", b.bans);
    let stored = sb.bans("t1").await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
}
