//! Bad input and wrong credentials: each refused with a clear status, and
//! nothing stored changes (the audit trail records the refusal).

use std::time::Duration;

use palisade_controller::identity::HostId;
use palisade_controller::pki::{new_key_and_csr, Pki};
use palisade_controller::sandbox::{AgentCreds, Sandbox};
use palisade_controller::store::{now_secs, AuditRecord, StoreCounts, TokenRecord};
use palisade_controller::token::{new_secret, TokenClaims};
use palisade_proto::v1 as pb;
use pb::agent_message::Body as Up;
use pb::controller_message::Body as Down;
use tonic::Code;

const SECOND: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(300);

fn counts(sb: &Sandbox) -> StoreCounts {
    sb.store().counts().unwrap().without_audit()
}

fn last_audit(sb: &Sandbox) -> AuditRecord {
    sb.store().audit_log("", 1).unwrap().remove(0)
}

/// Waits (up to 1 s: a handshake's refusal is audited after the client
/// has heard of it) for the newest refusal of `action` whose detail holds
/// `text`.
async fn wait_audited(sb: &Sandbox, action: &str, text: &str) -> AuditRecord {
    let deadline = tokio::time::Instant::now() + SECOND;
    loop {
        let found = sb
            .store()
            .audit_log("", 20)
            .unwrap()
            .into_iter()
            .find(|a| a.refused && a.action == action && a.detail.contains(text));
        if let Some(a) = found {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refused {action} with {text:?} in {:#?}",
            sb.store().audit_log("", 20).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A certificate (and its key) for `id` from the sandbox's own CA (its
/// files in the data directory) that expired yesterday.
fn expired_cert(sb: &Sandbox, id: &HostId) -> (String, String) {
    let pki_dir = sb.data_dir();
    let ca_pem = std::fs::read_to_string(pki_dir.join("ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("palisade://agent/{}/{}/{}", id.tenant, id.site, id.host)
            .try_into()
            .unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - std::time::Duration::from_secs(2 * 86400);
    params.not_after = now - std::time::Duration::from_secs(86400);
    let (key_pem, _) = new_key_and_csr("pbx1").unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key_pem)
}

#[tokio::test]
async fn reused_expired_unknown_and_damaged_tokens_are_refused() {
    let sb = Sandbox::start().await.unwrap();
    let token = sb.token("t1", "siteA").await.unwrap();
    let ca = sb.ca_pem();
    let first = AgentCreds::enroll(sb.url(), &ca, &token, "pbx1")
        .await
        .unwrap();
    assert_eq!(first.id, HostId::new("t1", "siteA", "pbx1"));
    let before = counts(&sb);

    // Reused (even for another host name).
    let err = AgentCreds::enroll(sb.url(), &ca, &token, "pbx2")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("already used (by t1/siteA/pbx1)"),
        "{}",
        err.message()
    );
    assert_eq!(counts(&sb), before);
    let a = last_audit(&sb);
    assert!(
        a.refused && a.action == "host.enroll" && a.tenant == "t1",
        "{a:?}"
    );

    // Expired.
    let claims = TokenClaims {
        url: sb.url().into(),
        tenant: "t1".into(),
        site: "siteA".into(),
        secret: new_secret(),
        ca_sha256: sb.store().tenant("t1").map(|_| String::new()).unwrap(),
        exp: now_secs() - 10,
    };
    sb.store()
        .create_token(
            &claims.secret_hash().unwrap(),
            &TokenRecord {
                tenant: "t1".into(),
                site: "siteA".into(),
                created_at: now_secs() - 100,
                created_by: "test".into(),
                expires_at: claims.exp,
                used_by: None,
            },
            AuditRecord::new("t1", "test", "token.create", ""),
        )
        .unwrap();
    let before = counts(&sb);
    let err = AgentCreds::enroll(sb.url(), &ca, &claims.encode(), "pbx2")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("expired"), "{}", err.message());
    assert_eq!(counts(&sb), before);
    assert!(last_audit(&sb).refused);

    // Unknown (a well-formed token this controller never made).
    let unknown = TokenClaims {
        secret: new_secret(),
        exp: now_secs() + 100,
        ..claims.clone()
    };
    let err = AgentCreds::enroll(sb.url(), &ca, &unknown.encode(), "pbx2")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "unknown enrolment token");
    // Damaged.
    for (bad, says) in [
        ("hello", "not a palisade enrolment token"),
        ("pal1.%%%", "damaged"),
        ("pal1.e30", "damaged"),
    ] {
        let err = AgentCreds::enroll(sb.url(), &ca, bad, "pbx2")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad}");
        assert!(err.message().contains(says), "{bad}: {}", err.message());
    }
    // A bad CSR doesn't burn the token.
    let token = sb.token("t1", "siteA").await.unwrap();
    let before = counts(&sb);
    let mut ag = palisade_controller::client::agent(
        palisade_controller::client::channel(sb.url(), &ca, None)
            .await
            .unwrap(),
    );
    let err = ag
        .enroll(pb::EnrollRequest {
            token: token.clone(),
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            hostname: "pbx2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("signing request"),
        "{}",
        err.message()
    );
    // Nor does an oversized request.
    let err = ag
        .enroll(pb::EnrollRequest {
            token: token.clone(),
            csr_pem: "x".repeat(2 << 20),
            hostname: "pbx2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );
    assert_eq!(counts(&sb), before);
    AgentCreds::enroll(sb.url(), &ca, &token, "pbx2")
        .await
        .unwrap();
    // A live host's name can't be taken by another enrolment.
    let token = sb.token("t1", "siteA").await.unwrap();
    let before = counts(&sb);
    let err = AgentCreds::enroll(sb.url(), &ca, &token, "pbx1")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(counts(&sb), before);
}

#[tokio::test]
async fn wrong_or_missing_client_certificates_are_refused() {
    let sb = Sandbox::start().await.unwrap();
    let good = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let before = counts(&sb);

    // A certificate for the same identity from another CA: the TLS layer
    // refuses it.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::open_or_create(other_dir.path()).unwrap();
    let (key_pem, csr) = new_key_and_csr("pbx1").unwrap();
    let forged = AgentCreds {
        cert_pem: other.sign_agent(&csr, &good.id).unwrap().cert_pem,
        key_pem,
        ..good.clone()
    };
    let err = forged.sync(0, &["198.51.100.1"]).await.err().unwrap();
    let text = format!("{err:?}");
    assert!(text.contains("fatal alert: UnknownCA"), "{text}");
    assert_eq!(sb.connected(), 0);
    wait_audited(&sb, "tls", "UnknownIssuer").await;

    // The host's own identity, signed by this controller's CA, but expired.
    let (cert_pem, key_pem) = expired_cert(&sb, &good.id);
    let expired = AgentCreds {
        cert_pem,
        key_pem,
        ..good.clone()
    };
    let err = expired.sync(0, &["198.51.100.1"]).await.err().unwrap();
    let text = format!("{err:?}");
    assert!(text.contains("fatal alert: CertificateExpired"), "{text}");
    assert_eq!(sb.connected(), 0);
    let line = wait_audited(&sb, "tls", "expired").await;
    assert!(
        line.detail
            .contains("client certificate refused: certificate expired"),
        "{line:?}"
    );

    // No client certificate: Enroll only.
    let ch = palisade_controller::client::channel(sb.url(), &sb.ca_pem(), None)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        body: Some(Up::Hello(pb::Hello {
            protocol_version: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let err = palisade_controller::client::agent(ch.clone())
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("client certificate"),
        "{}",
        err.message()
    );
    let err = pb::operator_service_client::OperatorServiceClient::new(ch)
        .list_tenants(pb::ListRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // An operator certificate can't open an agent stream...
    let bundle = palisade_controller::pki::parse_bundle(&sb.operator_bundle).unwrap();
    let op_as_agent = AgentCreds {
        cert_pem: bundle.cert_pem,
        key_pem: bundle.key_pem,
        ..good.clone()
    };
    let err = op_as_agent.sync(0, &[]).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    // ...and an agent certificate can't use the operator API.
    let ch = palisade_controller::client::channel(
        sb.url(),
        &sb.ca_pem(),
        Some((&good.cert_pem, &good.key_pem)),
    )
    .await
    .unwrap();
    let err = pb::operator_service_client::OperatorServiceClient::new(ch)
        .create_token(pb::CreateTokenRequest {
            tenant: "t1".into(),
            site: "x".into(),
            valid_secs: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("can't use the operator API"));

    assert_eq!(counts(&sb), before);
    let refusals = sb.store().audit_log("", 10).unwrap();
    assert!(
        refusals.iter().filter(|a| a.refused).count() >= 3,
        "{refusals:?}"
    );
    // The good certificate still works.
    good.sync(0, &[]).await.unwrap();
}

#[tokio::test]
async fn a_revoked_host_is_cut_at_once_and_refused_after() {
    let sb = Sandbox::start().await.unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let b = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    let mut sa = a.sync(0, &["198.51.100.1"]).await.unwrap();
    let mut sbb = b.sync(0, &["198.51.100.2"]).await.unwrap();
    sa.wait_until(SECOND, |s| s.peers.contains_key("198.51.100.2"))
        .await
        .unwrap();
    let mut op = sb.operator();
    let t0 = std::time::Instant::now();
    op.revoke_host(pb::HostRef {
        tenant: "t1".into(),
        site: "siteB".into(),
        host: "pbx2".into(),
    })
    .await
    .unwrap();
    let st = sbb.ended(SECOND).await.expect("stream cut");
    assert!(t0.elapsed() < SECOND);
    assert_eq!(st.code(), Code::PermissionDenied);
    assert!(st.message().contains("revoked"), "{}", st.message());
    // Its addresses are no longer trusted at the other site.
    sa.wait_until(SECOND, |s| !s.peers.contains_key("198.51.100.2"))
        .await
        .unwrap();

    // It can't come back with its certificate, nothing changes.
    let before = counts(&sb);
    let err = b.sync(0, &["198.51.100.2"]).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("revoked"));
    assert_eq!(counts(&sb), before);
    let a = last_audit(&sb);
    assert!(a.refused && a.actor == "agent:t1/siteB/pbx2", "{a:?}");
    let hosts = op
        .list_hosts(pb::ListHostsRequest {
            tenant: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert!(hosts
        .iter()
        .any(|h| h.name == "pbx2" && h.revoked && !h.connected));

    // Enrolled again (new token, new key): the new certificate works, the
    // old one stays refused.
    let again = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    again.sync(0, &["198.51.100.2"]).await.unwrap();
    let err = b.sync(0, &[]).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("replaced"), "{}", err.message());
}

#[tokio::test]
async fn malformed_streams_are_refused_with_a_clear_status() {
    let sb = Sandbox::start().await.unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let before = counts(&sb);

    // First message not a Hello.
    let err = a
        .sync_raw(pb::AgentMessage {
            body: Some(Up::Heartbeat(pb::Heartbeat::default())),
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("must be Hello"));
    // Hello with garbage addresses, or no protocol version.
    let err = a.sync(0, &["not-an-ip"]).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not-an-ip"));
    let err = a.sync_with(pb::Hello::default()).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(counts(&sb), before);

    // A ban on something that isn't an address: the stream ends, nothing stored.
    let mut s = a.sync(0, &[]).await.unwrap();
    s.drain(QUIET).await.unwrap();
    let before = counts(&sb);
    s.report_ban("evil.example.com", "scanner").await.unwrap();
    let st = s.ended(SECOND).await.expect("ended");
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("evil.example.com"));
    let mut s = a.sync(0, &[]).await.unwrap();
    s.report_ban("0.0.0.0/0", "scanner").await.unwrap();
    let st = s.ended(SECOND).await.expect("ended");
    assert!(st.message().contains("too wide"), "{}", st.message());

    // Oversized message.
    let mut s = a.sync(0, &[]).await.unwrap();
    s.send(Up::Ban(pb::BanReport {
        ban: Some(pb::Ban {
            address: "203.0.113.1".into(),
            detail: "x".repeat(2 << 20),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let st = s.ended(SECOND).await.expect("ended");
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");
    assert!(
        st.message().contains("message length too large"),
        "{}",
        st.message()
    );
    assert!(st.message().contains("limit"), "{}", st.message());
    // Only the host record's last-seen changed; no ban, no revision.
    let after = counts(&sb);
    assert_eq!(after, before);
    assert!(sb.store().bans("t1").unwrap().is_empty());
}

#[tokio::test]
async fn an_agent_cannot_change_its_identity() {
    let sb = Sandbox::start().await.unwrap();
    let a = sb.enroll("t1", "siteA", "pbx1").await.unwrap();
    let b = sb.enroll("t1", "siteB", "pbx2").await.unwrap();
    let c = sb.enroll("t2", "siteA", "pbx9").await.unwrap();
    let mut sbb = b.sync(0, &["198.51.100.2"]).await.unwrap();
    let mut sc = c.sync(0, &["198.51.100.9"]).await.unwrap();
    sc.drain(QUIET).await.unwrap();

    // A claims B's address and t2's host's address: they are A's reported
    // addresses (trusted as A's), B's record and identity are untouched.
    let sa = a.sync(0, &["198.51.100.2", "198.51.100.9"]).await.unwrap();
    assert_eq!(
        (
            sa.welcome.tenant.as_str(),
            sa.welcome.site.as_str(),
            sa.welcome.host.as_str()
        ),
        ("t1", "siteA", "pbx1")
    );
    let store = sb.store();
    let b_rec = store.host(&b.id).unwrap().unwrap();
    assert_eq!(b_rec.addresses, ["198.51.100.2"]);
    assert_eq!(
        store.host(&c.id).unwrap().unwrap().addresses,
        ["198.51.100.9"]
    );
    sbb.wait_until(SECOND, |s| {
        s.peers.get("198.51.100.9").map(String::as_str) == Some("t1/siteA/pbx1")
    })
    .await
    .unwrap();
    // Nothing of it reaches the other tenant.
    let got = sc.drain(QUIET).await.unwrap();
    assert!(got.is_empty(), "{got:?}");

    // A ban claiming another origin is stored with A's identity.
    sa.send(Up::Ban(pb::BanReport {
        ban: Some(pb::Ban {
            address: "203.0.113.66".into(),
            reason: "scanner".into(),
            origin: "t2/siteA/pbx9".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    sbb.wait_until(SECOND, |s| s.bans.contains_key("203.0.113.66"))
        .await
        .unwrap();
    assert_eq!(sbb.bans["203.0.113.66"].origin, "t1/siteA/pbx1");
    assert!(sc.drain(QUIET).await.unwrap().is_empty());
    // A ban on one of the tenant's own hosts is not shared.
    sa.report_ban("198.51.100.2", "scanner").await.unwrap();
    let got = sbb.drain(QUIET).await.unwrap();
    assert!(
        got.iter().all(|m| !matches!(&m.body, Some(Down::Bans(_)))),
        "{got:?}"
    );
    assert!(store.audit_log("t1", 1).unwrap()[0]
        .detail
        .contains("not shared"));

    // A token edited to name another tenant enrols in the token's own.
    let token = sb.token("t1", "siteA").await.unwrap();
    let mut claims = TokenClaims::decode(&token).unwrap();
    claims.tenant = "t2".into();
    claims.site = "siteA".into();
    let moved = AgentCreds::enroll(sb.url(), &sb.ca_pem(), &claims.encode(), "pbx7")
        .await
        .unwrap();
    assert_eq!(moved.id, HostId::new("t1", "siteA", "pbx7"));
    // A host name can't smuggle a path.
    let token = sb.token("t1", "siteA").await.unwrap();
    let err = AgentCreds::enroll(sb.url(), &sb.ca_pem(), &token, "x/../../t2/siteA/pbx9")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("letters, digits"),
        "{}",
        err.message()
    );
}
