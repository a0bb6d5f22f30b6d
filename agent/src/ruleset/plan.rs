//! Desired vs live → one nft transaction (pure).
//!
//! The plan is the smallest batch that makes the live table match: nothing at all
//! when it already does, chains flushed and refilled inside the same transaction
//! when the policy changed, and dynamic elements added or deleted one by one.

use super::expr::string;
use super::expr::{concat, counter, number};
use super::live::{element_key, grant_key, LiveTable};
use super::render::{
    set_flags, ChainSpec, Desired, Hook, SetRole, SetSpec, INFO_CHAIN, SCHEMA, TABLE,
};
use nftables::batch::Batch;
use nftables::expr::{Elem, Expression, NamedExpression};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, Table,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use palisade_model::{DynSet, DynamicState, Family, Grant, TimedAddr};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How the dynamic elements handed to [`plan`] relate to the live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynMode {
    /// Add what is missing, keep everything else (a policy change never drops a ban).
    Merge,
    /// Make each dynamic set hold exactly the given elements.
    Replace,
}

/// What a plan does, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSummary {
    pub create_table: bool,
    pub rebuild_table: bool,
    pub static_changed: bool,
    pub elements_added: usize,
    pub elements_deleted: usize,
}

impl PlanSummary {
    pub fn is_noop(&self) -> bool {
        *self == PlanSummary::default()
    }
}

pub struct Plan {
    pub batch: Nftables<'static>,
    pub summary: PlanSummary,
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn set_object(spec: &SetSpec) -> Set<'static> {
    Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(spec.name.clone()),
        handle: None,
        set_type: spec.set_type.clone(),
        policy: None,
        flags: set_flags(spec),
        elem: None,
        timeout: None,
        gc_interval: None,
        size: spec.size,
        comment: None,
    }
}

fn chain_object(spec_name: &str, hook: Option<Hook>) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(spec_name.to_string()),
        newname: None,
        handle: None,
        _type: hook.map(|_| NfChainType::Filter),
        hook: hook.map(|h| match h {
            Hook::Input | Hook::InlineQueue => NfHook::Input,
            Hook::Output => NfHook::Output,
        }),
        prio: hook.map(Hook::priority),
        dev: None,
        policy: hook.map(|h| match h {
            Hook::Input => NfChainPolicy::Drop,
            Hook::Output | Hook::InlineQueue => NfChainPolicy::Accept,
        }),
    }
}

fn rule_objects(chain: &ChainSpec) -> impl Iterator<Item = NfListObject<'static>> + '_ {
    chain.rules.iter().map(|r| {
        NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: Cow::Borrowed(TABLE),
            chain: Cow::Owned(chain.name.clone()),
            expr: Cow::Owned(r.expr.clone()),
            handle: None,
            index: None,
            comment: Some(Cow::Owned(r.comment.clone())),
        })
    })
}

fn marker_rule(desired: &Desired) -> NfListObject<'static> {
    info_rule(desired.marker())
}

/// A rule of [`INFO_CHAIN`], which nothing jumps to: its comment is the record.
fn info_rule(comment: String) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(INFO_CHAIN),
        expr: Cow::Owned(vec![counter()]),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment)),
    })
}

fn elements(set: &str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(set.to_string()),
        elem: Cow::Owned(elem),
    })
}

/// Whole seconds for nft, rounded up and never 0 (which would mean "no timeout").
fn secs(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s.max(1)).unwrap_or(u32::MAX)
}

fn element_expr(
    val: Expression<'static>,
    ttl: Option<Duration>,
    comment: Option<&str>,
) -> Expression<'static> {
    if ttl.is_none() && comment.is_none() {
        return val;
    }
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(val),
        timeout: ttl.map(secs),
        expires: None,
        comment: comment.map(|c| Cow::Owned(palisade_model::dynamic::clip_comment(c))),
        counter: None,
    }))
}

pub fn addr_element(e: &TimedAddr) -> Expression<'static> {
    element_expr(
        string(e.addr.to_string()),
        e.ttl.or(e.expires),
        e.comment.as_deref(),
    )
}

pub fn grant_element(g: &Grant) -> Expression<'static> {
    element_expr(
        concat(vec![
            string(g.addr.to_string()),
            string(g.proto.as_str()),
            number(g.port.into()),
        ]),
        g.ttl.or(g.expires),
        g.comment.as_deref(),
    )
}

