//! PBX security logs as detector facts: Asterisk's security events and its
//! chan_sip / res_pjsip NOTICE lines, FreeSWITCH's `sofia_reg.c` warnings, and
//! operator-written patterns for Kamailio (or any registrar's) log lines.
//!
//! Why: the packet path reads SIP over UDP and TCP only. SIP over TLS or WSS,
//! IAX2 and AMI reach the detectors only through what the PBX writes about
//! them. Each parser here turns one line into at most one [`LogFact`]; the
//! caller stamps the time (log timestamps are local wall-clock text, useless
//! to detectors that count in [`Instant`]s) and feeds [`LogFact::events`] to
//! the judge. No I/O: following the files is the agent's job.
//!
//! Trust. A log line mixes what the PBX knows (the packet's source address,
//! the event, the reason) with what the client wrote (user names, From and To
//! headers, Call-IDs, digest responses), and neither Asterisk nor FreeSWITCH
//! escapes the latter (res_security_log.c: "\todo Escape quotes in string
//! payload IE contents"). A client that could make a parser read a source
//! address out of its own text could get any third party banned, so every
//! parser takes the address only from a place the client's text cannot reach
//! (the end of a line the PBX finishes itself), or counts the look-alikes and
//! refuses the line with [`LineError::Ambiguous`] when there is more than one.
//! A refused line is reported, never attributed. User names in a fact are the
//! client's words and serve as labels only.
//!
//! What no line parser can defend against: a client value holding a raw
//! newline (possible for IAX2 user names, whose information elements are not
//! SIP-parsed) lets the client start a line of its own. The Asterisk parsers
//! accept a line only when it begins exactly as Asterisk begins one, which
//! stops SIP's folded headers (a folded line starts with white space) but not
//! a complete forged line.

mod asterisk;
mod freeswitch;
mod pattern;

pub use asterisk::{parse_notice as asterisk_notice, parse_security as asterisk_security};
pub use freeswitch::parse as freeswitch;
pub use pattern::{Pattern, PatternError};

use crate::event::{Event, Kind};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Longest line a parser looks at. Asterisk's security lines are a few hundred
/// bytes; anything near this is an attacker stuffing a header, and parsing it
/// would only cost time.
pub const MAX_LINE: usize = 64 * 1024;

/// Longest user label kept in a fact (the packet path keeps 48 bytes).
const MAX_LABEL: usize = 64;

/// How the request reached the PBX, when the log says (the transports PBX
/// configurations name; a log never says `Iax`, IAX2 is a [`Service`]).
pub use palisade_model::Transport;

/// The PBX service a line is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Service {
    /// chan_sip, PJSIP, FreeSWITCH's sofia, Kamailio.
    Sip,
    Iax2,
    /// The Asterisk Manager Interface (TCP 5038).
    Ami,
    /// Any other service Asterisk names (ARI, HTTP, a future one).
    Other(Box<str>),
}

impl Service {
    pub fn as_str(&self) -> &str {
        match self {
            Service::Sip => "SIP",
            Service::Iax2 => "IAX2",
            Service::Ami => "AMI",
            Service::Other(s) => s,
        }
    }
}

/// One thing a PBX log says about one source address. The caller stamps the
/// time: see [`LogFact::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFact {
    /// The address the PBX saw the request come from; never a field the
    /// client wrote.
    pub source: IpAddr,
    pub kind: LogKind,
    pub service: Service,
    /// `None` when the log does not say (chan_sip and PJSIP NOTICE lines,
    /// FreeSWITCH, patterns).
    pub transport: Option<Transport>,
    /// The SIP method when the log names it (`REGISTER`, `INVITE`).
    pub method: Option<Box<str>>,
    /// One line for the evidence, e.g. `asterisk PJSIP/TLS InvalidPassword 300`.
    pub summary: String,
}

