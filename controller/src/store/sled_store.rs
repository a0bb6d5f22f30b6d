//! [`Store`] on sled 0.34: one tree per kind of record, JSON values, keys
//! that sort the way they are read.
//!
//! | tree       | key                               | value          |
//! |------------|-----------------------------------|----------------|
//! | meta       | `schema_version`                  | u32            |
//! | tenants    | tenant                            | TenantRecord   |
//! | sites      | tenant `\0` site                  | SiteRecord     |
//! | hosts      | tenant `\0` site `\0` host        | HostRecord     |
//! | tokens     | SHA-256 of the secret             | TokenRecord    |
//! | bans       | tenant `\0` address               | BanRecord      |
//! | revlog     | tenant `\0` revision (u64 BE)     | RevEntry       |
//! | policies   | tenant `\0` site ("" = default)   | PolicyRecord   |
//! | user_rules | tenant                            | (rev, rules)   |
//! | audit      | time µs (u64 BE) ‖ unique id      | AuditRecord    |
//!
//! Names never hold `\0` (see `identity::valid_name`), so prefixes are exact.
//! Every change that touches more than one tree runs in one transaction over
//! all of them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::Transactional;

use super::*;

/// sled's page cache; the default (1 GiB) is far more than the controller needs.
const CACHE_BYTES: u64 = 64 << 20;

/// Forward migrations: `MIGRATIONS[v]` takes a store from schema `v` to `v + 1`.
pub type Migration = fn(&sled::Db) -> std::result::Result<(), String>;
pub const MIGRATIONS: &[Migration] = &[
    // 0 → 1: stores written before the version was recorded hold the same
    // trees; nothing to convert.
    |_db| Ok(()),
];

const TREES: [&str; 10] = [
    "meta",
    "tenants",
    "sites",
    "hosts",
    "tokens",
    "bans",
    "revlog",
    "policies",
    "user_rules",
    "audit",
];

#[derive(Clone, Copy)]
enum T {
    Meta = 0,
    Tenants,
    Sites,
    Hosts,
    Tokens,
    Bans,
    Revlog,
    Policies,
    UserRules,
    Audit,
}

impl T {
    fn name(self) -> &'static str {
        TREES[self as usize]
    }
}

pub struct SledStore {
    db: sled::Db,
    trees: [sled::Tree; 10],
    flushes: GroupFlush,
}

/// Group commit for [`Store::flush`]: at most one flush runs at a time, on a
/// blocking thread of the Tokio runtime, and it covers every caller that
/// asked before it started.
///
/// Not sled's `flush_async`: that runs the flush on sled's own IO threadpool,
/// and concurrent flushes there deadlock (sled 0.34 issue #1308): each holds
/// the global concurrency-control read lock while it waits for a log write
/// that is queued on the same pool, a transaction waiting for the write lock
/// stops every further reader, and once all the pool's threads are such
/// flushes nothing writes the log any more. Seen with a few dozen agents
/// enrolling at once (benches/fanout.rs). One flush at a time also means one
/// fsync serves a whole burst of changes instead of one each.
#[derive(Default)]
struct GroupFlush {
    /// Requests so far (each caller's ticket).
    requested: AtomicU64,
    /// Every ticket up to this one is durable.
    done: AtomicU64,
    running: tokio::sync::Mutex<()>,
}

/// Why a transaction gave up.
#[derive(Debug)]
enum Abort {
    Refused(Refusal),
    Corrupt { tree: &'static str, error: String },
}

type Ctr<V> = ConflictableTransactionResult<V, Abort>;

fn refuse<V>(r: Refusal) -> Ctr<V> {
    Err(ConflictableTransactionError::Abort(Abort::Refused(r)))
}

fn enc<V: Serialize>(v: &V) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

fn dec<V: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<V> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        error: e.to_string(),
    })
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn host_key(id: &HostId) -> Vec<u8> {
    let mut k = key2(&id.tenant, &id.site);
    k.push(0);
    k.extend_from_slice(id.host.as_bytes());
    k
}

fn prefix(tenant: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k
}

fn rev_key(tenant: &str, revision: u64) -> Vec<u8> {
    let mut k = prefix(tenant);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// The transactional view over every tree.
struct Tx<'a>([&'a TransactionalTree; 10]);