/// Every dynamic element of `state`, keyed by its set's name.
fn dynamic_by_set(state: &DynamicState) -> BTreeMap<String, Vec<(String, Expression<'static>)>> {
    let mut out: BTreeMap<String, Vec<(String, Expression<'static>)>> = BTreeMap::new();
    for (set, elems) in &state.sets {
        for e in elems {
            let name = super::render::dyn_set_name(*set, Family::of(&e.addr));
            out.entry(name)
                .or_default()
                .push((e.addr.to_string(), addr_element(e)));
        }
    }
    for g in &state.grants {
        let name = super::render::set_name("grant", Family::of(&g.addr));
        out.entry(name)
            .or_default()
            .push((grant_key(g.addr, g.proto, g.port), grant_element(g)));
    }
    out
}

fn add_all_static(batch: &mut Batch<'static>, desired: &Desired) {
    add_static(batch, desired, |_| true);
}

/// Adds every chain, the rules of the chains `refill` picks, the markers and
/// the static elements.
fn add_static(batch: &mut Batch<'static>, desired: &Desired, refill: impl Fn(&ChainSpec) -> bool) {
    for chain in &desired.chains {
        batch.add(NfListObject::Chain(chain_object(&chain.name, chain.hook)));
    }
    batch.add(NfListObject::Chain(chain_object(INFO_CHAIN, None)));
    for chain in desired.chains.iter().filter(|c| refill(c)) {
        for r in rule_objects(chain) {
            batch.add(r);
        }
    }
    batch.add(marker_rule(desired));
    for chain in &desired.chains {
        batch.add(info_rule(chain.digest_comment()));
    }
    for (set, elems) in &desired.static_elements {
        if !elems.is_empty() {
            batch.add(elements(set, elems.clone()));
        }
    }
}

/// Plans the transaction that makes the live table match `desired` plus `dynamic`.
///
/// `live.sets` must hold the elements of every set whose contents matter: the
/// static sets, the dynamic sets `dynamic` has elements for (every dynamic set in
/// [`DynMode::Replace`]), and all of them when the live schema is not [`SCHEMA`]
/// (see [`needed_sets`]). Other sets may be listed without their elements.
pub fn plan(
    desired: &Desired,
    live: Option<&LiveTable>,
    dynamic: &DynamicState,
    mode: DynMode,
) -> Plan {
    let mut batch = Batch::new();
    let mut summary = PlanSummary::default();
    let rebuild = live.is_some_and(|l| l.schema() != Some(SCHEMA));
    let mut wanted = dynamic_by_set(dynamic);
    let mut live_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();

    let patchable = live.filter(|_| !rebuild);
    if let Some(live) = patchable {
        for spec in &desired.sets {
            if !live.sets.contains_key(&spec.name) {
                batch.add(NfListObject::Set(Box::new(set_object(spec))));
                summary.static_changed = true;
            }
        }
        let drifted = live.marker.as_deref() != Some(desired.marker().as_str())
            || desired
                .chains
                .iter()
                .any(|c| live.rule_count(&c.name) != c.rules.len())
            || desired
                .sets
                .iter()
                .filter(|s| s.role == SetRole::Static)
                .any(|s| {
                    live.element_count(&s.name)
                        != desired
                            .static_elements
                            .get(&s.name)
                            .map(Vec::len)
                            .unwrap_or(0)
                });
        if drifted {
            // Flush and refill inside the same transaction: no moment without
            // rules. Only the chains that changed, so the others keep their
            // counters and meters.
            summary.static_changed = true;
            let stale = |c: &ChainSpec| !live.chain_in_force(c);
            let chains = desired.chains.iter().filter(|c| stale(c));
            for (name, hook) in chains
                .map(|c| (c.name.as_str(), c.hook))
                .chain([(INFO_CHAIN, None)])
            {
                batch.add(NfListObject::Chain(chain_object(name, hook)));
                batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain_object(name, hook))));
            }
            for spec in desired.sets.iter().filter(|s| s.role == SetRole::Static) {
                if live.element_count(&spec.name) > 0 {
                    batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set_object(spec)))));
                }
            }
            // Chains the policy no longer has (inline mode turned off, say):
            // whatever jumped to them was refilled above.
            let obsolete = live
                .chains
                .keys()
                .filter(|n| *n != INFO_CHAIN && !desired.chains.iter().any(|c| &c.name == *n));
            for name in obsolete {
                batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain_object(name, None))));
                batch.delete(NfListObject::Chain(chain_object(name, None)));
            }
            add_static(&mut batch, desired, stale);
        }
        // Only the sets with wanted elements are compared (see `needed_sets`).
        let compared = |s: &&SetSpec| mode == DynMode::Replace || wanted.contains_key(&s.name);
        for spec in desired
            .sets
            .iter()
            .filter(|s| s.role != SetRole::Static)
            .filter(compared)
        {
            let keys = live
                .sets
                .get(&spec.name)
                .map(|elems| elems.iter().filter_map(element_key).collect())
                .unwrap_or_default();
            live_keys.insert(spec.name.clone(), keys);
        }
    } else {
        summary.create_table = live.is_none();
        summary.rebuild_table = rebuild;
        if rebuild {
            // Same transaction: the old table goes and the new one arrives at once.
            batch.delete(NfListObject::Table(table()));
            if mode == DynMode::Merge {
                let kept = live.expect("rebuild implies live").dynamic_state();
                for (set, elems) in dynamic_by_set(&kept) {
                    let entry = wanted.entry(set).or_default();
                    for (k, e) in elems {
                        if !entry.iter().any(|(key, _)| *key == k) {
                            entry.push((k, e));
                        }
                    }
                }
            }
        }
        batch.add(NfListObject::Table(table()));
        for spec in &desired.sets {
            batch.add(NfListObject::Set(Box::new(set_object(spec))));
        }
        add_all_static(&mut batch, desired);
        summary.static_changed = true;
    }

    for spec in desired.sets.iter().filter(|s| s.role != SetRole::Static) {
        let have = live_keys.get(&spec.name);
        let want = wanted.remove(&spec.name).unwrap_or_default();
        let want_keys: BTreeSet<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
        let add: Vec<Expression<'static>> = want
            .iter()
            .filter(|(k, _)| !have.is_some_and(|h| h.contains(k)))
            .map(|(_, e)| e.clone())
            .collect();
        if mode == DynMode::Replace {
            if let Some(have) = have {
                let del: Vec<Expression<'static>> = have
                    .iter()
                    .filter(|k| !want_keys.contains(k.as_str()))
                    .map(|k| key_expr(k))
                    .collect();
                if !del.is_empty() {
                    summary.elements_deleted += del.len();
                    batch.delete(elements(&spec.name, del));
                }
            }
        }
        if !add.is_empty() {
            summary.elements_added += add.len();
            batch.add(elements(&spec.name, add));
        }
    }
    Plan {
        batch: batch.to_nftables(),
        summary,
    }
}

