//! Asterisk: the `security` logger channel, and chan_sip's and res_pjsip's
//! NOTICE lines in `full` / `messages`.
//!
//! A file channel line is `[date] LEVEL[lwp][C-callid] file: message`
//! (logger.c, `format_log_default`); everything before the message is
//! Asterisk's own, so a line is only considered when it begins exactly so.

use super::{
    checked, excerpt, label, parse_host_port, parse_ip, uri_user, LineError, LogFact, LogKind,
    Service, Transport,
};
use std::net::IpAddr;

/// The parts of a line Asterisk wrote before the message.
struct Header<'a> {
    level: &'a str,
    file: &'a str,
    message: &'a str,
}

/// `[date] LEVEL[lwp][C-xxxxxxxx] file: message`; the date, the call id and
/// a `:line function:` after the file are optional.
fn header(line: &str) -> Option<Header<'_>> {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix('[') {
        let (date, r) = r.split_once(']')?;
        if date.is_empty() || date.len() > 64 {
            return None;
        }
        rest = r.strip_prefix(' ')?;
    }
    let (level, r) = rest.split_once('[')?;
    if level.is_empty()
        || !level
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let (lwp, mut r) = r.split_once(']')?;
    if lwp.is_empty() || !lwp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(c) = r.strip_prefix("[C-") {
        let (id, c) = c.split_once(']')?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        r = c;
    }
    let r = r.strip_prefix(':').unwrap_or(r);
    let r = r.strip_prefix(' ')?;
    let (file, mut r) = r.split_once(':')?;
    if file.is_empty()
        || file.len() > 128
        || !file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
    {
        return None;
    }
    // Some builds and the syslog format write `file:line function:`.
    let digits = r.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 {
        r = &r[digits..];
        if let Some(f) = r.strip_prefix(' ') {
            let f = f.strip_prefix("in ").unwrap_or(f);
            let n = f
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if n > 0 && f[n..].starts_with(':') {
                r = &f[n + 1..];
            }
        }
    }
    Some(Header {
        level,
        file,
        message: r.strip_prefix(' ')?,
    })
}

/// One line of the `security` channel:
///
/// ```text
/// [Nov 25 10:00:01] SECURITY[1234] res_security_log.c: SecurityEvent="InvalidPassword",EventTV="…",Severity="Error",Service="PJSIP",EventVersion="2",AccountID="300",SessionID="…",LocalAddress="IPV4/UDP/10.0.0.1/5060",RemoteAddress="IPV4/UDP/203.0.113.5/5060",…
/// ```
///
/// Values are written between quotes without escaping. The fields Asterisk
/// writes before any client text (`SecurityEvent`, `EventTV`, `Severity`,
/// `Service`, `EventVersion`, the `AccountID` key) are taken at their first
/// occurrence; `RemoteAddress` comes after client text (`AccountID`,
/// `SessionID`: PJSIP's is the Call-ID), so the line is refused unless
/// `RemoteAddress=` occurs exactly once in it.
pub fn parse_security(line: &str) -> Result<Option<LogFact>, LineError> {
    let line = checked(line)?;
    let Some(h) = header(line) else {
        return Ok(None);
    };
    if h.level != "SECURITY" || h.file != "res_security_log.c" {
        return Ok(None);
    }
    let payload = h.message.trim_end();
    if !payload.starts_with("SecurityEvent=\"") {
        return Ok(None);
    }
    let base = line.len() - h.message.len();
    let fields = fields(payload).map_err(|e| match e {
        LineError::Malformed {
            what,
            offset,
            reason,
        } => LineError::Malformed {
            what,
            offset: offset + base,
            reason,
        },
        e => e,
    })?;
    let first = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let last = |key: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    };

    let event = first("SecurityEvent").unwrap_or_default();
    let account = first("AccountID");
    let user = || {
        account
            .map(label)
            .ok_or(LineError::Missing { field: "AccountID" })
    };
    let kind = match event {
        "InvalidPassword" | "ChallengeResponseFailed" => LogKind::AuthFailed { user: user()? },
        "InvalidAccountID" => LogKind::UnknownUser { user: user()? },
        "ChallengeSent" => LogKind::Challenged { user: user()? },
        "FailedACL" => LogKind::Forbidden { user: user()? },
        // `UsingPassword` follows the last client field (SessionID), so its
        // last occurrence is Asterisk's.
        "SuccessfulAuth" => LogKind::AuthSucceeded {
            user: user()?,
            password: last("UsingPassword").is_none_or(|v| v != "0"),
        },
        "RequestNotAllowed" => LogKind::NotAllowed {
            user: account.map(label),
            why: "request not allowed".into(),
        },
        "UnexpectedAddress" => LogKind::NotAllowed {
            user: account.map(label),
            why: "unexpected source address".into(),
        },
        "AuthMethodNotAllowed" => LogKind::NotAllowed {
            user: account.map(label),
            why: "authentication method not allowed".into(),
        },
        "InvalidTransport" => LogKind::NotAllowed {
            user: account.map(label),
            why: "transport not allowed".into(),
        },
        "RequestBadFormat" => LogKind::Malformed {
            what: label(first("Service").unwrap_or_default()),
        },
        // SessionLimit, MemoryLimit, LoadAverageLimit, RequestNotSupported,
        // and events of later versions: nothing about the source.
        _ => return Ok(None),
    };

    let (source, transport) = remote_address(payload, &fields)?;
    let service = match first("Service") {
        Some("SIP" | "PJSIP") => Service::Sip,
        Some("IAX2") => Service::Iax2,
        Some("AMI") => Service::Ami,
        Some(other) => Service::Other(label(other)),
        None => return Err(LineError::Missing { field: "Service" }),
    };
    let summary = format!(
        "asterisk {}{} {event} {}",
        first("Service").map(label).unwrap_or_default(),
        transport
            .map(|t| format!("/{}", t.to_string().to_ascii_uppercase()))
            .unwrap_or_default(),
        kind.user().unwrap_or("-"),
    );
    Ok(Some(LogFact {
        source,
        kind,
        service,
        transport,
        method: None,
        summary,
    }))
}

