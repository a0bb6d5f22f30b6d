use super::*;
use palisade_model::pbxlog::PatternKind;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn all_parsers() -> Vec<Parser> {
    vec![
        Parser::AsteriskSecurity,
        Parser::AsteriskNotices,
        Parser::FreeSwitch,
        Parser::Pattern(Box::new(
            Pattern::compile("AUTHFAIL user=<user> src=<ip>", PatternKind::AuthFailed).unwrap(),
        )),
        Parser::Pattern(Box::new(
            Pattern::compile("<ip> REG <user>:<port> <expires>", PatternKind::Registered).unwrap(),
        )),
    ]
}

#[test]
fn an_auth_failure_feeds_a_credentialed_request_then_the_failure() {
    let line = r#"[Nov 25 10:00:01] SECURITY[1234] res_security_log.c: SecurityEvent="ChallengeResponseFailed",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="PJSIP",EventVersion="1",AccountID="300",SessionID="c1",LocalAddress="IPV4/TLS/10.0.0.1/5061",RemoteAddress="IPV4/TLS/203.0.113.5/50000",Challenge="",Response="",ExpectedResponse="""#;
    let fact = Parser::AsteriskSecurity.parse(line).unwrap().unwrap();
    assert_eq!(fact.seen_by_packet_path(), Some(false));
    let at = Instant::now();
    let events = fact.events(at);
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e.at == at && e.source == ip("203.0.113.5")));
    assert_eq!(
        events[0].kind,
        Kind::Request {
            method: "SIP".into(),
            user: Some("300".into()),
            user_agent: None,
            from_user: None,
            credentials: true,
            destination: None,
        }
    );
    assert_eq!(events[0].summary, "SIP 300 (PBX log)");
    assert_eq!(
        events[1].kind,
        Kind::AuthFailed {
            user: "300".into(),
            destination: None
        }
    );
    assert_eq!(
        events[1].summary,
        "asterisk PJSIP/TLS ChallengeResponseFailed 300"
    );
}

#[test]
fn the_mapping_to_kinds() {
    let user: Box<str> = "300".into();
    let cases = [
        (
            LogKind::AuthFailed { user: user.clone() },
            Some(Kind::AuthFailed {
                user: user.clone(),
                destination: None,
            }),
            true,
        ),
        (
            LogKind::Challenged { user: user.clone() },
            Some(Kind::Challenged { user: user.clone() }),
            false,
        ),
        (
            LogKind::UnknownUser { user: user.clone() },
            Some(Kind::UnknownUser {
                user: user.clone(),
                status: 404,
            }),
            false,
        ),
        (
            LogKind::Forbidden { user: user.clone() },
            Some(Kind::UnknownUser {
                user: user.clone(),
                status: 403,
            }),
            false,
        ),
        (
            LogKind::AuthSucceeded {
                user: user.clone(),
                password: true,
            },
            None,
            true,
        ),
        (
            LogKind::AuthSucceeded {
                user: user.clone(),
                password: false,
            },
            None,
            false,
        ),
        (
            LogKind::Registered {
                user: user.clone(),
                expires: Duration::from_secs(300),
            },
            Some(Kind::Registered {
                user: user.clone(),
                contact: "".into(),
                expires: Duration::from_secs(300),
            }),
            true,
        ),
        (
            LogKind::NotAllowed {
                user: None,
                why: "x".into(),
            },
            None,
            false,
        ),
    ];
    for (kind, outcome, credentials) in cases {
        assert_eq!(kind.outcome(), outcome, "{kind:?}");
        let fact = LogFact {
            source: ip("192.0.2.1"),
            kind: kind.clone(),
            service: Service::Sip,
            transport: None,
            method: Some("REGISTER".into()),
            summary: "s".into(),
        };
        let events = fact.events(Instant::now());
        assert_eq!(events.len(), 1 + usize::from(outcome.is_some()), "{kind:?}");
        match &events[0].kind {
            Kind::Request {
                method,
                credentials: c,
                ..
            } => {
                assert_eq!(&**method, "REGISTER");
                assert_eq!(*c, credentials, "{kind:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    let garbage = LogFact {
        source: ip("192.0.2.1"),
        kind: LogKind::Malformed {
            what: "PJSIP".into(),
        },
        service: Service::Sip,
        transport: Some(Transport::Udp),
        method: None,
        summary: "s".into(),
    };
    let events = garbage.events(Instant::now());
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0].kind, Kind::Garbage { .. }));
    assert_eq!(garbage.seen_by_packet_path(), Some(true));
}

