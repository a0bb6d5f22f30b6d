//! Operator-written line patterns, for Kamailio's `xlog` lines and any other
//! registrar whose log format is the operator's choice.
//!
//! `AUTHFAIL user=<user> src=<ip>` matches `… AUTHFAIL user=300 src=203.0.113.5`
//! anywhere in a line. Placeholders: `<ip>` (required, once: an IPv4 or IPv6
//! literal, optionally in brackets, checked by `std`), `<user>` (a run of
//! non-space characters), `<port>` and `<expires>` (digits). Anything else,
//! `<script>` included, is literal text.
//!
//! Which `<ip>` is trusted is the operator's decision: the pattern should
//! capture `$si` (the packet's source), with client text such as `$fU` before
//! it rather than after. To keep a client from planting a second address in
//! its own text, a line in which `<ip>` with the literal text around it
//! occurs more than once is refused as ambiguous.

use super::{checked, excerpt, label, parse_ip, LineError, LogFact, LogKind, Service};
use palisade_model::pbxlog::PatternKind;
use regex::Regex;
use std::time::Duration;

/// Longest pattern accepted; a log line is a sentence, not a program.
const MAX_PATTERN: usize = 1024;

/// An IPv4 or IPv6 literal, IPv6 optionally in brackets. Loose on purpose:
/// `std` decides what is an address; this only finds candidates.
const IP: &str = r"\[(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]*\]|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]*|[0-9]{1,3}(?:\.[0-9]{1,3}){3}";
/// Characters that may continue an address; an `<ip>` at the pattern's edge
/// must not start or end inside a longer run of them.
const IP_EDGE_BEFORE: &str = r"(?:^|[^0-9A-Za-z:.\[\]])";
const IP_EDGE_AFTER: &str = r"(?:$|[^0-9A-Za-z:.\[\]])";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Ip,
    User,
    Port,
    Expires,
}

impl Placeholder {
    const ALL: [Placeholder; 4] = [
        Placeholder::Ip,
        Placeholder::User,
        Placeholder::Port,
        Placeholder::Expires,
    ];

    fn text(self) -> &'static str {
        match self {
            Placeholder::Ip => "<ip>",
            Placeholder::User => "<user>",
            Placeholder::Port => "<port>",
            Placeholder::Expires => "<expires>",
        }
    }

    fn regex(self) -> String {
        match self {
            Placeholder::Ip => format!("(?P<ip>{IP})"),
            Placeholder::User => r"(?P<user>\S+)".into(),
            Placeholder::Port => "(?P<port>[0-9]{1,5})".into(),
            Placeholder::Expires => "(?P<expires>[0-9]{1,10})".into(),
        }
    }

    /// What must not touch this placeholder at the pattern's edge.
    fn edges(self) -> (&'static str, &'static str) {
        match self {
            Placeholder::Ip => (IP_EDGE_BEFORE, IP_EDGE_AFTER),
            Placeholder::User => ("", ""),
            Placeholder::Port | Placeholder::Expires => ("(?:^|[^0-9])", "(?:$|[^0-9])"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Literal(&'a str),
    Placeholder(Placeholder),
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("the pattern is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("the pattern has no <ip>: a line must say which address it is about")]
    NoIp,
    #[error("{placeholder} appears more than once in the pattern")]
    Repeated { placeholder: &'static str },
    #[error(
        "{first} and {second} touch: placeholders must be separated by literal text, \
         or where one ends is a guess"
    )]
    Adjacent {
        first: &'static str,
        second: &'static str,
    },
    #[error(
        "kind \"registered\" needs <expires>: a registration makes its source \
         known-good for exactly that long"
    )]
    NeedsExpires,
    #[error("the pattern does not compile: {0}")]
    Regex(String),
}

/// A compiled pattern and what its lines mean.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: Box<str>,
    kind: PatternKind,
    /// The whole pattern.
    line: Regex,
    /// `<ip>` with the literal text on either side: how many times this
    /// occurs in a line decides whether the line is ambiguous.
    context: Regex,
    /// The literal text around `<ip>`, for the error message.
    around: Box<str>,
}