/// What a log line reports.
///
/// Mapped to the detectors' [`Kind`] by [`LogKind::outcome`]:
///
/// | `LogKind` | `Kind` | from |
/// |---|---|---|
/// | `AuthFailed` | `AuthFailed { destination: None }` | Asterisk `InvalidPassword`, `ChallengeResponseFailed`; chan_sip `Wrong password`, `Username/auth name mismatch`; PJSIP `Failed to authenticate`, `Error to authenticate`; FreeSWITCH `SIP auth failure`; pattern `auth-failed` |
/// | `Challenged` | `Challenged` | Asterisk `ChallengeSent`; FreeSWITCH `SIP auth challenge`; pattern `challenged` |
/// | `UnknownUser` | `UnknownUser { status: 404 }` | Asterisk `InvalidAccountID`; chan_sip `No matching peer found`, `Not a local domain`; PJSIP `No matching endpoint found`; FreeSWITCH `Can't find user`; pattern `unknown-user` |
/// | `Forbidden` | `UnknownUser { status: 403 }` | Asterisk `FailedACL`; chan_sip `Device does not match ACL`, `ACL error (permit/deny)`, `Peer is not supposed to register`; PJSIP `Not match Endpoint ACL`, `Not match Endpoint Contact ACL` |
/// | `AuthSucceeded` | none | Asterisk `SuccessfulAuth`; pattern `auth-succeeded` |
/// | `Registered` | `Registered { contact: "" }`, or `Unregistered` when `expires` is 0 | pattern `registered` |
/// | `NotAllowed` | none | Asterisk `RequestNotAllowed`, `UnexpectedAddress`, `AuthMethodNotAllowed`, `InvalidTransport`; chan_sip's transport and RTP failures |
/// | `Malformed` | `Garbage` | Asterisk `RequestBadFormat` |
///
/// The status in `UnknownUser` is what the line means (not found, refused),
/// not necessarily what was sent: Asterisk with `alwaysauthreject` answers an
/// unknown user with a fake 401, FreeSWITCH with 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogKind {
    /// Credentials were given and refused: a wrong password.
    AuthFailed { user: Box<str> },
    /// A request was challenged for credentials.
    Challenged { user: Box<str> },
    /// The PBX does not know the user.
    UnknownUser { user: Box<str> },
    /// The PBX refused the request before asking for credentials (an ACL, or
    /// a peer not allowed to register).
    Forbidden { user: Box<str> },
    /// Credentials (or, with `password` false, the source address alone)
    /// were accepted. Any authenticated request, not a registration: there
    /// is no binding and no lifetime, so it is no [`Kind::Registered`].
    AuthSucceeded { user: Box<str>, password: bool },
    /// A registration was accepted for `expires` (0: removed).
    Registered { user: Box<str>, expires: Duration },
    /// Refused for a reason that says nothing about passwords or users
    /// (request type not allowed, unexpected address, wrong transport).
    NotAllowed {
        user: Option<Box<str>>,
        why: Box<str>,
    },
    /// The PBX could not parse the request.
    Malformed { what: Box<str> },
}

