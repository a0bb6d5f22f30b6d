//! FreeSWITCH: the `sofia_reg.c` warnings written for fail2ban.
//!
//! ```text
//! 2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:1712 SIP auth failure (REGISTER) on sofia profile 'internal' for [300@10.0.0.1] from ip 203.0.113.5
//! 2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:1698 SIP auth challenge (REGISTER) on sofia profile 'internal' for [300@10.0.0.1] from ip 203.0.113.5
//! 2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:3064 Can't find user [301@10.0.0.1] from 203.0.113.5
//! ```
//!
//! The failure and challenge lines need the profile parameter
//! `log-auth-failures`. `[user@domain]` is the client's text; the address is
//! the last thing on the line and FreeSWITCH's own, so it is taken from the
//! end (`… from ip <addr>` as the line's last word), never by searching
//! forward. An unknown user is followed by an auth failure line for the same
//! request (FreeSWITCH refuses it with 403): the enumeration detector hears
//! the first, the password detector the second.

use super::{checked, excerpt, label, parse_ip, LineError, LogFact, LogKind, Service};

/// The message after `… [LEVEL] sofia_reg.c:<line> `, if the line is a
/// sofia_reg line. Before it FreeSWITCH writes only a timestamp, an optional
/// CPU idle percentage (1.10) and an optional session UUID.
fn sofia_reg(line: &str) -> Option<&str> {
    let close = line.find(']')?;
    let open = line[..close].rfind('[')?;
    let level = &line[open + 1..close];
    let prefix = &line[..open];
    if level.is_empty()
        || !level.bytes().all(|b| b.is_ascii_uppercase())
        || prefix.len() < 10
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b' ' | b'-' | b':' | b'.' | b'%'))
    {
        return None;
    }
    let rest = line[close + 1..].strip_prefix(" sofia_reg.c:")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    rest[digits..].strip_prefix(' ')
}

/// One line of a FreeSWITCH log.
pub fn parse(line: &str) -> Result<Option<LogFact>, LineError> {
    let line = checked(line)?;
    let Some(message) = sofia_reg(line) else {
        return Ok(None);
    };
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("SIP auth failure (") {
        auth(rest, |user| LogKind::AuthFailed { user }, "auth failure").map(Some)
    } else if let Some(rest) = message.strip_prefix("SIP auth challenge (") {
        auth(rest, |user| LogKind::Challenged { user }, "auth challenge").map(Some)
    } else if let Some(rest) = message.strip_prefix("Can't find user [") {
        let Some((user_host, addr)) = rest.rsplit_once("] from ") else {
            return Err(LineError::Missing {
                field: "] from <address>",
            });
        };
        let source = address(addr)?;
        let user = label(user_of(user_host));
        Ok(Some(LogFact {
            source,
            summary: format!("freeswitch {} → can't find user", excerpt(user_host)),
            kind: LogKind::UnknownUser { user },
            service: Service::Sip,
            transport: None,
            method: None,
        }))
    } else {
        Ok(None)
    }
}

/// `(REGISTER) on sofia profile 'internal' for [300@10.0.0.1] from ip 203.0.113.5`.
fn auth(
    rest: &str,
    kind: impl FnOnce(Box<str>) -> LogKind,
    what: &str,
) -> Result<LogFact, LineError> {
    let malformed = |reason| LineError::Malformed {
        what: "sofia_reg line",
        offset: 0,
        reason,
    };
    let (method, rest) = rest
        .split_once(") on sofia profile '")
        .ok_or(malformed("expected \") on sofia profile '\""))?;
    if method != "REGISTER" && method != "INVITE" {
        return Err(malformed("the method is neither REGISTER nor INVITE"));
    }
    let Some((head, addr)) = rest.rsplit_once("] from ip ") else {
        return Err(LineError::Missing {
            field: "] from ip <address>",
        });
    };
    let source = address(addr)?;
    let user_host = head
        .split_once("' for [")
        .map(|(_, u)| u)
        .ok_or(malformed("expected \"' for [\" after the profile"))?;
    let user = label(user_of(user_host));
    Ok(LogFact {
        source,
        summary: format!("freeswitch {method} {} → {what}", excerpt(user_host)),
        kind: kind(user),
        service: Service::Sip,
        transport: None,
        method: Some(method.into()),
    })
}