impl Pattern {
    pub fn compile(pattern: &str, kind: PatternKind) -> Result<Pattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.len() > MAX_PATTERN {
            return Err(PatternError::TooLong { max: MAX_PATTERN });
        }
        let tokens = tokens(pattern);
        for p in Placeholder::ALL {
            let n = tokens
                .iter()
                .filter(|t| **t == Token::Placeholder(p))
                .count();
            if n > 1 {
                return Err(PatternError::Repeated {
                    placeholder: p.text(),
                });
            }
        }
        for pair in tokens.windows(2) {
            if let [Token::Placeholder(a), Token::Placeholder(b)] = pair {
                return Err(PatternError::Adjacent {
                    first: a.text(),
                    second: b.text(),
                });
            }
        }
        let Some(ip_at) = tokens
            .iter()
            .position(|t| *t == Token::Placeholder(Placeholder::Ip))
        else {
            return Err(PatternError::NoIp);
        };
        let has_expires = tokens.contains(&Token::Placeholder(Placeholder::Expires));
        if kind == PatternKind::Registered && !has_expires {
            return Err(PatternError::NeedsExpires);
        }

        let last = tokens.len() - 1;
        let mut line = String::new();
        for (i, t) in tokens.iter().enumerate() {
            match t {
                Token::Literal(s) => line.push_str(&regex::escape(s)),
                Token::Placeholder(p) => {
                    let (before, after) = p.edges();
                    if i == 0 {
                        line.push_str(before);
                    }
                    line.push_str(&p.regex());
                    if i == last {
                        line.push_str(after);
                    }
                }
            }
        }
        let literal = |i: Option<usize>| match i.and_then(|i| tokens.get(i)) {
            Some(Token::Literal(s)) => Some(*s),
            _ => None,
        };
        let before = literal(ip_at.checked_sub(1));
        let after = literal(Some(ip_at + 1));
        let context = format!(
            "{}{}{}",
            before.map_or(IP_EDGE_BEFORE.to_string(), regex::escape),
            Placeholder::Ip.regex(),
            after.map_or(IP_EDGE_AFTER.to_string(), regex::escape),
        );
        let compile = |re: &str| Regex::new(re).map_err(|e| PatternError::Regex(e.to_string()));
        Ok(Pattern {
            text: pattern.into(),
            kind,
            line: compile(&line)?,
            context: compile(&context)?,
            around: format!("{}<ip>{}", before.unwrap_or(""), after.unwrap_or("")).into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn kind(&self) -> PatternKind {
        self.kind
    }

    /// One line: `Ok(None)` when the pattern does not match it.
    pub fn parse(&self, line: &str) -> Result<Option<LogFact>, LineError> {
        let line = checked(line)?;
        let Some(caps) = self.line.captures(line) else {
            return Ok(None);
        };
        let Some(ip) = caps.name("ip") else {
            return Ok(None);
        };
        let count = self.occurrences(line);
        if count != 1 {
            return Err(LineError::Ambiguous {
                what: format!("\"{}\"", self.around).into(),
                count,
            });
        }
        let source = parse_ip(ip.as_str()).ok_or_else(|| LineError::BadAddress {
            field: "<ip>",
            text: excerpt(ip.as_str()),
        })?;
        let user = caps
            .name("user")
            .map_or_else(|| label(""), |m| label(m.as_str()));
        let number = |field: &'static str, name: &str| -> Result<Option<u64>, LineError> {
            caps.name(name)
                .map(|m| {
                    m.as_str().parse::<u64>().map_err(|_| LineError::BadNumber {
                        field,
                        text: excerpt(m.as_str()),
                    })
                })
                .transpose()
        };
        let port = number("<port>", "port")?;
        if let Some(p) = port {
            if p > u64::from(u16::MAX) {
                return Err(LineError::BadNumber {
                    field: "<port>",
                    text: p.to_string().into(),
                });
            }
        }
        let expires = match number("<expires>", "expires")? {
            // The packet path reads Expires as a u32 too.
            Some(e) if e > u64::from(u32::MAX) => {
                return Err(LineError::BadNumber {
                    field: "<expires>",
                    text: e.to_string().into(),
                })
            }
            e => e.map(Duration::from_secs),
        };
        let summary = format!(
            "pattern {} {user}{}",
            self.kind.as_str(),
            expires
                .map(|e| format!(" for {}s", e.as_secs()))
                .unwrap_or_default()
        );
        let kind = match self.kind {
            PatternKind::AuthFailed => LogKind::AuthFailed { user },
            PatternKind::UnknownUser => LogKind::UnknownUser { user },
            PatternKind::Challenged => LogKind::Challenged { user },
            PatternKind::AuthSucceeded => LogKind::AuthSucceeded {
                user,
                password: true,
            },
            PatternKind::Registered => LogKind::Registered {
                user,
                // compile() requires <expires> for this kind.
                expires: expires.unwrap_or_default(),
            },
        };
        Ok(Some(LogFact {
            source,
            kind,
            service: Service::Sip,
            transport: None,
            method: None,
            summary,
        }))
    }

    /// How many distinct places in `line` hold `<ip>` with its literal
    /// context, overlapping ones included (stops counting at 2).
    fn occurrences(&self, line: &str) -> usize {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut at = 0;
        while at <= line.len() {
            let Some(caps) = self.context.captures_at(line, at) else {
                break;
            };
            let (Some(all), Some(ip)) = (caps.get(0), caps.name("ip")) else {
                break;
            };
            if !spans.contains(&(ip.start(), ip.end())) {
                spans.push((ip.start(), ip.end()));
                if spans.len() > 1 {
                    break;
                }
            }
            // Next search starts one character after this match's start.
            at = all.start() + line[all.start()..].chars().next().map_or(1, char::len_utf8);
        }
        spans.len()
    }
}

/// Splits a pattern into literal runs and placeholders.
fn tokens(pattern: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut literal_start = 0;
    let mut i = 0;
    while i < pattern.len() {
        let rest = &pattern[i..];
        if let Some(p) = Placeholder::ALL
            .into_iter()
            .find(|p| rest.starts_with(p.text()))
        {
            if literal_start < i {
                out.push(Token::Literal(&pattern[literal_start..i]));
            }
            out.push(Token::Placeholder(p));
            i += p.text().len();
            literal_start = i;
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    if literal_start < pattern.len() {
        out.push(Token::Literal(&pattern[literal_start..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn compile(p: &str, kind: PatternKind) -> Pattern {
        Pattern::compile(p, kind).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn kamailio_xlog_lines() {
        let p = compile("AUTHFAIL user=<user> src=<ip>", PatternKind::AuthFailed);
        let f = p
            .parse(" 5(1234) WARNING: <script>: AUTHFAIL user=300 src=203.0.113.5")
            .unwrap()
            .unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        assert_eq!(f.kind, LogKind::AuthFailed { user: "300".into() });
        assert_eq!(f.summary, "pattern auth-failed 300");
        assert_eq!(p.parse(" 5(1234) INFO: <core>: something else"), Ok(None));

        let p = compile(
            "<script>: REGISTERED <user> from [<ip>]:<port> expires <expires>",
            PatternKind::Registered,
        );
        let f = p
            .parse("Nov 25 10:00:01 sip kamailio[99]: <script>: REGISTERED 300 from [2001:db8::1]:5061 expires 600")
            .unwrap()
            .unwrap();
        assert_eq!(f.source, ip("2001:db8::1"));
        assert_eq!(
            f.kind,
            LogKind::Registered {
                user: "300".into(),
                expires: Duration::from_secs(600)
            }
        );

        let p = compile("<ip> unknown user <user>", PatternKind::UnknownUser);
        let f = p.parse("x 198.51.100.4 unknown user 999").unwrap().unwrap();
        assert_eq!(f.source, ip("198.51.100.4"));
        assert_eq!(f.kind, LogKind::UnknownUser { user: "999".into() });
    }

    #[test]
    fn ip_and_port_split_where_the_pattern_says() {
        let p = compile(
            "challenge for <user> to <ip>:<port>",
            PatternKind::Challenged,
        );
        let f = p
            .parse("challenge for 300 to 203.0.113.5:5060")
            .unwrap()
            .unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        // An address that runs on is not cut short at the pattern's end.
        let p = compile("failed from <ip>", PatternKind::AuthFailed);
        assert_eq!(p.parse("failed from 203.0.113.5:5060"), Ok(None));
        assert_eq!(
            p.parse("failed from 203.0.113.55").unwrap().unwrap().source,
            ip("203.0.113.55")
        );
    }

    #[test]
    fn a_second_address_in_client_text_makes_the_line_ambiguous() {
        let p = compile("AUTHFAIL user=<user> src=<ip>", PatternKind::AuthFailed);
        // The user is the client's: with a space in it, the pattern would
        // otherwise pick the planted address.
        for line in [
            "AUTHFAIL user=x src=1.2.3.4 src=203.0.113.5",
            "AUTHFAIL user=300 src=203.0.113.5 trailing src=1.2.3.4",
        ] {
            match p.parse(line) {
                Err(LineError::Ambiguous { count: 2, what }) => {
                    assert_eq!(&*what, "\" src=<ip>\"")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        // Without the context, a planted address is just text.
        let f = p
            .parse("AUTHFAIL user=x;src=1.2.3.4 src=203.0.113.5")
            .unwrap()
            .unwrap();
        assert_eq!(f.source, ip("203.0.113.5"));
        assert_eq!(
            f.kind,
            LogKind::AuthFailed {
                user: "x;src=1.2.3.4".into()
            }
        );
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        use PatternKind::*;
        let cases = [
            ("", AuthFailed, PatternError::Empty),
            ("AUTHFAIL <user>", AuthFailed, PatternError::NoIp),
            (
                "<ip> <ip>",
                AuthFailed,
                PatternError::Repeated {
                    placeholder: "<ip>",
                },
            ),
            (
                "<user><ip>",
                AuthFailed,
                PatternError::Adjacent {
                    first: "<user>",
                    second: "<ip>",
                },
            ),
            ("REG <user> <ip>", Registered, PatternError::NeedsExpires),
        ];
        for (p, kind, err) in cases {
            assert_eq!(Pattern::compile(p, kind).unwrap_err(), err, "{p}");
        }
        let long = "x".repeat(MAX_PATTERN + 1) + "<ip>";
        assert_eq!(
            Pattern::compile(&long, AuthFailed).unwrap_err(),
            PatternError::TooLong { max: MAX_PATTERN }
        );
        // Regex syntax in the pattern is literal text.
        let p = compile("a.*b (<ip>)+", AuthFailed);
        assert_eq!(p.parse("axxb (1.2.3.4)+"), Ok(None));
        assert!(p.parse("a.*b (1.2.3.4)+").unwrap().is_some());
    }

    #[test]
    fn bad_values_say_which() {
        let p = compile("src=<ip> port=<port>", PatternKind::AuthFailed);
        assert!(matches!(
            p.parse("src=999.1.1.1 port=5060"),
            Err(LineError::BadAddress { field: "<ip>", .. })
        ));
        assert!(matches!(
            p.parse("src=1.2.3.4 port=99999"),
            Err(LineError::BadNumber {
                field: "<port>",
                ..
            })
        ));
        let p = compile("REG <user> <ip> <expires>", PatternKind::Registered);
        assert!(matches!(
            p.parse("REG 300 1.2.3.4 9999999999"),
            Err(LineError::BadNumber {
                field: "<expires>",
                ..
            })
        ));
        let f = p.parse("REG 300 1.2.3.4 0").unwrap().unwrap();
        assert_eq!(
            f.kind.outcome(),
            Some(crate::event::Kind::Unregistered {
                user: "300".into(),
                contact: None
            })
        );
    }
}
