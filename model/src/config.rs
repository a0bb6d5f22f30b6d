//! The policy document (TOML) and its validation.
//!
//! Every error names the file, line, column and field, because the person reading
//! it is an operator on a PBX console who needs to fix one line, and the running
//! ruleset stays untouched until the document validates.

use crate::inline::Inline;
use crate::net::{overlaps, parse_net};
use crate::policy::{Lockout, Origin, Policy, Sourced, ZoneMembers};
use crate::responsive::Responsive;
use crate::service::{catalogue, PortSpec, Service};
use crate::zone::Zone;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// A document that does not validate: where, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Field path such as `services[2].ports[0]`; empty when the TOML itself is broken.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    management: Vec<Spanned<String>>,
    #[serde(default)]
    zones: RawZones,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    lockout: Option<RawLockout>,
    #[serde(default)]
    responsive: Option<RawResponsive>,
    /// Per-user rules: extension → services opened for its registered address.
    #[serde(default)]
    users: BTreeMap<String, Vec<Spanned<String>>>,
    /// The daemon's own settings live beside the policy in one file; the policy
    /// does not interpret them.
    #[serde(default)]
    #[allow(dead_code)]
    agent: Option<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawZones {
    trusted: Option<RawZone>,
    local: Option<RawZone>,
    other: Option<RawZone>,
    internet: Option<RawZone>,
    blocked: Option<RawZone>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawZone {
    #[serde(default)]
    networks: Vec<Spanned<String>>,
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    description: Option<String>,
    ports: Option<Spanned<Vec<Spanned<String>>>>,
    zones: Option<Vec<Spanned<String>>>,
    voip: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockout {
    ssh_ports: Option<Vec<Spanned<i64>>>,
    #[serde(default, with = "humantime_serde::option")]
    session_grace: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResponsive {
    enabled: Option<bool>,
    nflog_group: Option<Spanned<i64>>,
    #[serde(default)]
    scanner_user_agents: Vec<Spanned<String>>,
    #[serde(default, with = "humantime_serde::option")]
    offence_memory: Option<Duration>,
    ban_durations: Option<Spanned<Vec<String>>>,
    max_sources: Option<Spanned<i64>>,
    #[serde(default)]
    tiers: RawTiers,
    #[serde(default)]
    detect: RawDetect,
    #[serde(default)]
    toll_fraud: RawTollFraud,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    inline: RawInline,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInline {
    enabled: Option<bool>,
    queue: Option<Spanned<i64>>,
    bypass: Option<bool>,
    mark: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTollFraud {
    enabled: Option<bool>,
    prefixes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    extra_prefixes: Vec<Spanned<String>>,
    tech_prefixes: Option<Vec<Spanned<String>>>,
    sweep_destinations: Option<Spanned<i64>>,
    sweep_window: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTiers {
    rate: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    strikes: Option<Spanned<i64>>,
    #[serde(default, with = "humantime_serde::option")]
    flood_ban: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDetect {
    burst_failures: Option<Spanned<i64>>,
    #[serde(default, with = "humantime_serde::option")]
    burst_window: Option<Duration>,
    slow_failures: Option<Spanned<i64>>,
    #[serde(default, with = "humantime_serde::option")]
    slow_window: Option<Duration>,
    distinct_failing_users: Option<Spanned<i64>>,
    distinct_unknown_users: Option<Spanned<i64>>,
    distinct_unanswered_users: Option<Spanned<i64>>,
    #[serde(default, with = "humantime_serde::option")]
    user_window: Option<Duration>,
    garbage: Option<Spanned<i64>>,
    flood_rate: Option<Spanned<i64>>,
    known_good_factor: Option<Spanned<i64>>,
}

/// Maps byte offsets to lines and builds errors for one document.
struct Doc<'a> {
    file: &'a str,
    text: &'a str,
}

impl Doc<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        (line, column)
    }

    fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    fn origin(&self, span: Range<usize>, field: String) -> Origin {
        Origin {
            file: self.file.to_string(),
            line: self.position(span.start).0,
            field,
        }
    }
}

/// Parses and validates a policy document. `file` is only used in messages and
/// origins. An empty document is the safe default policy.
pub fn parse_policy(text: &str, file: &str) -> Result<Policy, ConfigError> {
    let doc = Doc { file, text };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = field_at(text, span.start);
        doc.error(span, field, e.message().trim().to_string())
    })?;
    validate(&doc, raw)
}

/// Best effort: the key at the start of the line an error points to.
fn field_at(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim_start().starts_with('[') => key.trim().to_string(),
        _ => String::new(),
    }
}

fn validate(doc: &Doc<'_>, raw: RawPolicy) -> Result<Policy, ConfigError> {
    let mut management = Vec::new();
    for (i, entry) in raw.management.iter().enumerate() {
        let field = format!("management[{i}]");
        let net = parse_net(entry.get_ref()).map_err(|m| doc.error(entry.span(), &field, m))?;
        management.push(Sourced {
            value: net,
            origin: doc.origin(entry.span(), field),
        });
    }

    let raw_zones = [
        (Zone::Trusted, raw.zones.trusted),
        (Zone::Local, raw.zones.local),
        (Zone::Other, raw.zones.other),
        (Zone::Internet, raw.zones.internet),
        (Zone::Blocked, raw.zones.blocked),
    ];
    let mut zones = BTreeMap::new();
    let mut all_networks: Vec<(Zone, Sourced<ipnet::IpNet>, Range<usize>)> = Vec::new();
    let mut all_interfaces: BTreeMap<String, (Zone, String)> = BTreeMap::new();
    for (zone, raw_zone) in raw_zones {
        let Some(raw_zone) = raw_zone else { continue };
        let mut members = ZoneMembers::default();
        for (i, entry) in raw_zone.networks.iter().enumerate() {
            let field = format!("zones.{zone}.networks[{i}]");
            let net = parse_net(entry.get_ref()).map_err(|m| doc.error(entry.span(), &field, m))?;
            let sourced = Sourced {
                value: net,
                origin: doc.origin(entry.span(), field.clone()),
            };
            all_networks.push((zone, sourced.clone(), entry.span()));
            members.networks.push(sourced);
        }
        for (i, entry) in raw_zone.interfaces.iter().enumerate() {
            let field = format!("zones.{zone}.interfaces[{i}]");
            let name = entry.get_ref().trim();
            validate_ifname(name).map_err(|m| doc.error(entry.span(), &field, m))?;
            if let Some((other_zone, other_field)) = all_interfaces.get(name) {
                return Err(doc.error(
                    entry.span(),
                    &field,
                    format!("interface `{name}` is already assigned to zone {other_zone} ({other_field})"),
                ));
            }
            all_interfaces.insert(name.to_string(), (zone, field.clone()));
            members.interfaces.push(Sourced {
                value: name.to_string(),
                origin: doc.origin(entry.span(), field),
            });
        }
        for (i, entry) in raw_zone.hosts.iter().enumerate() {
            let field = format!("zones.{zone}.hosts[{i}]");
            let host = entry
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            validate_hostname(&host).map_err(|m| doc.error(entry.span(), &field, m))?;
            members.hosts.push(Sourced {
                value: host,
                origin: doc.origin(entry.span(), field),
            });
        }
        zones.insert(zone, members);
    }

    // Overlaps are reported at the later of the two lines, in document order.
    all_networks.sort_by_key(|(_, _, span)| span.start);
    for (i, (_, net, span)) in all_networks.iter().enumerate() {
        if let Some((other_zone, other, _)) = all_networks[..i]
            .iter()
            .find(|(_, o, _)| overlaps(&o.value, &net.value))
        {
            return Err(doc.error(
                span.clone(),
                &net.origin.field,
                format!(
                    "{} overlaps {} in zone {other_zone} (line {}); a source must belong to one zone",
                    net.value, other.value, other.origin.line
                ),
            ));
        }
    }

    let services = validate_services(doc, raw.services)?;

    let mut lockout = Lockout::default();
    if let Some(raw_lockout) = raw.lockout {
        if let Some(ports) = raw_lockout.ssh_ports {
            lockout.ssh_ports = ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    u16::try_from(*p.get_ref())
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| {
                            doc.error(
                                p.span(),
                                format!("lockout.ssh_ports[{i}]"),
                                format!("port {} is out of range (1-65535)", p.get_ref()),
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(grace) = raw_lockout.session_grace {
            lockout.session_grace = grace;
        }
    }

    let responsive = match raw.responsive {
        Some(r) => validate_responsive(doc, r)?,
        None => Responsive::default(),
    };

    let users = validate_users(doc, raw.users, &services)?;

    Ok(Policy {
        management,
        zones,
        services,
        lockout,
        responsive,
        users,
        discovered: None,
    })
}

/// A positive count within `max`, or the error naming its field.
fn count(
    doc: &Doc<'_>,
    value: &Option<Spanned<i64>>,
    field: &str,
    max: i64,
) -> Result<Option<u32>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let n = *v.get_ref();
    if !(1..=max).contains(&n) {
        return Err(doc.error(v.span(), field, format!("{n} is out of range (1-{max})")));
    }
    Ok(Some(n as u32))
}

/// `[users]`: every service named must be in the catalogue, so a typo is
/// an error at load time instead of a grant that never opens.
fn validate_users(
    doc: &Doc<'_>,
    raw: BTreeMap<String, Vec<Spanned<String>>>,
    services: &[Service],
) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut users = BTreeMap::new();
    for (user, names) in raw {
        let mut list = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let name = name.get_ref().trim();
            if !services.iter().any(|s| s.name == name) {
                let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                return Err(doc.error(
                    names[i].span(),
                    format!("users.{user}[{i}]"),
                    format!("unknown service `{name}` (known: {})", known.join(", ")),
                ));
            }
            list.push(name.to_string());
        }
        users.insert(user, list);
    }
    Ok(users)
}

fn validate_inline(doc: &Doc<'_>, raw: RawInline) -> Result<Inline, ConfigError> {
    let mut inline = Inline::default();
    if let Some(on) = raw.enabled {
        inline.enabled = on;
    }
    if let Some(bypass) = raw.bypass {
        inline.bypass = bypass;
    }
    if let Some(q) = count(doc, &raw.queue, "responsive.inline.queue", 65535)? {
        inline.queue = q as u16;
    }
    if let Some(m) = &raw.mark {
        let v = *m.get_ref();
        if v <= 0 || v > i64::from(u32::MAX) || (v as u32).count_ones() != 1 {
            return Err(doc.error(
                m.span(),
                "responsive.inline.mark",
                format!("{v:#x} must be one bit of the 32-bit packet mark, e.g. 0x500000"),
            ));
        }
        inline.mark = v as u32;
    }
    Ok(inline)
}

fn validate_responsive(doc: &Doc<'_>, raw: RawResponsive) -> Result<Responsive, ConfigError> {
    let mut r = Responsive::default();
    if let Some(enabled) = raw.enabled {
        r.enabled = enabled;
    }
    if let Some(g) = count(doc, &raw.nflog_group, "responsive.nflog_group", 65535)? {
        r.nflog_group = g as u16;
    }
    if let Some(n) = count(doc, &raw.max_sources, "responsive.max_sources", 10_000_000)? {
        r.max_sources = n as usize;
    }
    for (i, ua) in raw.scanner_user_agents.iter().enumerate() {
        let text = ua.get_ref().trim();
        if text.len() < 3 {
            return Err(doc.error(
                ua.span(),
                format!("responsive.scanner_user_agents[{i}]"),
                "a User-Agent fragment needs at least 3 characters (shorter ones match real phones)",
            ));
        }
        r.scanner_user_agents.push(text.to_string());
    }
    if let Some(d) = raw.offence_memory {
        r.offence_memory = d;
    }
    if let Some(list) = raw.ban_durations {
        let field = "responsive.ban_durations";
        let mut durations = Vec::new();
        for text in list.get_ref() {
            let d = humantime::parse_duration(text).map_err(|e| {
                doc.error(
                    list.span(),
                    field,
                    format!("`{text}` is not a duration: {e}"),
                )
            })?;
            if d.is_zero() {
                return Err(doc.error(list.span(), field, "a ban of 0 s is no ban"));
            }
            durations.push(d);
        }
        if durations.is_empty() {
            return Err(doc.error(list.span(), field, "needs at least one duration"));
        }
        r.ban_durations = durations;
    }
    let t = &raw.tiers;
    let set = |slot: &mut u32, v: Option<u32>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(
        &mut r.tiers.rate,
        count(doc, &t.rate, "responsive.tiers.rate", 100_000)?,
    );
    set(
        &mut r.tiers.burst,
        count(doc, &t.burst, "responsive.tiers.burst", 100_000)?,
    );
    set(
        &mut r.tiers.strikes,
        count(doc, &t.strikes, "responsive.tiers.strikes", 1_000_000)?,
    );
    if let Some(d) = t.flood_ban {
        r.tiers.flood_ban = d;
    }
    let d = &raw.detect;
    let det = &mut r.detect;
    set(
        &mut det.burst_failures,
        count(
            doc,
            &d.burst_failures,
            "responsive.detect.burst_failures",
            1000,
        )?,
    );
    set(
        &mut det.slow_failures,
        count(
            doc,
            &d.slow_failures,
            "responsive.detect.slow_failures",
            100_000,
        )?,
    );
    set(
        &mut det.distinct_failing_users,
        count(
            doc,
            &d.distinct_failing_users,
            "responsive.detect.distinct_failing_users",
            10_000,
        )?,
    );
    set(
        &mut det.distinct_unknown_users,
        count(
            doc,
            &d.distinct_unknown_users,
            "responsive.detect.distinct_unknown_users",
            10_000,
        )?,
    );
    set(
        &mut det.distinct_unanswered_users,
        count(
            doc,
            &d.distinct_unanswered_users,
            "responsive.detect.distinct_unanswered_users",
            10_000,
        )?,
    );
    set(
        &mut det.garbage,
        count(doc, &d.garbage, "responsive.detect.garbage", 100_000)?,
    );
    set(
        &mut det.flood_rate,
        count(
            doc,
            &d.flood_rate,
            "responsive.detect.flood_rate",
            1_000_000,
        )?,
    );
    set(
        &mut det.known_good_factor,
        count(
            doc,
            &d.known_good_factor,
            "responsive.detect.known_good_factor",
            1000,
        )?,
    );
    for (slot, v) in [
        (&mut det.burst_window, d.burst_window),
        (&mut det.slow_window, d.slow_window),
        (&mut det.user_window, d.user_window),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    validate_toll_fraud(doc, &raw.toll_fraud, &mut r.toll_fraud)?;
    for (i, entry) in raw.allow.iter().enumerate() {
        let field = format!("responsive.allow[{i}]");
        let net = parse_net(entry.get_ref()).map_err(|m| doc.error(entry.span(), &field, m))?;
        r.allow.push(net);
    }
    r.inline = validate_inline(doc, raw.inline)?;
    Ok(r)
}

/// Longest dial prefix accepted: longer ones are whole numbers, not prefixes.
const MAX_PREFIX_LEN: usize = 16;

/// See [`crate::responsive::MAX_SWEEP_DESTINATIONS`].
const MAX_SWEEP_DESTINATIONS: i64 = crate::responsive::MAX_SWEEP_DESTINATIONS as i64;

/// `[responsive.toll_fraud]`.
fn validate_toll_fraud(
    doc: &Doc<'_>,
    raw: &RawTollFraud,
    t: &mut crate::responsive::TollFraud,
) -> Result<(), ConfigError> {
    if let Some(enabled) = raw.enabled {
        t.enabled = enabled;
    }
    if let Some(list) = &raw.prefixes {
        t.prefixes = dial_prefixes(doc, list, "responsive.toll_fraud.prefixes")?;
    }
    t.extra_prefixes = dial_prefixes(
        doc,
        &raw.extra_prefixes,
        "responsive.toll_fraud.extra_prefixes",
    )?;
    if let Some(list) = &raw.tech_prefixes {
        t.tech_prefixes = dial_prefixes(doc, list, "responsive.toll_fraud.tech_prefixes")?;
    }
    if let Some(v) = &raw.sweep_destinations {
        let n = *v.get_ref();
        if !(2..=MAX_SWEEP_DESTINATIONS).contains(&n) {
            return Err(doc.error(
                v.span(),
                "responsive.toll_fraud.sweep_destinations",
                format!(
                    "{n} is out of range (2-{MAX_SWEEP_DESTINATIONS}; 1 would ban a phone at its first call)"
                ),
            ));
        }
        t.sweep_destinations = n as u32;
    }
    if let Some(v) = &raw.sweep_window {
        let field = "responsive.toll_fraud.sweep_window";
        let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            doc.error(
                v.span(),
                field,
                format!("`{}` is not a duration: {e}", v.get_ref()),
            )
        })?;
        if d.is_zero() {
            return Err(doc.error(v.span(), field, "a window of 0 s sees no sweep"));
        }
        t.sweep_window = d;
    }
    Ok(())
}

