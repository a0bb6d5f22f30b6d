//! `AgentService`: enrolment and the per-agent sync stream.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_proto::v1 as pb;
use pb::agent_message::Body as Up;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth;
use crate::fleet::{check_ban, check_name, event, known_addresses, status_of, Cut, Fleet, Live};
use crate::identity::HostId;
use crate::store::{now_secs, AuditRecord, Change, Enrolment, HostSeen, RevEntry, StoreError};
use crate::token::TokenClaims;

/// How long the agent has to send its Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest CSR accepted.
const MAX_CSR: usize = 16 * 1024;
/// Messages queued towards one agent.
const OUT_QUEUE: usize = 256;

pub struct AgentApi {
    pub fleet: Arc<Fleet>,
}

fn peer_addr<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "?".into())
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = peer_addr(&req);
        let span = tracing::info_span!("rpc", rpc = "Enroll", %peer, host = tracing::field::Empty);
        async move {
            let r = req.into_inner();
            let actor = format!("enrol:{}@{peer}", r.hostname);
            let fleet = &self.fleet;
            let refuse = |tenant: &str, st: Status| {
                fleet.refused(tenant, &actor, "host.enroll", &st);
                st
            };
            let claims = TokenClaims::decode(&r.token)
                .map_err(|e| refuse("", Status::unauthenticated(e.to_string())))?;
            let hash = claims
                .secret_hash()
                .map_err(|e| refuse("", Status::unauthenticated(e.to_string())))?;
            let token = fleet
                .store
                .token(&hash)
                .map_err(status_of)?
                .ok_or_else(|| refuse("", Status::unauthenticated("unknown enrolment token")))?;
            check_name("host", &r.hostname).map_err(|st| refuse(&token.tenant, st))?;
            if r.csr_pem.len() > MAX_CSR {
                return Err(refuse(
                    &token.tenant,
                    Status::invalid_argument(format!("the CSR is larger than {MAX_CSR} bytes")),
                ));
            }
            let host = HostId::new(&token.tenant, &token.site, &r.hostname);
            tracing::Span::current().record("host", tracing::field::display(&host));
            let signed = fleet
                .pki
                .sign_agent(&r.csr_pem, &host)
                .map_err(|e| refuse(&token.tenant, Status::invalid_argument(e.to_string())))?;
            let now = now_secs();
            let audit = AuditRecord::new(
                &host.tenant,
                &format!("agent:{host}"),
                "host.enroll",
                format!("from {peer}, certificate serial {}", signed.serial),
            );
            let e = Enrolment {
                host: host.clone(),
                cert_serial: signed.serial.clone(),
                now,
            };
            match fleet.store.enroll(&hash, &e, audit) {
                Ok(_) => {}
                Err(err @ StoreError::Refused(_)) => {
                    return Err(refuse(&host.tenant, status_of(err)));
                }
                Err(err) => return Err(status_of(err)),
            }
            fleet.store.flush().await.map_err(status_of)?;
            tracing::info!("enrolled");
            Ok(Response::new(pb::EnrollResponse {
                certificate_pem: signed.cert_pem,
                ca_pem: fleet.pki.ca_pem().to_string(),
                tenant: host.tenant,
                site: host.site,
                host: host.host,
            }))
        }
        .instrument(span)
        .await
    }

    type SyncStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn sync(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = peer_addr(&req);
        let req_ip = req.remote_addr().map(|a| a.ip());
        let span = tracing::info_span!("rpc", rpc = "Sync", %peer, host = tracing::field::Empty);
        let fleet = self.fleet.clone();
        let (me, serial) = match auth::agent(&req) {
            Ok(x) => x,
            Err(st) => {
                fleet.refused("", &format!("unknown@{peer}"), "sync", &st);
                return Err(st);
            }
        };
        span.record("host", tracing::field::display(&me));
        let actor = format!("agent:{me}");
        let refuse = |st: Status| {
            fleet.refused(&me.tenant, &actor, "sync", &st);
            st
        };
        // The certificate must be the host's current one, and not revoked.
        let record = fleet.store.host(&me).map_err(status_of)?;
        match record {
            None => {
                return Err(refuse(Status::permission_denied(format!(
                    "host {me} is not enrolled with this controller"
                ))))
            }
            Some(h) if h.revoked => {
                return Err(refuse(Status::permission_denied(format!(
                    "host {me} is revoked"
                ))))
            }
            Some(h) if h.cert_serial != serial => {
                return Err(refuse(Status::permission_denied(format!(
                    "this certificate of {me} was replaced by a newer enrolment"
                ))))
            }
            Some(_) => {}
        }
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(Up::Hello(h)) => h,
            _ => {
                return Err(refuse(Status::invalid_argument(
                    "the first message of Sync must be Hello",
                )))
            }
        };
        if hello.protocol_version == 0 {
            return Err(refuse(Status::invalid_argument(
                "Hello.protocol_version is missing",
            )));
        }
        let seen_ip = req_ip.filter(|_| fleet.trust_seen_addresses);
        let (addresses, seen_from) = known_addresses(&hello.addresses, seen_ip).map_err(&refuse)?;

        // Listen before reading the store: nothing committed from here on
        // can be missed.
        let live = fleet.subscribe(&me.tenant);
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let (conn, cut) = fleet.register(&me, tx.clone());
        let seen = HostSeen {
            now: now_secs(),
            addresses: Some(addresses),
            seen_from: Some(seen_from),
            agent_version: Some(hello.agent_version.clone()),
            revision_acked: Some(hello.last_revision),
        };
        let entry = match fleet.store.host_seen(&me, &seen) {
            Ok(e) => e,
            Err(e) => {
                fleet.deregister(&me, conn);
                return Err(status_of(e));
            }
        };
        if let Err(e) = fleet.commit(entry, Instant::now()).await {
            fleet.deregister(&me, conn);
            return Err(status_of(e));
        }

        fleet.publish(event(
            &me.tenant,
            &me.to_string(),
            "online",
            &peer,
            format!(
                "connected (agent {}, protocol {}, from revision {})",
                hello.agent_version, hello.protocol_version, hello.last_revision
            ),
        ));
        let session = Session {
            fleet: fleet.clone(),
            me: me.clone(),
            me_str: me.to_string(),
            actor,
            tx,
            sent: 0,
            seen_ip,
        };
        tracing::info!(parent: &span, last_revision = hello.last_revision, version = %hello.agent_version, "agent connected");
        tokio::spawn(
            session
                .run(hello.last_revision, inbound, live, cut, conn)
                .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Session {
    fleet: Arc<Fleet>,
    me: HostId,
    me_str: String,
    actor: String,
    tx: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    /// The revision this agent has been brought to (sent, or not for it).
    sent: u64,
    /// Where the stream comes from, when that counts among the host's
    /// addresses (see [`known_addresses`]).
    seen_ip: Option<IpAddr>,
}

/// The session ends: the agent went away (or the status to end it with).
enum End {
    Gone,
    Status(Status),
}

impl From<Status> for End {
    fn from(s: Status) -> End {
        End::Status(s)
    }
}

impl Session {
    async fn run(
        mut self,
        last_revision: u64,
        mut inbound: Streaming<pb::AgentMessage>,
        mut live: broadcast::Receiver<Arc<Live>>,
        mut cut: watch::Receiver<Option<Cut>>,
        conn: u64,
    ) {
        let end = match self.start(last_revision).await {
            Err(end) => end,
            // Unbiased: an agent busy reporting still gets the fan-out, and
            // a busy tenant does not keep an agent's reports waiting.
            Ok(()) => loop {
                let step: Result<(), End> = tokio::select! {
                    changed = cut.changed() => {
                        let c = cut.borrow().clone();
                        match (changed, c) {
                            (Ok(()), Some(c)) => Err(End::Status(Status::new(c.code, c.message))),
                            (Ok(()), None) => Ok(()),
                            (Err(_), _) => Err(End::Status(Status::unavailable("controller shutting down"))),
                        }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(m)) => self.handle(m).await,
                        Ok(None) => Err(End::Gone),
                        Err(st) => {
                            tracing::debug!(status = %st, "agent stream ended");
                            // Oversized or undecodable: tell the agent why.
                            Err(End::Status(st))
                        }
                    },
                    l = live.recv() => match l {
                        Ok(l) => self.forward(&l).await,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(missed = n, "session lagged; catching up from the store");
                            self.catch_up().await
                        }
                        Err(broadcast::error::RecvError::Closed) => Err(End::Gone),
                    },
                    _ = self.tx.closed() => Err(End::Gone),
                };
                if let Err(end) = step {
                    break end;
                }
            },
        };
        if let End::Status(st) = end {
            tracing::info!(code = ?st.code(), message = st.message(), "session ended");
            let _ = self.tx.send(Err(st)).await;
        } else {
            tracing::info!("agent disconnected");
        }
        self.fleet.deregister(&self.me, conn);
        if !self.fleet.is_connected(&self.me) {
            self.fleet.publish(event(
                &self.me.tenant,
                &self.me_str,
                "offline",
                "",
                "disconnected".into(),
            ));
        }
        let seen = HostSeen {
            now: now_secs(),
            ..HostSeen::default()
        };
        let _ = self.fleet.store.host_seen(&self.me, &seen);
    }

    async fn send(&self, m: pb::ControllerMessage) -> Result<(), End> {
        self.tx.send(Ok(m)).await.map_err(|_| End::Gone)
    }

    /// Welcome, then the deltas after `last_revision` or a snapshot.
    async fn start(&mut self, last_revision: u64) -> Result<(), End> {
        let fleet = self.fleet.clone();
        let store = &fleet.store;
        let deltas = if last_revision > 0 {
            store
                .changes_since(&self.me.tenant, last_revision)
                .map_err(status_of)?
        } else {
            None
        };
        // What was read may hold other requests' changes, committed but not
        // yet flushed: nothing goes to an agent before it is durable, or a
        // crash could hand the same revision to another change.
        store.flush().await.map_err(status_of)?;
        let welcome = |snapshot: bool, revision: u64| pb::ControllerMessage {
            revision,
            body: Some(pb::controller_message::Body::Welcome(pb::Welcome {
                tenant: self.me.tenant.clone(),
                site: self.me.site.clone(),
                host: self.me.host.clone(),
                snapshot,
            })),
        };
        match deltas {
            Some(entries) => {
                tracing::info!(from = last_revision, deltas = entries.len(), "resuming");
                self.send(welcome(false, last_revision)).await?;
                self.sent = last_revision;
                for e in &entries {
                    self.deliver(e).await?;
                }
            }
            None => {
                let (revision, messages) = fleet.snapshot(&self.me).map_err(status_of)?;
                store.flush().await.map_err(status_of)?;
                tracing::info!(revision, last_revision, "sending a snapshot");
                self.send(welcome(true, revision)).await?;
                for m in messages {
                    self.send(m).await?;
                }
                self.sent = revision;
            }
        }
        Ok(())
    }

    /// Sends `e` if it is for this host; the agent is at `e.revision` after.
    async fn deliver(&mut self, e: &RevEntry) -> Result<bool, End> {
        let m = self.fleet.message_for(e, &self.me);
        let sent = m.is_some();
        if let Some(m) = m {
            self.send(m).await?;
        }
        self.sent = self.sent.max(e.revision);
        Ok(sent)
    }

    async fn catch_up(&mut self) -> Result<(), End> {
        let fleet = self.fleet.clone();
        let entries = fleet
            .store
            .changes_since(&self.me.tenant, self.sent)
            .map_err(status_of)?;
        // As in `start`: durable before it is sent.
        fleet.store.flush().await.map_err(status_of)?;
        match entries {
            Some(entries) => {
                for e in &entries {
                    self.deliver(e).await?;
                }
                Ok(())
            }
            None => Err(End::Status(Status::aborted(
                "this agent fell too far behind the revision log; reconnect for a snapshot",
            ))),
        }
    }

    async fn forward(&mut self, l: &Live) -> Result<(), End> {
        let rev = l.entry.revision;
        if rev <= self.sent {
            return Ok(());
        }
        let delivered = if rev == self.sent + 1 {
            self.deliver(&l.entry).await?
        } else {
            // Published out of order (or lost): the store has it all.
            self.catch_up().await?;
            self.fleet.message_for(&l.entry, &self.me).is_some()
        };
        if delivered && matches!(l.entry.change, Change::BanAdded { .. }) {
            metrics::counter!("palisade_controller_bans_fanned_out_total").increment(1);
            metrics::histogram!("palisade_controller_fanout_seconds")
                .record(l.started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn handle(&mut self, m: pb::AgentMessage) -> Result<(), End> {
        let fleet = self.fleet.clone();
        match m.body {
            None => Err(Status::invalid_argument("empty AgentMessage").into()),
            Some(Up::Hello(h)) => self.seen(Some(&h.addresses)).await,
            Some(Up::Heartbeat(h)) => {
                // No addresses: unchanged.
                let addrs = (!h.addresses.is_empty()).then_some(&h.addresses);
                self.seen(addrs).await
            }
            Some(Up::Ban(report)) => {
                let started = Instant::now();
                let now = now_secs();
                let ban = check_ban(report.ban, &self.me_str, now).inspect_err(|st| {
                    fleet.refused(&self.me.tenant, &self.actor, "ban.add", st);
                })?;
                if ban.expires_at != 0 && ban.expires_at <= now {
                    return Ok(());
                }
                // Never share a ban on the controller or the tenant's hosts.
                if let Some(why) = fleet
                    .unbannable(&self.me.tenant, &ban.address)
                    .map_err(status_of)?
                {
                    let st = Status::failed_precondition(format!("{why}; not shared"));
                    fleet.refused(&self.me.tenant, &self.actor, "ban.add", &st);
                    return Ok(());
                }
                metrics::counter!("palisade_controller_bans_received_total", "source" => "agent")
                    .increment(1);
                fleet
                    .add_ban(&self.me.tenant, ban, &self.actor, started)
                    .await
                    .map_err(status_of)?;
                Ok(())
            }
            Some(Up::Event(ev)) => {
                metrics::counter!("palisade_controller_agent_events_total").increment(1);
                tracing::info!(kind = %ev.kind, address = %ev.address, summary = %ev.summary, "agent event");
                // Who and which tenant come from the certificate, never the message.
                fleet.publish(pb::AgentEvent {
                    host: self.me_str.clone(),
                    tenant: self.me.tenant.clone(),
                    ..ev
                });
                Ok(())
            }
            Some(Up::Explain(answer)) => {
                fleet.answer(&self.me, answer);
                Ok(())
            }
            Some(Up::PolicyResult(r)) => {
                let audit = AuditRecord {
                    refused: !r.applied,
                    ..AuditRecord::new(
                        &self.me.tenant,
                        &self.actor,
                        "policy.result",
                        if r.applied {
                            format!("revision {} applied", r.revision)
                        } else {
                            format!("revision {} not applied: {}", r.revision, r.error)
                        },
                    )
                };
                fleet.publish(event(
                    &self.me.tenant,
                    &self.me_str,
                    "policy",
                    "",
                    audit.detail.clone(),
                ));
                let error = (!r.applied).then(|| r.error.clone());
                fleet
                    .store
                    .policy_result(&self.me, r.revision, error, audit)
                    .map_err(status_of)?;
                Ok(())
            }
        }
    }

    async fn seen(&mut self, addresses: Option<&Vec<String>>) -> Result<(), End> {
        let fleet = self.fleet.clone();
        let (addresses, seen_from) = match addresses {
            Some(a) => {
                let (all, seen) = known_addresses(a, self.seen_ip)?;
                (Some(all), Some(seen))
            }
            None => (None, None),
        };
        let seen = HostSeen {
            now: now_secs(),
            addresses,
            seen_from,
            ..HostSeen::default()
        };
        let entry = fleet.store.host_seen(&self.me, &seen).map_err(status_of)?;
        if let Some(e) = &entry {
            if let Change::Trust { added, removed, .. } = &e.change {
                fleet.publish(event(
                    &self.me.tenant,
                    &self.me_str,
                    "address",
                    "",
                    format!("addresses added {added:?}, removed {removed:?}"),
                ));
            }
            fleet
                .commit(entry, Instant::now())
                .await
                .map_err(status_of)?;
        }
        Ok(())
    }
}