fn address(addr: &str) -> Result<std::net::IpAddr, LineError> {
    parse_ip(addr).ok_or_else(|| LineError::BadAddress {
        field: "from",
        text: excerpt(addr),
    })
}

fn user_of(user_host: &str) -> &str {
    user_host.split_once('@').map_or(user_host, |(u, _)| u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const FAILURE: &str = "2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:1712 SIP auth failure (REGISTER) on sofia profile 'internal' for [300@10.0.0.1] from ip 203.0.113.5";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn auth_failure_challenge_and_unknown_user() {
        let f = parse(FAILURE).unwrap().unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        assert_eq!(f.kind, LogKind::AuthFailed { user: "300".into() });
        assert_eq!(f.method.as_deref(), Some("REGISTER"));
        assert_eq!(f.summary, "freeswitch REGISTER 300@10.0.0.1 → auth failure");

        let challenge = "2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:1698 SIP auth challenge (INVITE) on sofia profile 'external' for [0044123456@10.0.0.1] from ip 2001:db8::5";
        let f = parse(challenge).unwrap().unwrap();
        assert_eq!(f.source, ip("2001:db8::5"));
        assert_eq!(
            f.kind,
            LogKind::Challenged {
                user: "0044123456".into()
            }
        );
        assert_eq!(f.method.as_deref(), Some("INVITE"));

        let unknown = "2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:3064 Can't find user [301@10.0.0.1] from 203.0.113.5";
        let f = parse(unknown).unwrap().unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        assert_eq!(f.kind, LogKind::UnknownUser { user: "301".into() });
    }

    #[test]
    fn freeswitch_1_10_prefixes() {
        for prefix in [
            "2026-11-25 10:00:01.123456 97.43% [WARNING]",
            "9b3e7a52-6f1c-4e2b-8a0d-2f9c1e7b5a34 2026-11-25 10:00:01.123456 [WARNING]",
        ] {
            let line = FAILURE.replace("2026-11-25 10:00:01.123456 [WARNING]", prefix);
            assert_eq!(
                parse(&line).unwrap().unwrap().source,
                ip("203.0.113.5"),
                "{prefix}"
            );
        }
    }

    #[test]
    fn the_address_is_anchored_at_the_end() {
        // The user part is the client's; it may hold a whole fake ending.
        let line = "2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:1712 SIP auth failure (REGISTER) on sofia profile 'internal' for [x] from ip 1.2.3.4@10.0.0.1] from ip 203.0.113.5";
        assert_eq!(parse(line).unwrap().unwrap().source, ip("203.0.113.5"));
        let line = "2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:3064 Can't find user [x] from 1.2.3.4@10.0.0.1] from 203.0.113.5";
        assert_eq!(parse(line).unwrap().unwrap().source, ip("203.0.113.5"));
        // Text after the address means the line is not FreeSWITCH's.
        let line = format!("{FAILURE} from ip 1.2.3.4 x");
        assert!(matches!(parse(&line), Err(LineError::BadAddress { .. })));
    }

    #[test]
    fn lines_that_are_not_sofia_reg_are_ignored() {
        for line in [
            "",
            "You must define a domain called '10.0.0.1' in your directory and add a user with the id=\"301\" attribute",
            "2026-11-25 10:00:01.123456 [NOTICE] switch_core.c:123 SIP auth failure (REGISTER) on sofia profile 'internal' for [300@10.0.0.1] from ip 203.0.113.5",
            "x [WARNING] sofia_reg.c:1712 SIP auth failure (REGISTER) on sofia profile 'internal' for [300@10.0.0.1] from ip 203.0.113.5",
            "2026-11-25 10:00:01.123456 [DEBUG] sofia_reg.c:1 Send challenge for [300@10.0.0.1]",
        ] {
            assert_eq!(parse(line), Ok(None), "{line}");
        }
    }

    #[test]
    fn malformed_sofia_lines_say_why() {
        let line = FAILURE.replace("(REGISTER)", "(SUBSCRIBE)");
        assert!(matches!(parse(&line), Err(LineError::Malformed { .. })));
        let line = FAILURE.replace("from ip 203.0.113.5", "from ip");
        assert!(matches!(parse(&line), Err(LineError::Missing { .. })));
        let line = FAILURE.replace("203.0.113.5", "host.example.com");
        assert_eq!(
            parse(&line),
            Err(LineError::BadAddress {
                field: "from",
                text: "host.example.com".into()
            })
        );
    }
}
