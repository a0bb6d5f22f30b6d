//! `palisade-agent show`: the live table, read back into the model's terms.

use crate::ruleset::render::INFO_CHAIN;
use crate::ruleset::{render, LiveTable};
use crate::state::{now_unix, Pending};
use palisade_model::{DynSet, Policy, Zone};
use std::fmt::Write;

fn short(elem: &serde_json::Value) -> String {
    if let Some(s) = elem.as_str() {
        return s.to_string();
    }
    if let Some(p) = elem.get("prefix") {
        return format!("{}/{}", p["addr"].as_str().unwrap_or("?"), p["len"]);
    }
    if let Some(r) = elem.get("range") {
        return format!("{}-{}", r[0], r[1]);
    }
    elem.to_string()
}

/// A human report of the live table against the policy that should be in force.
pub fn report(
    live: Option<&LiveTable>,
    policy: Option<&Policy>,
    pending: Option<&Pending>,
) -> String {
    let mut out = String::new();
    let Some(live) = live else {
        out.push_str("table inet palisade: NOT LOADED (the agent is not enforcing anything)\n");
        return out;
    };
    let marker = live.marker.clone().unwrap_or_else(|| "no marker".into());
    let _ = writeln!(out, "table inet palisade: loaded ({marker})");
    if let Some(policy) = policy {
        let desired = render(policy);
        let state = if live.marker.as_deref() == Some(desired.marker().as_str()) {
            "in force"
        } else {
            "DRIFTED: the live rules differ from the policy"
        };
        let _ = writeln!(out, "policy {}: {state}", desired.fingerprint);
        let r = &policy.responsive;
        let _ = writeln!(
            out,
            "responsive firewall: {}",
            if r.enabled {
                format!(
                    "on (tier {}/s burst {}); inline mode {}",
                    r.tiers.rate,
                    r.tiers.burst,
                    r.inline.describe()
                )
            } else {
                "off".into()
            }
        );
    }
    if let Some(p) = pending {
        let left = p.deadline.saturating_sub(now_unix());
        let _ = writeln!(
            out,
            "pending change {} from {}: rolls back in {left}s unless confirmed",
            p.id, p.source
        );
    }
    out.push_str("\nzones (static assignment):\n");
    for zone in Zone::ALL {
        let mut members: Vec<String> = Vec::new();
        for set in [format!("zone_{zone}_v4"), format!("zone_{zone}_v6")] {
            members.extend(live.sets.get(&set).into_iter().flatten().map(short));
        }
        members.extend(
            live.sets
                .get(&format!("if_{zone}"))
                .into_iter()
                .flatten()
                .map(|e| format!("iif {}", short(e))),
        );
        let _ = writeln!(
            out,
            "  {zone:<9} {}",
            if members.is_empty() {
                "-".into()
            } else {
                members.join(", ")
            }
        );
    }
    let mgmt: Vec<String> = ["mgmt_v4", "mgmt_v6"]
        .iter()
        .flat_map(|s| live.sets.get(*s).into_iter().flatten().map(short))
        .collect();
    let _ = writeln!(
        out,
        "  {:<9} {}",
        "mgmt",
        if mgmt.is_empty() {
            "-".into()
        } else {
            mgmt.join(", ")
        }
    );

    out.push_str("\nservices open per zone (packets accepted):\n");
    for zone in Zone::FILTERED {
        let rules = live
            .chains
            .get(&format!("zone_{zone}"))
            .cloned()
            .unwrap_or_default();
        let services: Vec<String> = rules
            .iter()
            .filter_map(|r| {
                let name = r.comment.as_deref()?.strip_prefix("service ")?;
                Some(format!("{name}({})", r.packets.unwrap_or(0)))
            })
            .collect();
        let dropped = rules
            .iter()
            .find(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.ends_with("default drop"))
            })
            .and_then(|r| r.packets)
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "  {zone:<9} {}  [dropped {dropped}]",
            services.join(" ")
        );
    }

    out.push_str("\ndynamic sets:\n");
    let dynamic = live.dynamic_state();
    for set in DynSet::ALL {
        let elems = dynamic.sets.get(&set).cloned().unwrap_or_default();
        let _ = write!(out, "  {:<18} {}", set.base_name(), elems.len());
        for e in elems.iter().take(10) {
            let _ = write!(out, "\n      {}", e.addr);
            if let Some(left) = e.expires {
                let _ = write!(out, "  expires in {}s", left.as_secs());
            }
            if let Some(c) = &e.comment {
                let _ = write!(out, "  \"{c}\"");
            }
        }
        if elems.len() > 10 {
            let _ = write!(out, "\n      … {} more", elems.len() - 10);
        }
        out.push('\n');
    }
    let _ = writeln!(out, "  {:<18} {}", "grant", dynamic.grants.len());
    for g in dynamic.grants.iter().take(10) {
        let _ = writeln!(
            out,
            "      {} {}/{}  {}",
            g.addr,
            g.port,
            g.proto,
            g.comment.as_deref().unwrap_or("")
        );
    }
    let rules: usize = live
        .chains
        .iter()
        .filter(|(n, _)| *n != INFO_CHAIN)
        .map(|(_, r)| r.len())
        .sum();
    let _ = writeln!(
        out,
        "\n{} chains, {rules} rules, {} sets",
        live.chains.len(),
        live.sets.len()
    );
    out
}

/// What discovery found, and why the last read was rejected if it was.
pub fn discovery(
    facts: Option<&palisade_model::PbxFacts>,
    errors: &[palisade_model::DiscoveryError],
) -> String {
    let mut out = String::from("\ndiscovered from the PBX configuration:\n");
    match facts.filter(|f| !f.kinds.is_empty()) {
        None => out.push_str("  nothing (no PBX configuration found, or discovery disabled)\n"),
        Some(f) => {
            let kinds: Vec<String> = f.kinds.iter().map(|k| k.to_string()).collect();
            let _ = writeln!(out, "  pbx: {}", kinds.join(", "));
            for l in &f.listen {
                let _ = writeln!(
                    out,
                    "  listen {}/{}  ({})",
                    l.port, l.transport, l.provenance
                );
            }
            if let Some(r) = &f.rtp {
                let _ = writeln!(out, "  rtp {}  ({})", r.range, r.provenance);
            }
            for p in &f.peers {
                let _ = writeln!(
                    out,
                    "  trunk \"{}\" {}  ({})",
                    p.name, p.target, p.provenance
                );
            }
            for p in &f.public {
                let _ = writeln!(
                    out,
                    "  public address {} (reported to the controller)  ({})",
                    p.target, p.provenance
                );
            }
        }
    }
    if !errors.is_empty() {
        out.push_str("  LAST READ REJECTED (the last good facts stay in force):\n");
        for e in errors {
            let _ = writeln!(out, "    {e}");
        }
    }
    out
}