impl LogKind {
    pub fn name(&self) -> &'static str {
        match self {
            LogKind::AuthFailed { .. } => "auth-failed",
            LogKind::Challenged { .. } => "challenged",
            LogKind::UnknownUser { .. } => "unknown-user",
            LogKind::Forbidden { .. } => "forbidden",
            LogKind::AuthSucceeded { .. } => "auth-succeeded",
            LogKind::Registered { .. } => "registered",
            LogKind::NotAllowed { .. } => "not-allowed",
            LogKind::Malformed { .. } => "malformed",
        }
    }

    /// The user the line names (a label the client chose, except for
    /// Asterisk's PJSIP events other than `InvalidAccountID`, which name the
    /// endpoint).
    pub fn user(&self) -> Option<&str> {
        match self {
            LogKind::AuthFailed { user }
            | LogKind::Challenged { user }
            | LogKind::UnknownUser { user }
            | LogKind::Forbidden { user }
            | LogKind::AuthSucceeded { user, .. }
            | LogKind::Registered { user, .. } => Some(user),
            LogKind::NotAllowed { user, .. } => user.as_deref(),
            LogKind::Malformed { .. } => None,
        }
    }

    /// Whether the request this line reports carried credentials.
    fn credentials(&self) -> bool {
        match self {
            LogKind::AuthFailed { .. } | LogKind::Registered { .. } => true,
            LogKind::AuthSucceeded { password, .. } => *password,
            _ => false,
        }
    }

    /// The outcome in the detectors' terms, per the table on [`LogKind`];
    /// `None` where [`Kind`] has no word for it that would be true.
    pub fn outcome(&self) -> Option<Kind> {
        Some(match self {
            LogKind::AuthFailed { user } => Kind::AuthFailed {
                user: user.clone(),
                destination: None,
            },
            LogKind::Challenged { user } => Kind::Challenged { user: user.clone() },
            LogKind::UnknownUser { user } => Kind::UnknownUser {
                user: user.clone(),
                status: 404,
            },
            LogKind::Forbidden { user } => Kind::UnknownUser {
                user: user.clone(),
                status: 403,
            },
            LogKind::Registered { user, expires } if expires.is_zero() => Kind::Unregistered {
                user: user.clone(),
                contact: None,
            },
            // A log line names no contact; one binding per user and source
            // is what a refresh then renews.
            LogKind::Registered { user, expires } => Kind::Registered {
                user: user.clone(),
                contact: "".into(),
                expires: *expires,
            },
            LogKind::Malformed { what } => Kind::Garbage {
                error: format!("the PBX could not parse a {what} request").into(),
            },
            LogKind::AuthSucceeded { .. } | LogKind::NotAllowed { .. } => return None,
        })
    }
}

impl LogFact {
    /// Whether the packet path sees the same request: `Some(true)` for SIP
    /// over UDP or TCP, `Some(false)` for SIP over TLS/WS/WSS and for IAX2,
    /// AMI and other services, `None` when the log does not name the
    /// transport. A fact the packet path also saw counts twice if fed to the
    /// same judge; the integrator decides (drop `Some(true)` while the packet
    /// watch runs).
    pub fn seen_by_packet_path(&self) -> Option<bool> {
        match (&self.service, self.transport) {
            (Service::Sip, Some(Transport::Udp | Transport::Tcp)) => Some(true),
            (Service::Sip, Some(_)) => Some(false),
            (Service::Sip, None) => None,
            _ => Some(false),
        }
    }

    /// The events to feed the judge, stamped `at`: the request the line
    /// reports ([`Kind::Request`]), then its outcome ([`LogKind::outcome`]).
    ///
    /// The request comes first as on the packet path, and for the same
    /// reason: a request with credentials is what answers a challenge. Fed
    /// the outcomes alone, the enumeration detector would see fifty phones
    /// registering over TLS (challenge, then success) as fifty challenges
    /// never answered: a register sweep. `Malformed` yields only its
    /// `Garbage`, as a packet that is not SIP does.
    pub fn events(&self, at: Instant) -> Vec<Event> {
        let mut out = Vec::with_capacity(2);
        if !matches!(self.kind, LogKind::Malformed { .. }) {
            let method: Box<str> = match &self.method {
                Some(m) => m.clone(),
                None => self.service.as_str().into(),
            };
            let user = self.kind.user().map(Box::<str>::from);
            out.push(Event {
                at,
                source: self.source,
                kind: Kind::Request {
                    method: method.clone(),
                    user: user.clone(),
                    user_agent: None,
                    from_user: None,
                    credentials: self.kind.credentials(),
                    destination: None,
                },
                summary: format!("{method} {} (PBX log)", user.as_deref().unwrap_or("-")),
            });
        }
        if let Some(kind) = self.kind.outcome() {
            out.push(Event {
                at,
                source: self.source,
                kind,
                summary: self.summary.clone(),
            });
        }
        out
    }
}