#[test]
fn over_long_lines_are_refused_unread() {
    let line = format!(
        "[Nov 25 10:00:01] SECURITY[1] res_security_log.c: SecurityEvent=\"{}\"",
        "x".repeat(1 << 20)
    );
    for p in all_parsers() {
        assert_eq!(
            p.parse(&line),
            Err(LineError::TooLong {
                len: line.len(),
                max: MAX_LINE
            }),
            "{}",
            p.name()
        );
    }
    assert_eq!(
        LineError::TooLong {
            len: 70000,
            max: MAX_LINE
        }
        .to_string(),
        "line of 70000 bytes is longer than the 65536-byte limit; not parsed"
    );
}

#[test]
fn helpers() {
    assert_eq!(parse_host_port("1.2.3.4:5060"), Some(ip("1.2.3.4")));
    assert_eq!(
        parse_host_port("[2001:db8::1]:5060"),
        Some(ip("2001:db8::1"))
    );
    assert_eq!(parse_host_port("2001:db8::1"), Some(ip("2001:db8::1")));
    assert_eq!(parse_host_port("[::ffff:1.2.3.4]:1"), Some(ip("1.2.3.4")));
    assert_eq!(parse_host_port("2001:db8::1:5060:x"), None);
    assert_eq!(parse_host_port("1.2.3.4:99999"), None);
    assert_eq!(parse_host_port("host:5060"), None);
    assert_eq!(parse_ip("fe80::1%eth0"), None);
    assert_eq!(uri_user("\"Bob\" <sip:300@pbx>;tag=1"), "300");
    assert_eq!(uri_user("<sips:alice@pbx>"), "alice");
    assert_eq!(uri_user("<sip:pbx.example.com>"), "");
    assert_eq!(uri_user("plain"), "plain");
    assert_eq!(&*label("a\u{0}b\nc"), "abc");
    assert_eq!(&*label(""), "-");
    assert_eq!(label(&"é".repeat(100)).chars().count(), MAX_LABEL);
}

/// Pieces of real lines, to make random input reach deep into the parsers.
const PIECES: &[&str] = &[
    "[Nov 25 10:00:01] ",
    "SECURITY[1234] ",
    "NOTICE[1234] ",
    "[C-00000001] ",
    "res_security_log.c: ",
    "chan_sip.c: ",
    "res_pjsip/pjsip_distributor.c: ",
    "SecurityEvent=\"InvalidPassword\"",
    "SecurityEvent=\"SuccessfulAuth\"",
    ",Service=\"PJSIP\"",
    ",AccountID=\"300\"",
    ",RemoteAddress=\"IPV4/UDP/203.0.113.5/5060\"",
    ",RemoteAddress=\"IPV6/TLS/2001:db8::1/5061\"",
    "\"",
    ",",
    "=\"",
    "Registration from '",
    "Request 'REGISTER' from '",
    "<sip:300@10.0.0.1>",
    "' failed for '",
    "203.0.113.5:5060",
    "[2001:db8::1]:5060",
    "' (callid: ",
    ") - ",
    "' - ",
    "Wrong password",
    "Failed to authenticate",
    " after 5 tries in 1.5 ms",
    "2026-11-25 10:00:01.123456 [WARNING] sofia_reg.c:1712 ",
    "SIP auth failure (REGISTER) on sofia profile 'internal' for [",
    "Can't find user [",
    "300@10.0.0.1",
    "] from ip ",
    "] from ",
    "AUTHFAIL user=",
    " src=",
    " REG ",
    ":",
    "1.2.3.4",
    "é",
    "\u{0}",
    "\r",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let line = String::from_utf8_lossy(&bytes);
        for p in all_parsers() {
            let _ = p.parse(&line);
        }
    }

    #[test]
    fn shuffled_pieces_of_real_lines_never_panic(
        picks in proptest::collection::vec(0..PIECES.len(), 0..24)
    ) {
        let line: String = picks.iter().map(|&i| PIECES[i]).collect();
        for p in all_parsers() {
            if let Ok(Some(fact)) = p.parse(&line) {
                // Whatever is accepted maps without panicking too.
                let _ = fact.events(Instant::now());
            }
        }
    }
}
