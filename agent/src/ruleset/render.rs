//! Policy → nftables objects: a pure function, tested on its output.
//!
//! The rendered ruleset has two halves with different lives. The *static* half
//! (chains, rules, and the sets that mirror the configuration) changes only when the
//! policy does and is identified by a fingerprint. The *dynamic* sets (bans,
//! known-good, grants, resolved names) are only ever changed element by element, so
//! re-rendering never wipes a ban.

use super::expr::*;
use nftables::expr::{Elem, Expression, MetaKey, NamedExpression};
use nftables::schema::{SetFlag, SetType, SetTypeValue};
use nftables::stmt::{Limit, Log, Meter, SetOp, Statement};
use palisade_model::inline::QueueBackend;
use palisade_model::{
    DynSet, Family, Policy, PortSpec, Proto, Service, Stage, Zone, INPUT_PIPELINE,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// The one table the agent owns; it never touches any other.
pub const TABLE: &str = "palisade";
/// Bumped when set definitions change shape; a live table of another schema is
/// rebuilt (keeping its dynamic elements) instead of patched.
pub const SCHEMA: u32 = 2;
/// The unreferenced chain whose single rule carries the policy fingerprint.
pub const INFO_CHAIN: &str = "policy_info";
pub const INPUT_CHAIN: &str = "input";
pub const OUTPUT_CHAIN: &str = "output";
pub const KNOWN_GOOD_CHAIN: &str = "known_good";
/// Judges signalling packets of sources that are not trusted, trunks or known-good.
pub const GUARD_CHAIN: &str = "guard";
/// Drops packets over the rate tier, and bans a source that keeps exceeding it.
pub const FLOOD_CHAIN: &str = "flood";
/// Copies clear-text SIP to the agent (NFLOG).
pub const WATCH_CHAIN: &str = "watch";
/// Inline mode: marks clear-text SIP of unknown sources for the agent's queue.
pub const INLINE_CHAIN: &str = "inline";
/// Inline mode, native backend: the base chain that queues marked packets,
/// after every filter chain (so the zones have had their say first).
pub const INLINE_QUEUE_CHAIN: &str = "inline_queue";
/// NFLOG prefixes: which way a copied packet went, or why the kernel banned.
pub const LOG_IN: &str = "palisade:in";
pub const LOG_OUT: &str = "palisade:out";
pub const LOG_TIER_BAN: &str = "palisade:tier-ban";
/// Per-source rate state of the tiers: forgotten after this much silence.
const TIER_STATE_TIMEOUT: u32 = 30;

/// What a set holds, which decides how it is kept up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SetRole {
    /// Mirrors the configuration; flushed and refilled when the policy changes.
    Static,
    /// Element-by-element, with timeouts; never flushed by a policy change.
    Dynamic(#[serde(skip)] DynSet),
    /// Per-user grants (address . protocol . port), with timeouts.
    Grant,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetSpec {
    pub name: String,
    pub family: Option<Family>,
    pub role: SetRole,
    #[serde(skip)]
    pub set_type: SetTypeValue<'static>,
    pub flags: Vec<&'static str>,
    /// Capacity. Dynamic sets get a large one: a set that a rule updates from the
    /// packet path is otherwise capped by nft at 65,535 elements.
    pub size: Option<u32>,
}

/// Capacity of every dynamic set (bans above all).
pub const DYNAMIC_SET_SIZE: u32 = 1 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct RuleSpec {
    pub comment: String,
    pub expr: Vec<Statement<'static>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainSpec {
    pub name: String,
    /// Base chains only: where they hook.
    pub hook: Option<Hook>,
    pub rules: Vec<RuleSpec>,
}

/// The base chains: input filters (policy drop); output only watches the
/// PBX's SIP responses (policy accept); in inline mode with nft's own queue,
/// a late input chain hands marked packets to the agent (policy accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Hook {
    Input,
    Output,
    InlineQueue,
}

impl Hook {
    /// Priority of the base chain: filter (0), or after it for the queue
    /// (iptables-nft's `security` table sits at 150; the same place).
    pub fn priority(self) -> i32 {
        match self {
            Hook::Input | Hook::Output => 0,
            Hook::InlineQueue => 150,
        }
    }
}

/// The whole desired table.
#[derive(Debug, Clone, Serialize)]
pub struct Desired {
    pub sets: Vec<SetSpec>,
    /// Elements of the static sets, by set name.
    pub static_elements: BTreeMap<String, Vec<Expression<'static>>>,
    pub chains: Vec<ChainSpec>,
    /// Digest of everything above; equal fingerprints mean an identical static half.
    #[serde(skip)]
    pub fingerprint: String,
}

impl Desired {
    pub fn set(&self, name: &str) -> Option<&SetSpec> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// The comment of the marker rule in [`INFO_CHAIN`].
    pub fn marker(&self) -> String {
        format!("palisade schema={SCHEMA} policy={}", self.fingerprint)
    }
}

/// Start of the comment of the rule in [`INFO_CHAIN`] that records one
/// chain's digest: `chain NAME digest=HEX`.
pub const CHAIN_DIGEST_PREFIX: &str = "chain ";

impl ChainSpec {
    /// Digest of the chain's rules. A policy change refills only the chains
    /// whose digest changed: refilling a chain resets the state of the meters
    /// its rules own (the rate tiers), which would hand every source a fresh
    /// burst at each change.
    pub fn digest(&self) -> String {
        let digest = Sha256::digest(serde_json::to_vec(self).expect("rendered objects serialize"));
        hex::encode(&digest[..8])
    }

    /// The comment recording [`ChainSpec::digest`] in [`INFO_CHAIN`].
    pub fn digest_comment(&self) -> String {
        format!(
            "{CHAIN_DIGEST_PREFIX}{} digest={}",
            self.name,
            self.digest()
        )
    }
}

pub fn set_name(base: &str, family: Family) -> String {
    format!("{base}_{}", family.suffix())
}

pub fn dyn_set_name(set: DynSet, family: Family) -> String {
    set_name(&set.base_name(), family)
}

fn zone_set(zone: Zone, family: Family) -> String {
    set_name(&format!("zone_{zone}"), family)
}

fn if_set(zone: Zone) -> String {
    format!("if_{zone}")
}

fn zone_chain(zone: Zone) -> String {
    format!("zone_{zone}")
}

fn addr_type(family: Family) -> SetType {
    match family {
        Family::V4 => SetType::Ipv4Addr,
        Family::V6 => SetType::Ipv6Addr,
    }
}

/// Every set of the table with its role. Set definitions depend on the schema,
/// not on the policy, so reading the live table needs no rendering.
pub fn set_roles() -> Vec<(String, SetRole)> {
    all_sets().into_iter().map(|s| (s.name, s.role)).collect()
}

fn all_sets() -> Vec<SetSpec> {
    let mut sets = Vec::new();
    for family in Family::ALL {
        let single = SetTypeValue::Single(addr_type(family));
        sets.push(SetSpec {
            name: set_name("mgmt", family),
            family: Some(family),
            role: SetRole::Static,
            set_type: single.clone(),
            flags: vec!["interval"],
            size: None,
        });
        sets.push(SetSpec {
            name: set_name("trunk", family),
            family: Some(family),
            role: SetRole::Static,
            set_type: single.clone(),
            flags: vec!["interval"],
            size: None,
        });
        for zone in Zone::ALL {
            sets.push(SetSpec {
                name: zone_set(zone, family),
                family: Some(family),
                role: SetRole::Static,
                set_type: single.clone(),
                flags: vec!["interval"],
                size: None,
            });
        }
        for dynset in DynSet::ALL {
            sets.push(SetSpec {
                name: dyn_set_name(dynset, family),
                family: Some(family),
                role: SetRole::Dynamic(dynset),
                set_type: single.clone(),
                flags: vec!["timeout"],
                size: Some(DYNAMIC_SET_SIZE),
            });
        }
        sets.push(SetSpec {
            name: set_name("grant", family),
            family: Some(family),
            role: SetRole::Grant,
            set_type: SetTypeValue::Concatenated(Cow::Owned(vec![
                addr_type(family),
                SetType::InetProto,
                SetType::InetService,
            ])),
            flags: vec!["timeout"],
            size: Some(DYNAMIC_SET_SIZE),
        });
    }
    for zone in Zone::ALL {
        sets.push(SetSpec {
            name: if_set(zone),
            family: None,
            role: SetRole::Static,
            set_type: SetTypeValue::Single(SetType::Ifname),
            flags: vec![],
            size: None,
        });
    }
    sets
}

pub fn set_flags(spec: &SetSpec) -> Option<std::collections::HashSet<SetFlag>> {
    if spec.flags.is_empty() {
        return None;
    }
    Some(
        spec.flags
            .iter()
            .map(|f| match *f {
                "interval" => SetFlag::Interval,
                _ => SetFlag::Timeout,
            })
            .collect(),
    )
}

fn rule(comment: impl Into<String>, expr: Vec<Statement<'static>>) -> RuleSpec {
    RuleSpec {
        comment: comment.into(),
        expr,
    }
}

/// One rule per family: `ip saddr @set_v4 <verdict>` and `ip6 saddr @set_v6 <verdict>`.
fn per_family(
    base: &str,
    comment: &str,
    verdict: impl Fn() -> Vec<Statement<'static>>,
) -> Vec<RuleSpec> {
    Family::ALL
        .into_iter()
        .map(|family| {
            let mut expr = vec![eq(saddr(family), set_ref(&set_name(base, family)))];
            expr.extend(verdict());
            rule(comment, expr)
        })
        .collect()
}

/// `tcp dport {…} counter accept` for each protocol a service uses.
fn service_rules(service: &Service) -> Vec<RuleSpec> {
    port_rules(
        &service.ports,
        "dport",
        &format!("service {}", service.name),
        || vec![counter(), accept()],
    )
}

fn icmp_echo_rules() -> Vec<RuleSpec> {
    let limit = || {
        Statement::Limit(Limit {
            rate: 10,
            rate_unit: None,
            per: Some(Cow::Borrowed("second")),
            burst: Some(20),
            burst_unit: None,
            inv: None,
        })
    };
    vec![
        rule(
            "ping",
            vec![
                eq(payload("icmp", "type"), string("echo-request")),
                limit(),
                accept(),
            ],
        ),
        rule(
            "ping",
            vec![
                eq(payload("icmpv6", "type"), string("echo-request")),
                limit(),
                accept(),
            ],
        ),
    ]
}

/// `udp dport {…} <verdict>` / `tcp dport {…} <verdict>` for each protocol of `ports`.
fn port_rules(
    ports: &[PortSpec],
    field: &'static str,
    comment: &str,
    verdict: impl Fn() -> Vec<Statement<'static>>,
) -> Vec<RuleSpec> {
    let mut by_proto: BTreeMap<Proto, Vec<Expression<'static>>> = BTreeMap::new();
    for spec in ports {
        let port = if spec.range.first == spec.range.last {
            number(spec.range.first.into())
        } else {
            range(spec.range.first.into(), spec.range.last.into())
        };
        by_proto.entry(spec.proto).or_default().push(port);
    }
    by_proto
        .into_iter()
        .map(|(proto, mut ports)| {
            let right = if ports.len() == 1 {
                ports.remove(0)
            } else {
                anon_set(ports)
            };
            let mut expr = vec![eq(payload(proto.as_str(), field), right)];
            expr.extend(verdict());
            rule(comment, expr)
        })
        .collect()
}

/// `log group N prefix P`: the whole packet, at once (no batching), to the agent.
/// `queue-threshold 1` is what makes it "at once": without it the kernel's
/// NFLOG instance holds copies until 100 are queued, its buffer (one page)
/// fills or its 1 s timer runs out, so a slow attack (a few INVITEs a second)
/// was judged only after several of its requests had been answered.
fn nflog(group: u16, prefix: &str) -> Statement<'static> {
    Statement::Log(Some(Log {
        prefix: Some(Cow::Owned(prefix.to_string())),
        group: Some(group.into()),
        snaplen: Some(65_535),
        queue_threshold: Some(1),
        level: None,
        flags: None,
    }))
}