/// The sets whose live elements [`plan`] compares, for a live table of the
/// current schema: static sets, and the dynamic sets with wanted elements (all
/// of them when replacing).
pub fn needed_sets(desired: &Desired, dynamic: &DynamicState, mode: DynMode) -> BTreeSet<String> {
    let wanted = dynamic_by_set(dynamic);
    desired
        .sets
        .iter()
        .filter(|s| {
            s.role == SetRole::Static || mode == DynMode::Replace || wanted.contains_key(&s.name)
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Rebuilds an element value from its comparison key (`addr` or `addr . proto . port`).
fn key_expr(key: &str) -> Expression<'static> {
    let parts: Vec<&str> = key.split(" . ").collect();
    match parts.as_slice() {
        [addr, proto, port] => concat(vec![
            string(*addr),
            string(*proto),
            number(port.parse().unwrap_or(0)),
        ]),
        _ => string(key),
    }
}

/// A batch that adds or deletes dynamic elements only, for the fast path (bans,
/// known-good, grants) that must not re-render anything.
pub fn element_batch(set: DynSet, elems: &[TimedAddr], delete: bool) -> Nftables<'static> {
    if delete {
        let addrs: Vec<std::net::IpAddr> = elems.iter().map(|e| e.addr).collect();
        element_changes(set, &addrs, &[])
    } else {
        element_changes(set, &[], elems)
    }
}

/// Deletes then adds elements of one dynamic set in one transaction. Deleting
/// and re-adding an address renews its timeout, which `add` alone does not on
/// kernels before 6.10.
pub fn element_changes(
    set: DynSet,
    delete: &[std::net::IpAddr],
    add: &[TimedAddr],
) -> Nftables<'static> {
    let mut batch = Batch::new();
    for family in Family::ALL {
        let name = super::render::dyn_set_name(set, family);
        let del: Vec<Expression<'static>> = delete
            .iter()
            .filter(|a| Family::of(a) == family)
            .map(|a| string(a.to_string()))
            .collect();
        if !del.is_empty() {
            batch.delete(elements(&name, del));
        }
        let new: Vec<Expression<'static>> = add
            .iter()
            .filter(|e| Family::of(&e.addr) == family)
            .map(addr_element)
            .collect();
        if !new.is_empty() {
            batch.add(elements(&name, new));
        }
    }
    batch.to_nftables()
}

