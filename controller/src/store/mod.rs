//! The controller's durable state, behind a small trait so a replicated store
//! can replace sled later without touching the API.
//!
//! Every method that changes state is atomic: a ban is stored together with
//! its entry in the tenant's revision log and its audit record, or not at
//! all. Writes are visible at once but durable only after [`Store::flush`]:
//! callers flush before they acknowledge anything (an RPC reply, a delta
//! pushed to other agents).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::identity::HostId;

pub mod sled_store;

pub use sled_store::SledStore;

/// The schema version this build writes. A data directory with a newer one
/// is refused; older ones are migrated forward when opened.
pub const SCHEMA_VERSION: u32 = 1;

/// A tenant: its current revision and how far back its log goes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantRecord {
    pub name: String,
    pub created_at: u64,
    /// The latest revision (0: nothing happened yet).
    pub revision: u64,
    /// Every revision after this one is still in the log (compaction raises it).
    pub log_floor: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SiteRecord {
    pub tenant: String,
    pub name: String,
    pub created_at: u64,
}

/// One enrolled agent host.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostRecord {
    pub tenant: String,
    pub site: String,
    pub name: String,
    /// The addresses the host reported (the tenant's other hosts trust them).
    pub addresses: Vec<String>,
    pub enrolled_at: u64,
    pub last_seen: u64,
    /// The last revision the agent said it applied (in its Hello).
    pub revision_acked: u64,
    pub revoked: bool,
    pub agent_version: String,
    /// Hex of the serial of the only certificate accepted for this host.
    pub cert_serial: String,
    /// The last policy result the agent reported.
    #[serde(default)]
    pub policy_revision: u64,
    #[serde(default)]
    pub policy_error: Option<String>,
    /// The address the controller last saw the agent connect from, when
    /// the agent did not report it itself (a NAT's public address); it is
    /// in `addresses` too. Empty: none such.
    #[serde(default)]
    pub seen_from: String,
}

impl HostRecord {
    pub fn id(&self) -> HostId {
        HostId::new(&self.tenant, &self.site, &self.name)
    }
}

/// A one-time enrolment token; stored under the SHA-256 of its secret.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub tenant: String,
    pub site: String,
    pub created_at: u64,
    pub created_by: String,
    pub expires_at: u64,
    /// The host that used it, once used.
    pub used_by: Option<String>,
}

/// A ban as stored (the wire `Ban` without the prost machinery).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BanInfo {
    pub address: String,
    pub reason: String,
    pub detail: String,
    pub evidence: Vec<String>,
    pub banned_at: u64,
    /// Unix seconds; 0: never.
    pub expires_at: u64,
    /// `tenant/site/host` of the agent that proved it, or `operator:<name>`.
    pub origin: String,
}

