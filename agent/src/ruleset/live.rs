//! The live table as the kernel reports it (`nft -j list table inet palisade`),
//! read back into the model's terms.

use super::render::{SetRole, CHAIN_DIGEST_PREFIX, INFO_CHAIN};
use palisade_model::{DynamicState, Grant, Proto, TimedAddr};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct LiveRule {
    pub chain: String,
    pub comment: Option<String>,
    pub handle: u64,
    pub packets: Option<u64>,
}

/// What the agent needs to know of its live table.
#[derive(Debug, Clone, Default)]
pub struct LiveTable {
    /// The marker rule's comment (`palisade schema=N policy=FP`).
    pub marker: Option<String>,
    /// Set name → raw element JSON values.
    pub sets: BTreeMap<String, Vec<Value>>,
    pub chains: BTreeMap<String, Vec<LiveRule>>,
    /// Chain name → the digest its rules had when written (see
    /// [`super::render::ChainSpec::digest`]).
    pub chain_digests: BTreeMap<String, String>,
}

/// `chain NAME digest=HEX` → (NAME, HEX).
fn parse_chain_digest(comment: &str) -> Option<(String, String)> {
    let (name, digest) = comment
        .strip_prefix(CHAIN_DIGEST_PREFIX)?
        .split_once(" digest=")?;
    Some((name.to_string(), digest.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read nft's JSON listing: {0}")]
pub struct LiveParseError(String);

impl LiveTable {
    pub fn parse(json: &str) -> Result<LiveTable, LiveParseError> {
        let doc: Value = serde_json::from_str(json).map_err(|e| LiveParseError(e.to_string()))?;
        let items = doc
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| LiveParseError("no `nftables` array".into()))?;
        let mut live = LiveTable::default();
        for item in items {
            if let Some(set) = item.get("set") {
                let name = set["name"].as_str().unwrap_or_default().to_string();
                let elems = set
                    .get("elem")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                live.sets.insert(name, elems);
            } else if let Some(chain) = item.get("chain") {
                let name = chain["name"].as_str().unwrap_or_default().to_string();
                live.chains.entry(name).or_default();
            } else if let Some(rule) = item.get("rule") {
                let chain = rule["chain"].as_str().unwrap_or_default().to_string();
                let comment = rule
                    .get("comment")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let packets = rule["expr"].as_array().and_then(|e| {
                    e.iter()
                        .find_map(|s| s.get("counter")?.get("packets")?.as_u64())
                });
                if chain == INFO_CHAIN {
                    match comment.as_deref().and_then(parse_chain_digest) {
                        Some((name, digest)) => {
                            live.chain_digests.insert(name, digest);
                        }
                        None => live.marker = comment.clone(),
                    }
                }
                live.chains
                    .entry(chain.clone())
                    .or_default()
                    .push(LiveRule {
                        chain,
                        comment,
                        handle: rule["handle"].as_u64().unwrap_or_default(),
                        packets,
                    });
            }
        }
        Ok(live)
    }

    /// Whether `chain` is in the kernel exactly as `spec` would write it.
    pub fn chain_in_force(&self, spec: &super::render::ChainSpec) -> bool {
        self.rule_count(&spec.name) == spec.rules.len()
            && self.chain_digests.get(&spec.name) == Some(&spec.digest())
    }

    /// The schema version written in the marker, if any.
    pub fn schema(&self) -> Option<u32> {
        self.marker
            .as_deref()?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("schema=")?.parse().ok())
    }

    pub fn rule_count(&self, chain: &str) -> usize {
        self.chains.get(chain).map(Vec::len).unwrap_or(0)
    }

    pub fn element_count(&self, set: &str) -> usize {
        self.sets.get(set).map(Vec::len).unwrap_or(0)
    }

    /// The dynamic sets' elements, for `explain`, `show` and diffing.
    pub fn dynamic_state(&self) -> DynamicState {
        let mut state = DynamicState::default();
        for (name, role) in super::render::set_roles() {
            let Some(elems) = self.sets.get(&name) else {
                continue;
            };
            for raw in elems {
                let (val, meta) = split_elem(raw);
                match role {
                    SetRole::Dynamic(set) => {
                        if let Some(addr) = val.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                            state.insert(
                                set,
                                TimedAddr {
                                    addr,
                                    ttl: meta.timeout,
                                    expires: meta.expires,
                                    comment: meta.comment,
                                },
                            );
                        }
                    }
                    SetRole::Grant => {
                        if let Some(grant) = parse_grant(val, &meta) {
                            state.grants.push(grant);
                        }
                    }
                    SetRole::Static => {}
                }
            }
        }
        state
    }
}

#[derive(Default)]
struct ElemMeta {
    timeout: Option<Duration>,
    expires: Option<Duration>,
    comment: Option<String>,
}

/// nft lists a plain element as its value, and one with a timeout or comment as
/// `{"elem": {"val": …, "timeout": …, "expires": …, "comment": …}}`.
fn split_elem(raw: &Value) -> (&Value, ElemMeta) {
    match raw.get("elem") {
        Some(elem) => {
            let secs = |k: &str| elem.get(k).and_then(Value::as_u64).map(Duration::from_secs);
            (
                &elem["val"],
                ElemMeta {
                    timeout: secs("timeout"),
                    expires: secs("expires"),
                    comment: elem
                        .get("comment")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                },
            )
        }
        None => (raw, ElemMeta::default()),
    }
}

fn parse_grant(val: &Value, meta: &ElemMeta) -> Option<Grant> {
    let parts = val.get("concat")?.as_array()?;
    let addr = parts.first()?.as_str()?.parse().ok()?;
    let proto = match parts.get(1)? {
        Value::String(s) => s.parse::<Proto>().ok()?,
        Value::Number(n) => Proto::from_number(u8::try_from(n.as_u64()?).ok()?)?,
        _ => return None,
    };
    let port = u16::try_from(parts.get(2)?.as_u64()?).ok()?;
    Some(Grant {
        addr,
        proto,
        port,
        ttl: meta.timeout,
        expires: meta.expires,
        comment: meta.comment.clone(),
    })
}

/// The key of an element for membership comparisons (address, or grant tuple).
pub fn element_key(raw: &Value) -> Option<String> {
    let (val, _) = split_elem(raw);
    if let Some(s) = val.as_str() {
        return s.parse::<IpAddr>().ok().map(|a| a.to_string());
    }
    let g = parse_grant(val, &ElemMeta::default())?;
    Some(grant_key(g.addr, g.proto, g.port))
}

pub fn grant_key(addr: IpAddr, proto: Proto, port: u16) -> String {
    format!("{addr} . {proto} . {port}")
}