/// The `RemoteAddress` field, which must occur once in the whole payload:
/// a second `RemoteAddress=` anywhere (quoted or not, inside another value
/// or not) is client text imitating it.
fn remote_address(
    payload: &str,
    fields: &[(&str, &str)],
) -> Result<(IpAddr, Option<Transport>), LineError> {
    let raw = payload.matches("RemoteAddress=").count();
    if raw > 1 {
        return Err(LineError::Ambiguous {
            what: "RemoteAddress".into(),
            count: raw,
        });
    }
    let mut found = fields.iter().filter(|(k, _)| *k == "RemoteAddress");
    let (Some((_, value)), None) = (found.next(), found.next()) else {
        return Err(LineError::Missing {
            field: "RemoteAddress",
        });
    };
    security_address(value).ok_or_else(|| LineError::BadAddress {
        field: "RemoteAddress",
        text: excerpt(value),
    })
}

/// `IPV4/UDP/203.0.113.5/5060`, `IPV6/TLS/2001:db8::1/5061`, or without the
/// transport (`IPV4/203.0.113.5/5060`), as `ast_json_ipaddr` writes them.
fn security_address(value: &str) -> Option<(IpAddr, Option<Transport>)> {
    let mut parts = value.split('/');
    let family = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    let (transport, addr, port) = match rest.as_slice() {
        [addr, port] => (None, *addr, *port),
        [t, addr, port] => (
            // Asterisk writes them upper-case; `IAX` is not a SIP transport.
            Some(Transport::parse(t).filter(|t| *t != Transport::Iax)?),
            *addr,
            *port,
        ),
        _ => return None,
    };
    port.parse::<u16>().ok()?;
    let ip = parse_ip(addr)?;
    // Asterisk writes IPV4 for IPv4-mapped addresses, which parse_ip has
    // already turned into IPv4.
    match (family, ip) {
        ("IPV4", IpAddr::V4(_)) | ("IPV6", IpAddr::V6(_)) => Some((ip, transport)),
        _ => None,
    }
}