/// A list of dial prefixes: digits, `+`, `*` and `#` as dialled, without
/// separators, so that what is configured is exactly what is compared.
fn dial_prefixes(
    doc: &Doc<'_>,
    list: &[Spanned<String>],
    field: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let text = entry.get_ref().trim();
        let field = format!("{field}[{i}]");
        if text.is_empty() {
            return Err(doc.error(
                entry.span(),
                field,
                "an empty prefix would match every number",
            ));
        }
        if text.len() > MAX_PREFIX_LEN
            || !text
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | '*' | '#'))
        {
            return Err(doc.error(
                entry.span(),
                field,
                format!(
                    "`{text}` is not a dial prefix (up to {MAX_PREFIX_LEN} of 0-9, `+`, `*`, `#`, no separators)"
                ),
            ));
        }
        if !out.iter().any(|p: &String| p == text) {
            out.push(text.to_string());
        }
    }
    Ok(out)
}

fn validate_services(doc: &Doc<'_>, raw: Vec<RawService>) -> Result<Vec<Service>, ConfigError> {
    let mut services = catalogue();
    let builtin: BTreeSet<String> = services.iter().map(|s| s.name.clone()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, rs) in raw.into_iter().enumerate() {
        let name = rs.name.get_ref().trim().to_string();
        let name_field = format!("services[{i}].name");
        validate_service_name(&name).map_err(|m| doc.error(rs.name.span(), &name_field, m))?;
        if let Some(line) = seen.get(&name) {
            return Err(doc.error(
                rs.name.span(),
                &name_field,
                format!("duplicate service name `{name}` (first defined on line {line})"),
            ));
        }
        seen.insert(name.clone(), doc.position(rs.name.span().start).0);

        let ports = match &rs.ports {
            Some(list) => {
                let mut ports = Vec::new();
                for (j, p) in list.get_ref().iter().enumerate() {
                    let spec: PortSpec = p.get_ref().parse().map_err(|m: String| {
                        doc.error(p.span(), format!("services[{i}].ports[{j}]"), m)
                    })?;
                    ports.push(spec);
                }
                if ports.is_empty() {
                    return Err(doc.error(
                        list.span(),
                        format!("services[{i}].ports"),
                        "a service needs at least one port; to close it, set `zones = []`",
                    ));
                }
                Some(ports)
            }
            None => None,
        };
        let zones = match &rs.zones {
            Some(list) => {
                let mut zones = BTreeSet::new();
                for (j, z) in list.iter().enumerate() {
                    let field = format!("services[{i}].zones[{j}]");
                    let zone = Zone::parse(z.get_ref().trim()).ok_or_else(|| {
                        doc.error(
                            z.span(),
                            &field,
                            format!(
                                "unknown zone `{}` (zones are trusted, local, other, internet, blocked)",
                                z.get_ref()
                            ),
                        )
                    })?;
                    if zone == Zone::Blocked {
                        return Err(doc.error(
                            z.span(),
                            &field,
                            "the blocked zone gets no service",
                        ));
                    }
                    zones.insert(zone);
                }
                Some(zones)
            }
            None => None,
        };

        if builtin.contains(&name) {
            let service = services
                .iter_mut()
                .find(|s| s.name == name)
                .expect("built-in");
            if let Some(ports) = ports {
                service.ports = ports;
                service.ports_configured = true;
            }
            if let Some(zones) = zones {
                service.zones = zones;
            }
            if let Some(description) = rs.description {
                service.description = description;
            }
            if let Some(voip) = rs.voip {
                service.voip = voip;
            }
        } else {
            let ports = ports.ok_or_else(|| {
                doc.error(
                    rs.name.span(),
                    format!("services[{i}].ports"),
                    format!("custom service `{name}` needs `ports`, e.g. ports = [\"9000/tcp\"]"),
                )
            })?;
            services.push(Service {
                name,
                description: rs.description.unwrap_or_default(),
                ports,
                zones: zones.unwrap_or_default(),
                voip: rs.voip.unwrap_or(false),
                ports_configured: true,
            });
        }
    }
    Ok(services)
}