impl Tx<'_> {
    fn get<V: DeserializeOwned>(&self, t: T, key: &[u8]) -> Ctr<Option<V>> {
        match self.0[t as usize].get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
                ConflictableTransactionError::Abort(Abort::Corrupt {
                    tree: t.name(),
                    error: e.to_string(),
                })
            }),
        }
    }

    fn put<V: Serialize>(&self, t: T, key: &[u8], v: &V) -> Ctr<()> {
        self.0[t as usize].insert(key, enc(v))?;
        Ok(())
    }

    fn del(&self, t: T, key: &[u8]) -> Ctr<()> {
        self.0[t as usize].remove(key)?;
        Ok(())
    }

    fn audit(&self, key: &[u8], rec: &AuditRecord) -> Ctr<()> {
        self.put(T::Audit, key, rec)
    }

    fn tenant(&self, tenant: &str) -> Ctr<TenantRecord> {
        match self.get::<TenantRecord>(T::Tenants, tenant.as_bytes())? {
            Some(t) => Ok(t),
            None => refuse(Refusal::NoSuchTenant(tenant.to_string())),
        }
    }

    /// Takes the tenant's next revision and logs `change` under it.
    fn log(&self, tenant: &str, actor: &str, change: Change) -> Ctr<RevEntry> {
        let mut t = self.tenant(tenant)?;
        t.revision += 1;
        self.put(T::Tenants, tenant.as_bytes(), &t)?;
        let entry = RevEntry {
            tenant: tenant.to_string(),
            revision: t.revision,
            at: now_secs(),
            actor: actor.to_string(),
            change,
        };
        self.put(T::Revlog, &rev_key(tenant, t.revision), &entry)?;
        Ok(entry)
    }

    fn ensure_site(&self, tenant: &str, site: &str, now: u64) -> Ctr<()> {
        let key = key2(tenant, site);
        if self.get::<SiteRecord>(T::Sites, &key)?.is_none() {
            self.put(
                T::Sites,
                &key,
                &SiteRecord {
                    tenant: tenant.to_string(),
                    name: site.to_string(),
                    created_at: now,
                },
            )?;
        }
        Ok(())
    }
}