/// A per-source meter: matches when `saddr` exceeds `rate`/s with `burst`.
fn meter_over(
    name: String,
    family: Family,
    rate: u32,
    burst: u32,
    idle: u32,
) -> Statement<'static> {
    Statement::Meter(Meter {
        name: Cow::Owned(name),
        key: Expression::Named(NamedExpression::Elem(Elem {
            val: Box::new(saddr(family)),
            timeout: Some(idle),
            expires: None,
            comment: None,
            counter: None,
        })),
        stmt: Box::new(Statement::Limit(Limit {
            rate,
            rate_unit: None,
            per: Some(Cow::Borrowed("second")),
            burst: Some(burst),
            burst_unit: None,
            inv: Some(true),
        })),
    })
}

/// The responsive firewall's chains: guard (bypasses and tiers), flood (over the
/// tier; bans in the kernel a source that keeps at it) and watch (the copy to
/// the agent). Empty when the responsive firewall is off.
fn guard_chains(policy: &Policy) -> Vec<ChainSpec> {
    let r = &policy.responsive;
    if !r.enabled || policy.signalling_ports().is_empty() {
        return Vec::new();
    }
    let watched = policy.sip_watch_ports();
    let mut guard = Vec::new();
    for (base, comment) in [
        ("zone_trusted".to_string(), "guard: trusted"),
        (
            DynSet::Resolved(Zone::Trusted).base_name(),
            "guard: trusted, resolved",
        ),
        (DynSet::Peer.base_name(), "guard: tenant peer"),
        ("trunk".to_string(), "guard: trunk"),
        (DynSet::Trunk.base_name(), "guard: trunk, resolved"),
    ] {
        guard.extend(per_family(&base, comment, || vec![Statement::Return(None)]));
    }
    guard.extend(per_family(
        &DynSet::KnownGood.base_name(),
        "guard: known-good, watched only",
        || vec![goto(WATCH_CHAIN)],
    ));
    let tiers = &r.tiers;
    for family in Family::ALL {
        guard.push(rule(
            "guard: tier",
            vec![
                meter_over(
                    set_name("tier", family),
                    family,
                    tiers.rate,
                    tiers.burst,
                    TIER_STATE_TIMEOUT,
                ),
                jump(FLOOD_CHAIN),
            ],
        ));
    }
    if r.inline.enabled {
        guard.push(rule("guard: inline", vec![goto(INLINE_CHAIN)]));
    } else {
        guard.push(rule("guard: watch", vec![goto(WATCH_CHAIN)]));
    }

    let ban_secs = u32::try_from(tiers.flood_ban.as_secs())
        .unwrap_or(u32::MAX)
        .max(1);
    let mut flood: Vec<RuleSpec> = Family::ALL
        .into_iter()
        .map(|family| {
            rule(
                "flood: kept exceeding the tier, banned",
                vec![
                    meter_over(
                        set_name("strike", family),
                        family,
                        1,
                        tiers.strikes,
                        3 * TIER_STATE_TIMEOUT,
                    ),
                    Statement::Set(nftables::stmt::Set {
                        op: SetOp::Update,
                        elem: Expression::Named(NamedExpression::Elem(Elem {
                            val: Box::new(saddr(family)),
                            timeout: Some(ban_secs),
                            expires: None,
                            comment: None,
                            counter: None,
                        })),
                        set: Cow::Owned(format!("@{}", dyn_set_name(DynSet::Ban, family))),
                    }),
                    nflog(r.nflog_group, LOG_TIER_BAN),
                    counter(),
                    drop(),
                ],
            )
        })
        .collect();
    flood.push(rule("flood: over the tier", vec![counter(), drop()]));

    let watch = port_rules(&watched, "dport", "watch: sip", || {
        vec![nflog(r.nflog_group, LOG_IN)]
    });
    let mut chains = vec![
        ChainSpec {
            name: GUARD_CHAIN.into(),
            hook: None,
            rules: guard,
        },
        ChainSpec {
            name: FLOOD_CHAIN.into(),
            hook: None,
            rules: flood,
        },
        ChainSpec {
            name: WATCH_CHAIN.into(),
            hook: None,
            rules: watch,
        },
    ];
    chains.extend(inline_chains(policy));
    chains
}