impl BanInfo {
    pub fn live_at(&self, now: u64) -> bool {
        self.expires_at == 0 || self.expires_at > now
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BanRecord {
    pub ban: BanInfo,
    /// The revision that added (or last extended) it.
    pub revision: u64,
}

/// One change in a tenant's revision log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    BanAdded {
        ban: BanInfo,
    },
    BanLifted {
        address: String,
    },
    /// A host's addresses changed: `host` is `tenant/site/host`.
    Trust {
        host: String,
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// The policy of `site` ("" for the tenant's default) is now `toml`.
    Policy {
        site: String,
        toml: String,
    },
    UserRules {
        users: BTreeMap<String, Vec<String>>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevEntry {
    pub tenant: String,
    pub revision: u64,
    pub at: u64,
    /// Who made it: `agent:t/s/h`, `operator:name`, `controller`.
    pub actor: String,
    pub change: Change,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRecord {
    pub tenant: String,
    pub site: String,
    pub toml: String,
    pub revision: u64,
    pub set_by: String,
    pub set_at: u64,
}

/// One line of the audit trail.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// Unix microseconds (the trail is ordered by it).
    pub at_micros: u64,
    /// "" when the tenant is not known (an unknown token).
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub detail: String,
    pub refused: bool,
}

impl AuditRecord {
    pub fn new(tenant: &str, actor: &str, action: &str, detail: impl Into<String>) -> Self {
        AuditRecord {
            at_micros: now_micros(),
            tenant: tenant.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            detail: detail.into(),
            refused: false,
        }
    }

    pub fn refused(mut self) -> Self {
        self.refused = true;
        self
    }
}

/// Extension → service names.
pub type UserRulesMap = BTreeMap<String, Vec<String>>;

/// How many records each tree holds (tests check that a refusal changed nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub tenants: usize,
    pub sites: usize,
    pub hosts: usize,
    pub tokens: usize,
    pub tokens_used: usize,
    pub bans: usize,
    pub revisions: usize,
    pub policies: usize,
    pub audit: usize,
}

impl StoreCounts {
    /// Everything but the audit trail (which records refusals too).
    pub fn without_audit(&self) -> StoreCounts {
        StoreCounts {
            audit: 0,
            ..self.clone()
        }
    }
}

/// Why a change was refused (nothing was stored).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("unknown enrolment token")]
    UnknownToken,
    #[error("enrolment token already used (by {0})")]
    TokenUsed(String),
    #[error("enrolment token expired at {0} (unix seconds)")]
    TokenExpired(u64),
    #[error(
        "host {0} is already enrolled; revoke it first (palisade host revoke) to enrol it again"
    )]
    HostExists(String),
    #[error("no host {0}")]
    NoSuchHost(String),
    #[error("unknown tenant {0:?}")]
    NoSuchTenant(String),
    #[error("no ban on {address} in tenant {tenant}")]
    NoSuchBan { tenant: String, address: String },
    #[error("host {0} is revoked")]
    Revoked(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record in tree {tree}: {error}")]
    Corrupt { tree: &'static str, error: String },
    #[error(
        "the data directory has schema version {found}, newer than the {supported} this controller knows; run a newer palisade-controller (or restore a backup)"
    )]
    NewerSchema { found: u32, supported: u32 },
    #[error("store: migrating schema {from} → {to}: {error}")]
    Migration { from: u32, to: u32, error: String },
    #[error(transparent)]
    Refused(#[from] Refusal),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub type FlushFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// A new host entering the store through a token.
#[derive(Clone, Debug)]
pub struct Enrolment {
    pub host: HostId,
    pub cert_serial: String,
    pub now: u64,
}

/// The controller's durable state.
pub trait Store: Send + Sync + 'static {
    /// Makes every write so far durable.
    fn flush(&self) -> FlushFuture<'_>;

    fn schema_version(&self) -> Result<u32>;

    // ---- tenants, sites
    fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>>;
    fn tenants(&self) -> Result<Vec<TenantRecord>>;
    fn sites(&self, tenant: &str) -> Result<Vec<SiteRecord>>;

    // ---- tokens and enrolment
    /// Stores a token (under the hash of its secret); creates the tenant and
    /// site when they are new.
    fn create_token(
        &self,
        secret_hash: &[u8],
        token: &TokenRecord,
        audit: AuditRecord,
    ) -> Result<()>;
    /// Looks a token up by the hash of its secret.
    fn token(&self, secret_hash: &[u8]) -> Result<Option<TokenRecord>>;
    /// Consumes the token and stores the host, in one transaction. Refused
    /// (and nothing changed) when the token is unknown, used or expired, or
    /// the host is enrolled and not revoked. `e.host`'s tenant and site must
    /// be the token's. A revoked host enrolled again starts afresh (new
    /// certificate serial, no addresses).
    fn enroll(&self, secret_hash: &[u8], e: &Enrolment, audit: AuditRecord) -> Result<HostRecord>;

    // ---- hosts
    fn host(&self, id: &HostId) -> Result<Option<HostRecord>>;
    /// All hosts, or one tenant's.
    fn hosts(&self, tenant: Option<&str>) -> Result<Vec<HostRecord>>;
    /// A Hello or Heartbeat: records when, what version, what it applied and
    /// its addresses; a change of addresses goes into the revision log as a
    /// trust change (returned).
    fn host_seen(&self, id: &HostId, seen: &HostSeen) -> Result<Option<RevEntry>>;
    /// Marks the host revoked; its addresses leave the tenant's trust.
    fn revoke_host(&self, id: &HostId, audit: AuditRecord) -> Result<Option<RevEntry>>;
    fn policy_result(
        &self,
        id: &HostId,
        revision: u64,
        error: Option<String>,
        audit: AuditRecord,
    ) -> Result<()>;

    // ---- bans
    /// Stores (or extends) a ban. `None` when an equal or longer ban on the
    /// address is already stored (nothing changed, nothing to fan out).
    fn add_ban(&self, tenant: &str, ban: &BanInfo, audit: AuditRecord) -> Result<Option<RevEntry>>;
    fn lift_ban(
        &self,
        tenant: &str,
        address: &str,
        actor: &str,
        audit: AuditRecord,
    ) -> Result<RevEntry>;
    fn bans(&self, tenant: &str) -> Result<Vec<BanRecord>>;
    /// Removes bans that expired before `before` (no revision: agents expire
    /// them on their own). Returns how many.
    fn sweep_bans(&self, before: u64) -> Result<usize>;

    // ---- policy, user rules
    fn set_policy(
        &self,
        tenant: &str,
        site: &str,
        toml: &str,
        actor: &str,
        audit: AuditRecord,
    ) -> Result<RevEntry>;
    fn policy(&self, tenant: &str, site: &str) -> Result<Option<PolicyRecord>>;
    fn set_user_rules(
        &self,
        tenant: &str,
        users: &BTreeMap<String, Vec<String>>,
        actor: &str,
        audit: AuditRecord,
    ) -> Result<RevEntry>;
    /// The tenant's user rules and the revision that set them.
    fn user_rules(&self, tenant: &str) -> Result<Option<(u64, UserRulesMap)>>;

    // ---- revisions
    /// The entries after `after`, oldest first; `None` when the log no longer
    /// reaches back that far (or `after` is beyond the current revision):
    /// the agent needs a snapshot.
    fn changes_since(&self, tenant: &str, after: u64) -> Result<Option<Vec<RevEntry>>>;
    /// Keeps the newest `keep` entries of the tenant's log.
    fn compact(&self, tenant: &str, keep: u64) -> Result<usize>;

    // ---- audit
    fn audit(&self, record: AuditRecord) -> Result<()>;
    /// Newest first; `tenant` "" for all.
    fn audit_log(&self, tenant: &str, limit: usize) -> Result<Vec<AuditRecord>>;

    fn counts(&self) -> Result<StoreCounts>;
}

/// What a Hello or Heartbeat tells about a host.
#[derive(Clone, Debug, Default)]
pub struct HostSeen {
    pub now: u64,
    /// Every address the host is known by: those it reported and the one
    /// its connection came from (`None`: unchanged).
    pub addresses: Option<Vec<String>>,
    /// With `addresses`: the one only the connection told (see
    /// [`HostRecord::seen_from`]).
    pub seen_from: Option<String>,
    pub agent_version: Option<String>,
    pub revision_acked: Option<u64>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
