//! `OperatorService`: what the `palisade` CLI (and later the web console)
//! calls. Every operator is authenticated (client certificate or bearer
//! token) and, for now, may act on every tenant.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;

use palisade_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{self, OperatorTokens};
use crate::fleet::{ban_to_pb, canonical_target, check_ban, check_name, status_of, Fleet};
use crate::identity::{HostId, OperatorId};
use crate::store::{now_secs, AuditRecord, TokenRecord};
use crate::token::{new_secret, secret_hash, TokenClaims};

/// Default and longest validity of an enrolment token.
pub const TOKEN_DEFAULT_SECS: u32 = 3600;
pub const TOKEN_MAX_SECS: u32 = 30 * 86400;
/// Largest policy document.
pub const MAX_POLICY: usize = 256 * 1024;

pub struct OperatorApi {
    pub fleet: Arc<Fleet>,
    pub tokens: OperatorTokens,
}

/// An authenticated operator and what it is doing (for refusals).
struct Caller {
    op: OperatorId,
    /// `operator:<name>` or `operator:<tenant>/<name>`, for the audit trail.
    actor: String,
    action: &'static str,
}

impl OperatorApi {
    /// Authenticates the operator.
    fn who<T>(&self, req: &Request<T>, action: &'static str) -> Result<Caller, Status> {
        auth::operator(req, &self.tokens)
            .map(|op| Caller {
                actor: format!("operator:{op}"),
                op,
                action,
            })
            .inspect_err(|st| {
                let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
                self.fleet
                    .refused("", &format!("unknown@{peer}"), action, st);
            })
    }

    /// `tenant` is a valid name the caller may act on (an operator of one
    /// tenant is refused every other, and the refusal is audited there).
    fn may(&self, who: &Caller, tenant: &str) -> Result<(), Status> {
        check_name("tenant", tenant)?;
        if who.op.may(tenant) {
            return Ok(());
        }
        let st = Status::permission_denied(format!(
            "operator {} may act on tenant {:?} only",
            who.op,
            who.op.tenant.as_deref().unwrap_or_default()
        ));
        self.fleet.refused(tenant, &who.actor, who.action, &st);
        Err(st)
    }

    /// The caller may act on `tenant`, and it exists.
    fn tenant(&self, who: &Caller, tenant: &str) -> Result<(), Status> {
        self.may(who, tenant)?;
        match self.fleet.store.tenant(tenant).map_err(status_of)? {
            Some(_) => Ok(()),
            None => Err(Status::not_found(format!(
                "unknown tenant {tenant:?} (a tenant is created by its first token)"
            ))),
        }
    }

    /// For listings where an empty tenant means "every tenant": an operator
    /// of one tenant gets its own; `None` means every tenant.
    fn scope<'a>(&self, who: &'a Caller, tenant: &'a str) -> Result<Option<&'a str>, Status> {
        if tenant.is_empty() {
            return Ok(who.op.tenant.as_deref());
        }
        self.tenant(who, tenant)?;
        Ok(Some(tenant))
    }
}