/// Inline mode: clear-text SIP of unknown sources is marked here and, once
/// the zones have accepted it, queued to the agent by a later base chain
/// (ours with nft's `queue`, or iptables-nft's with the xt target, which the
/// agent keeps outside this table). Marking rather than queueing here keeps
/// the zones in charge: an accepted queued packet would skip the rest of the
/// chain.
fn inline_chains(policy: &Policy) -> Vec<ChainSpec> {
    let inline = &policy.responsive.inline;
    if !inline.enabled {
        return Vec::new();
    }
    let mark = inline.mark;
    let marked = port_rules(&policy.sip_watch_ports(), "dport", "inline: sip", || {
        vec![Statement::Mangle(nftables::stmt::Mangle {
            key: meta(MetaKey::Mark),
            value: Expression::BinaryOperation(Box::new(nftables::expr::BinaryOperation::OR(
                vec![meta(MetaKey::Mark), number(mark)],
            ))),
        })]
    });
    let mut chains = vec![ChainSpec {
        name: INLINE_CHAIN.into(),
        hook: None,
        rules: marked,
    }];
    if inline.backend == QueueBackend::Native {
        let mut flags = std::collections::HashSet::new();
        if inline.bypass {
            flags.insert(nftables::stmt::QueueFlag::Bypass);
        }
        chains.push(ChainSpec {
            name: INLINE_QUEUE_CHAIN.into(),
            hook: Some(Hook::InlineQueue),
            rules: vec![rule(
                "inline: to the agent",
                vec![
                    eq(
                        Expression::BinaryOperation(Box::new(
                            nftables::expr::BinaryOperation::AND(meta(MetaKey::Mark), number(mark)),
                        )),
                        number(mark),
                    ),
                    Statement::Queue(nftables::stmt::Queue {
                        num: number(inline.queue.into()),
                        flags: Some(flags),
                    }),
                ],
            )],
        });
    }
    chains
}