/// Sets elements of one dynamic set to exactly `renew` (with their new
/// timeouts and comments) and removes `end`, whether or not they are present
/// now: each is added bare, deleted, then re-added timed, in one transaction.
/// This never fails for a missing or an existing element, which the fast path
/// cannot know without listing the set.
pub fn element_renew(
    set: DynSet,
    renew: &[TimedAddr],
    end: &[std::net::IpAddr],
) -> Nftables<'static> {
    renew_elements(
        |family| super::render::dyn_set_name(set, family),
        |family| {
            renew
                .iter()
                .map(|e| &e.addr)
                .chain(end)
                .filter(|a| Family::of(a) == family)
                .map(|a| string(a.to_string()))
                .collect()
        },
        |family| {
            renew
                .iter()
                .filter(|e| Family::of(&e.addr) == family)
                .map(addr_element)
                .collect()
        },
    )
}

/// Per family: adds the `bare` keys, deletes them, adds the `timed`
/// elements, in one transaction (see [`element_renew`]).
fn renew_elements(
    name: impl Fn(Family) -> String,
    bare: impl Fn(Family) -> Vec<Expression<'static>>,
    timed: impl Fn(Family) -> Vec<Expression<'static>>,
) -> Nftables<'static> {
    let mut batch = Batch::new();
    for family in Family::ALL {
        let bare = bare(family);
        if bare.is_empty() {
            continue;
        }
        let name = name(family);
        batch.add(elements(&name, bare.clone()));
        batch.delete(elements(&name, bare));
        let timed = timed(family);
        if !timed.is_empty() {
            batch.add(elements(&name, timed));
        }
    }
    batch.to_nftables()
}

/// Like [`element_batch`] for per-user grants.
pub fn grant_batch(grants: &[Grant], delete: bool) -> Nftables<'static> {
    let mut batch = Batch::new();
    for g in grants {
        let name = super::render::set_name("grant", Family::of(&g.addr));
        let expr = if delete {
            key_expr(&grant_key(g.addr, g.proto, g.port))
        } else {
            grant_element(g)
        };
        if delete {
            batch.delete(elements(&name, vec![expr]));
        } else {
            batch.add(elements(&name, vec![expr]));
        }
    }
    batch.to_nftables()
}

/// Like [`element_renew`] for per-user grants: `renew` get exactly their new
/// timeouts, `end` go, present or not, in one transaction.
pub fn grant_renew(renew: &[Grant], end: &[Grant]) -> Nftables<'static> {
    renew_elements(
        |family| super::render::set_name("grant", family),
        |family| {
            renew
                .iter()
                .chain(end)
                .filter(|g| Family::of(&g.addr) == family)
                .map(|g| key_expr(&grant_key(g.addr, g.proto, g.port)))
                .collect()
        },
        |family| {
            renew
                .iter()
                .filter(|g| Family::of(&g.addr) == family)
                .map(grant_element)
                .collect()
        },
    )
}