/// Splits `Key="value",Key="value",…`. A value ends at the first quote that
/// ends the line or is followed by `,Name="`, so a quote inside a value is
/// kept; a value holding `",Name="` does split, and the callers' rules (first
/// occurrence before client text, a unique `RemoteAddress`) make that safe.
fn fields(payload: &str) -> Result<Vec<(&str, &str)>, LineError> {
    let b = payload.as_bytes();
    let malformed = |offset, reason| LineError::Malformed {
        what: "security event",
        offset,
        reason,
    };
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let n = name_len(&b[pos..]);
        if n == 0 {
            return Err(malformed(pos, "expected a field name"));
        }
        let key = &payload[pos..pos + n];
        pos += n;
        if !b[pos..].starts_with(b"=\"") {
            return Err(malformed(pos, "expected =\" after the field name"));
        }
        pos += 2;
        let start = pos;
        let end = loop {
            let Some(q) = b[pos..].iter().position(|&c| c == b'"') else {
                return Err(malformed(start, "value not closed"));
            };
            let q = pos + q;
            let after = &b[q + 1..];
            if after.is_empty() {
                break q;
            }
            if after[0] == b',' {
                let m = name_len(&after[1..]);
                if m > 0 && after[1 + m..].starts_with(b"=\"") {
                    break q;
                }
            }
            pos = q + 1;
        };
        out.push((key, &payload[start..end]));
        pos = end + 1;
        if pos == b.len() {
            return Ok(out);
        }
        // The byte after the closing quote is the comma checked above.
        pos += 1;
    }
}