/// The output hook copies the PBX's SIP (its answers tell the truth about each
/// source) to the agent.
fn output_rules(policy: &Policy) -> Vec<RuleSpec> {
    let r = &policy.responsive;
    if !r.enabled {
        return Vec::new();
    }
    port_rules(
        &policy.sip_watch_ports(),
        "sport",
        "watch: sip answers",
        || vec![nflog(r.nflog_group, LOG_OUT)],
    )
}

fn input_rules(policy: &Policy, stage: Stage) -> Vec<RuleSpec> {
    match stage {
        Stage::Guard => {
            let r = &policy.responsive;
            if !r.enabled {
                return Vec::new();
            }
            port_rules(
                &policy.signalling_ports(),
                "dport",
                "guard: signalling",
                || vec![jump(GUARD_CHAIN)],
            )
        }
        Stage::Loopback => vec![rule(
            "loopback",
            vec![eq(meta(MetaKey::Iif), string("lo")), accept()],
        )],
        Stage::Management => {
            let mut rules = per_family("mgmt", "management", || vec![accept()]);
            rules.extend(per_family(
                &DynSet::MgmtSession.base_name(),
                "management: first-start ssh session",
                || vec![accept()],
            ));
            rules.extend(per_family(
                &DynSet::Controller.base_name(),
                "management: the controller",
                || vec![accept()],
            ));
            rules
        }
        Stage::Bans => [DynSet::Ban, DynSet::SharedBan]
            .into_iter()
            .flat_map(|s| {
                per_family(&s.base_name(), &format!("ban: {s}"), || {
                    vec![counter(), drop()]
                })
            })
            .collect(),
        Stage::Blocked => {
            let mut rules = per_family("zone_blocked", "zone blocked", || vec![counter(), drop()]);
            rules.extend(per_family(
                &DynSet::Resolved(Zone::Blocked).base_name(),
                "zone blocked: resolved",
                || vec![counter(), drop()],
            ));
            rules
        }
        Stage::Established => vec![
            rule(
                "established",
                vec![
                    is_in(
                        ct("state"),
                        Expression::List(vec![string("established"), string("related")]),
                    ),
                    accept(),
                ],
            ),
            rule(
                "invalid",
                vec![eq(ct("state"), string("invalid")), counter(), drop()],
            ),
        ],
        Stage::Icmp => vec![rule(
            "ipv6 neighbour discovery",
            vec![
                eq(
                    payload("icmpv6", "type"),
                    anon_set(
                        [
                            "nd-router-solicit",
                            "nd-router-advert",
                            "nd-neighbor-solicit",
                            "nd-neighbor-advert",
                        ]
                        .into_iter()
                        .map(string)
                        .collect(),
                    ),
                ),
                accept(),
            ],
        )],
        Stage::Trusted => {
            let mut rules = per_family("zone_trusted", "zone trusted", || vec![accept()]);
            rules.extend(per_family(
                &DynSet::Resolved(Zone::Trusted).base_name(),
                "zone trusted: resolved",
                || vec![accept()],
            ));
            rules.extend(per_family(&DynSet::Peer.base_name(), "tenant peer", || {
                vec![accept()]
            }));
            rules
        }
        Stage::Trunks => {
            let mut rules = per_family("trunk", "trunk", || vec![jump(KNOWN_GOOD_CHAIN)]);
            rules.extend(per_family(
                &DynSet::Trunk.base_name(),
                "trunk: resolved",
                || vec![jump(KNOWN_GOOD_CHAIN)],
            ));
            rules
        }
        Stage::KnownGood => per_family(&DynSet::KnownGood.base_name(), "known-good", || {
            vec![jump(KNOWN_GOOD_CHAIN)]
        }),
        Stage::Grants => Family::ALL
            .into_iter()
            .map(|family| {
                rule(
                    "grant",
                    vec![
                        eq(
                            concat(vec![
                                saddr(family),
                                meta(MetaKey::L4proto),
                                payload("th", "dport"),
                            ]),
                            set_ref(&set_name("grant", family)),
                        ),
                        accept(),
                    ],
                )
            })
            .collect(),
        Stage::Zones => {
            let mut rules = Vec::new();
            for zone in Zone::FILTERED {
                let chain = zone_chain(zone);
                rules.extend(per_family(
                    &format!("zone_{zone}"),
                    &format!("zone {zone}"),
                    || vec![goto(&chain)],
                ));
                rules.extend(per_family(
                    &DynSet::Resolved(zone).base_name(),
                    &format!("zone {zone}: resolved"),
                    || vec![goto(&chain)],
                ));
            }
            let by_if = |zone: Zone, verdict: Vec<Statement<'static>>| {
                let mut expr = vec![eq(meta(MetaKey::Iifname), set_ref(&if_set(zone)))];
                expr.extend(verdict);
                rule(format!("zone {zone}: interface"), expr)
            };
            rules.push(by_if(Zone::Blocked, vec![counter(), drop()]));
            rules.push(by_if(Zone::Trusted, vec![accept()]));
            for zone in Zone::FILTERED {
                rules.push(by_if(zone, vec![goto(&zone_chain(zone))]));
            }
            rules.push(rule(
                format!("zone {}: default", Zone::DEFAULT),
                vec![goto(&zone_chain(Zone::DEFAULT))],
            ));
            rules
        }
    }
}