/// The transaction that removes the agent's table and nothing else.
pub fn delete_table_batch() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::live::LiveRule;
    use crate::ruleset::render;
    use palisade_model::parse_policy;

    /// A live table exactly as the desired one would list, without running nft.
    fn live_of(desired: &Desired, dynamic: &[(&str, &str)]) -> LiveTable {
        let mut live = LiveTable {
            marker: Some(desired.marker()),
            ..Default::default()
        };
        for spec in &desired.sets {
            let elems = desired
                .static_elements
                .get(&spec.name)
                .cloned()
                .unwrap_or_default();
            live.sets.insert(
                spec.name.clone(),
                elems
                    .iter()
                    .map(|e| serde_json::to_value(e).unwrap())
                    .collect(),
            );
        }
        for (set, addr) in dynamic {
            live.sets
                .get_mut(*set)
                .unwrap()
                .push(serde_json::json!({"elem": {"val": addr, "timeout": 60, "expires": 59}}));
        }
        for chain in &desired.chains {
            live.chains.insert(
                chain.name.clone(),
                vec![LiveRule::default(); chain.rules.len()],
            );
            live.chain_digests
                .insert(chain.name.clone(), chain.digest());
        }
        live
    }

    fn ban(addr: &str) -> DynamicState {
        let mut d = DynamicState::default();
        d.insert(
            DynSet::Ban,
            TimedAddr {
                addr: addr.parse().unwrap(),
                ttl: Some(Duration::from_secs(60)),
                expires: None,
                comment: None,
            },
        );
        d
    }

    #[test]
    fn fresh_table_is_one_transaction_with_everything() {
        let desired =
            render(&parse_policy("[zones.local]\nnetworks = [\"10.0.0.0/8\"]\n", "t").unwrap());
        let p = plan(&desired, None, &ban("192.0.2.1"), DynMode::Merge);
        assert!(p.summary.create_table && p.summary.static_changed);
        assert_eq!(p.summary.elements_added, 1);
        let json = serde_json::to_string(&p.batch).unwrap();
        assert!(
            json.starts_with("{\"nftables\":[{\"add\":{\"table\""),
            "{json}"
        );
        assert!(!json.contains("\"delete\""));
    }

    #[test]
    fn in_force_means_no_transaction() {
        let desired = render(&parse_policy("", "t").unwrap());
        let live = live_of(&desired, &[("ban_v4", "192.0.2.1")]);
        assert!(
            plan(&desired, Some(&live), &ban("192.0.2.1"), DynMode::Merge)
                .summary
                .is_noop()
        );
        assert!(
            plan(
                &desired,
                Some(&live),
                &DynamicState::default(),
                DynMode::Merge
            )
            .summary
            .is_noop(),
            "merge keeps bans"
        );
    }

    #[test]
    fn a_policy_change_refills_chains_but_keeps_dynamic_elements() {
        let old = render(&parse_policy("", "t").unwrap());
        let new = render(&parse_policy("management = [\"192.0.2.9\"]", "t").unwrap());
        let live = live_of(&old, &[("ban_v4", "198.51.100.1")]);
        let p = plan(&new, Some(&live), &DynamicState::default(), DynMode::Merge);
        assert!(p.summary.static_changed && !p.summary.create_table);
        let json = serde_json::to_string(&p.batch).unwrap();
        assert!(json.contains("\"flush\":{\"chain\""), "{json}");
        assert!(
            !json.contains("198.51.100.1"),
            "the ban is neither re-added nor flushed"
        );
        assert!(
            !json.contains("\"name\":\"ban_v4\""),
            "the ban set is not touched at all"
        );
    }

    /// Refilling a chain resets its meters: the tiers would forget every
    /// source's rate at each policy change.
    #[test]
    fn a_policy_change_refills_only_the_chains_that_changed() {
        let old = render(&parse_policy("", "t").unwrap());
        let new = render(
            &parse_policy("[[services]]\nname = \"ssh\"\nzones = [\"other\"]\n", "t").unwrap(),
        );
        let live = live_of(&old, &[]);
        let p = plan(&new, Some(&live), &DynamicState::default(), DynMode::Merge);
        assert!(p.summary.static_changed);
        let json = serde_json::to_string(&p.batch).unwrap();
        let flushed: Vec<&str> = p
            .batch
            .objects
            .iter()
            .filter_map(|o| match o {
                nftables::schema::NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(c))) => {
                    Some(&*c.name)
                }
                _ => None,
            })
            .collect();
        assert!(flushed.contains(&"zone_other"), "{flushed:?}");
        assert!(flushed.contains(&INFO_CHAIN), "{flushed:?}");
        assert!(!flushed.contains(&"guard"), "{flushed:?}");
        assert!(
            !json.contains("\"tier_v4\""),
            "the tier rules are left alone: {json}"
        );
        assert!(plan(
            &new,
            Some(&live_of(&new, &[])),
            &DynamicState::default(),
            DynMode::Merge
        )
        .summary
        .is_noop());
    }

    #[test]
    fn replace_mode_deletes_what_is_not_wanted() {
        let desired = render(&parse_policy("", "t").unwrap());
        let live = live_of(
            &desired,
            &[("ban_v4", "198.51.100.1"), ("ban_v4", "198.51.100.2")],
        );
        let p = plan(
            &desired,
            Some(&live),
            &ban("198.51.100.2"),
            DynMode::Replace,
        );
        assert_eq!(
            (p.summary.elements_deleted, p.summary.elements_added),
            (1, 0)
        );
        assert!(!p.summary.static_changed);
    }

    #[test]
    fn an_old_schema_is_rebuilt_in_one_transaction_keeping_elements() {
        let desired = render(&parse_policy("", "t").unwrap());
        let mut live = live_of(&desired, &[("ban_v6", "2001:db8::1")]);
        live.marker = Some("palisade schema=0 policy=x".into());
        let p = plan(
            &desired,
            Some(&live),
            &DynamicState::default(),
            DynMode::Merge,
        );
        assert!(p.summary.rebuild_table);
        let json = serde_json::to_string(&p.batch).unwrap();
        assert!(
            json.starts_with("{\"nftables\":[{\"delete\":{\"table\""),
            "{json}"
        );
        assert!(json.contains("2001:db8::1"), "the ban survives the rebuild");
    }
}