impl OperatorApi {
    /// Extensions are names a PBX could use, and every service is in the
    /// catalogue of one of the tenant's policies (or the default one): an
    /// unknown name would open nothing at the hosts, silently.
    fn check_user_rules(
        &self,
        tenant: &str,
        users: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), Status> {
        let store = &self.fleet.store;
        let mut known: std::collections::BTreeSet<String> =
            palisade_model::parse_policy("", "the default policy")
                .map(|p| p.services.into_iter().map(|s| s.name).collect())
                .unwrap_or_default();
        let sites = store.sites(tenant).map_err(status_of)?;
        for site in std::iter::once(String::new()).chain(sites.into_iter().map(|s| s.name)) {
            if let Some(p) = store.policy(tenant, &site).map_err(status_of)? {
                if let Ok(policy) = palisade_model::parse_policy(&p.toml, "stored policy") {
                    known.extend(policy.services.into_iter().map(|s| s.name));
                }
            }
        }
        for (ext, services) in users {
            let ext_ok = !ext.is_empty()
                && ext.len() <= 64
                && ext
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+*#._-".contains(c));
            if !ext_ok {
                return Err(Status::invalid_argument(format!(
                    "user rules: {ext:?} is not an extension (letters, digits, + * # . _ -; at most 64)"
                )));
            }
            for name in services {
                if !known.contains(name) {
                    let list: Vec<&str> = known.iter().map(String::as_str).collect();
                    return Err(Status::invalid_argument(format!(
                        "user rules: extension {ext}: unknown service {name:?} (known: {})",
                        list.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }
}

macro_rules! rpc {
    ($name:literal, $body:expr) => {
        $body
            .instrument(tracing::info_span!("rpc", rpc = $name))
            .await
    };
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::operator_service_server::OperatorService for OperatorApi {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        rpc!("CreateToken", async {
            let who = self.who(&req, "token.create")?;
            let r = req.into_inner();
            self.may(&who, &r.tenant)?;
            check_name("site", &r.site)?;
            let valid = match r.valid_secs {
                0 => TOKEN_DEFAULT_SECS,
                v if v > TOKEN_MAX_SECS => {
                    return Err(Status::invalid_argument(format!(
                        "a token may be valid for at most {TOKEN_MAX_SECS} s"
                    )))
                }
                v => v,
            };
            let now = now_secs();
            let claims = TokenClaims {
                url: self.fleet.url.clone(),
                tenant: r.tenant.clone(),
                site: r.site.clone(),
                secret: new_secret(),
                ca_sha256: self.fleet.pki.ca_sha256(),
                exp: now + u64::from(valid),
            };
            let hash = secret_hash(&claims.secret).map_err(|e| Status::internal(e.to_string()))?;
            let record = TokenRecord {
                tenant: r.tenant.clone(),
                site: r.site.clone(),
                created_at: now,
                created_by: who.actor.clone(),
                expires_at: claims.exp,
                used_by: None,
            };
            let audit = AuditRecord::new(
                &r.tenant,
                &who.actor,
                "token.create",
                format!("site {}, expires {}", r.site, claims.exp),
            );
            self.fleet
                .store
                .create_token(&hash, &record, audit)
                .map_err(status_of)?;
            self.fleet.store.flush().await.map_err(status_of)?;
            Ok(Response::new(pb::CreateTokenResponse {
                token: claims.encode(),
                expires_at: claims.exp,
            }))
        })
    }

    async fn list_tenants(&self, req: Request<pb::ListRequest>) -> Reply<pb::ListTenantsResponse> {
        rpc!("ListTenants", async {
            let who = self.who(&req, "tenants.list")?;
            let store = &self.fleet.store;
            let mut tenants = Vec::new();
            for t in store.tenants().map_err(status_of)? {
                if !who.op.may(&t.name) {
                    continue;
                }
                let sites = store
                    .sites(&t.name)
                    .map_err(status_of)?
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                tenants.push(pb::Tenant {
                    name: t.name,
                    sites,
                });
            }
            Ok(Response::new(pb::ListTenantsResponse { tenants }))
        })
    }

    async fn list_hosts(&self, req: Request<pb::ListHostsRequest>) -> Reply<pb::ListHostsResponse> {
        rpc!("ListHosts", async {
            let who = self.who(&req, "hosts.list")?;
            let tenant = req.into_inner().tenant;
            let filter = self.scope(&who, &tenant)?;
            let hosts = self
                .fleet
                .store
                .hosts(filter)
                .map_err(status_of)?
                .into_iter()
                .map(|h| pb::Host {
                    connected: self.fleet.is_connected(&h.id()),
                    tenant: h.tenant,
                    site: h.site,
                    name: h.name,
                    addresses: h.addresses,
                    last_seen: h.last_seen,
                    revision: h.revision_acked,
                    revoked: h.revoked,
                    agent_version: h.agent_version,
                    policy_revision: h.policy_revision,
                    policy_error: h.policy_error.unwrap_or_default(),
                    seen_from: h.seen_from,
                })
                .collect();
            Ok(Response::new(pb::ListHostsResponse { hosts }))
        })
    }

    async fn revoke_host(&self, req: Request<pb::HostRef>) -> Reply<pb::Empty> {
        rpc!("RevokeHost", async {
            let who = self.who(&req, "host.revoke")?;
            let r = req.into_inner();
            self.may(&who, &r.tenant)?;
            check_name("site", &r.site)?;
            check_name("host", &r.host)?;
            let id = HostId::new(&r.tenant, &r.site, &r.host);
            self.fleet
                .revoke(&id, &who.actor)
                .await
                .map_err(status_of)?;
            tracing::info!(host = %id, by = %who.actor, "host revoked");
            Ok(Response::new(pb::Empty {}))
        })
    }

    async fn get_policy(&self, req: Request<pb::ScopeRef>) -> Reply<pb::PolicyDocument> {
        rpc!("GetPolicy", async {
            let who = self.who(&req, "policy.get")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            match self
                .fleet
                .store
                .policy(&r.tenant, &r.site)
                .map_err(status_of)?
            {
                Some(p) => Ok(Response::new(pb::PolicyDocument {
                    tenant: p.tenant,
                    site: p.site,
                    toml: p.toml,
                    revision: p.revision,
                })),
                None => Err(Status::not_found(format!(
                    "no policy set for {}{}",
                    r.tenant,
                    if r.site.is_empty() {
                        " (tenant default)".to_string()
                    } else {
                        format!("/{}", r.site)
                    }
                ))),
            }
        })
    }

    async fn set_policy(&self, req: Request<pb::PolicyDocument>) -> Reply<pb::Empty> {
        rpc!("SetPolicy", async {
            let who = self.who(&req, "policy.set")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            if !r.site.is_empty() {
                check_name("site", &r.site)?;
            }
            let refuse = |st: Status| {
                self.fleet.refused(&r.tenant, &who.actor, "policy.set", &st);
                st
            };
            if r.toml.len() > MAX_POLICY {
                return Err(refuse(Status::invalid_argument(format!(
                    "the policy is larger than {MAX_POLICY} bytes"
                ))));
            }
            let file = format!(
                "policy of {}/{}",
                r.tenant,
                if r.site.is_empty() { "*" } else { &r.site }
            );
            if let Err(e) = palisade_model::parse_policy(&r.toml, &file) {
                return Err(refuse(Status::invalid_argument(format!(
                    "the policy does not validate: {e}"
                ))));
            }
            let entry = self
                .fleet
                .set_policy(&r.tenant, &r.site, &r.toml, &who.actor)
                .await
                .map_err(status_of)?;
            tracing::info!(revision = entry.revision, "policy stored");
            Ok(Response::new(pb::Empty {}))
        })
    }

    async fn set_user_rules(&self, req: Request<pb::UserRulesRequest>) -> Reply<pb::Empty> {
        rpc!("SetUserRules", async {
            let who = self.who(&req, "user_rules.set")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            let users: BTreeMap<String, Vec<String>> = r
                .rules
                .unwrap_or_default()
                .users
                .into_iter()
                .map(|(k, v)| (k, v.services))
                .collect();
            if let Err(st) = self.check_user_rules(&r.tenant, &users) {
                self.fleet
                    .refused(&r.tenant, &who.actor, "user_rules.set", &st);
                return Err(st);
            }
            let audit = AuditRecord::new(
                &r.tenant,
                &who.actor,
                "user_rules.set",
                format!("{} users", users.len()),
            );
            let entry = self
                .fleet
                .store
                .set_user_rules(&r.tenant, &users, &who.actor, audit)
                .map_err(status_of)?;
            self.fleet
                .commit(Some(entry), Instant::now())
                .await
                .map_err(status_of)?;
            Ok(Response::new(pb::Empty {}))
        })
    }

    async fn get_user_rules(&self, req: Request<pb::ScopeRef>) -> Reply<pb::UserRules> {
        rpc!("GetUserRules", async {
            let who = self.who(&req, "user_rules.get")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            let users = self
                .fleet
                .store
                .user_rules(&r.tenant)
                .map_err(status_of)?
                .map(|(_, users)| crate::fleet::user_rules_to_pb(&users))
                .unwrap_or_default();
            Ok(Response::new(users))
        })
    }

    async fn list_bans(&self, req: Request<pb::ScopeRef>) -> Reply<pb::ListBansResponse> {
        rpc!("ListBans", async {
            let who = self.who(&req, "bans.list")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            let now = now_secs();
            let site_prefix = format!("{}/{}/", r.tenant, r.site);
            let bans = self
                .fleet
                .store
                .bans(&r.tenant)
                .map_err(status_of)?
                .into_iter()
                .filter(|b| b.ban.live_at(now))
                .filter(|b| r.site.is_empty() || b.ban.origin.starts_with(&site_prefix))
                .map(|b| ban_to_pb(&b.ban))
                .collect();
            Ok(Response::new(pb::ListBansResponse { bans }))
        })
    }

    async fn add_ban(&self, req: Request<pb::AddBanRequest>) -> Reply<pb::Empty> {
        rpc!("AddBan", async {
            let started = Instant::now();
            let who = self.who(&req, "ban.add")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            let now = now_secs();
            let mut ban = check_ban(r.ban, &who.actor, now).inspect_err(|st| {
                self.fleet.refused(&r.tenant, &who.actor, "ban.add", st);
            })?;
            if ban.reason == "unspecified" {
                ban.reason = "manual".into();
            }
            if ban.expires_at != 0 && ban.expires_at <= now {
                return Err(Status::invalid_argument(
                    "the ban's expires_at is in the past",
                ));
            }
            if let Some(why) = self
                .fleet
                .unbannable(&r.tenant, &ban.address)
                .map_err(status_of)?
            {
                let st = Status::failed_precondition(format!("refusing the ban: {why}"));
                self.fleet.refused(&r.tenant, &who.actor, "ban.add", &st);
                return Err(st);
            }
            metrics::counter!("palisade_controller_bans_received_total", "source" => "operator")
                .increment(1);
            self.fleet
                .add_ban(&r.tenant, ban, &who.actor, started)
                .await
                .map_err(status_of)?;
            Ok(Response::new(pb::Empty {}))
        })
    }

    async fn lift_ban(&self, req: Request<pb::LiftBanRequest>) -> Reply<pb::Empty> {
        rpc!("LiftBan", async {
            let who = self.who(&req, "ban.lift")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            let address = canonical_target(&r.address)?;
            self.fleet
                .lift_ban(&r.tenant, &address, &who.actor)
                .await
                .map_err(status_of)?;
            Ok(Response::new(pb::Empty {}))
        })
    }

    async fn explain(&self, req: Request<pb::ExplainRequest>) -> Reply<pb::ExplainResponse> {
        rpc!("Explain", async {
            let who = self.who(&req, "explain")?;
            let r = req.into_inner();
            self.tenant(&who, &r.tenant)?;
            let address: IpAddr = r.address.trim().parse().map_err(|_| {
                Status::invalid_argument(format!("{:?} is not an IP address", r.address))
            })?;
            let port = r.port.trim();
            if !port.is_empty() {
                port.parse::<palisade_model::PortSpec>().map_err(|e| {
                    Status::invalid_argument(format!("port {port:?}: {e} (e.g. 5060/udp)"))
                })?;
            }
            let answer = crate::explain::explain(
                &self.fleet,
                &r.tenant,
                address,
                port,
                crate::explain::ANSWER_WITHIN,
            )
            .await?;
            Ok(Response::new(answer))
        })
    }

    async fn audit(&self, req: Request<pb::AuditRequest>) -> Reply<pb::AuditResponse> {
        rpc!("Audit", async {
            let who = self.who(&req, "audit")?;
            let r = req.into_inner();
            let tenant = self.scope(&who, &r.tenant)?.unwrap_or_default();
            let limit = match r.limit {
                0 => 100,
                n => n.min(10_000),
            } as usize;
            let entries = self
                .fleet
                .store
                .audit_log(tenant, limit)
                .map_err(status_of)?
                .into_iter()
                .map(|a| pb::AuditEntry {
                    at: a.at_micros / 1_000_000,
                    actor: a.actor,
                    action: a.action,
                    detail: a.detail,
                    refused: a.refused,
                })
                .collect();
            Ok(Response::new(pb::AuditResponse { entries }))
        })
    }

    type EventsStream = ReceiverStream<Result<pb::AgentEvent, Status>>;

    /// Every event of the tenant (or of one site) from now on, until the
    /// operator hangs up. A watcher that falls behind is told how many
    /// events it missed rather than cut off.
    async fn events(&self, req: Request<pb::ScopeRef>) -> Reply<Self::EventsStream> {
        rpc!("Events", async {
            let who = self.who(&req, "events")?;
            let mut r = req.into_inner();
            r.tenant = self.scope(&who, &r.tenant)?.unwrap_or_default().to_string();
            if !r.site.is_empty() {
                check_name("site", &r.site)?;
            }
            let mut events = self.fleet.watch_events();
            let (tx, rx) = tokio::sync::mpsc::channel(256);
            let site_prefix = format!("{}/{}/", r.tenant, r.site);
            tracing::info!(operator = %who.actor, tenant = %r.tenant, site = %r.site, "watching events");
            tokio::spawn(async move {
                loop {
                    let ev = tokio::select! {
                        ev = events.recv() => ev,
                        _ = tx.closed() => break,
                    };
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            Arc::new(crate::fleet::event(
                                &r.tenant,
                                "controller",
                                "lagged",
                                "",
                                format!("{n} events were dropped: this watcher fell behind"),
                            ))
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    let wanted = (r.tenant.is_empty() || ev.tenant == r.tenant)
                        && (r.site.is_empty() || ev.host.starts_with(&site_prefix));
                    if wanted && tx.send(Ok((*ev).clone())).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}
