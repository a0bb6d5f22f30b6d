//! The fleet: the store, the CA, who is connected, and the fan-out.
//!
//! Every change goes the same way: one store transaction (the record, its
//! entry in the tenant's revision log, its audit line), a flush, and only
//! then a publish on the tenant's broadcast channel, which every connected
//! agent of that tenant (and no other) listens on. An agent's session turns
//! each entry into the message for that host (its own bans and addresses are
//! not echoed back) and fills any gap from the store, so an entry published
//! out of order or missed by a lagging session is still delivered once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use palisade_model::net::is_reportable;
use palisade_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tonic::{Code, Status};

use crate::identity::{valid_name, HostId};
use crate::pki::Pki;
use crate::store::{now_secs, AuditRecord, BanInfo, Change, Refusal, RevEntry, Store, StoreError};

/// Bans per snapshot message.
pub const SNAPSHOT_CHUNK: usize = 1000;
/// Per-tenant broadcast buffer; a session that falls further behind catches
/// up from the store.
const BROADCAST_CAPACITY: usize = 4096;
/// Most addresses a host may report.
pub const MAX_ADDRESSES: usize = 64;
/// Refusals audited per second at most (the rest are only logged and counted).
const REFUSAL_AUDITS_PER_SEC: u32 = 50;
/// Events buffered for operators watching; a slower watcher is told how many
/// it missed.
const EVENTS_CAPACITY: usize = 4096;

/// A committed, durable change on its way to the tenant's sessions.
#[derive(Debug)]
pub struct Live {
    pub entry: RevEntry,
    /// When the change reached the controller (fan-out latency starts here).
    pub started: Instant,
}

/// Why a session is cut.
#[derive(Clone, Debug)]
pub struct Cut {
    pub code: Code,
    pub message: String,
}

/// What a session's messages towards its agent go into.
pub type Outbound = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

struct Conn {
    id: u64,
    cut: watch::Sender<Option<Cut>>,
    /// The session's own queue, for questions (explain) that are not
    /// revisions of the tenant's state.
    out: Outbound,
}

/// An explain question sent to a host, waiting for its answer.
struct Question {
    host: HostId,
    answer: oneshot::Sender<pb::ExplainAnswer>,
}

