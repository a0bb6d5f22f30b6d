//! `explain <ip>` across a tenant: every connected host is asked what its
//! own kernel and policy do with the address (the answer comes from the
//! host's `explain`, the same one its operator would run there); a host that
//! is offline or does not answer in time is reported as such, with what the
//! controller itself knows (the tenant's bans, the tenant's own addresses),
//! never as a guess dressed up as the host's answer.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
use palisade_proto::v1 as pb;
use tonic::Status;

use crate::fleet::{ban_to_pb, covers, status_of, Fleet};
use crate::store::now_secs;

/// How long the hosts have to answer, together.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Asks every host of `tenant` about `address` (`port`: `PORT/PROTO` or
/// empty) and adds the controller's own view.
pub async fn explain(
    fleet: &Fleet,
    tenant: &str,
    address: IpAddr,
    port: &str,
    within: Duration,
) -> Result<pb::ExplainResponse, Status> {
    let now = now_secs();
    let hosts: Vec<_> = fleet
        .store
        .hosts(Some(tenant))
        .map_err(status_of)?
        .into_iter()
        .filter(|h| !h.revoked)
        .collect();
    let bans: Vec<pb::Ban> = fleet
        .store
        .bans(tenant)
        .map_err(status_of)?
        .into_iter()
        .filter(|b| b.ban.live_at(now) && covers(&b.ban.address, address))
        .map(|b| ban_to_pb(&b.ban))
        .collect();
    let text = address.to_string();
    let peer_of = hosts
        .iter()
        .find(|h| h.addresses.contains(&text))
        .map(|h| h.id().to_string())
        .unwrap_or_default();

    let asked = hosts.iter().map(|h| {
        let id = h.id();
        let query = pb::ExplainQuery {
            id: 0,
            address: text.clone(),
            port: port.to_string(),
        };
        let question = fleet.ask(&id, query);
        async move {
            let Some((qid, rx)) = question else {
                return (id, Err("offline"));
            };
            match tokio::time::timeout(within, rx).await {
                Ok(Ok(answer)) => (id, Ok(answer)),
                Ok(Err(_)) => (id, Err("its session ended before it answered")),
                Err(_) => {
                    fleet.forget_question(qid);
                    (
                        id,
                        Err("no answer in time (an agent too old to explain, or busy)"),
                    )
                }
            }
        }
    });
    let answers = join_all(asked).await;

    let mut out = Vec::with_capacity(hosts.len());
    for (h, (id, answer)) in hosts.iter().zip(answers) {
        let name = id.to_string();
        let verdict = match answer {
            Ok(a) => match (a.verdict, a.error) {
                (Some(v), e) if e.is_empty() => pb::HostVerdict {
                    host: name,
                    answered: true,
                    last_seen: now,
                    ..v
                },
                (_, e) => unanswered(
                    name,
                    h.last_seen,
                    format!("the host could not explain: {e}"),
                    &bans,
                    &peer_of,
                ),
            },
            Err(why) => unanswered(name, h.last_seen, why.to_string(), &bans, &peer_of),
        };
        out.push(verdict);
    }
    Ok(pb::ExplainResponse {
        hosts: out,
        bans,
        peer_of,
    })
}

/// A host that did not answer: why, and what the controller expects there.
fn unanswered(
    host: String,
    last_seen: u64,
    why: String,
    bans: &[pb::Ban],
    peer_of: &str,
) -> pb::HostVerdict {
    let expect = if !peer_of.is_empty() && peer_of != host {
        format!("expected: trusted there as an address of the tenant's host {peer_of}")
    } else if let Some(b) = bans.iter().find(|b| b.origin != host) {
        format!(
            "expected: blocked there by the tenant's shared ban ({}, from {})",
            b.reason, b.origin
        )
    } else if let Some(b) = bans.first() {
        format!("expected: blocked there by its own ban ({})", b.reason)
    } else {
        "the controller holds no ban or trust for this address".to_string()
    };
    pb::HostVerdict {
        host,
        allowed: false,
        why: format!("not answered: {why}; {expect}"),
        decision: "unknown".into(),
        stage: String::new(),
        open_services: Vec::new(),
        answered: false,
        last_seen,
        zone: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offline_host_is_never_reported_as_having_answered() {
        let ban = pb::Ban {
            address: "192.0.2.7".into(),
            reason: "scanner".into(),
            origin: "t/a/pbx".into(),
            ..Default::default()
        };
        let v = unanswered(
            "t/b/pbx".into(),
            5,
            "offline".into(),
            std::slice::from_ref(&ban),
            "",
        );
        assert!(!v.answered && !v.allowed && v.decision == "unknown");
        assert!(v.why.contains("offline") && v.why.contains("shared ban (scanner, from t/a/pbx)"));
        let v = unanswered("t/a/pbx".into(), 5, "offline".into(), &[ban], "");
        assert!(v.why.contains("its own ban"), "{}", v.why);
        let v = unanswered("t/a/pbx".into(), 5, "offline".into(), &[], "t/b/pbx");
        assert!(v.why.contains("trusted there"), "{}", v.why);
    }
}
