//! The fleet end to end, in process: a real controller (TLS, sled in a temp
//! dir) and simulated agents that enrol with tokens and sync over mutual TLS.

use std::time::{Duration, Instant};

use palisade_controller::sandbox::{AgentCreds, Sandbox, SimAgent};
use palisade_proto::v1 as pb;
use pb::controller_message::Body as Down;

const SECOND: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(300);

/// Two tenants × two sites, one host each, all connected.
struct Fleet {
    sb: Sandbox,
    t1a: SimAgent,
    t1b: SimAgent,
    t2a: SimAgent,
    t2b: SimAgent,
}

async fn fleet() -> Fleet {
    let sb = Sandbox::start().await.unwrap();
    let mk = |t: &'static str, s: &'static str, h: &'static str| {
        let sb = &sb;
        async move { sb.enroll(t, s, h).await.unwrap() }
    };
    let (c1, c2, c3, c4) = (
        mk("t1", "siteA", "pbx1").await,
        mk("t1", "siteB", "pbx2").await,
        mk("t2", "siteA", "pbx3").await,
        mk("t2", "siteB", "pbx4").await,
    );
    Fleet {
        t1a: c1.sync(0, &["198.51.100.1"]).await.unwrap(),
        t1b: c2.sync(0, &["198.51.100.2"]).await.unwrap(),
        t2a: c3.sync(0, &["198.51.100.3"]).await.unwrap(),
        t2b: c4.sync(0, &["198.51.100.4"]).await.unwrap(),
        sb,
    }
}