fn name_len(b: &[u8]) -> usize {
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

/// chan_sip's reasons after `Registration from '…' failed for '…' - `.
const CHAN_SIP_REASONS: &[(&str, Outcome)] = &[
    ("Wrong password", Outcome::AuthFailed),
    ("Username/auth name mismatch", Outcome::AuthFailed),
    ("No matching peer found", Outcome::Unknown),
    ("Not a local domain", Outcome::Unknown),
    ("Device does not match ACL", Outcome::Forbidden),
    ("ACL error (permit/deny)", Outcome::Forbidden),
    ("Peer is not supposed to register", Outcome::Forbidden),
    (
        "Device not configured to use this transport type",
        Outcome::NotAllowed,
    ),
    ("RTP initialization failed", Outcome::NotAllowed),
    ("Unknown failure", Outcome::NotAllowed),
];

/// res_pjsip's reasons after `Request '…' from '…' failed for '…' (callid: …) - `.
const PJSIP_REASONS: &[(&str, Outcome)] = &[
    ("Failed to authenticate", Outcome::AuthFailed),
    ("Error to authenticate", Outcome::AuthFailed),
    ("No matching endpoint found", Outcome::Unknown),
    ("Not match Endpoint ACL", Outcome::Forbidden),
    ("Not match Endpoint Contact ACL", Outcome::Forbidden),
];

#[derive(Debug, Clone, Copy)]
enum Outcome {
    AuthFailed,
    Unknown,
    Forbidden,
    NotAllowed,
}

impl Outcome {
    fn kind(self, user: Box<str>, reason: &str) -> LogKind {
        match self {
            Outcome::AuthFailed => LogKind::AuthFailed { user },
            Outcome::Unknown => LogKind::UnknownUser { user },
            Outcome::Forbidden => LogKind::Forbidden { user },
            Outcome::NotAllowed => LogKind::NotAllowed {
                user: Some(user),
                why: reason.into(),
            },
        }
    }
}

/// One NOTICE line of chan_sip or res_pjsip, from `full` or `messages`:
///
/// ```text
/// [Nov 25 10:00:01] NOTICE[1234] chan_sip.c: Registration from '"300" <sip:300@10.0.0.1>' failed for '203.0.113.5:5060' - Wrong password
/// [Nov 25 10:00:01] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:300@10.0.0.1>' failed for '203.0.113.5:5060' (callid: abc) - Failed to authenticate
/// ```
///
/// Read these only when no `security` channel exists: Asterisk reports the
/// same failures there too.
pub fn parse_notice(line: &str) -> Result<Option<LogFact>, LineError> {
    let line = checked(line)?;
    let Some(h) = header(line) else {
        return Ok(None);
    };
    if h.level != "NOTICE" {
        return Ok(None);
    }
    let message = h.message.trim_end();
    if h.file == "chan_sip.c" {
        if let Some(body) = message.strip_prefix("Registration from '") {
            return chan_sip(body).map(Some);
        }
    } else if h.file.ends_with("pjsip_distributor.c") {
        if let Some(body) = message.strip_prefix("Request '") {
            return pjsip(body).map(Some);
        }
    }
    Ok(None)
}

/// Splits `… - <known reason>` at the end of `body`.
fn reason<'a>(
    body: &'a str,
    sep: &str,
    reasons: &[(&'static str, Outcome)],
) -> Option<(&'a str, &'static str, Outcome)> {
    reasons.iter().find_map(|&(r, o)| {
        let head = body.strip_suffix(r)?.strip_suffix(" - ")?;
        Some((head.strip_suffix(sep)?, r, o))
    })
}

/// `<To>' failed for '<addr>' - <reason>`: nothing the client wrote follows
/// the address, so the last `' failed for '` is Asterisk's.
fn chan_sip(body: &str) -> Result<LogFact, LineError> {
    let Some((head, why, outcome)) = reason(body, "'", CHAN_SIP_REASONS) else {
        return Err(LineError::UnknownReason {
            what: "chan_sip registration",
            reason: excerpt(body.rsplit_once(" - ").map_or("", |(_, r)| r)),
        });
    };
    let Some((to, addr)) = head.rsplit_once("' failed for '") else {
        return Err(LineError::Missing {
            field: "failed for '<address>'",
        });
    };
    let source = parse_host_port(addr).ok_or_else(|| LineError::BadAddress {
        field: "failed for",
        text: excerpt(addr),
    })?;
    let user = label(uri_user(to));
    let summary = format!("asterisk chan_sip REGISTER {user} → {why}");
    Ok(LogFact {
        source,
        kind: outcome.kind(user, why),
        service: Service::Sip,
        transport: None,
        method: Some("REGISTER".into()),
        summary,
    })
}

/// `<method>' from '<from>' failed for '<addr>' (callid: <callid>) - <reason>[ after N tries in T ms]`.
///
/// The client wrote the method, the From URI (its display name may hold
/// anything) and the Call-ID, on both sides of the address, so neither the
/// first nor the last `failed for` can be trusted as such. Asterisk's own
/// is always `' failed for '<address>' (callid: `; the line is used only
/// when exactly one such run exists.
fn pjsip(body: &str) -> Result<LogFact, LineError> {
    let body = strip_tries(body);
    let Some((_, why, outcome)) = reason(body, ")", PJSIP_REASONS) else {
        return Err(LineError::UnknownReason {
            what: "res_pjsip request",
            reason: excerpt(body.rsplit_once(" - ").map_or("", |(_, r)| r)),
        });
    };
    const MARK: &str = "' failed for '";
    const AFTER: &str = "' (callid: ";
    let mut found: Option<(usize, IpAddr)> = None;
    let mut count = 0;
    for (at, _) in body.match_indices(MARK) {
        let rest = &body[at + MARK.len()..];
        let Some(end) = rest.find('\'') else { continue };
        if !rest[end..].starts_with(AFTER) {
            continue;
        }
        if let Some(ip) = parse_host_port(&rest[..end]) {
            count += 1;
            found = Some((at, ip));
        }
    }
    let (at, source) = match (count, found) {
        (1, Some(f)) => f,
        (0, _) => {
            return Err(LineError::Missing {
                field: "failed for '<address>' (callid:",
            })
        }
        _ => {
            return Err(LineError::Ambiguous {
                what: "failed for '<address>' (callid:".into(),
                count,
            })
        }
    };
    let before = &body[..at];
    let (method, from) = before.split_once("' from '").unwrap_or((before, ""));
    let user = label(uri_user(from));
    let method = label(method);
    let summary = format!("asterisk pjsip {method} {user} → {why}");
    Ok(LogFact {
        source,
        kind: outcome.kind(user, why),
        service: Service::Sip,
        transport: None,
        method: Some(method),
        summary,
    })
}

/// Drops ` after N tries in T ms`, which res_pjsip appends when it reports a
/// run of unidentified requests.
fn strip_tries(body: &str) -> &str {
    let Some(head) = body.strip_suffix(" ms") else {
        return body;
    };
    let Some((head, t)) = head.rsplit_once(" tries in ") else {
        return body;
    };
    let Some((head, n)) = head.rsplit_once(" after ") else {
        return body;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if number(t) && number(n) {
        head
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVALID_PASSWORD: &str = r#"[Nov 25 10:00:01] SECURITY[1234] res_security_log.c: SecurityEvent="InvalidPassword",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="SIP",EventVersion="2",AccountID="300",SessionID="0x7f2a4c012345",LocalAddress="IPV4/UDP/10.0.0.1/5060",RemoteAddress="IPV4/UDP/203.0.113.5/5060",Challenge="1234abcd",ReceivedChallenge="1234abcd",ReceivedHash="8f1c7a0e2b9d4f63a5e1c0b7d2f8e946""#;

    fn security(fields: &str) -> String {
        format!("[2026-11-25 10:00:01] SECURITY[4242] res_security_log.c: {fields}")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn invalid_password_is_an_auth_failure_from_remote_address() {
        let f = parse_security(INVALID_PASSWORD).unwrap().unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        assert_eq!(f.kind, LogKind::AuthFailed { user: "300".into() });
        assert_eq!(f.service, Service::Sip);
        assert_eq!(f.transport, Some(Transport::Udp));
        assert_eq!(f.summary, "asterisk SIP/UDP InvalidPassword 300");
    }

    #[test]
    fn pjsip_events_over_every_transport() {
        let cases = [
            (
                r#"SecurityEvent="ChallengeResponseFailed",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="PJSIP",EventVersion="1",AccountID="300",SessionID="3c2a6f7e-1@203.0.113.5",LocalAddress="IPV4/TLS/10.0.0.1/5061",RemoteAddress="IPV4/TLS/203.0.113.5/50123",Challenge="",Response="",ExpectedResponse="""#,
                LogKind::AuthFailed { user: "300".into() },
                Transport::Tls,
                "203.0.113.5",
            ),
            (
                r#"SecurityEvent="InvalidAccountID",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="PJSIP",EventVersion="1",AccountID="1001",SessionID="abc",LocalAddress="IPV6/TCP/2001:db8::10/5060",RemoteAddress="IPV6/TCP/2001:db8::1/5061""#,
                LogKind::UnknownUser {
                    user: "1001".into(),
                },
                Transport::Tcp,
                "2001:db8::1",
            ),
            (
                r#"SecurityEvent="ChallengeSent",EventTV="2026-11-25T10:00:01.123+0000",Severity="Informational",Service="PJSIP",EventVersion="1",AccountID="300",SessionID="x",LocalAddress="IPV4/WSS/10.0.0.1/8089",RemoteAddress="IPV4/WSS/198.51.100.7/40000",Challenge="5f2c""#,
                LogKind::Challenged { user: "300".into() },
                Transport::Wss,
                "198.51.100.7",
            ),
            (
                r#"SecurityEvent="SuccessfulAuth",EventTV="2026-11-25T10:00:01.123+0000",Severity="Informational",Service="PJSIP",EventVersion="1",AccountID="300",SessionID="x",LocalAddress="IPV4/WS/10.0.0.1/8088",RemoteAddress="IPV4/WS/198.51.100.7/40000",UsingPassword="1""#,
                LogKind::AuthSucceeded {
                    user: "300".into(),
                    password: true,
                },
                Transport::Ws,
                "198.51.100.7",
            ),
            (
                r#"SecurityEvent="FailedACL",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="PJSIP",EventVersion="1",AccountID="300",SessionID="x",LocalAddress="IPV4/UDP/10.0.0.1/5060",RemoteAddress="IPV4/UDP/192.0.2.9/5060",ACLName="not_match_endpoint_acl""#,
                LogKind::Forbidden { user: "300".into() },
                Transport::Udp,
                "192.0.2.9",
            ),
        ];
        for (fields, kind, transport, addr) in cases {
            let f = parse_security(&security(fields))
                .unwrap_or_else(|e| panic!("{fields}: {e}"))
                .unwrap();
            assert_eq!(f.kind, kind);
            assert_eq!(f.transport, Some(transport));
            assert_eq!(f.source, ip(addr));
            assert_eq!(f.service, Service::Sip);
        }
    }

    #[test]
    fn iax2_and_ami_are_their_own_services() {
        let iax = security(
            r#"SecurityEvent="InvalidPassword",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="IAX2",EventVersion="2",AccountID="trunk1",SessionID="0x55",LocalAddress="IPV4/UDP/10.0.0.1/4569",RemoteAddress="IPV4/UDP/203.0.113.5/4569",Challenge="214365",ReceivedChallenge="214365",ReceivedHash="x""#,
        );
        let f = parse_security(&iax).unwrap().unwrap();
        assert_eq!(f.service, Service::Iax2);
        assert_eq!(f.seen_by_packet_path(), Some(false));
        let ami = security(
            r#"SecurityEvent="InvalidPassword",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="AMI",EventVersion="2",AccountID="admin",SessionID="0x7f",LocalAddress="IPV4/TCP/0.0.0.0/5038",RemoteAddress="IPV4/TCP/203.0.113.5/55000",SessionTV="2026-11-25T10:00:01.000+0000""#,
        );
        let f = parse_security(&ami).unwrap().unwrap();
        assert_eq!(f.service, Service::Ami);
        assert_eq!(
            f.kind,
            LogKind::AuthFailed {
                user: "admin".into()
            }
        );
    }

    #[test]
    fn other_events_and_other_lines_are_ignored() {
        let limit = security(
            r#"SecurityEvent="SessionLimit",EventTV="x",Severity="Error",Service="AMI",EventVersion="1",AccountID="a",SessionID="b",LocalAddress="IPV4/TCP/10.0.0.1/5038",RemoteAddress="IPV4/TCP/203.0.113.5/1""#,
        );
        assert_eq!(parse_security(&limit), Ok(None));
        for line in [
            "",
            "[Nov 25 10:00:01] Asterisk 20.5.0 built by root @ pbx on a x86_64 running Linux",
            "[Nov 25 10:00:01] NOTICE[1234] chan_sip.c: something",
            "[Nov 25 10:00:01] VERBOSE[1234] pbx.c: SecurityEvent=\"InvalidPassword\",RemoteAddress=\"IPV4/UDP/1.2.3.4/5060\"",
            "SECURITY[1] res_security_log.c: hello",
        ] {
            assert_eq!(parse_security(line), Ok(None), "{line}");
        }
    }

    #[test]
    fn header_variants() {
        for prefix in [
            "[Nov 25 10:00:01] SECURITY[1234] res_security_log.c: ",
            "[2026-11-25 10:00:01.123] SECURITY[1234][C-0000002a] res_security_log.c: ",
            "SECURITY[1234]: res_security_log.c:0 in security_event_stasis_cb: ",
        ] {
            let line = INVALID_PASSWORD.replace(
                "[Nov 25 10:00:01] SECURITY[1234] res_security_log.c: ",
                prefix,
            );
            let f = parse_security(&line).unwrap_or_else(|e| panic!("{prefix}: {e}"));
            assert_eq!(f.unwrap().source, ip("203.0.113.5"), "{prefix}");
        }
    }

    #[test]
    fn ipv4_mapped_and_transportless_addresses() {
        let line = INVALID_PASSWORD.replace(
            "IPV4/UDP/203.0.113.5/5060",
            "IPV4/UDP/::ffff:203.0.113.5/5060",
        );
        assert_eq!(
            parse_security(&line).unwrap().unwrap().source,
            ip("203.0.113.5")
        );
        let line = INVALID_PASSWORD.replace("IPV4/UDP/203.0.113.5/5060", "IPV4/203.0.113.5/5060");
        let f = parse_security(&line).unwrap().unwrap();
        assert_eq!(f.transport, None);
        assert_eq!(f.seen_by_packet_path(), None);
    }

    #[test]
    fn a_client_value_cannot_supply_the_remote_address() {
        // AccountID and SessionID (PJSIP's Call-ID) are written before the
        // real RemoteAddress; ReceivedHash after it.
        let injections = [
            (
                "AccountID=\"300\"",
                "AccountID=\"300\",RemoteAddress=\"IPV4/UDP/1.2.3.4/5060\"",
            ),
            (
                "AccountID=\"300\"",
                "AccountID=\"300 RemoteAddress=1.2.3.4\"",
            ),
            (
                "SessionID=\"0x7f2a4c012345\"",
                "SessionID=\"x\",RemoteAddress=\"IPV4/UDP/1.2.3.4/5060\",Challenge=\"y\"",
            ),
            (
                "ReceivedHash=\"8f1c7a0e2b9d4f63a5e1c0b7d2f8e946\"",
                "ReceivedHash=\"x\",RemoteAddress=\"IPV4/UDP/1.2.3.4/5060\"",
            ),
            (
                "ReceivedHash=\"8f1c7a0e2b9d4f63a5e1c0b7d2f8e946\"",
                "ReceivedHash=\"RemoteAddress=\"",
            ),
        ];
        for (from, to) in injections {
            let line = INVALID_PASSWORD.replace(from, to);
            assert_ne!(line, INVALID_PASSWORD);
            match parse_security(&line) {
                Err(LineError::Ambiguous { what, count }) => {
                    assert_eq!(&*what, "RemoteAddress");
                    assert_eq!(count, 2);
                }
                other => panic!("{to}: {other:?}"),
            }
        }
    }

    #[test]
    fn quotes_inside_client_values_do_not_move_fields() {
        // A quote not followed by `,Name="` stays inside the value.
        let line = INVALID_PASSWORD.replace("AccountID=\"300\"", "AccountID=\"3\"0\"0\"");
        let f = parse_security(&line).unwrap().unwrap();
        assert_eq!(
            f.kind,
            LogKind::AuthFailed {
                user: "3\"0\"0".into()
            }
        );
        assert_eq!(f.source, ip("203.0.113.5"));
        // A fake field inside AccountID cuts the user label short and
        // changes nothing else: Service came before it.
        let line = INVALID_PASSWORD.replace(
            "AccountID=\"300\"",
            "AccountID=\"300\",Service=\"AMI\",SecurityEvent=\"SuccessfulAuth\"",
        );
        let f = parse_security(&line).unwrap().unwrap();
        assert_eq!(f.kind, LogKind::AuthFailed { user: "300".into() });
        assert_eq!(f.service, Service::Sip);
    }

    #[test]
    fn broken_security_lines_say_what_is_wrong() {
        let missing = security(
            r#"SecurityEvent="InvalidPassword",EventTV="x",Severity="Error",Service="SIP",EventVersion="2",AccountID="300",SessionID="0x1",LocalAddress="IPV4/UDP/10.0.0.1/5060""#,
        );
        assert_eq!(
            parse_security(&missing),
            Err(LineError::Missing {
                field: "RemoteAddress"
            })
        );
        let bad = INVALID_PASSWORD.replace("203.0.113.5", "203.0.113.500");
        assert!(matches!(
            parse_security(&bad),
            Err(LineError::BadAddress {
                field: "RemoteAddress",
                ..
            })
        ));
        let family = INVALID_PASSWORD.replace("IPV4/UDP/203.0.113.5", "IPV6/UDP/203.0.113.5");
        assert!(matches!(
            parse_security(&family),
            Err(LineError::BadAddress { .. })
        ));
        let unclosed = security(r#"SecurityEvent="InvalidPassword,EventTV="x"#);
        let err = parse_security(&unclosed).unwrap_err();
        assert!(matches!(err, LineError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("value not closed"), "{err}");
        let no_account = security(
            r#"SecurityEvent="InvalidPassword",EventTV="x",Severity="Error",Service="SIP",EventVersion="2",SessionID="0x1",LocalAddress="IPV4/UDP/10.0.0.1/5060",RemoteAddress="IPV4/UDP/203.0.113.5/5060""#,
        );
        assert_eq!(
            parse_security(&no_account),
            Err(LineError::Missing { field: "AccountID" })
        );
    }

    #[test]
    fn chan_sip_registration_failures() {
        let cases = [
            (
                r#"[Nov 25 10:00:01] NOTICE[1234] chan_sip.c: Registration from '"300" <sip:300@10.0.0.1>' failed for '203.0.113.5:5060' - Wrong password"#,
                LogKind::AuthFailed { user: "300".into() },
                "203.0.113.5",
            ),
            (
                r#"[Nov 25 10:00:01] NOTICE[1234][C-00000001] chan_sip.c: Registration from '<sip:4711@10.0.0.1>;tag=as1' failed for '[2001:db8::1]:5060' - No matching peer found"#,
                LogKind::UnknownUser { user: "4711".into() },
                "2001:db8::1",
            ),
            (
                "NOTICE[1234] chan_sip.c: Registration from '<sip:300@10.0.0.1>' failed for '192.0.2.1' - Device does not match ACL",
                LogKind::Forbidden { user: "300".into() },
                "192.0.2.1",
            ),
        ];
        for (line, kind, addr) in cases {
            let f = parse_notice(line)
                .unwrap_or_else(|e| panic!("{line}: {e}"))
                .unwrap();
            assert_eq!(f.kind, kind, "{line}");
            assert_eq!(f.source, ip(addr), "{line}");
            assert_eq!(f.method.as_deref(), Some("REGISTER"));
        }
    }

    #[test]
    fn chan_sip_uses_the_last_failed_for() {
        // The To header is the client's: it may hold a whole fake ending.
        let line = r#"[Nov 25 10:00:01] NOTICE[1234] chan_sip.c: Registration from '<sip:300@10.0.0.1>' failed for '1.2.3.4:5060' - Wrong password' failed for '203.0.113.5:5060' - Wrong password"#;
        let f = parse_notice(line).unwrap().unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        let line = r#"[Nov 25 10:00:01] NOTICE[1234] chan_sip.c: Registration from '"x' failed for '1.2.3.4:5060" <sip:300@10.0.0.1>' failed for '203.0.113.5:5060' - No matching peer found"#;
        assert_eq!(
            parse_notice(line).unwrap().unwrap().source,
            ip("203.0.113.5")
        );
    }

    #[test]
    fn pjsip_request_failures() {
        let line = "[Nov 25 10:00:01] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:300@10.0.0.1>' failed for '203.0.113.5:5060' (callid: 4d2c0a1b-93a8@203.0.113.5) - Failed to authenticate";
        let f = parse_notice(line).unwrap().unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        assert_eq!(f.kind, LogKind::AuthFailed { user: "300".into() });
        assert_eq!(f.method.as_deref(), Some("REGISTER"));
        assert_eq!(
            f.summary,
            "asterisk pjsip REGISTER 300 → Failed to authenticate"
        );
        let line = "[Nov 25 10:00:01] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'INVITE' from '\"sipvicious\" <sip:100@203.0.113.5>' failed for '[2001:db8::7]:5060' (callid: 1234) - No matching endpoint found after 5 tries in 12.345 ms";
        let f = parse_notice(line).unwrap().unwrap();
        assert_eq!(f.source, ip("2001:db8::7"));
        assert_eq!(f.kind, LogKind::UnknownUser { user: "100".into() });
        let line = "[Nov 25 10:00:01] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'OPTIONS' from '<sip:300@10.0.0.1>' failed for '192.0.2.8:5060' (callid: a) - Not match Endpoint ACL";
        let f = parse_notice(line).unwrap().unwrap();
        assert_eq!(f.kind, LogKind::Forbidden { user: "300".into() });
    }

    #[test]
    fn pjsip_with_an_injected_from_or_callid_is_refused() {
        // The From display name before, the Call-ID after the real address.
        let from = "[Nov 25 10:00:01] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '\"x' failed for '1.2.3.4:5060' (callid: \" <sip:300@10.0.0.1>' failed for '203.0.113.5:5060' (callid: abc) - Failed to authenticate";
        let callid = "[Nov 25 10:00:01] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:300@10.0.0.1>' failed for '203.0.113.5:5060' (callid: x' failed for '1.2.3.4:5060' (callid: y) - Failed to authenticate";
        for line in [from, callid] {
            match parse_notice(line) {
                Err(LineError::Ambiguous { count: 2, .. }) => {}
                other => panic!("{line}: {other:?}"),
            }
        }
        // Look-alikes without a valid address do not count.
        let harmless = "[Nov 25 10:00:01] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '\"a' failed for 'nowhere' (callid: \" <sip:300@10.0.0.1>' failed for '203.0.113.5:5060' (callid: abc) - Failed to authenticate";
        assert_eq!(
            parse_notice(harmless).unwrap().unwrap().source,
            ip("203.0.113.5")
        );
    }

    #[test]
    fn notices_with_unknown_reasons_are_errors() {
        let line = "[Nov 25 10:00:01] NOTICE[1234] chan_sip.c: Registration from '<sip:300@10.0.0.1>' failed for '203.0.113.5:5060' - Something new";
        assert_eq!(
            parse_notice(line),
            Err(LineError::UnknownReason {
                what: "chan_sip registration",
                reason: "Something new".into()
            })
        );
        let other = "[Nov 25 10:00:01] NOTICE[1234] chan_sip.c: Peer '300' is now Reachable. (12ms / 2000ms)";
        assert_eq!(parse_notice(other), Ok(None));
    }

    #[test]
    fn security_lines_are_not_notices_and_back() {
        assert_eq!(parse_notice(INVALID_PASSWORD), Ok(None));
        let notice = "[Nov 25 10:00:01] NOTICE[1234] chan_sip.c: Registration from '<sip:300@10.0.0.1>' failed for '203.0.113.5:5060' - Wrong password";
        assert_eq!(parse_security(notice), Ok(None));
    }
}