pub struct Fleet {
    pub store: Arc<dyn Store>,
    pub pki: Pki,
    /// The URL agents reach the controller at (written into tokens).
    pub url: String,
    /// Sent with every policy push.
    pub confirm_within_secs: u32,
    tenants: Mutex<HashMap<String, broadcast::Sender<Arc<Live>>>>,
    conns: Mutex<HashMap<HostId, Conn>>,
    next_conn: AtomicU64,
    refusal_window: Mutex<(Instant, u32)>,
    questions: Mutex<HashMap<u64, Question>>,
    next_question: AtomicU64,
    /// The controller's own addresses: never banned (a host that banned the
    /// controller could not be told to lift it).
    own_addresses: Vec<IpAddr>,
    /// Every tenant's events, for operators watching (`Events`).
    events: broadcast::Sender<Arc<pb::AgentEvent>>,
    /// Whether the address an agent's connection comes from is one of the
    /// host's addresses (see [`known_addresses`]); off behind a proxy that
    /// hides the agents' addresses.
    pub trust_seen_addresses: bool,
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, pki: Pki, url: String, confirm_within_secs: u32) -> Fleet {
        Fleet {
            store,
            pki,
            url,
            confirm_within_secs,
            tenants: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            refusal_window: Mutex::new((Instant::now(), 0)),
            questions: Mutex::new(HashMap::new()),
            next_question: AtomicU64::new(1),
            own_addresses: Vec::new(),
            events: broadcast::channel(EVENTS_CAPACITY).0,
            trust_seen_addresses: true,
        }
    }

    /// Names the controller's own addresses (see [`Fleet::unbannable`]).
    pub fn with_own_addresses(mut self, addrs: Vec<IpAddr>) -> Fleet {
        self.own_addresses = addrs;
        self
    }

    pub fn with_seen_addresses(mut self, trust: bool) -> Fleet {
        self.trust_seen_addresses = trust;
        self
    }

    /// Why `target` (a canonical address or network) must not be banned in
    /// `tenant`: it covers the controller itself, or one of the tenant's
    /// hosts (their traffic is each other's trunks). `None`: it may be.
    pub fn unbannable(&self, tenant: &str, target: &str) -> Result<Option<String>, StoreError> {
        if let Some(a) = self.own_addresses.iter().find(|a| covers(target, **a)) {
            return Ok(Some(format!(
                "{target} covers the controller's own address {a}: the hosts would lose the controller, and with it the lift"
            )));
        }
        let hosts = self.store.hosts(Some(tenant))?;
        for h in hosts.iter().filter(|h| !h.revoked) {
            let hit = h
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .find(|a| covers(target, *a));
            if let Some(a) = hit {
                return Ok(Some(format!(
                    "{target} covers {a}, an address of the tenant's host {}",
                    h.id()
                )));
            }
        }
        Ok(None)
    }

    fn sender(&self, tenant: &str) -> broadcast::Sender<Arc<Live>> {
        let mut t = self.tenants.lock().expect("tenants lock");
        t.entry(tenant.to_string())
            .or_insert_with(|| broadcast::channel(BROADCAST_CAPACITY).0)
            .clone()
    }

    /// Listens to the tenant's changes (subscribe before reading the store).
    pub fn subscribe(&self, tenant: &str) -> broadcast::Receiver<Arc<Live>> {
        self.sender(tenant).subscribe()
    }

    /// Makes `entry` durable, then pushes it to the tenant's sessions.
    pub async fn commit(
        &self,
        entry: Option<RevEntry>,
        started: Instant,
    ) -> Result<(), StoreError> {
        self.store.flush().await?;
        if let Some(entry) = entry {
            let _ = self
                .sender(&entry.tenant)
                .send(Arc::new(Live { entry, started }));
        }
        Ok(())
    }

    // ------------------------------------------------------------ sessions

    /// Registers `host`'s session; a previous session of the same host is
    /// cut (the newest connection wins).
    pub fn register(&self, host: &HostId, out: Outbound) -> (u64, watch::Receiver<Option<Cut>>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let old = self
            .conns
            .lock()
            .expect("conns lock")
            .insert(host.clone(), Conn { id, cut: tx, out });
        if let Some(old) = old {
            let _ = old.cut.send(Some(Cut {
                code: Code::Aborted,
                message: format!("replaced by a newer connection of {host}"),
            }));
        } else {
            metrics::gauge!("palisade_controller_connected_agents").increment(1.0);
        }
        (id, rx)
    }

    pub fn deregister(&self, host: &HostId, conn: u64) {
        let mut conns = self.conns.lock().expect("conns lock");
        if conns.get(host).is_some_and(|c| c.id == conn) {
            conns.remove(host);
            metrics::gauge!("palisade_controller_connected_agents").decrement(1.0);
        }
    }

    pub fn is_connected(&self, host: &HostId) -> bool {
        self.conns.lock().expect("conns lock").contains_key(host)
    }

    pub fn connected(&self) -> usize {
        self.conns.lock().expect("conns lock").len()
    }

    /// Cuts `host`'s session at once; true when it had one.
    pub fn cut(&self, host: &HostId, code: Code, message: &str) -> bool {
        let conn = self.conns.lock().expect("conns lock").remove(host);
        match conn {
            Some(c) => {
                metrics::gauge!("palisade_controller_connected_agents").decrement(1.0);
                let _ = c.cut.send(Some(Cut {
                    code,
                    message: message.to_string(),
                }));
                true
            }
            None => false,
        }
    }

    pub fn cut_all(&self, code: Code, message: &str) {
        let conns: Vec<_> = self.conns.lock().expect("conns lock").drain().collect();
        for (_, c) in conns {
            metrics::gauge!("palisade_controller_connected_agents").decrement(1.0);
            let _ = c.cut.send(Some(Cut {
                code,
                message: message.to_string(),
            }));
        }
    }

    // ------------------------------------------------------------ questions

    /// Sends `query` to `host`'s session. `None`: the host is not connected
    /// or its queue is full (a host that cannot take a question now is
    /// reported as not answering rather than waited on).
    pub fn ask(
        &self,
        host: &HostId,
        mut query: pb::ExplainQuery,
    ) -> Option<(u64, oneshot::Receiver<pb::ExplainAnswer>)> {
        let out = self
            .conns
            .lock()
            .expect("conns lock")
            .get(host)?
            .out
            .clone();
        let id = self.next_question.fetch_add(1, Ordering::Relaxed);
        query.id = id;
        let (tx, rx) = oneshot::channel();
        self.questions.lock().expect("questions lock").insert(
            id,
            Question {
                host: host.clone(),
                answer: tx,
            },
        );
        let msg = pb::ControllerMessage {
            revision: 0,
            body: Some(pb::controller_message::Body::Explain(query)),
        };
        if out.try_send(Ok(msg)).is_err() {
            self.forget_question(id);
            return None;
        }
        Some((id, rx))
    }

    /// A question that will not be answered (timed out) is forgotten.
    pub fn forget_question(&self, id: u64) {
        self.questions.lock().expect("questions lock").remove(&id);
    }

    /// An answer from `from`: taken only when the question went to that
    /// host (a host cannot answer for another).
    pub fn answer(&self, from: &HostId, answer: pb::ExplainAnswer) {
        let mut questions = self.questions.lock().expect("questions lock");
        match questions.get(&answer.id) {
            Some(q) if q.host == *from => {
                let q = questions.remove(&answer.id).expect("just seen");
                let _ = q.answer.send(answer);
            }
            Some(_) => {
                tracing::warn!(host = %from, id = answer.id, "an answer to a question asked of another host; ignored")
            }
            None => {
                tracing::debug!(host = %from, id = answer.id, "an answer after its question timed out")
            }
        }
    }

    // ------------------------------------------------------------ events

    /// Publishes an event to the operators watching (nobody watching: dropped).
    pub fn publish(&self, event: pb::AgentEvent) {
        metrics::counter!("palisade_controller_events_total", "kind" => event.kind.clone())
            .increment(1);
        let _ = self.events.send(Arc::new(event));
    }

    /// Every tenant's events from now on.
    pub fn watch_events(&self) -> broadcast::Receiver<Arc<pb::AgentEvent>> {
        self.events.subscribe()
    }

    // ------------------------------------------------------------ refusals

    /// Records a refusal: always logged and counted, audited unless a flood
    /// of refusals is under way (the audit trail must not become the attack).
    pub fn refused(&self, tenant: &str, actor: &str, action: &str, status: &Status) {
        tracing::warn!(tenant, actor, action, code = ?status.code(), message = status.message(), "refused");
        metrics::counter!("palisade_controller_refusals_total", "action" => action.to_string())
            .increment(1);
        self.publish(event(
            tenant,
            actor,
            "refused",
            "",
            format!("{action}: {}", status.message()),
        ));
        let allowed = {
            let mut w = self.refusal_window.lock().expect("refusal lock");
            if w.0.elapsed() >= Duration::from_secs(1) {
                *w = (Instant::now(), 0);
            }
            w.1 += 1;
            w.1 <= REFUSAL_AUDITS_PER_SEC
        };
        if allowed {
            let rec = AuditRecord::new(
                tenant,
                actor,
                action,
                format!("{:?}: {}", status.code(), status.message()),
            )
            .refused();
            if let Err(e) = self.store.audit(rec) {
                tracing::error!(error = %e, "audit");
            }
        }
    }

    // ------------------------------------------------------------ changes

    /// Stores a ban and fans it out. `None`: already covered, nothing sent.
    pub async fn add_ban(
        &self,
        tenant: &str,
        ban: BanInfo,
        actor: &str,
        started: Instant,
    ) -> Result<Option<RevEntry>, StoreError> {
        let audit = AuditRecord::new(
            tenant,
            actor,
            "ban.add",
            format!("{} ({})", ban.address, ban_summary(&ban)),
        );
        let entry = self.store.add_ban(tenant, &ban, audit)?;
        self.commit(entry.clone(), started).await?;
        if entry.is_some() {
            self.publish(pb::AgentEvent {
                evidence: ban.evidence.clone(),
                ..event(tenant, &ban.origin, "ban", &ban.address, ban_summary(&ban))
            });
        }
        Ok(entry)
    }

    pub async fn lift_ban(
        &self,
        tenant: &str,
        address: &str,
        actor: &str,
    ) -> Result<RevEntry, StoreError> {
        let audit = AuditRecord::new(tenant, actor, "ban.lift", address);
        let entry = self.store.lift_ban(tenant, address, actor, audit)?;
        self.commit(Some(entry.clone()), Instant::now()).await?;
        self.publish(event(
            tenant,
            actor,
            "lift",
            address,
            format!("lifted by {actor}, at every host of the tenant"),
        ));
        Ok(entry)
    }

    pub async fn revoke(&self, host: &HostId, actor: &str) -> Result<(), StoreError> {
        let audit = AuditRecord::new(&host.tenant, actor, "host.revoke", host.to_string());
        let entry = self.store.revoke_host(host, audit)?;
        self.commit(entry, Instant::now()).await?;
        self.cut(
            host,
            Code::PermissionDenied,
            &format!("host {host} was revoked"),
        );
        self.publish(event(
            &host.tenant,
            &host.to_string(),
            "revoked",
            "",
            format!("revoked by {actor}"),
        ));
        Ok(())
    }

    pub async fn set_policy(
        &self,
        tenant: &str,
        site: &str,
        toml: &str,
        actor: &str,
    ) -> Result<RevEntry, StoreError> {
        let audit = AuditRecord::new(
            tenant,
            actor,
            "policy.set",
            format!("site {:?}, {} bytes", site, toml.len()),
        );
        let entry = self.store.set_policy(tenant, site, toml, actor, audit)?;
        self.commit(Some(entry.clone()), Instant::now()).await?;
        Ok(entry)
    }

    // ------------------------------------------------------------ messages

    /// What `entry` means to host `me`: `None` when it is not for it (its
    /// own ban, its own addresses, another site's policy).
    pub fn message_for(&self, entry: &RevEntry, me: &HostId) -> Option<pb::ControllerMessage> {
        use pb::controller_message::Body;
        let body = match &entry.change {
            Change::BanAdded { ban } => {
                if ban.origin == me.to_string() {
                    return None;
                }
                Body::Bans(pb::BanDelta {
                    added: vec![ban_to_pb(ban)],
                    ..Default::default()
                })
            }
            Change::BanLifted { address } => Body::Bans(pb::BanDelta {
                added: vec![],
                lifted: vec![address.clone()],
                lifted_at: entry.at,
            }),
            Change::Trust {
                host,
                added,
                removed,
            } => {
                if *host == me.to_string() {
                    return None;
                }
                Body::Trust(pb::TrustDelta {
                    added: added
                        .iter()
                        .map(|a| pb::TrustedPeer {
                            address: a.clone(),
                            host: host.clone(),
                        })
                        .collect(),
                    removed: removed.clone(),
                })
            }
            Change::Policy { site, toml } => {
                let mine = *site == me.site
                    || (site.is_empty()
                        && matches!(self.store.policy(&me.tenant, &me.site), Ok(None)));
                if !mine {
                    return None;
                }
                Body::Policy(pb::PolicyUpdate {
                    toml: toml.clone(),
                    confirm_within_secs: self.confirm_within_secs,
                })
            }
            Change::UserRules { users } => Body::UserRules(user_rules_to_pb(users)),
        };
        Some(pb::ControllerMessage {
            revision: entry.revision,
            body: Some(body),
        })
    }

    /// The full state for host `me` at the tenant's current revision:
    /// bans (in chunks), trusted peers, its policy and the user rules. The
    /// revision is read first: a change made while reading is also sent as
    /// a delta afterwards, and every delta is idempotent.
    pub fn snapshot(&self, me: &HostId) -> Result<(u64, Vec<pb::ControllerMessage>), StoreError> {
        use pb::controller_message::Body;
        let revision = self
            .store
            .tenant(&me.tenant)?
            .map(|t| t.revision)
            .unwrap_or(0);
        let now = now_secs();
        let me_str = me.to_string();
        let bans: Vec<pb::Ban> = self
            .store
            .bans(&me.tenant)?
            .into_iter()
            .filter(|b| b.ban.live_at(now) && b.ban.origin != me_str)
            .map(|b| ban_to_pb(&b.ban))
            .collect();
        let mut out = Vec::new();
        let mut chunks = bans.chunks(SNAPSHOT_CHUNK).peekable();
        if chunks.peek().is_none() {
            out.push(Body::Bans(pb::BanDelta::default()));
        }
        for chunk in chunks {
            out.push(Body::Bans(pb::BanDelta {
                added: chunk.to_vec(),
                ..Default::default()
            }));
        }
        let peers = self
            .store
            .hosts(Some(&me.tenant))?
            .into_iter()
            .filter(|h| !h.revoked && h.id() != *me)
            .flat_map(|h| {
                let host = h.id().to_string();
                h.addresses.into_iter().map(move |address| pb::TrustedPeer {
                    address,
                    host: host.clone(),
                })
            })
            .collect();
        out.push(Body::Trust(pb::TrustDelta {
            added: peers,
            removed: vec![],
        }));
        let policy = match self.store.policy(&me.tenant, &me.site)? {
            Some(p) => Some(p),
            None => self.store.policy(&me.tenant, "")?,
        };
        if let Some(p) = policy {
            out.push(Body::Policy(pb::PolicyUpdate {
                toml: p.toml,
                confirm_within_secs: self.confirm_within_secs,
            }));
        }
        if let Some((_, users)) = self.store.user_rules(&me.tenant)? {
            out.push(Body::UserRules(user_rules_to_pb(&users)));
        }
        Ok((
            revision,
            out.into_iter()
                .map(|body| pb::ControllerMessage {
                    revision,
                    body: Some(body),
                })
                .collect(),
        ))
    }
}