fn static_elements(policy: &Policy) -> BTreeMap<String, Vec<Expression<'static>>> {
    let mut out: BTreeMap<String, Vec<Expression<'static>>> = BTreeMap::new();
    let mut push_net = |set: String, net: &ipnet::IpNet| {
        let elem = if net.prefix_len() == net.max_prefix_len() {
            string(net.addr().to_string())
        } else {
            prefix(net.network(), net.prefix_len())
        };
        out.entry(set).or_default().push(elem);
    };
    for m in &policy.management {
        push_net(set_name("mgmt", Family::of_net(&m.value)), &m.value);
    }
    for net in policy.trunk_networks() {
        push_net(set_name("trunk", Family::of_net(&net)), &net);
    }
    for zone in Zone::ALL {
        for n in policy.networks(zone) {
            push_net(zone_set(zone, Family::of_net(&n.value)), &n.value);
        }
    }
    for zone in Zone::ALL {
        let names: BTreeSet<&str> = policy.interfaces(zone).map(|i| i.value.as_str()).collect();
        if !names.is_empty() {
            out.insert(if_set(zone), names.into_iter().map(string).collect());
        }
    }
    out
}

/// Renders the policy. Pure: the same policy always gives the same objects and
/// fingerprint, whatever the live state.
pub fn render(policy: &Policy) -> Desired {
    let mut input = Vec::new();
    for stage in INPUT_PIPELINE {
        input.extend(input_rules(policy, stage));
    }
    let mut chains = vec![
        ChainSpec {
            name: INPUT_CHAIN.into(),
            hook: Some(Hook::Input),
            rules: input,
        },
        ChainSpec {
            name: OUTPUT_CHAIN.into(),
            hook: Some(Hook::Output),
            rules: output_rules(policy),
        },
    ];
    chains.extend(guard_chains(policy));
    chains.push(ChainSpec {
        name: KNOWN_GOOD_CHAIN.into(),
        hook: None,
        rules: policy
            .services
            .iter()
            .filter(|s| s.voip)
            .flat_map(service_rules)
            .collect(),
    });
    for zone in Zone::FILTERED {
        let mut rules: Vec<RuleSpec> = policy
            .services
            .iter()
            .filter(|s| s.open_in(zone))
            .flat_map(service_rules)
            .collect();
        rules.extend(icmp_echo_rules());
        rules.push(rule(
            format!("zone {zone}: default drop"),
            vec![counter(), drop()],
        ));
        chains.push(ChainSpec {
            name: zone_chain(zone),
            hook: None,
            rules,
        });
    }
    let mut desired = Desired {
        sets: all_sets(),
        static_elements: static_elements(policy),
        chains,
        fingerprint: String::new(),
    };
    let digest = Sha256::digest(serde_json::to_vec(&desired).expect("rendered objects serialize"));
    desired.fingerprint = hex::encode(&digest[..8]);
    desired
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::parse_policy;

    fn rendered(text: &str) -> Desired {
        render(&parse_policy(text, "test.toml").unwrap())
    }

    fn json(d: &Desired) -> String {
        serde_json::to_string(&d.chains).unwrap()
    }

    #[test]
    fn input_chain_follows_the_pipeline_order() {
        let d = rendered("");
        let comments: Vec<&str> = d.chains[0]
            .rules
            .iter()
            .map(|r| r.comment.as_str())
            .collect();
        let pos = |c: &str| {
            comments
                .iter()
                .position(|x| *x == c)
                .unwrap_or_else(|| panic!("no rule {c}"))
        };
        assert_eq!(pos("loopback"), 0);
        assert!(pos("management") < pos("ban: ban"));
        assert!(
            pos("ban: ban_shared") < pos("established"),
            "bans must precede the conntrack shortcut"
        );
        assert!(pos("zone blocked") < pos("established"));
        assert!(pos("established") < pos("zone trusted"));
        assert!(pos("zone trusted") < pos("known-good"));
        assert!(
            pos("ban: ban_shared") < pos("tenant peer") && pos("tenant peer") < pos("trunk"),
            "the tenant's hosts are trusted like the trusted zone, after the bans"
        );
        assert!(pos("known-good") < pos("grant"));
        assert!(pos("grant") < pos("zone local"));
        assert_eq!(*comments.last().unwrap(), "zone internet: default");
    }

    #[test]
    fn services_land_in_their_zones() {
        let d = rendered("");
        let chain = |n: &str| d.chains.iter().find(|c| c.name == n).unwrap();
        let has = |c: &ChainSpec, svc: &str| {
            c.rules
                .iter()
                .any(|r| r.comment == format!("service {svc}"))
        };
        assert!(has(chain("zone_local"), "ssh"));
        assert!(!has(chain("zone_internet"), "ssh"));
        assert!(has(chain("zone_internet"), "sip-udp"));
        assert!(has(chain("zone_other"), "webrtc"));
        assert!(has(chain("known_good"), "rtp") && !has(chain("known_good"), "admin"));
        let admin = serde_json::to_string(
            &chain("zone_local")
                .rules
                .iter()
                .find(|r| r.comment == "service admin")
                .unwrap()
                .expr,
        )
        .unwrap();
        assert!(admin.contains("\"set\":[80,443]"), "{admin}");
        let rtp = serde_json::to_string(
            &chain("zone_local")
                .rules
                .iter()
                .find(|r| r.comment == "service rtp")
                .unwrap()
                .expr,
        )
        .unwrap();
        assert!(rtp.contains("\"range\":[10000,20000]"), "{rtp}");
    }

    #[test]
    fn static_sets_mirror_the_config() {
        let d = rendered("management = [\"192.0.2.10\", \"2001:db8::/48\"]\n[zones.local]\nnetworks = [\"192.168.0.0/16\"]\ninterfaces = [\"eth1\", \"eth0\"]\n");
        let e = |n: &str| serde_json::to_string(&d.static_elements[n]).unwrap();
        assert_eq!(e("mgmt_v4"), "[\"192.0.2.10\"]");
        assert_eq!(
            e("mgmt_v6"),
            "[{\"prefix\":{\"addr\":\"2001:db8::\",\"len\":48}}]"
        );
        assert_eq!(
            e("zone_local_v4"),
            "[{\"prefix\":{\"addr\":\"192.168.0.0\",\"len\":16}}]"
        );
        assert_eq!(e("if_local"), "[\"eth0\",\"eth1\"]");
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        assert_eq!(rendered("").fingerprint, rendered("").fingerprint);
        assert_eq!(
            rendered("management = [\"192.0.2.1\"]").fingerprint,
            rendered("\n\nmanagement = [ \"192.0.2.1\" ]").fingerprint,
            "moving a line is not a change"
        );
        assert_ne!(
            rendered("").fingerprint,
            rendered("management = [\"192.0.2.1\"]").fingerprint
        );
        assert_ne!(
            rendered("").fingerprint,
            rendered("[[services]]\nname = \"ssh\"\nzones = [\"other\"]\n").fingerprint
        );
        assert_eq!(json(&rendered("")), json(&rendered("")));
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;
    use palisade_model::parse_policy;

    fn chain<'a>(d: &'a Desired, name: &str) -> &'a ChainSpec {
        d.chains
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no chain {name}"))
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    /// Inline mode marks unknown sources' SIP instead of copying it; the queue
    /// itself is ours only where nft has `queue` (otherwise iptables-nft's).
    #[test]
    fn inline_mode_marks_and_queues_after_the_filter_chains() {
        let off = render(&parse_policy("", "t").unwrap());
        assert!(!off.chains.iter().any(|c| c.name == INLINE_CHAIN));
        let mut p =
            parse_policy("[responsive.inline]\nenabled = true\nbypass = false\n", "t").unwrap();
        let xt = render(&p);
        let guard = json(&chain(&xt, GUARD_CHAIN).rules);
        assert!(
            guard.contains("\"goto\":{\"target\":\"inline\"}"),
            "{guard}"
        );
        let last = chain(&xt, GUARD_CHAIN).rules.last().unwrap();
        assert_eq!(
            last.comment, "guard: inline",
            "unknown sources are held, not copied"
        );
        let inline = json(&chain(&xt, INLINE_CHAIN).rules);
        assert!(
            inline.contains("\"mangle\"") && inline.contains(&0x0050_0000u32.to_string()),
            "{inline}"
        );
        assert!(inline.contains("5060"), "{inline}");
        assert!(!xt.chains.iter().any(|c| c.name == INLINE_QUEUE_CHAIN));
        // Known-good sources are still copied, not held.
        assert!(guard.contains("known-good"), "{guard}");

        p.responsive.inline.backend = QueueBackend::Native;
        let native = render(&p);
        let q = chain(&native, INLINE_QUEUE_CHAIN);
        assert_eq!(q.hook, Some(Hook::InlineQueue));
        assert!(Hook::InlineQueue.priority() > Hook::Input.priority());
        let rules = json(&q.rules);
        assert!(
            rules.contains("\"queue\"") && rules.contains("5060"),
            "{rules}"
        );
        assert!(
            !rules.contains("bypass"),
            "bypass off means fail closed: {rules}"
        );
        assert_ne!(xt.fingerprint, native.fingerprint);
    }

    #[test]
    fn signalling_meets_the_guard_before_conntrack() {
        let d = render(&parse_policy("", "t").unwrap());
        let input = &chain(&d, INPUT_CHAIN).rules;
        let pos = |c: &str| input.iter().position(|r| r.comment == c).unwrap();
        assert!(pos("ban: ban_shared") < pos("guard: signalling"));
        assert!(pos("guard: signalling") < pos("established"));
        let guard = json(
            &input
                .iter()
                .filter(|r| r.comment == "guard: signalling")
                .collect::<Vec<_>>(),
        );
        // SIP udp/tcp/tls and IAX2.
        for port in ["5060", "5061", "4569"] {
            assert!(guard.contains(port), "{guard}");
        }
    }

    #[test]
    fn trusted_trunks_and_known_good_bypass_the_tiers() {
        let d = render(&parse_policy("", "t").unwrap());
        let rules = &chain(&d, GUARD_CHAIN).rules;
        let pos = |c: &str| rules.iter().position(|r| r.comment == c).unwrap();
        assert!(pos("guard: trusted") < pos("guard: tier"));
        assert!(pos("guard: trunk, resolved") < pos("guard: tier"));
        assert!(pos("guard: tenant peer") < pos("guard: tier"));
        assert!(pos("guard: known-good, watched only") < pos("guard: tier"));
        let tier = json(&rules[pos("guard: tier")].expr);
        assert!(
            tier.contains("\"meter\"")
                && tier.contains("\"rate\":10")
                && tier.contains("\"burst\":10"),
            "{tier}"
        );
        let flood = json(&chain(&d, FLOOD_CHAIN).rules[0].expr);
        assert!(
            flood.contains("@ban_v4") && flood.contains(LOG_TIER_BAN),
            "{flood}"
        );
    }

    #[test]
    fn only_clear_text_sip_is_copied_both_ways() {
        let d = render(&parse_policy("", "t").unwrap());
        let watch = json(&chain(&d, WATCH_CHAIN).rules);
        assert!(watch.contains(LOG_IN) && watch.contains("5060"));
        assert!(
            !watch.contains("5061") && !watch.contains("4569"),
            "{watch}"
        );
        let out = chain(&d, OUTPUT_CHAIN);
        assert_eq!(out.hook, Some(Hook::Output));
        let out = json(&out.rules);
        assert!(out.contains("sport") && out.contains(LOG_OUT), "{out}");
    }

    #[test]
    fn tiers_follow_the_config_and_off_means_no_guard() {
        let d = render(&parse_policy("[responsive.tiers]\nrate = 3\nburst = 7\n", "t").unwrap());
        let tier = json(&chain(&d, GUARD_CHAIN).rules);
        assert!(
            tier.contains("\"rate\":3") && tier.contains("\"burst\":7"),
            "{tier}"
        );
        let off = render(&parse_policy("[responsive]\nenabled = false\n", "t").unwrap());
        assert!(off.chains.iter().all(|c| c.name != GUARD_CHAIN));
        assert!(chain(&off, OUTPUT_CHAIN).rules.is_empty());
        assert!(!json(&chain(&off, INPUT_CHAIN).rules).contains(GUARD_CHAIN));
    }
}

