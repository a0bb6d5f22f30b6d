//! The agent's operations on its table: apply (optionally confirm-or-rollback),
//! restore on start, dynamic elements, disable. The CLI and the daemon are thin
//! shells around these.

use crate::lockout;
use crate::ruleset::plan::{
    delete_table_batch, element_batch, element_changes, grant_batch, needed_sets,
};
use crate::ruleset::{plan, render, Desired, DynMode, LiveTable, Nft, NftError, PlanSummary};
use crate::state::{
    now_unix, FirstStart, GuardedPeer, Pending, RollbackRecord, StateDir, StateError,
};
use palisade_model::{
    explain, ConfigError, DynSet, DynamicState, Grant, Policy, Query, TimedAddr, Verdict,
};
use std::net::IpAddr;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid policy, the running ruleset is untouched: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("inline mode's queue chain: {0}")]
    Queue(#[from] crate::ruleset::queue::QueueError),
    #[error("nothing is waiting for confirmation")]
    NothingPending,
    #[error("the change {id} was not confirmed in time and has been rolled back")]
    TooLate { id: String },
    #[error("{0}")]
    Element(String),
    #[error(transparent)]
    Book(#[from] crate::bans::BookError),
    #[error("no policy is in force on this host yet")]
    NoPolicy,
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub fingerprint: String,
    pub summary: PlanSummary,
    /// Set when the change waits for `confirm`.
    pub pending: Option<Pending>,
}

pub struct Agent {
    pub nft: Nft,
    pub state: StateDir,
    /// Inline mode's queue backend, probed once (see [`crate::ruleset::queue`]).
    queue_backend: std::sync::OnceLock<palisade_model::inline::QueueBackend>,
}

impl Agent {
    pub fn new(nft: Nft, state: StateDir) -> Agent {
        Agent {
            nft,
            state,
            queue_backend: std::sync::OnceLock::new(),
        }
    }

    /// How this kernel hands packets to inline mode's queue.
    pub fn queue_backend(&self) -> palisade_model::inline::QueueBackend {
        *self.queue_backend.get_or_init(|| {
            let backend = crate::ruleset::queue::probe_backend(&self.nft);
            info!(backend = backend.as_str(), "inline mode's queue backend");
            backend
        })
    }

    /// Puts inline mode's iptables-nft chain in place, or takes it away, to
    /// match `policy` (already effective). Only the xt backend has one.
    fn follow_queue(&self, policy: &Policy) -> Result<(), AgentError> {
        use palisade_model::inline::QueueBackend;
        let inline = &policy.responsive.inline;
        let xt = crate::ruleset::queue::XtQueue::new(&self.nft);
        if policy.responsive.enabled && inline.enabled && inline.backend == QueueBackend::Xt {
            xt.ensure(inline)?;
        } else if xt.present() {
            xt.remove()?;
            info!("inline mode off: the iptables-nft queue chain is removed");
        }
        Ok(())
    }

    /// The first time the agent runs on a host it notes the peers of established
    /// SSH sessions, and keeps them accepted for the grace period, so the operator
    /// who installs it over SSH is never cut off by its first ruleset.
    fn session_guard(&self, policy: &Policy) -> Result<DynamicState, AgentError> {
        let first = match self.state.first_start()? {
            Some(f) => f,
            None => {
                let until = now_unix() + policy.lockout.session_grace.as_secs();
                let peers = lockout::current_ssh_peers(&policy.lockout.ssh_ports);
                if !peers.is_empty() {
                    info!(
                        ?peers,
                        "first start: SSH sessions found, their peers stay accepted"
                    );
                }
                let f = FirstStart {
                    at: now_unix(),
                    sessions: peers
                        .into_iter()
                        .map(|addr| GuardedPeer { addr, until })
                        .collect(),
                };
                self.state.set_first_start(&f)?;
                f
            }
        };
        let now = now_unix();
        let mut dynamic = DynamicState::default();
        for peer in first.sessions.iter().filter(|p| p.until > now) {
            dynamic.insert(
                DynSet::MgmtSession,
                TimedAddr {
                    addr: peer.addr,
                    ttl: Some(Duration::from_secs(peer.until - now)),
                    expires: None,
                    comment: Some("ssh session open at first start".into()),
                },
            );
        }
        // Bans outlive a reboot: whatever the ban book holds goes back in
        // (elements already in the kernel are left as they are).
        match crate::bans::BanBook::new(self.state.path()).live(now) {
            Ok(bans) => {
                for b in bans {
                    dynamic.insert(
                        DynSet::Ban,
                        TimedAddr {
                            addr: b.addr,
                            ttl: Some(Duration::from_secs(b.until - now)),
                            expires: None,
                            comment: Some(b.comment),
                        },
                    );
                }
            }
            Err(e) => warn!(error = %e, "cannot read the ban book; only the kernel's bans stay"),
        }
        Ok(dynamic)
    }

    /// Makes the live table match `policy`, in one transaction (or none when it
    /// already matches). Dynamic elements already in the kernel are kept.
    pub fn enforce(&self, policy: &Policy) -> Result<Applied, AgentError> {
        let _span = tracing::info_span!("enforce").entered();
        let policy = &self.effective(policy)?;
        let desired = render(policy);
        let dynamic = self.session_guard(policy)?;
        let live = self.read_live_for(&desired, &dynamic, DynMode::Merge)?;
        let planned = plan(&desired, live.as_ref(), &dynamic, DynMode::Merge);
        if !planned.summary.is_noop() {
            self.nft.apply(&planned.batch)?;
            info!(fingerprint = %desired.fingerprint, summary = ?planned.summary, "ruleset applied");
            metrics::counter!("palisade_ruleset_applies_total").increment(1);
        }
        self.follow_queue(policy)?;
        Ok(Applied {
            fingerprint: desired.fingerprint,
            summary: planned.summary,
            pending: None,
        })
    }

    /// Reads what [`plan`] needs of the live table and no more: a terse listing
    /// plus the elements of the sets it compares. Listing everything would cost
    /// ~0.5 s per 100,000 bans; this costs a few ms per set.
    fn read_live_for(
        &self,
        desired: &Desired,
        dynamic: &DynamicState,
        mode: DynMode,
    ) -> Result<Option<LiveTable>, AgentError> {
        let Some(mut live) = self.nft.list_terse()? else {
            return Ok(None);
        };
        if live.schema() != Some(crate::ruleset::render::SCHEMA) {
            // A rebuild re-adds every dynamic element, so it needs them all.
            return Ok(self.nft.list()?);
        }
        for name in needed_sets(desired, dynamic, mode) {
            let elems = self.nft.list_set(&name)?;
            live.sets.insert(name, elems);
        }
        Ok(Some(live))
    }

    /// The policy with the last good discovered facts merged in: what is enforced.
    pub fn effective(&self, policy: &Policy) -> Result<Policy, AgentError> {
        let mut effective = match self.state.facts()? {
            Some(facts) => policy.clone().with_facts(&facts),
            None => policy.clone(),
        };
        if effective.responsive.inline.enabled {
            effective.responsive.inline.backend = self.queue_backend();
        }
        if let Some(pushed) = crate::controller::sync::pushed_user_rules(self.state.path()) {
            merge_user_rules(&mut effective, pushed);
        }
        Ok(effective)
    }

    /// Reads the PBX configuration again. Clean facts that differ from the last
    /// good ones replace them and are enforced at once; a tree with errors keeps
    /// the last good facts (and rules) in force and reports why.
    pub fn rediscover(
        &self,
        paths: &crate::discover::DiscoveryPaths,
        policy: &Policy,
    ) -> Result<crate::discover::Discovered, AgentError> {
        let _span = tracing::info_span!("discover").entered();
        let found = crate::discover::discover_all(paths);
        self.state.set_discovery_errors(&found.errors)?;
        if !found.is_ok() {
            for e in &found.errors {
                warn!(error = %e, "PBX configuration rejected; the last good facts stay in force");
            }
            metrics::counter!("palisade_discovery_errors_total")
                .increment(found.errors.len() as u64);
            return Ok(found);
        }
        if self.state.facts()?.as_ref() != Some(&found.facts) {
            info!(
                kinds = ?found.facts.kinds,
                listen = found.facts.listen.len(),
                peers = found.facts.peers.len(),
                "PBX configuration changed"
            );
            self.state.set_facts(&found.facts)?;
            let _lock = self.state.lock()?;
            self.enforce(policy)?;
        }
        Ok(found)
    }

    /// Validates and applies a policy document. With `confirm_within`, the change
    /// is rolled back unless [`Agent::confirm`] is called in time; the caller must
    /// make sure something runs [`Agent::rollback_due`] at the deadline.
    pub fn apply_text(
        &self,
        text: &str,
        source: &str,
        confirm_within: Option<Duration>,
    ) -> Result<Applied, AgentError> {
        let policy = palisade_model::parse_policy(text, source)?;
        let _lock = self.state.lock()?;
        let mut applied = self.enforce(&policy)?;
        match confirm_within {
            None => {
                self.state.set_last_good(text, source)?;
                self.state.clear_pending()?;
            }
            Some(within) => {
                let pending = Pending {
                    id: change_id(),
                    deadline: now_unix() + within.as_secs().max(1),
                    previous: self.state.last_good()?,
                    applied: text.to_string(),
                    source: source.to_string(),
                };
                self.state.set_pending(&pending)?;
                info!(id = %pending.id, deadline = pending.deadline, "applied; waiting for confirmation");
                applied.pending = Some(pending);
            }
        }
        Ok(applied)
    }

    /// Confirms the pending change: it becomes the last good policy.
    pub fn confirm(&self) -> Result<Pending, AgentError> {
        let _lock = self.state.lock()?;
        let pending = self.state.pending()?.ok_or(AgentError::NothingPending)?;
        if now_unix() >= pending.deadline {
            self.rollback_locked(&pending, "confirmation came after the deadline")?;
            return Err(AgentError::TooLate { id: pending.id });
        }
        self.state
            .set_last_good(&pending.applied, &pending.source)?;
        self.state.clear_pending()?;
        info!(id = %pending.id, "change confirmed");
        Ok(pending)
    }

    /// Rolls back a pending change whose deadline has passed. Returns its id.
    pub fn rollback_due(&self) -> Result<Option<String>, AgentError> {
        let _lock = self.state.lock()?;
        match self.state.pending()? {
            Some(p) if now_unix() >= p.deadline => {
                self.rollback_locked(&p, "not confirmed before the deadline")?;
                Ok(Some(p.id))
            }
            _ => Ok(None),
        }
    }

    fn rollback_locked(&self, pending: &Pending, reason: &str) -> Result<(), AgentError> {
        warn!(id = %pending.id, reason, "rolling back to the previous ruleset");
        match &pending.previous {
            Some(text) => {
                let policy = palisade_model::parse_policy(text, &self.state.last_good_source()?)?;
                self.enforce(&policy)?;
            }
            None => {
                if self.nft.list_terse()?.is_some() {
                    self.nft.apply(&delete_table_batch())?;
                }
            }
        }
        self.state.clear_pending()?;
        self.state.record_rollback(&RollbackRecord {
            at: now_unix(),
            pending_id: pending.id.clone(),
            reason: reason.to_string(),
        })?;
        metrics::counter!("palisade_ruleset_rollbacks_total").increment(1);
        Ok(())
    }

    /// The policy text that should be in force: a pending change, else the last good one.
    pub fn current_text(&self) -> Result<Option<(String, String)>, AgentError> {
        if let Some(p) = self.state.pending()? {
            return Ok(Some((p.applied, p.source)));
        }
        Ok(self
            .state
            .last_good()?
            .map(|t| (t, "last-good.toml".to_string())))
    }

    /// On start: settle an overdue confirmation, then put the last good policy back
    /// in force before anything else is read.
    pub fn restore(&self) -> Result<Option<Applied>, AgentError> {
        if let Some(id) = self.rollback_due()? {
            warn!(%id, "a change left unconfirmed before the restart was rolled back");
        }
        let Some((text, source)) = self.current_text()? else {
            return Ok(None);
        };
        let policy = palisade_model::parse_policy(&text, &source)?;
        let _lock = self.state.lock()?;
        self.enforce(&policy).map(Some)
    }

    /// Deletes the agent's own table and nothing else. The state directory is kept
    /// unless `forget` (uninstall).
    pub fn disable(&self, forget: bool) -> Result<bool, AgentError> {
        let _lock = self.state.lock()?;
        let existed = self.nft.list_terse()?.is_some();
        if existed {
            self.nft.apply(&delete_table_batch())?;
        }
        if forget {
            self.state.clear_pending()?;
            self.state.clear_last_good()?;
        }
        Ok(existed)
    }

    pub fn live(&self) -> Result<Option<LiveTable>, AgentError> {
        Ok(self.nft.list()?)
    }

    /// The elements of every dynamic set, as the kernel holds them now.
    pub fn live_dynamic(&self) -> Result<DynamicState, AgentError> {
        Ok(self.live()?.map(|l| l.dynamic_state()).unwrap_or_default())
    }

    pub fn explain(&self, policy: &Policy, query: &Query) -> Result<Verdict, AgentError> {
        Ok(explain(
            &self.effective(policy)?,
            &self.live_dynamic()?,
            query,
        ))
    }

    /// `explain` against the policy in force, for traffic arriving on the
    /// interface the kernel routes `addr` through (what the controller asks
    /// for a tenant-wide `explain`).
    pub fn explain_in_force(
        &self,
        addr: IpAddr,
        port: Option<(palisade_model::Proto, u16)>,
    ) -> Result<Verdict, AgentError> {
        let (text, source) = self.current_text()?.ok_or(AgentError::NoPolicy)?;
        let policy = palisade_model::parse_policy(&text, &source)?;
        self.explain(
            &policy,
            &Query {
                addr,
                iface: route_iface(addr),
                port,
            },
        )
    }

    /// Ends the ban on `addr` at this host. The lift goes into the ban book
    /// first, under the state lock like every enforce: the daemon's periodic
    /// check puts back what the book holds, and must not read the book
    /// before the lift and write the kernel after it.
    pub fn unban(&self, addr: IpAddr) -> Result<(), AgentError> {
        let _lock = self.state.lock()?;
        crate::bans::BanBook::new(self.state.path()).append(&[crate::bans::Entry::Lift {
            addr,
            at: now_unix(),
        }])?;
        for set in [DynSet::Ban, DynSet::SharedBan] {
            self.remove_elements(set, std::slice::from_ref(&addr))?;
        }
        Ok(())
    }

    /// A lift an operator made at the controller reaching the host that
    /// proved the ban: this host's own bans inside `net` end too, but only
    /// those made no later than `before` (Unix seconds; 0: any) — a source
    /// banned again since has offended again.
    pub fn lift_own_bans(&self, net: ipnet::IpNet, before: u64) -> Result<Vec<IpAddr>, AgentError> {
        let book = crate::bans::BanBook::new(self.state.path());
        let own: Vec<IpAddr> = book
            .live(now_unix())?
            .into_iter()
            .filter(|b| {
                net.contains(&b.addr)
                    && (before == 0 || b.at <= before)
                    && !b.reason.starts_with(crate::controller::SHARED_REASON)
            })
            .map(|b| b.addr)
            .collect();
        for addr in &own {
            self.unban(*addr)?;
        }
        Ok(own)
    }

    /// Runs an element-only transaction. No listing first: at 100,000 bans a
    /// listing costs 100 times the change itself. A missing table shows up as
    /// nft's "No such file or directory", turned into a clear message here.
    fn apply_elements(
        &self,
        batch: &nftables::schema::Nftables<'_>,
        what: impl FnOnce() -> String,
    ) -> Result<(), AgentError> {
        self.nft.apply(batch).map_err(|e| match e {
            NftError::Rejected { stderr } if crate::ruleset::apply::is_missing(&stderr) => {
                if matches!(self.nft.list_terse(), Ok(None)) {
                    AgentError::Element(
                        "the palisade table is not loaded; apply a policy first".into(),
                    )
                } else {
                    AgentError::Element(what())
                }
            }
            other => other.into(),
        })
    }

    /// Adds elements to a dynamic set without touching any rule.
    pub fn add_elements(&self, set: DynSet, elems: &[TimedAddr]) -> Result<(), AgentError> {
        self.apply_elements(&element_batch(set, elems, false), || {
            format!("cannot add to set {set}")
        })
    }

    /// Removes `addrs` from `set` whether or not they are in it.
    pub fn remove_elements(&self, set: DynSet, addrs: &[IpAddr]) -> Result<(), AgentError> {
        self.apply_elements(
            &crate::ruleset::plan::element_renew(set, &[], addrs),
            || format!("cannot remove from set {set}"),
        )
    }

    pub fn delete_elements(&self, set: DynSet, elems: &[TimedAddr]) -> Result<(), AgentError> {
        self.apply_elements(&element_batch(set, elems, true), || {
            let addrs: Vec<String> = elems.iter().map(|e| e.addr.to_string()).collect();
            format!("not in set {set}: {}", addrs.join(", "))
        })
    }

    /// Applies a resolver delta to its set: removals, renewals (delete + add)
    /// and additions in one transaction. An element that expired on its own
    /// meanwhile would fail the delete, so on failure the set is read again
    /// and only present elements are deleted.
    pub fn apply_resolved(
        &self,
        set: DynSet,
        delta: &crate::resolve::Delta,
    ) -> Result<(), AgentError> {
        if delta.is_noop() {
            return Ok(());
        }
        let add: Vec<TimedAddr> = delta
            .add
            .iter()
            .chain(&delta.refresh)
            .map(|e| TimedAddr {
                addr: e.addr,
                ttl: Some(e.timeout),
                expires: None,
                comment: Some(e.comment.clone()),
            })
            .collect();
        let mut delete: Vec<std::net::IpAddr> = delta
            .remove
            .iter()
            .chain(delta.refresh.iter().map(|e| &e.addr))
            .copied()
            .collect();
        let first = self.nft.apply(&element_changes(set, &delete, &add));
        match first {
            Err(NftError::Rejected { stderr }) if crate::ruleset::apply::is_missing(&stderr) => {
                let mut present = std::collections::BTreeSet::new();
                for family in palisade_model::Family::ALL {
                    let name = crate::ruleset::render::dyn_set_name(set, family);
                    present.extend(
                        self.nft
                            .list_set(&name)?
                            .iter()
                            .filter_map(crate::ruleset::live::element_key),
                    );
                }
                delete.retain(|a| present.contains(&a.to_string()));
                self.nft.apply(&element_changes(set, &delete, &add))?;
                Ok(())
            }
            other => Ok(other?),
        }
    }

    pub fn add_grants(&self, grants: &[Grant]) -> Result<(), AgentError> {
        self.apply_elements(&grant_batch(grants, false), || {
            "cannot add the grant".into()
        })
    }

    pub fn delete_grants(&self, grants: &[Grant]) -> Result<(), AgentError> {
        self.apply_elements(&grant_batch(grants, true), || {
            let keys: Vec<String> = grants
                .iter()
                .map(|g| format!("{} {}/{}", g.addr, g.port, g.proto))
                .collect();
            format!("no such grant: {}", keys.join(", "))
        })
    }
}

/// A pending change's id: unique even for two changes in the same second
/// from the same process (the time in nanoseconds, the process, a counter).
fn change_id() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n:x}", std::process::id())
}

/// The tenant's per-user rules from the controller take precedence over the
/// host's own `[users]`, extension by extension. A service this host's
/// catalogue does not have opens nothing here (the controller checked the
/// name against the tenant's catalogues; a site may lack it).
fn merge_user_rules(policy: &mut Policy, pushed: std::collections::BTreeMap<String, Vec<String>>) {
    for (ext, services) in pushed {
        let known: Vec<String> = services
            .into_iter()
            .filter(|name| {
                let known = policy.services.iter().any(|s| &s.name == name);
                if !known {
                    tracing::debug!(ext, service = %name, "per-user rule names a service this host does not have");
                }
                known
            })
            .collect();
        policy.users.insert(ext, known);
    }
}

/// The interface the kernel would use to reach `addr`: where its traffic
/// comes in (`ip route get`; `None` when there is no route).
pub fn route_iface(addr: IpAddr) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["route", "get", &addr.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            return words.next().map(str::to_string);
        }
    }
    None
}