impl SledStore {
    /// Opens (or creates) the store in `path`, checks its schema version and
    /// migrates it forward.
    pub fn open(path: &Path) -> Result<SledStore> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let open = |name: &str| db.open_tree(name);
        let trees = [
            open(TREES[0])?,
            open(TREES[1])?,
            open(TREES[2])?,
            open(TREES[3])?,
            open(TREES[4])?,
            open(TREES[5])?,
            open(TREES[6])?,
            open(TREES[7])?,
            open(TREES[8])?,
            open(TREES[9])?,
        ];
        let store = SledStore {
            db,
            trees,
            flushes: GroupFlush::default(),
        };
        store.check_schema()?;
        Ok(store)
    }

    fn tree(&self, t: T) -> &sled::Tree {
        &self.trees[t as usize]
    }

    fn check_schema(&self) -> Result<()> {
        let meta = self.tree(T::Meta);
        let mut version = match meta.get("schema_version")? {
            Some(v) => dec::<u32>("meta", &v)?,
            // Data without a version predates versioning: schema 0.
            None if self.trees[1..].iter().any(|t| !t.is_empty()) => 0,
            None => SCHEMA_VERSION,
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        while version < SCHEMA_VERSION {
            MIGRATIONS[version as usize](&self.db).map_err(|error| StoreError::Migration {
                from: version,
                to: version + 1,
                error,
            })?;
            version += 1;
            meta.insert("schema_version", enc(&version))?;
            self.db.flush()?;
            tracing::info!(version, "store migrated");
        }
        if meta.get("schema_version")?.is_none() {
            meta.insert("schema_version", enc(&version))?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Sets the recorded schema version (tests of the upgrade path).
    #[doc(hidden)]
    pub fn force_schema_version(&self, v: u32) -> Result<()> {
        self.tree(T::Meta).insert("schema_version", enc(&v))?;
        self.db.flush()?;
        Ok(())
    }

    fn audit_key(&self, rec: &AuditRecord) -> Result<Vec<u8>> {
        let mut k = rec.at_micros.to_be_bytes().to_vec();
        k.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        Ok(k)
    }

    /// Runs `f` in one transaction over every tree.
    fn tx<V>(&self, f: impl Fn(&Tx<'_>) -> Ctr<V>) -> Result<V> {
        let [a, b, c, d, e, f2, g, h, i, j] = &self.trees;
        (a, b, c, d, e, f2, g, h, i, j)
            .transaction(|(a, b, c, d, e, f2, g, h, i, j)| f(&Tx([a, b, c, d, e, f2, g, h, i, j])))
            .map_err(|e| match e {
                TransactionError::Abort(Abort::Refused(r)) => StoreError::Refused(r),
                TransactionError::Abort(Abort::Corrupt { tree, error }) => {
                    StoreError::Corrupt { tree, error }
                }
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }

    fn scan<V: DeserializeOwned>(&self, t: T, prefix: &[u8]) -> Result<Vec<V>> {
        self.tree(t)
            .scan_prefix(prefix)
            .map(|kv| dec(t.name(), &kv?.1))
            .collect()
    }

    /// The addresses of the tenant's hosts other than `except` (not revoked).
    fn other_addresses(&self, except: &HostId) -> Result<HashSet<String>> {
        Ok(self
            .hosts(Some(&except.tenant))?
            .into_iter()
            .filter(|h| !h.revoked && h.id() != *except)
            .flat_map(|h| h.addresses)
            .collect())
    }
}

impl Store for SledStore {
    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async move {
            let f = &self.flushes;
            // The caller's writes happened before its ticket was taken.
            let ticket = f.requested.fetch_add(1, SeqCst) + 1;
            let _running = f.running.lock().await;
            if f.done.load(SeqCst) >= ticket {
                // A flush that started after our writes has finished.
                return Ok(());
            }
            // Everything asked for until now is in the log before this flush.
            let upto = f.requested.load(SeqCst);
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(|e| {
                    sled::Error::Io(std::io::Error::other(format!("flush task: {e}")))
                })??;
            f.done.fetch_max(upto, SeqCst);
            Ok(())
        })
    }

    fn schema_version(&self) -> Result<u32> {
        match self.tree(T::Meta).get("schema_version")? {
            Some(v) => dec("meta", &v),
            None => Ok(0),
        }
    }

    fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>> {
        match self.tree(T::Tenants).get(tenant.as_bytes())? {
            Some(v) => dec("tenants", &v).map(Some),
            None => Ok(None),
        }
    }

    fn tenants(&self) -> Result<Vec<TenantRecord>> {
        self.scan(T::Tenants, b"")
    }

    fn sites(&self, tenant: &str) -> Result<Vec<SiteRecord>> {
        self.scan(T::Sites, &prefix(tenant))
    }

    fn create_token(
        &self,
        secret_hash: &[u8],
        token: &TokenRecord,
        audit: AuditRecord,
    ) -> Result<()> {
        let ak = self.audit_key(&audit)?;
        self.tx(|tx| {
            if tx
                .get::<TenantRecord>(T::Tenants, token.tenant.as_bytes())?
                .is_none()
            {
                tx.put(
                    T::Tenants,
                    token.tenant.as_bytes(),
                    &TenantRecord {
                        name: token.tenant.clone(),
                        created_at: token.created_at,
                        revision: 0,
                        log_floor: 0,
                    },
                )?;
            }
            tx.ensure_site(&token.tenant, &token.site, token.created_at)?;
            tx.put(T::Tokens, secret_hash, token)?;
            tx.audit(&ak, &audit)
        })
    }

    fn token(&self, secret_hash: &[u8]) -> Result<Option<TokenRecord>> {
        match self.tree(T::Tokens).get(secret_hash)? {
            Some(v) => dec("tokens", &v).map(Some),
            None => Ok(None),
        }
    }

    fn enroll(&self, secret_hash: &[u8], e: &Enrolment, audit: AuditRecord) -> Result<HostRecord> {
        let ak = self.audit_key(&audit)?;
        self.tx(|tx| {
            let Some(mut token) = tx.get::<TokenRecord>(T::Tokens, secret_hash)? else {
                return refuse(Refusal::UnknownToken);
            };
            if let Some(by) = &token.used_by {
                return refuse(Refusal::TokenUsed(by.clone()));
            }
            if e.now >= token.expires_at {
                return refuse(Refusal::TokenExpired(token.expires_at));
            }
            if token.tenant != e.host.tenant || token.site != e.host.site {
                // The caller builds the host from the token; a mismatch is a bug.
                return refuse(Refusal::UnknownToken);
            }
            let key = host_key(&e.host);
            if let Some(old) = tx.get::<HostRecord>(T::Hosts, &key)? {
                if !old.revoked {
                    return refuse(Refusal::HostExists(e.host.to_string()));
                }
            }
            token.used_by = Some(e.host.to_string());
            tx.put(T::Tokens, secret_hash, &token)?;
            tx.ensure_site(&e.host.tenant, &e.host.site, e.now)?;
            let host = HostRecord {
                tenant: e.host.tenant.clone(),
                site: e.host.site.clone(),
                name: e.host.host.clone(),
                enrolled_at: e.now,
                last_seen: e.now,
                cert_serial: e.cert_serial.clone(),
                ..HostRecord::default()
            };
            tx.put(T::Hosts, &key, &host)?;
            tx.audit(&ak, &audit)?;
            Ok(host)
        })
    }

    fn host(&self, id: &HostId) -> Result<Option<HostRecord>> {
        match self.tree(T::Hosts).get(host_key(id))? {
            Some(v) => dec("hosts", &v).map(Some),
            None => Ok(None),
        }
    }

    fn hosts(&self, tenant: Option<&str>) -> Result<Vec<HostRecord>> {
        match tenant {
            Some(t) => self.scan(T::Hosts, &prefix(t)),
            None => self.scan(T::Hosts, b""),
        }
    }

    fn host_seen(&self, id: &HostId, seen: &HostSeen) -> Result<Option<RevEntry>> {
        let others = match seen.addresses {
            Some(_) => self.other_addresses(id)?,
            None => HashSet::new(),
        };
        let key = host_key(id);
        self.tx(|tx| {
            let Some(mut h) = tx.get::<HostRecord>(T::Hosts, &key)? else {
                return refuse(Refusal::NoSuchHost(id.to_string()));
            };
            if h.revoked {
                return refuse(Refusal::Revoked(id.to_string()));
            }
            h.last_seen = h.last_seen.max(seen.now);
            if let Some(v) = &seen.agent_version {
                h.agent_version.clone_from(v);
            }
            if let Some(r) = seen.revision_acked {
                h.revision_acked = r;
            }
            if let Some(from) = &seen.seen_from {
                h.seen_from.clone_from(from);
            }
            let mut entry = None;
            if let Some(addresses) = &seen.addresses {
                let old: BTreeSet<&String> = h.addresses.iter().collect();
                let new: BTreeSet<&String> = addresses.iter().collect();
                if old != new {
                    let added: Vec<String> = new.difference(&old).map(|a| a.to_string()).collect();
                    let removed: Vec<String> = old
                        .difference(&new)
                        .filter(|a| !others.contains(a.as_str()))
                        .map(|a| a.to_string())
                        .collect();
                    h.addresses = new.into_iter().cloned().collect();
                    if !added.is_empty() || !removed.is_empty() {
                        entry = Some(tx.log(
                            &id.tenant,
                            &format!("agent:{id}"),
                            Change::Trust {
                                host: id.to_string(),
                                added,
                                removed,
                            },
                        )?);
                    }
                }
            }
            tx.put(T::Hosts, &key, &h)?;
            Ok(entry)
        })
    }

    fn revoke_host(&self, id: &HostId, audit: AuditRecord) -> Result<Option<RevEntry>> {
        let others = self.other_addresses(id)?;
        let ak = self.audit_key(&audit)?;
        let key = host_key(id);
        self.tx(|tx| {
            let Some(mut h) = tx.get::<HostRecord>(T::Hosts, &key)? else {
                return refuse(Refusal::NoSuchHost(id.to_string()));
            };
            let mut entry = None;
            if !h.revoked {
                h.revoked = true;
                let removed: Vec<String> = h
                    .addresses
                    .iter()
                    .filter(|a| !others.contains(a.as_str()))
                    .cloned()
                    .collect();
                if !removed.is_empty() {
                    entry = Some(tx.log(
                        &id.tenant,
                        &audit.actor,
                        Change::Trust {
                            host: id.to_string(),
                            added: vec![],
                            removed,
                        },
                    )?);
                }
                tx.put(T::Hosts, &key, &h)?;
            }
            tx.audit(&ak, &audit)?;
            Ok(entry)
        })
    }

    fn policy_result(
        &self,
        id: &HostId,
        revision: u64,
        error: Option<String>,
        audit: AuditRecord,
    ) -> Result<()> {
        let ak = self.audit_key(&audit)?;
        let key = host_key(id);
        self.tx(|tx| {
            let Some(mut h) = tx.get::<HostRecord>(T::Hosts, &key)? else {
                return refuse(Refusal::NoSuchHost(id.to_string()));
            };
            h.policy_revision = revision;
            h.policy_error.clone_from(&error);
            tx.put(T::Hosts, &key, &h)?;
            tx.audit(&ak, &audit)
        })
    }

    fn add_ban(&self, tenant: &str, ban: &BanInfo, audit: AuditRecord) -> Result<Option<RevEntry>> {
        let ak = self.audit_key(&audit)?;
        let key = key2(tenant, &ban.address);
        let now = now_secs();
        self.tx(|tx| {
            tx.tenant(tenant)?;
            if let Some(old) = tx.get::<BanRecord>(T::Bans, &key)? {
                let covered = old.ban.live_at(now)
                    && (old.ban.expires_at == 0
                        || (ban.expires_at != 0 && ban.expires_at <= old.ban.expires_at));
                if covered {
                    return Ok(None);
                }
            }
            let entry = tx.log(tenant, &audit.actor, Change::BanAdded { ban: ban.clone() })?;
            tx.put(
                T::Bans,
                &key,
                &BanRecord {
                    ban: ban.clone(),
                    revision: entry.revision,
                },
            )?;
            tx.audit(&ak, &audit)?;
            Ok(Some(entry))
        })
    }

    fn lift_ban(
        &self,
        tenant: &str,
        address: &str,
        actor: &str,
        audit: AuditRecord,
    ) -> Result<RevEntry> {
        let ak = self.audit_key(&audit)?;
        let key = key2(tenant, address);
        self.tx(|tx| {
            tx.tenant(tenant)?;
            if tx.get::<BanRecord>(T::Bans, &key)?.is_none() {
                return refuse(Refusal::NoSuchBan {
                    tenant: tenant.to_string(),
                    address: address.to_string(),
                });
            }
            tx.del(T::Bans, &key)?;
            let entry = tx.log(
                tenant,
                actor,
                Change::BanLifted {
                    address: address.to_string(),
                },
            )?;
            tx.audit(&ak, &audit)?;
            Ok(entry)
        })
    }

    fn bans(&self, tenant: &str) -> Result<Vec<BanRecord>> {
        self.scan(T::Bans, &prefix(tenant))
    }

    fn sweep_bans(&self, before: u64) -> Result<usize> {
        let bans = self.tree(T::Bans);
        let mut n = 0;
        for kv in bans.iter() {
            let (k, v) = kv?;
            let rec: BanRecord = dec("bans", &v)?;
            if rec.ban.expires_at != 0 && rec.ban.expires_at < before {
                // Only if nobody re-banned it meanwhile.
                if bans
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn set_policy(
        &self,
        tenant: &str,
        site: &str,
        toml: &str,
        actor: &str,
        audit: AuditRecord,
    ) -> Result<RevEntry> {
        let ak = self.audit_key(&audit)?;
        let key = key2(tenant, site);
        let now = now_secs();
        self.tx(|tx| {
            tx.tenant(tenant)?;
            if !site.is_empty() {
                tx.ensure_site(tenant, site, now)?;
            }
            let entry = tx.log(
                tenant,
                actor,
                Change::Policy {
                    site: site.to_string(),
                    toml: toml.to_string(),
                },
            )?;
            tx.put(
                T::Policies,
                &key,
                &PolicyRecord {
                    tenant: tenant.to_string(),
                    site: site.to_string(),
                    toml: toml.to_string(),
                    revision: entry.revision,
                    set_by: actor.to_string(),
                    set_at: now,
                },
            )?;
            tx.audit(&ak, &audit)?;
            Ok(entry)
        })
    }

    fn policy(&self, tenant: &str, site: &str) -> Result<Option<PolicyRecord>> {
        match self.tree(T::Policies).get(key2(tenant, site))? {
            Some(v) => dec("policies", &v).map(Some),
            None => Ok(None),
        }
    }

    fn set_user_rules(
        &self,
        tenant: &str,
        users: &BTreeMap<String, Vec<String>>,
        actor: &str,
        audit: AuditRecord,
    ) -> Result<RevEntry> {
        let ak = self.audit_key(&audit)?;
        self.tx(|tx| {
            let entry = tx.log(
                tenant,
                actor,
                Change::UserRules {
                    users: users.clone(),
                },
            )?;
            tx.put(T::UserRules, tenant.as_bytes(), &(entry.revision, users))?;
            tx.audit(&ak, &audit)?;
            Ok(entry)
        })
    }

    fn user_rules(&self, tenant: &str) -> Result<Option<(u64, UserRulesMap)>> {
        match self.tree(T::UserRules).get(tenant.as_bytes())? {
            Some(v) => dec("user_rules", &v).map(Some),
            None => Ok(None),
        }
    }

    fn changes_since(&self, tenant: &str, after: u64) -> Result<Option<Vec<RevEntry>>> {
        let Some(t) = self.tenant(tenant)? else {
            return Ok(None);
        };
        if after > t.revision || after < t.log_floor {
            return Ok(None);
        }
        let mut out = Vec::with_capacity((t.revision - after) as usize);
        let range = rev_key(tenant, after + 1)..=rev_key(tenant, u64::MAX);
        for kv in self.tree(T::Revlog).range(range) {
            let e: RevEntry = dec("revlog", &kv?.1)?;
            if e.revision != after + 1 + out.len() as u64 {
                // A hole: compacted while we read.
                return Ok(None);
            }
            out.push(e);
        }
        Ok(Some(out))
    }

    fn compact(&self, tenant: &str, keep: u64) -> Result<usize> {
        let Some(t) = self.tenant(tenant)? else {
            return Ok(0);
        };
        let cutoff = t.revision.saturating_sub(keep);
        if cutoff <= t.log_floor {
            return Ok(0);
        }
        // Raise the floor first: a reader then asks for a snapshot rather
        // than getting a log with holes.
        self.tx(|tx| {
            let mut t = tx.tenant(tenant)?;
            t.log_floor = t.log_floor.max(cutoff);
            tx.put(T::Tenants, tenant.as_bytes(), &t)
        })?;
        let revlog = self.tree(T::Revlog);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in revlog.range(rev_key(tenant, 0)..=rev_key(tenant, cutoff)) {
            batch.remove(kv?.0);
            n += 1;
        }
        revlog.apply_batch(batch)?;
        Ok(n)
    }

    fn audit(&self, record: AuditRecord) -> Result<()> {
        let key = self.audit_key(&record)?;
        self.tree(T::Audit).insert(key, enc(&record))?;
        Ok(())
    }

    fn audit_log(&self, tenant: &str, limit: usize) -> Result<Vec<AuditRecord>> {
        let mut out = Vec::new();
        for kv in self.tree(T::Audit).iter().rev() {
            if out.len() >= limit {
                break;
            }
            let rec: AuditRecord = dec("audit", &kv?.1)?;
            if tenant.is_empty() || rec.tenant == tenant {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn counts(&self) -> Result<StoreCounts> {
        let mut tokens_used = 0;
        for kv in self.tree(T::Tokens).iter() {
            let t: TokenRecord = dec("tokens", &kv?.1)?;
            tokens_used += usize::from(t.used_by.is_some());
        }
        Ok(StoreCounts {
            tenants: self.tree(T::Tenants).len(),
            sites: self.tree(T::Sites).len(),
            hosts: self.tree(T::Hosts).len(),
            tokens: self.tree(T::Tokens).len(),
            tokens_used,
            bans: self.tree(T::Bans).len(),
            revisions: self.tree(T::Revlog).len(),
            policies: self.tree(T::Policies).len(),
            audit: self.tree(T::Audit).len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(tenant: &str, site: &str, expires_at: u64) -> TokenRecord {
        TokenRecord {
            tenant: tenant.into(),
            site: site.into(),
            created_at: 1,
            created_by: "operator:test".into(),
            expires_at,
            used_by: None,
        }
    }

    fn ban(address: &str, expires_at: u64) -> BanInfo {
        BanInfo {
            address: address.into(),
            reason: "scanner".into(),
            banned_at: now_secs(),
            expires_at,
            origin: "t1/a/h1".into(),
            ..BanInfo::default()
        }
    }

    fn audit(tenant: &str, action: &str) -> AuditRecord {
        AuditRecord::new(tenant, "operator:test", action, "")
    }

    /// A tenant with one enrolled host t1/a/h1.
    fn seeded(dir: &Path) -> SledStore {
        let s = SledStore::open(dir).unwrap();
        s.create_token(b"h1", &token("t1", "a", u64::MAX), audit("t1", "token"))
            .unwrap();
        s.enroll(
            b"h1",
            &Enrolment {
                host: HostId::new("t1", "a", "h1"),
                cert_serial: "01".into(),
                now: 10,
            },
            audit("t1", "enroll"),
        )
        .unwrap();
        s
    }

    /// Many changes flushed at once on two workers (what 1,000 agents
    /// connecting do) all finish and are all there: with sled's
    /// `flush_async` this deadlocked (see `GroupFlush`). The load runs on its
    /// own thread and runtime so that a deadlock fails the test instead of
    /// hanging it.
    #[test]
    fn concurrent_changes_and_flushes_do_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(seeded(dir.path()));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let load = s.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            rt.block_on(async move {
                let tasks: Vec<_> = (0..400u32)
                    .map(|i| {
                        let s = load.clone();
                        tokio::spawn(async move {
                            let a = format!("198.18.{}.{}", i / 200, i % 200 + 1);
                            s.add_ban("t1", &ban(&a, 0), audit("t1", "ban")).unwrap();
                            s.flush().await.unwrap();
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let _ = done_tx.send(());
        });
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .is_ok(),
            "concurrent flushes deadlocked"
        );
        assert_eq!(s.bans("t1").unwrap().len(), 400);
        assert_eq!(s.tenant("t1").unwrap().unwrap().revision, 400);
    }

    #[tokio::test]
    async fn bans_and_revisions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = seeded(dir.path());
            let e = s
                .add_ban("t1", &ban("192.0.2.1", 0), audit("t1", "ban"))
                .unwrap()
                .unwrap();
            assert_eq!(e.revision, 1);
            let e = s
                .add_ban("t1", &ban("192.0.2.2", 0), audit("t1", "ban"))
                .unwrap()
                .unwrap();
            assert_eq!(e.revision, 2);
            s.flush().await.unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.bans("t1").unwrap().len(), 2);
        assert_eq!(s.tenant("t1").unwrap().unwrap().revision, 2);
        let log = s.changes_since("t1", 0).unwrap().unwrap();
        assert_eq!(log.iter().map(|e| e.revision).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(s.changes_since("t1", 1).unwrap().unwrap().len(), 1);
        assert_eq!(s.changes_since("t1", 2).unwrap().unwrap().len(), 0);
        // Beyond what the store knows: a snapshot.
        assert_eq!(s.changes_since("t1", 3).unwrap(), None);
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_covered_ban_changes_nothing_a_longer_one_extends() {
        let dir = tempfile::tempdir().unwrap();
        let s = seeded(dir.path());
        let far = now_secs() + 3600;
        assert!(s
            .add_ban("t1", &ban("192.0.2.1", far), audit("t1", "ban"))
            .unwrap()
            .is_some());
        let before = s.counts().unwrap();
        assert!(s
            .add_ban("t1", &ban("192.0.2.1", far - 10), audit("t1", "ban"))
            .unwrap()
            .is_none());
        assert_eq!(s.counts().unwrap(), before);
        let e = s
            .add_ban("t1", &ban("192.0.2.1", 0), audit("t1", "ban"))
            .unwrap()
            .unwrap();
        assert_eq!(e.revision, 2);
        assert_eq!(s.bans("t1").unwrap()[0].ban.expires_at, 0);
    }

    #[test]
    fn unknown_tenant_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = seeded(dir.path());
        let before = s.counts().unwrap();
        let err = s
            .add_ban("nope", &ban("192.0.2.1", 0), audit("nope", "ban"))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(Refusal::NoSuchTenant(_))),
            "{err}"
        );
        assert_eq!(s.counts().unwrap(), before);
    }

    #[test]
    fn tokens_are_one_time_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = seeded(dir.path());
        let e = |h: &str| Enrolment {
            host: HostId::new("t1", "a", h),
            cert_serial: "02".into(),
            now: 100,
        };
        let before = s.counts().unwrap();
        let err = s
            .enroll(b"h1", &e("h2"), audit("t1", "enroll"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused(Refusal::TokenUsed(ref by)) if by == "t1/a/h1"));
        let err = s
            .enroll(b"zz", &e("h2"), audit("t1", "enroll"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused(Refusal::UnknownToken)));
        s.create_token(b"old", &token("t1", "a", 50), audit("t1", "token"))
            .unwrap();
        let err = s
            .enroll(b"old", &e("h2"), audit("t1", "enroll"))
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Refused(Refusal::TokenExpired(50))
        ));
        let after = s.counts().unwrap();
        assert_eq!(after.hosts, before.hosts);
        assert_eq!(after.tokens_used, before.tokens_used);
        // An enrolled host can't be taken over with a fresh token...
        s.create_token(b"new", &token("t1", "a", u64::MAX), audit("t1", "token"))
            .unwrap();
        let err = s
            .enroll(b"new", &e("h1"), audit("t1", "enroll"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused(Refusal::HostExists(_))));
        // ...until it is revoked.
        s.revoke_host(&HostId::new("t1", "a", "h1"), audit("t1", "revoke"))
            .unwrap();
        let h = s.enroll(b"new", &e("h1"), audit("t1", "enroll")).unwrap();
        assert!(!h.revoked);
        assert_eq!(h.cert_serial, "02");
    }

    #[test]
    fn address_changes_are_logged_as_trust_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = seeded(dir.path());
        let id = HostId::new("t1", "a", "h1");
        let seen = |addrs: &[&str]| HostSeen {
            now: 20,
            addresses: Some(addrs.iter().map(|a| a.to_string()).collect()),
            seen_from: None,
            agent_version: Some("1.0".into()),
            revision_acked: Some(0),
        };
        let e = s.host_seen(&id, &seen(&["198.51.100.1"])).unwrap().unwrap();
        assert_eq!(
            e.change,
            Change::Trust {
                host: "t1/a/h1".into(),
                added: vec!["198.51.100.1".into()],
                removed: vec![]
            }
        );
        assert!(s
            .host_seen(&id, &seen(&["198.51.100.1"]))
            .unwrap()
            .is_none());
        let e = s.host_seen(&id, &seen(&["198.51.100.2"])).unwrap().unwrap();
        assert_eq!(
            e.change,
            Change::Trust {
                host: "t1/a/h1".into(),
                added: vec!["198.51.100.2".into()],
                removed: vec!["198.51.100.1".into()]
            }
        );
        let h = s.host(&id).unwrap().unwrap();
        assert_eq!(h.addresses, ["198.51.100.2"]);
        assert_eq!(h.agent_version, "1.0");
        // Revoked: the addresses leave the trust, the host is refused.
        let e = s.revoke_host(&id, audit("t1", "revoke")).unwrap().unwrap();
        assert!(
            matches!(e.change, Change::Trust { ref removed, .. } if removed == &["198.51.100.2"])
        );
        assert!(matches!(
            s.host_seen(&id, &seen(&[])).unwrap_err(),
            StoreError::Refused(Refusal::Revoked(_))
        ));
    }

    #[test]
    fn compaction_forces_a_snapshot_for_old_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = seeded(dir.path());
        for i in 0..10 {
            s.add_ban("t1", &ban(&format!("192.0.2.{i}"), 0), audit("t1", "ban"))
                .unwrap();
        }
        assert_eq!(s.compact("t1", 4).unwrap(), 6);
        assert_eq!(s.changes_since("t1", 5).unwrap(), None);
        let tail = s.changes_since("t1", 6).unwrap().unwrap();
        assert_eq!(
            tail.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
    }

    #[test]
    fn lift_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let s = seeded(dir.path());
        s.add_ban("t1", &ban("192.0.2.1", 0), audit("t1", "ban"))
            .unwrap();
        s.add_ban("t1", &ban("192.0.2.2", 5), audit("t1", "ban"))
            .unwrap();
        let e = s
            .lift_ban("t1", "192.0.2.1", "operator:x", audit("t1", "lift"))
            .unwrap();
        assert_eq!(
            e.change,
            Change::BanLifted {
                address: "192.0.2.1".into()
            }
        );
        assert!(matches!(
            s.lift_ban("t1", "192.0.2.1", "operator:x", audit("t1", "lift"))
                .unwrap_err(),
            StoreError::Refused(Refusal::NoSuchBan { .. })
        ));
        assert_eq!(s.sweep_bans(now_secs()).unwrap(), 1);
        assert!(s.bans("t1").unwrap().is_empty());
    }

    #[test]
    fn audit_is_newest_first_and_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let s = seeded(dir.path());
        s.audit(audit("t2", "other")).unwrap();
        s.audit(audit("t1", "last").refused()).unwrap();
        let log = s.audit_log("t1", 10).unwrap();
        assert_eq!(log[0].action, "last");
        assert!(log[0].refused);
        assert!(log.iter().all(|r| r.tenant == "t1"));
        assert_eq!(s.audit_log("", 2).unwrap().len(), 2);
    }

    #[test]
    fn newer_schema_is_refused_older_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = seeded(dir.path());
            s.force_schema_version(SCHEMA_VERSION + 1).unwrap();
        }
        let err = SledStore::open(dir.path()).err().expect("refused");
        assert!(
            matches!(
                err,
                StoreError::NewerSchema {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
        {
            // Pretend the store predates versioning.
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .remove("schema_version")
                .unwrap();
            db.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.hosts(None).unwrap().len(), 1);
    }
}