fn bans_in(msgs: &[pb::ControllerMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            Some(Down::Bans(d)) => Some(d.added.iter().map(|b| b.address.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test]
async fn a_ban_reaches_the_tenants_other_site_within_a_second_and_no_other_tenant() {
    let mut f = fleet().await;
    for s in [&f.t1a, &f.t1b, &f.t2a, &f.t2b] {
        assert!(s.welcome.snapshot);
    }
    assert_eq!(f.t1a.welcome.tenant, "t1");
    assert_eq!(f.t1a.welcome.site, "siteA");
    assert_eq!(f.t1a.welcome.host, "pbx1");

    let t0 = Instant::now();
    f.t1a.report_ban("203.0.113.9", "scanner").await.unwrap();
    f.t1b
        .wait_until(SECOND, |s| s.bans.contains_key("203.0.113.9"))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(took < SECOND, "{took:?}");
    let ban = &f.t1b.bans["203.0.113.9"];
    assert_eq!(ban.origin, "t1/siteA/pbx1");
    assert_eq!(ban.reason, "scanner");
    assert_eq!(ban.evidence, ["sim evidence for 203.0.113.9"]);

    // Not echoed to its origin, never to the other tenant.
    assert!(bans_in(&f.t1a.drain(QUIET).await.unwrap()).is_empty());
    assert!(bans_in(&f.t2a.drain(QUIET).await.unwrap()).is_empty());
    assert!(bans_in(&f.t2b.drain(QUIET).await.unwrap()).is_empty());
    assert!(f.t2a.bans.is_empty() && f.t2b.bans.is_empty());

    // And the other way round.
    f.t2b
        .report_ban("203.0.113.77", "password-guessing")
        .await
        .unwrap();
    f.t2a
        .wait_until(SECOND, |s| s.bans.contains_key("203.0.113.77"))
        .await
        .unwrap();
    assert!(bans_in(&f.t1a.drain(QUIET).await.unwrap()).is_empty());
    assert!(bans_in(&f.t1b.drain(QUIET).await.unwrap()).is_empty());

    // The operator sees it, with its origin, and the audit trail has it.
    let mut op = f.sb.operator();
    let bans = f.sb.bans("t1").await.unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].origin, "t1/siteA/pbx1");
    let audit = op
        .audit(pb::AuditRequest {
            tenant: "t1".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        audit.iter().any(|e| e.action == "ban.add"
            && e.actor == "agent:t1/siteA/pbx1"
            && e.detail.contains("203.0.113.9")),
        "{audit:?}"
    );

    // Operator bans fan out to every host of the tenant, lifts too.
    op.add_ban(pb::AddBanRequest {
        tenant: "t1".into(),
        ban: Some(pb::Ban {
            address: "192.0.2.0/24".into(),
            reason: "manual".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    for s in [&mut f.t1a, &mut f.t1b] {
        s.wait_until(SECOND, |s| {
            s.bans
                .get("192.0.2.0/24")
                .is_some_and(|b| b.origin == "operator:sandbox")
        })
        .await
        .unwrap();
    }
    op.lift_ban(pb::LiftBanRequest {
        tenant: "t1".into(),
        address: "203.0.113.9".into(),
    })
    .await
    .unwrap();
    f.t1b
        .wait_until(SECOND, |s| !s.bans.contains_key("203.0.113.9"))
        .await
        .unwrap();
    assert!(bans_in(&f.t2a.drain(QUIET).await.unwrap()).is_empty());

    // Hosts: connected, seen, addresses.
    let hosts = op
        .list_hosts(pb::ListHostsRequest {
            tenant: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 2);
    assert!(hosts
        .iter()
        .all(|h| h.connected && h.last_seen > 0 && h.agent_version == "sim"));
    assert_eq!(hosts[0].addresses, ["198.51.100.1"]);
    let tenants = op
        .list_tenants(pb::ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(tenants.len(), 2);
    assert_eq!(tenants[0].sites, ["siteA", "siteB"]);
}

#[tokio::test]
async fn host_addresses_are_trusted_at_the_other_sites_and_follow_changes() {
    let mut f = fleet().await;
    // Site B's address reached site A (in A's snapshot, or right after when
    // B connected later).
    f.t1a
        .wait_until(SECOND, |s| {
            s.peers.get("198.51.100.2").map(String::as_str) == Some("t1/siteB/pbx2")
        })
        .await
        .unwrap();
    f.t1b
        .wait_until(SECOND, |s| s.peers.contains_key("198.51.100.1"))
        .await
        .unwrap();
    // Own addresses are not "peers"; other tenants' never.
    assert!(!f.t1a.peers.contains_key("198.51.100.1"));
    f.t2a
        .wait_until(SECOND, |s| s.peers.contains_key("198.51.100.4"))
        .await
        .unwrap();
    assert!(!f.t2a.peers.contains_key("198.51.100.2"));

    // Site B's address changes (a heartbeat): followed within a second.
    let t0 = Instant::now();
    f.t1b
        .heartbeat(&["198.51.100.22", "2001:db8::22"])
        .await
        .unwrap();
    f.t1a
        .wait_until(SECOND, |s| {
            s.peers.contains_key("198.51.100.22")
                && s.peers.contains_key("2001:db8::22")
                && !s.peers.contains_key("198.51.100.2")
        })
        .await
        .unwrap();
    assert!(t0.elapsed() < SECOND);
    let delta = f
        .t1a
        .log
        .iter()
        .rev()
        .find_map(|m| match &m.body {
            Some(Down::Trust(t)) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(delta.removed, ["198.51.100.2"]);
    assert_eq!(delta.added.len(), 2);
    assert!(delta.added.iter().all(|p| p.host == "t1/siteB/pbx2"));

    // A new Hello (reconnect with other addresses) is followed too.
    let creds = f.t1b.creds.clone();
    let rev = f.t1b.revision;
    drop(f.t1b);
    let _again = creds.sync(rev, &["198.51.100.23"]).await.unwrap();
    f.t1a
        .wait_until(SECOND, |s| {
            s.peers.contains_key("198.51.100.23") && !s.peers.contains_key("198.51.100.22")
        })
        .await
        .unwrap();
    // Nothing of it at the other tenant.
    let other = f.t2a.drain(QUIET).await.unwrap();
    assert!(
        other
            .iter()
            .all(|m| !matches!(&m.body, Some(Down::Trust(_)))),
        "{other:?}"
    );
}

#[tokio::test]
async fn a_reconnecting_agent_gets_exactly_what_it_missed() {
    let sb = Sandbox::start().await.unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let b = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    let sa = a.sync(0, &["198.51.100.1"]).await.unwrap();
    let mut sbb = b.sync(0, &["198.51.100.2"]).await.unwrap();
    sa.report_ban("203.0.113.1", "scanner").await.unwrap();
    sbb.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.1"))
        .await
        .unwrap();
    sbb.drain(QUIET).await.unwrap();
    let seen = sbb.revision;
    let before = sbb.bans.clone();
    drop(sbb);

    // While B is away: three bans, a lift, an operator ban.
    for i in 2..=4 {
        sa.report_ban(&format!("203.0.113.{i}"), "scanner")
            .await
            .unwrap();
    }
    let mut op = sb.operator();
    let store = sb.store();
    // Reports are processed in order; wait until the last is stored.
    let deadline = Instant::now() + SECOND;
    while store.bans("t1").unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "bans not stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    op.lift_ban(pb::LiftBanRequest {
        tenant: "t1".into(),
        address: "203.0.113.2".into(),
    })
    .await
    .unwrap();
    op.add_ban(pb::AddBanRequest {
        tenant: "t1".into(),
        ban: Some(pb::Ban {
            address: "203.0.113.50".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();

    let mut back = b.sync(seen, &["198.51.100.2"]).await.unwrap();
    assert!(!back.welcome.snapshot, "deltas, not a snapshot");
    back.bans = before;
    let got = back.drain(QUIET).await.unwrap();
    let revisions: Vec<u64> = got.iter().map(|m| m.revision).collect();
    assert_eq!(
        revisions,
        [seen + 1, seen + 2, seen + 3, seen + 4, seen + 5],
        "{got:?}"
    );
    let mut added = vec![];
    let mut lifted = vec![];
    for m in &got {
        match &m.body {
            Some(Down::Bans(d)) => {
                added.extend(d.added.iter().map(|b| b.address.clone()));
                lifted.extend(d.lifted.iter().cloned());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        added,
        ["203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.50"]
    );
    assert_eq!(lifted, ["203.0.113.2"]);
    let now: Vec<&String> = back.bans.keys().collect();
    assert_eq!(
        now,
        ["203.0.113.1", "203.0.113.3", "203.0.113.4", "203.0.113.50"]
    );

    // Up to date: a reconnect brings nothing.
    let rev = back.revision;
    drop(back);
    let mut again = b.sync(rev, &["198.51.100.2"]).await.unwrap();
    assert!(!again.welcome.snapshot);
    assert!(again.drain(QUIET).await.unwrap().is_empty());

    // A revision the controller never had (another controller's): a snapshot.
    drop(again);
    let mut lost = b.sync(rev + 1000, &["198.51.100.2"]).await.unwrap();
    assert!(lost.welcome.snapshot);
    lost.drain(QUIET).await.unwrap();
    assert_eq!(lost.bans.len(), 4);
}

#[tokio::test]
async fn an_agent_behind_the_compacted_log_gets_a_snapshot() {
    let sb = Sandbox::start().await.unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let b = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    let sa = a.sync(0, &["198.51.100.1"]).await.unwrap();
    let mut sbb = b.sync(0, &[]).await.unwrap();
    sbb.drain(QUIET).await.unwrap();
    let seen = sbb.revision;
    drop(sbb);
    for i in 1..=10 {
        sa.report_ban(&format!("203.0.113.{i}"), "scanner")
            .await
            .unwrap();
    }
    let store = sb.store();
    let deadline = Instant::now() + SECOND;
    while store.bans("t1").unwrap().len() < 10 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.compact("t1", 3).unwrap();
    let mut back = b.sync(seen, &[]).await.unwrap();
    assert!(back.welcome.snapshot);
    back.drain(QUIET).await.unwrap();
    assert_eq!(back.bans.len(), 10);
    assert_eq!(
        back.peers.get("198.51.100.1").map(String::as_str),
        Some("t1/siteA/pbx1")
    );
}

#[tokio::test]
async fn a_restart_keeps_every_acknowledged_ban_and_revision() {
    let mut sb = Sandbox::start().await.unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let b = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    let mut sa = a.sync(0, &["198.51.100.1"]).await.unwrap();
    let mut sbb = b.sync(0, &["198.51.100.2"]).await.unwrap();
    let mut op = sb.operator();
    // Operator bans: acknowledged by the reply.
    for i in 1..=20 {
        op.add_ban(pb::AddBanRequest {
            tenant: "t1".into(),
            ban: Some(pb::Ban {
                address: format!("192.0.2.{i}"),
                reason: "manual".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
    // An agent's ban: acknowledged when another host has it (stored and
    // flushed before the fan-out).
    sa.report_ban("203.0.113.5", "scanner").await.unwrap();
    sbb.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.5"))
        .await
        .unwrap();
    sbb.drain(QUIET).await.unwrap();
    sa.drain(QUIET).await.unwrap();
    let store = sb.store();
    let counts = store.counts().unwrap();
    let revision = store.tenant("t1").unwrap().unwrap().revision;
    let b_rev = sbb.revision;
    drop(store);

    sb.restart().await.unwrap();
    // The agents' streams were cut.
    assert!(sa.ended(SECOND).await.is_some());

    let store = sb.store();
    assert_eq!(
        store.counts().unwrap().without_audit(),
        counts.without_audit()
    );
    assert_eq!(store.tenant("t1").unwrap().unwrap().revision, revision);
    assert_eq!(store.bans("t1").unwrap().len(), 21);
    let listed = sb.bans("t1").await.unwrap();
    assert_eq!(listed.len(), 21);

    // B resumes where it was: nothing to send. A fresh sync gets it all.
    let mut sbb = b.sync(b_rev, &["198.51.100.2"]).await.unwrap();
    assert!(!sbb.welcome.snapshot);
    assert!(sbb.drain(QUIET).await.unwrap().is_empty());
    let mut fresh = a.sync(0, &["198.51.100.1"]).await.unwrap();
    fresh.drain(QUIET).await.unwrap();
    assert_eq!(fresh.bans.len(), 20, "all but its own");
    // Revisions go on from where they were.
    fresh.report_ban("203.0.113.6", "scanner").await.unwrap();
    sbb.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.6"))
        .await
        .unwrap();
    assert_eq!(sbb.revision, revision + 1);
    // Enrolled hosts are still there and may connect; their tokens stay used.
    assert_eq!(sb.store().counts().unwrap().tokens_used, 2);
}

#[tokio::test]
async fn policy_is_validated_stored_and_pushed_to_its_site() {
    let mut f = fleet().await;
    let mut op = f.sb.operator();
    let store = f.sb.store();
    let before = store.counts().unwrap();
    let err = op
        .set_policy(pb::PolicyDocument {
            tenant: "t1".into(),
            site: "siteA".into(),
            toml: "[[services]]\nname = \"ssh\"\nzones = [\"local\", \"dmz\"]\n".into(),
            revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("unknown zone `dmz`"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("t1/siteA:3:19"), "{}", err.message());
    assert_eq!(
        store.counts().unwrap().without_audit(),
        before.without_audit()
    );
    let audit = store.audit_log("t1", 1).unwrap();
    assert!(
        audit[0].refused && audit[0].action == "policy.set",
        "{audit:?}"
    );
    let err = op
        .get_policy(pb::ScopeRef {
            tenant: "t1".into(),
            site: "siteA".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let good = "management = [\"192.0.2.10\"]\n";
    op.set_policy(pb::PolicyDocument {
        tenant: "t1".into(),
        site: "siteA".into(),
        toml: good.into(),
        revision: 0,
    })
    .await
    .unwrap();
    f.t1a
        .wait_until(SECOND, |s| s.policy.as_deref() == Some(good))
        .await
        .unwrap();
    let push = f
        .t1a
        .log
        .iter()
        .find_map(|m| match &m.body {
            Some(Down::Policy(p)) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(push.confirm_within_secs, 30);
    // Not to the other site, nor the other tenant.
    assert!(f
        .t1b
        .drain(QUIET)
        .await
        .unwrap()
        .iter()
        .all(|m| !matches!(m.body, Some(Down::Policy(_)))));
    assert!(f
        .t2a
        .drain(QUIET)
        .await
        .unwrap()
        .iter()
        .all(|m| !matches!(m.body, Some(Down::Policy(_)))));
    assert!(f.t2a.policy.is_none());
    let doc = op
        .get_policy(pb::ScopeRef {
            tenant: "t1".into(),
            site: "siteA".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(doc.toml, good);
    assert!(doc.revision > 0);

    // The tenant's default reaches the sites without their own.
    let default = "management = [\"192.0.2.11\"]\n";
    op.set_policy(pb::PolicyDocument {
        tenant: "t1".into(),
        site: String::new(),
        toml: default.into(),
        revision: 0,
    })
    .await
    .unwrap();
    f.t1b
        .wait_until(SECOND, |s| s.policy.as_deref() == Some(default))
        .await
        .unwrap();
    f.t1a.drain(QUIET).await.unwrap();
    assert_eq!(f.t1a.policy.as_deref(), Some(good));

    // A host's policy result is recorded (and audited when refused).
    f.t1a
        .send(pb::agent_message::Body::PolicyResult(pb::PolicyResult {
            revision: doc.revision,
            applied: false,
            error: "rolled back: the controller was unreachable".into(),
        }))
        .await
        .unwrap();
    let id = f.t1a.creds.id.clone();
    let deadline = Instant::now() + SECOND;
    loop {
        let h = store.host(&id).unwrap().unwrap();
        if let Some(e) = h.policy_error {
            assert!(e.contains("rolled back"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A fresh connection gets its policy in the snapshot.
    let mut again = f.t1a.creds.sync(0, &[]).await.unwrap();
    again.drain(QUIET).await.unwrap();
    assert_eq!(again.policy.as_deref(), Some(good));
}

#[tokio::test]
async fn operators_may_use_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("operators");
    std::fs::write(&file, "bob 0123456789abcdef0123456789\n").unwrap();
    let sb = Sandbox::start_with(|o| o.operator_tokens = Some(file.clone()))
        .await
        .unwrap();
    let auth = |token: &str| palisade_controller::client::OperatorAuth::Token {
        token: token.into(),
        ca_pem: sb.ca_pem(),
    };
    let mut op =
        palisade_controller::client::operator(sb.url(), auth("0123456789abcdef0123456789"))
            .await
            .unwrap();
    let t = op
        .create_token(pb::CreateTokenRequest {
            tenant: "t1".into(),
            site: "a".into(),
            valid_secs: 60,
        })
        .await
        .unwrap();
    assert!(t.into_inner().token.starts_with("pal1."));
    let audit = sb.store().audit_log("t1", 1).unwrap();
    assert_eq!(audit[0].actor, "operator:bob");
    let mut bad = palisade_controller::client::operator(sb.url(), auth("wrong-wrong-wrong-wrong"))
        .await
        .unwrap();
    let err = bad.list_tenants(pb::ListRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let _ = AgentCreds::enroll; // (the sandbox's agent API is used elsewhere)
}

#[tokio::test]
async fn user_rules_reach_the_tenant_and_a_second_connection_replaces_the_first() {
    let mut f = fleet().await;
    let mut op = f.sb.operator();
    let mut users = std::collections::HashMap::new();
    users.insert(
        "333".to_string(),
        pb::ServiceList {
            services: vec!["ssh".into(), "admin".into()],
        },
    );
    op.set_user_rules(pb::UserRulesRequest {
        tenant: "t1".into(),
        rules: Some(pb::UserRules { users }),
    })
    .await
    .unwrap();
    for s in [&mut f.t1a, &mut f.t1b] {
        s.wait_until(SECOND, |s| {
            s.user_rules
                .as_ref()
                .is_some_and(|u| u.users["333"].services == ["ssh", "admin"])
        })
        .await
        .unwrap();
    }
    f.t2a.drain(QUIET).await.unwrap();
    assert!(f.t2a.user_rules.is_none());

    // The same host connects again: the newer stream wins, the older is cut.
    let mut second = f
        .t1a
        .creds
        .sync(f.t1a.revision, &["198.51.100.1"])
        .await
        .unwrap();
    let st = f.t1a.ended(SECOND).await.expect("older stream cut");
    assert_eq!(st.code(), tonic::Code::Aborted);
    assert!(
        st.message().contains("newer connection"),
        "{}",
        st.message()
    );
    assert_eq!(f.sb.connected(), 4);
    f.t1b.report_ban("203.0.113.40", "scanner").await.unwrap();
    second
        .wait_until(SECOND, |s| s.bans.contains_key("203.0.113.40"))
        .await
        .unwrap();
}