/// A line a parser recognised but cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line of {len} bytes is longer than the {max}-byte limit; not parsed")]
    TooLong { len: usize, max: usize },
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed {
        what: &'static str,
        offset: usize,
        reason: &'static str,
    },
    #[error(
        "{what} appears {count} times: text the client wrote imitates it, so the \
         source address is unknown; line refused"
    )]
    Ambiguous { what: Box<str>, count: usize },
    #[error("{field} \"{text}\" is not an IP address")]
    BadAddress { field: &'static str, text: Box<str> },
    #[error("{field} \"{text}\" is not a number in range")]
    BadNumber { field: &'static str, text: Box<str> },
    #[error("unknown reason \"{reason}\" in a {what} line")]
    UnknownReason {
        what: &'static str,
        reason: Box<str>,
    },
}

/// Which parser a log file gets.
#[derive(Debug, Clone)]
pub enum Parser {
    /// Asterisk's `security` channel: [`asterisk_security`].
    AsteriskSecurity,
    /// chan_sip and res_pjsip NOTICE lines: [`asterisk_notice`].
    AsteriskNotices,
    /// FreeSWITCH `sofia_reg.c` warnings: [`freeswitch`].
    FreeSwitch,
    /// An operator's pattern.
    Pattern(Box<Pattern>),
}

impl Parser {
    /// `Ok(None)` for a line that is none of this parser's business (most of
    /// a `full` log), `Ok(Some)` for a fact, `Err` for a line it recognised
    /// but cannot use (too long, malformed, ambiguous).
    pub fn parse(&self, line: &str) -> Result<Option<LogFact>, LineError> {
        match self {
            Parser::AsteriskSecurity => asterisk::parse_security(line),
            Parser::AsteriskNotices => asterisk::parse_notice(line),
            Parser::FreeSwitch => freeswitch::parse(line),
            Parser::Pattern(p) => p.parse(line),
        }
    }

    /// For metrics labels and log messages.
    pub fn name(&self) -> &'static str {
        match self {
            Parser::AsteriskSecurity => "asterisk-security",
            Parser::AsteriskNotices => "asterisk-notices",
            Parser::FreeSwitch => "freeswitch",
            Parser::Pattern(_) => "pattern",
        }
    }
}

/// The line without its line ending, if it is short enough to parse.
fn checked(line: &str) -> Result<&str, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong {
            len: line.len(),
            max: MAX_LINE,
        });
    }
    Ok(line.trim_end_matches(['\n', '\r']))
}

/// A user name as a label: control characters dropped, at most
/// [`MAX_LABEL`] characters, `-` for nothing.
fn label(s: &str) -> Box<str> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// Client text quoted in an error: short and printable.
fn excerpt(s: &str) -> Box<str> {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_LABEL)
        .collect::<String>()
        .into()
}

/// An address literal, optionally in brackets; IPv4-mapped IPv6 addresses
/// become IPv4, as the packet path sees them. Zone ids are refused.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// `1.2.3.4`, `1.2.3.4:5060`, `[2001:db8::1]:5060`, `[2001:db8::1]` or
/// `2001:db8::1`: the address.
fn parse_host_port(s: &str) -> Option<IpAddr> {
    if let Some(ip) = parse_ip(s) {
        return Some(ip);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        (host, rest.strip_prefix(':')?)
    } else {
        let (host, port) = s.rsplit_once(':')?;
        // An unbracketed host with a port is IPv4 or a name, never IPv6.
        if host.contains(':') {
            return None;
        }
        (host, port)
    };
    port.parse::<u16>().ok()?;
    parse_ip(host)
}

/// The user part of a SIP URI somewhere in `s` (`"300" <sip:300@pbx>` →
/// `300`), else all of `s`.
fn uri_user(s: &str) -> &str {
    let start = match (s.find("sip:"), s.find("sips:")) {
        (Some(a), Some(b)) if b < a => b + 5,
        (Some(a), _) => a + 4,
        (None, Some(b)) => b + 5,
        (None, None) => return s,
    };
    let rest = &s[start..];
    match rest.find(['@', ';', '>', '?']) {
        Some(end) if rest[end..].starts_with('@') => &rest[..end],
        // No user part (`sip:pbx.example.com`).
        _ => "",
    }
}

#[cfg(test)]
mod tests;