fn validate_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name `{name}` must be 1-32 characters of a-z, 0-9, `-` or `_`"
        ))
    }
}

/// Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no `/`, no white space.
fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("interface name `{name}` must be 1-15 characters"));
    }
    if name.contains('*') {
        return Err(format!(
            "interface name `{name}`: wildcards are not supported; list each interface"
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        || name == "."
        || name == ".."
    {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    Ok(())
}

fn validate_hostname(host: &str) -> Result<(), String> {
    if !crate::net::is_host_name(host) {
        return Err(format!("`{host}` is not a valid host name"));
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("`{host}` is an address: list it under `networks`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Proto;

    fn err(text: &str) -> ConfigError {
        parse_policy(text, "agent.toml").unwrap_err()
    }

    #[test]
    fn empty_document_is_the_safe_default() {
        let p = parse_policy("", "agent.toml").unwrap();
        assert!(p.management.is_empty());
        assert!(p.zones.is_empty());
        let sip = p.service("sip-udp").unwrap();
        assert!(sip.open_in(Zone::Internet) && sip.open_in(Zone::Local));
        assert!(!p.service("ssh").unwrap().open_in(Zone::Internet));
        assert_eq!(p.lockout.ssh_ports, vec![22]);
    }

    #[test]
    fn full_document() {
        let p = parse_policy(
            r#"
management = ["192.0.2.10", "2001:db8:1::/48"]
[zones.trusted]
networks = ["10.0.0.0/8"]
hosts = ["Office.Example.NET."]
[zones.local]
interfaces = ["eth1"]
networks = ["192.168.1.0/24", "fd00::/64"]
[[services]]
name = "ssh"
zones = ["local", "other"]
[[services]]
name = "fax"
ports = ["4000-4999/udp"]
zones = ["internet"]
[lockout]
ssh_ports = [22, 2222]
session_grace = "1h"
"#,
            "agent.toml",
        )
        .unwrap();
        assert_eq!(p.management.len(), 2);
        assert_eq!(p.management[0].value.to_string(), "192.0.2.10/32");
        assert_eq!(
            p.members(Zone::Trusted).unwrap().hosts[0].value,
            "office.example.net"
        );
        assert_eq!(p.members(Zone::Local).unwrap().networks[1].origin.line, 8);
        assert!(p.service("ssh").unwrap().open_in(Zone::Other));
        assert!(p.service("fax").unwrap().matches(Proto::Udp, 4500));
        assert_eq!(p.lockout.session_grace, Duration::from_secs(3600));
    }

    #[test]
    fn unknown_zone_is_named_with_its_line() {
        let e = err("[[services]]\nname = \"ssh\"\nzones = [\"local\", \"dmz\"]\n");
        assert_eq!((e.line, e.field.as_str()), (3, "services[0].zones[1]"));
        assert!(e.message.contains("unknown zone `dmz`"), "{e}");
        let e = err("[zones.dmz]\nnetworks = [\"10.0.0.0/8\"]\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("dmz"), "{e}");
    }

    #[test]
    fn malformed_and_overlapping_networks() {
        let e = err("[zones.local]\nnetworks = [\"10.0.0.0/33\"]\n");
        assert_eq!((e.line, e.field.as_str()), (2, "zones.local.networks[0]"));
        let e = err("[zones.local]\nnetworks = [\"10.0.0.1/8\"]\n");
        assert!(e.message.contains("did you mean `10.0.0.0/8`"), "{e}");
        let e = err("[zones.local]\nnetworks = [\"10.0.0.0/8\"]\n[zones.trusted]\nnetworks = [\"10.1.0.0/16\"]\n");
        assert_eq!((e.line, e.field.as_str()), (4, "zones.trusted.networks[0]"));
        assert!(
            e.message
                .contains("overlaps 10.0.0.0/8 in zone local (line 2)"),
            "{e}"
        );
        let e = err("management = [\"not-an-ip\"]\n");
        assert_eq!(e.field, "management[0]");
        assert!(
            e.to_string()
                .starts_with("agent.toml:1:15: management[0]: "),
            "{e}"
        );
    }

    #[test]
    fn bad_ports_and_duplicate_services() {
        let e = err("[[services]]\nname = \"x\"\nports = [\"5060/udp\", \"70000/tcp\"]\n");
        assert_eq!((e.line, e.field.as_str()), (3, "services[0].ports[1]"));
        assert!(e.message.contains("out of range"), "{e}");
        let e = err("[[services]]\nname = \"web\"\nports = [\"8080/tcp\"]\n[[services]]\nname = \"web\"\nports = [\"8081/tcp\"]\n");
        assert_eq!((e.line, e.field.as_str()), (5, "services[1].name"));
        assert!(
            e.message
                .contains("duplicate service name `web` (first defined on line 2)"),
            "{e}"
        );
        let e = err("[[services]]\nname = \"custom\"\n");
        assert!(e.message.contains("needs `ports`"), "{e}");
        let e = err("[lockout]\nssh_ports = [70000]\n");
        assert_eq!(e.field, "lockout.ssh_ports[0]");
    }

    #[test]
    fn unknown_keys_and_broken_toml() {
        let e = err("\n\nmanagment = []\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("managment"), "{e}");
        let e = err("[zones.local\n");
        assert_eq!(e.line, 1);
        let e = err("[zones.local]\ninterfaces = [\"a-very-long-interface-name\"]\n");
        assert!(e.message.contains("1-15"), "{e}");
        let e =
            err("[zones.local]\ninterfaces = [\"eth1\"]\n[zones.other]\ninterfaces = [\"eth1\"]\n");
        assert!(e.message.contains("already assigned to zone local"), "{e}");
    }

    #[test]
    fn responsive_settings_parse_and_bad_ones_are_named() {
        let p = parse_policy(
            "[responsive]\nscanner_user_agents = [\"EvilDialer\"]\nban_durations = [\"5m\", \"2h\"]\n[responsive.tiers]\nrate = 5\n[responsive.detect]\nslow_failures = 30\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(p.responsive.tiers.rate, 5);
        assert_eq!(p.responsive.detect.slow_failures, 30);
        assert_eq!(p.responsive.ban_duration(2), Duration::from_secs(7200));
        assert_eq!(
            p.responsive.scanner_user_agents,
            vec!["EvilDialer".to_string()]
        );
        let e = err("[responsive.tiers]\nrate = 0\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "responsive.tiers.rate"),
            "{e}"
        );
        let e = err("[responsive]\nban_durations = [\"soon\"]\n");
        assert!(e.to_string().contains("`soon` is not a duration"), "{e}");
        let e = err("[responsive]\nscanner_user_agents = [\"x\"]\n");
        assert!(e.to_string().contains("at least 3 characters"), "{e}");
        let e = err("[responsive.detect]\nbogus = 1\n");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn toll_fraud_settings_parse_and_bad_ones_are_named() {
        let p = parse_policy("", "p.toml").unwrap();
        let t = &p.responsive.toll_fraud;
        assert!(t.enabled);
        assert!(t.prefixes.iter().any(|p| p == "011"));
        assert_eq!(t.sweep_destinations, 5);
        assert_eq!(t.sweep_window, Duration::from_secs(60));

        let p = parse_policy(
            "[responsive.toll_fraud]\nenabled = false\nprefixes = [\"00\", \"+\"]\nextra_prefixes = [\"0137\", \"0137\"]\ntech_prefixes = [\"9\", \"*8\"]\nsweep_destinations = 8\nsweep_window = \"2m\"\n",
            "p.toml",
        )
        .unwrap();
        let t = &p.responsive.toll_fraud;
        assert!(!t.enabled);
        assert_eq!(t.prefixes, vec!["00".to_string(), "+".to_string()]);
        assert_eq!(t.extra_prefixes, vec!["0137".to_string()]);
        assert_eq!(t.tech_prefixes, vec!["9".to_string(), "*8".to_string()]);
        assert_eq!(t.sweep_destinations, 8);
        assert_eq!(t.sweep_window, Duration::from_secs(120));

        let e = err("[responsive.toll_fraud]\nextra_prefixes = [\"0137\", \"09-00\"]\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "responsive.toll_fraud.extra_prefixes[1]"),
            "{e}"
        );
        assert!(e.message.contains("not a dial prefix"), "{e}");
        let e = err("[responsive.toll_fraud]\nprefixes = [\"\"]\n");
        assert_eq!(e.field, "responsive.toll_fraud.prefixes[0]", "{e}");
        let e = err("[responsive.toll_fraud]\n\nsweep_destinations = 1\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (3, "responsive.toll_fraud.sweep_destinations"),
            "{e}"
        );
        let e = err("[responsive.toll_fraud]\nsweep_window = \"0s\"\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "responsive.toll_fraud.sweep_window"),
            "{e}"
        );
        let e = err("[responsive.toll_fraud]\nsweep_window = \"soon\"\n");
        assert!(e.to_string().contains("`soon` is not a duration"), "{e}");
        let e = err("[responsive.toll_fraud]\nprefix = [\"00\"]\n");
        assert!(e.to_string().contains("prefix"), "{e}");
    }

    #[test]
    fn the_allow_list_parses_and_bad_entries_are_named() {
        let p = parse_policy(
            "[responsive]\nallow = [\"198.51.100.0/24\", \"2001:db8::/48\", \"192.0.2.7\"]\n",
            "p.toml",
        )
        .unwrap();
        let allow = &p.responsive.allow;
        assert_eq!(allow.len(), 3);
        assert_eq!(allow[2].to_string(), "192.0.2.7/32");
        assert!(p.responsive.allows("2001:db8::5".parse().unwrap()));
        let e = err("[responsive]\nallow = [\"198.51.100.0/24\",\n  \"198.51.100.1/24\"]\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (3, "responsive.allow[1]"),
            "{e}"
        );
        assert!(e.message.contains("did you mean"), "{e}");
    }

    #[test]
    fn agent_section_is_left_to_the_daemon() {
        assert!(parse_policy("[agent]\nstate_dir = \"/tmp/x\"\n", "a.toml").is_ok());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC*") {
            let _ = parse_policy(&s, "fuzz.toml");
        }
    }
}