#[cfg(test)]
mod trunk_tests {
    use super::*;
    use palisade_model::{parse_policy, PbxFacts, PbxKind, Peer, PeerTarget, Provenance};

    #[test]
    fn discovered_trunks_fill_the_trunk_sets_and_jump_to_voip() {
        let peer = |t: &str| Peer {
            name: "t".into(),
            target: PeerTarget::Net(t.parse().unwrap()),
            provenance: Provenance {
                file: "f".into(),
                line: 1,
                section: "s".into(),
                what: "w".into(),
            },
        };
        let facts = PbxFacts {
            kinds: vec![PbxKind::Asterisk],
            peers: vec![peer("192.0.2.0/24"), peer("2001:db8::/64")],
            ..Default::default()
        };
        let d = render(&parse_policy("", "t").unwrap().with_facts(&facts));
        assert_eq!(
            serde_json::to_string(&d.static_elements["trunk_v4"]).unwrap(),
            "[{\"prefix\":{\"addr\":\"192.0.2.0\",\"len\":24}}]"
        );
        assert!(d.static_elements.contains_key("trunk_v6"));
        let input = &d.chains[0].rules;
        let pos = |c: &str| input.iter().position(|r| r.comment == c).unwrap();
        assert!(pos("zone trusted") < pos("trunk") && pos("trunk") < pos("known-good"));
        assert!(d.set("trunk_dyn_v4").is_some());
        for name in ["tenant_peer_v4", "tenant_peer_v6"] {
            let set = d.set(name).unwrap_or_else(|| panic!("no set {name}"));
            assert_eq!(set.role, SetRole::Dynamic(DynSet::Peer));
            assert_eq!(set.flags, ["timeout"]);
        }
    }
}