// ---------------------------------------------------------------- mapping

/// An event stamped now.
pub fn event(
    tenant: &str,
    host: &str,
    kind: &str,
    address: &str,
    summary: String,
) -> pb::AgentEvent {
    pb::AgentEvent {
        at: now_secs(),
        kind: kind.to_string(),
        address: address.to_string(),
        summary,
        host: host.to_string(),
        tenant: tenant.to_string(),
        evidence: Vec::new(),
    }
}

/// `reason: detail, expires …` for events and the audit trail.
pub fn ban_summary(ban: &BanInfo) -> String {
    format!(
        "{}{} expires {}",
        ban.reason,
        if ban.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", ban.detail)
        },
        if ban.expires_at == 0 {
            "never".to_string()
        } else {
            ban.expires_at.to_string()
        }
    )
}

pub fn ban_to_pb(b: &BanInfo) -> pb::Ban {
    pb::Ban {
        address: b.address.clone(),
        reason: b.reason.clone(),
        detail: b.detail.clone(),
        evidence: b.evidence.clone(),
        banned_at: b.banned_at,
        expires_at: b.expires_at,
        origin: b.origin.clone(),
    }
}

pub fn user_rules_to_pb(users: &std::collections::BTreeMap<String, Vec<String>>) -> pb::UserRules {
    pb::UserRules {
        users: users
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    pb::ServiceList {
                        services: v.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// A store error as the status a caller sees.
pub fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::Refused(r) => {
            let msg = r.to_string();
            match r {
                Refusal::UnknownToken => Status::unauthenticated(msg),
                Refusal::TokenUsed(_) | Refusal::TokenExpired(_) | Refusal::Revoked(_) => {
                    Status::permission_denied(msg)
                }
                Refusal::HostExists(_) => Status::already_exists(msg),
                Refusal::NoSuchHost(_) | Refusal::NoSuchTenant(_) | Refusal::NoSuchBan { .. } => {
                    Status::not_found(msg)
                }
            }
        }
        other => {
            tracing::error!(error = %other, "store");
            Status::unavailable(format!(
                "the controller could not store the change: {other}"
            ))
        }
    }
}

// ---------------------------------------------------------------- input checks

/// Longest reason, detail and evidence line of a ban.
const MAX_REASON: usize = 64;
const MAX_TEXT: usize = 1024;
const MAX_EVIDENCE: usize = 32;

/// Checks a ban from the wire and fills in what the controller owns: the
/// canonical address, `origin`, `banned_at` when missing. Networks are
/// accepted down to /16 (IPv4) and /32 (IPv6).
pub fn check_ban(ban: Option<pb::Ban>, origin: &str, now: u64) -> Result<BanInfo, Status> {
    let ban = ban.ok_or_else(|| Status::invalid_argument("BanReport without a ban"))?;
    let address = canonical_target(&ban.address)?;
    if ban.reason.len() > MAX_REASON {
        return Err(Status::invalid_argument(format!(
            "ban reason longer than {MAX_REASON} bytes"
        )));
    }
    if ban.detail.len() > MAX_TEXT {
        return Err(Status::invalid_argument(format!(
            "ban detail longer than {MAX_TEXT} bytes"
        )));
    }
    if ban.evidence.len() > MAX_EVIDENCE || ban.evidence.iter().any(|e| e.len() > MAX_TEXT) {
        return Err(Status::invalid_argument(format!(
            "ban evidence: at most {MAX_EVIDENCE} lines of {MAX_TEXT} bytes"
        )));
    }
    Ok(BanInfo {
        address,
        reason: if ban.reason.is_empty() {
            "unspecified".into()
        } else {
            ban.reason
        },
        detail: ban.detail,
        evidence: ban.evidence,
        banned_at: if ban.banned_at == 0 {
            now
        } else {
            ban.banned_at
        },
        expires_at: ban.expires_at,
        origin: origin.to_string(),
    })
}

/// Whether a ban target (address or network) covers `addr`.
pub fn covers(target: &str, addr: IpAddr) -> bool {
    if let Ok(ip) = target.parse::<IpAddr>() {
        return ip == addr;
    }
    target
        .parse::<IpNet>()
        .is_ok_and(|net: IpNet| net.contains(&addr))
}

/// An address or network to ban, canonical (`192.0.2.0/24`, `2001:db8::1`).
pub fn canonical_target(s: &str) -> Result<String, Status> {
    let s = s.trim();
    let net = if let Ok(ip) = s.parse::<IpAddr>() {
        IpNet::from(ip)
    } else if let Ok(net) = s.parse::<IpNet>() {
        net.trunc()
    } else {
        return Err(Status::invalid_argument(format!(
            "{s:?} is not an IP address or network"
        )));
    };
    let min = match net {
        IpNet::V4(_) => 16,
        IpNet::V6(_) => 32,
    };
    if net.prefix_len() < min {
        return Err(Status::invalid_argument(format!(
            "{net} is too wide to ban (at most a /{min})"
        )));
    }
    let addr = net.addr();
    if addr.is_loopback() || addr.is_unspecified() {
        return Err(Status::invalid_argument(format!(
            "{net} is a loopback or unspecified address"
        )));
    }
    Ok(if net.prefix_len() == net.max_prefix_len() {
        addr.to_string()
    } else {
        net.to_string()
    })
}

/// A host's reported addresses: parsed, canonical, sorted, without the ones
/// that mean nothing to another host (loopback, unspecified, link-local,
/// multicast).
pub fn check_addresses(list: &[String]) -> Result<Vec<String>, Status> {
    if list.len() > MAX_ADDRESSES {
        return Err(Status::invalid_argument(format!(
            "more than {MAX_ADDRESSES} addresses"
        )));
    }
    let mut out = Vec::new();
    for a in list {
        let ip: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| Status::invalid_argument(format!("{a:?} is not an IP address")))?;
        if is_reportable(ip) {
            out.push(ip.to_string());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// What a host is known by: the addresses it reported (checked) and the one
/// its connection came from, when that is reportable (a NAT's public
/// address: what the tenant's other hosts see its trunks come from). The
/// second value is that address when the host did not report it itself.
pub fn known_addresses(
    reported: &[String],
    seen: Option<IpAddr>,
) -> Result<(Vec<String>, String), Status> {
    let mut all = check_addresses(reported)?;
    let seen = seen
        .map(|ip| ip.to_canonical())
        .filter(|ip| is_reportable(*ip))
        .map(|ip| ip.to_string())
        .filter(|ip| !all.contains(ip));
    if let Some(ip) = &seen {
        all.push(ip.clone());
        all.sort();
    }
    Ok((all, seen.unwrap_or_default()))
}

/// A name from a request, as a status.
pub fn check_name(what: &'static str, name: &str) -> Result<(), Status> {
    valid_name(what, name).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(canonical_target("192.0.2.7").unwrap(), "192.0.2.7");
        assert_eq!(canonical_target("192.0.2.7/24").unwrap(), "192.0.2.0/24");
        assert_eq!(canonical_target("2001:DB8::1").unwrap(), "2001:db8::1");
        assert_eq!(canonical_target("192.0.2.7/32").unwrap(), "192.0.2.7");
        assert!(canonical_target("0.0.0.0/0").is_err());
        assert!(canonical_target("10.0.0.0/8").is_err());
        assert!(canonical_target("127.0.0.1").is_err());
        assert!(canonical_target("evil.example.com").is_err());
    }

    #[test]
    fn ban_targets_cover_addresses_and_networks() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(covers("192.0.2.7", a));
        assert!(covers("192.0.2.0/24", a));
        assert!(!covers("192.0.3.0/24", a));
        assert!(!covers("192.0.2.8", a));
        assert!(!covers("2001:db8::/32", a));
    }

    #[test]
    fn addresses() {
        let got = check_addresses(&[
            "198.51.100.2".into(),
            "127.0.0.1".into(),
            "fe80::1".into(),
            "198.51.100.2".into(),
            "2001:db8::5".into(),
            "169.254.1.1".into(),
        ])
        .unwrap();
        assert_eq!(got, ["198.51.100.2", "2001:db8::5"]);
        assert!(check_addresses(&["nope".into()]).is_err());
        assert!(check_addresses(&vec!["192.0.2.1".to_string(); 65]).is_err());
    }

    #[test]
    fn the_address_a_host_connects_from_is_one_of_its_own() {
        let reported = ["10.0.0.5".to_string(), "2001:db8::5".to_string()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Behind NAT: the public address joins the reported ones.
        let (all, seen) = known_addresses(&reported, ip("203.0.113.7")).unwrap();
        assert_eq!(all, ["10.0.0.5", "2001:db8::5", "203.0.113.7"]);
        assert_eq!(seen, "203.0.113.7");
        // A v4 client of a dual-stack listener, written as v6.
        let (all, seen) = known_addresses(&reported, ip("::ffff:203.0.113.7")).unwrap();
        assert_eq!(all, ["10.0.0.5", "2001:db8::5", "203.0.113.7"]);
        assert_eq!(seen, "203.0.113.7");
        // Reported already: nothing only the connection told.
        let (all, seen) = known_addresses(&reported, ip("2001:db8::5")).unwrap();
        assert_eq!(all, ["10.0.0.5", "2001:db8::5"]);
        assert_eq!(seen, "");
        // Loopback (a controller on the same host) says nothing.
        let (all, seen) = known_addresses(&reported, ip("127.0.0.1")).unwrap();
        assert_eq!(all, ["10.0.0.5", "2001:db8::5"]);
        assert_eq!(seen, "");
        assert!(known_addresses(&["x".into()], ip("203.0.113.7")).is_err());
    }
}
