//! Requests and the PBX's answers, as real tools and phones send them, through
//! the parser, the transaction tracker and the judge.

use palisade_guard::sip::{parse, Limits, Parsed, Transport};
use palisade_guard::{Action, Direction, Event, Judge, Kind, Reason, Tracker};
use palisade_model::Responsive;
use proptest::prelude::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn corpus(name: &str) -> String {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Rewrites one header of a message (the first line starting with `name:`).
fn with_header(msg: &str, name: &str, value: &str) -> String {
    let mut done = false;
    msg.split("\r\n")
        .map(|line| {
            if !done
                && line
                    .to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            {
                done = true;
                format!("{name}: {value}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// An answer to `request` with `status`, as a registrar writes it.
fn answer(request: &str, status: u16, extra: &str) -> String {
    let header = |name: &str| {
        request
            .split("\r\n")
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            })
            .unwrap_or_else(|| panic!("request has no {name}"))
            .to_string()
    };
    format!(
        "SIP/2.0 {status} Whatever\r\n{}\r\n{}\r\n{};tag=pbx\r\n{}\r\n{}\r\n{extra}Content-Length: 0\r\n\r\n",
        header("Via"),
        header("From"),
        header("To"),
        header("Call-ID"),
        header("CSeq"),
    )
}

struct Run {
    tracker: Tracker,
    judge: Judge,
    t: Instant,
    source: IpAddr,
    events: Vec<Event>,
    actions: Vec<Action>,
}

impl Run {
    fn new() -> Run {
        Run {
            tracker: Tracker::new(1024),
            judge: Judge::new(Responsive::default()),
            t: Instant::now(),
            source: "203.0.113.66".parse().unwrap(),
            events: Vec::new(),
            actions: Vec::new(),
        }
    }

    fn feed(&mut self, dir: Direction, text: &str) {
        self.t += Duration::from_millis(5);
        let mut events = Vec::new();
        match parse(text.as_bytes(), Transport::Datagram, &Limits::default()) {
            Ok(Parsed::Message(m, _)) => {
                self.tracker
                    .observe(self.t, dir, self.source, &m, &mut events)
            }
            Ok(_) => {}
            Err(e) => self
                .tracker
                .garbage(self.t, self.source, &e.to_string(), &mut events),
        }
        for e in &events {
            self.judge.observe(e.clone(), &mut self.actions);
        }
        self.events.extend(events);
    }

    fn exchange(&mut self, request: &str, status: u16, extra: &str) {
        self.feed(Direction::In, request);
        self.feed(Direction::Out, &answer(request, status, extra));
    }

    fn bans(&self) -> Vec<(Reason, String)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Ban(v) => Some((v.reason, v.detail.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn svcrack_is_banned_at_its_first_request() {
    let mut run = Run::new();
    run.exchange(&corpus("register_svcrack.sip"), 401, "");
    assert_eq!(run.bans()[0].0, Reason::Scanner);
}

#[test]
fn a_guesser_with_a_phone_user_agent_is_banned_at_the_third_failure() {
    let mut run = Run::new();
    let base = with_header(
        &corpus("register_svcrack.sip"),
        "User-Agent",
        "Yealink SIP-T46S 66.86.0.15",
    );
    for i in 0..3 {
        assert!(run.bans().is_empty(), "banned before guess {i}");
        let guess = with_header(&base, "CSeq", &format!("{} REGISTER", 10 + i));
        run.exchange(
            &guess,
            401,
            "WWW-Authenticate: Digest realm=\"asterisk\", nonce=\"n\", qop=\"auth\"\r\n",
        );
    }
    let bans = run.bans();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].0, Reason::PasswordGuessing);
    let failures = run
        .events
        .iter()
        .filter(|e| matches!(&e.kind, Kind::AuthFailed { user, .. } if &**user == "100"))
        .count();
    assert_eq!(failures, 3);
}

#[test]
fn a_stale_nonce_is_not_a_failure() {
    let mut run = Run::new();
    let req = corpus("register_yealink_auth.sip");
    for i in 0..10 {
        let r = with_header(&req, "CSeq", &format!("{} REGISTER", 2 + i));
        run.exchange(
            &r,
            401,
            "WWW-Authenticate: Digest realm=\"asterisk\", nonce=\"n2\", stale=true\r\n",
        );
    }
    assert!(run.bans().is_empty());
    assert!(!run
        .events
        .iter()
        .any(|e| matches!(e.kind, Kind::AuthFailed { .. })));
}

#[test]
fn a_phone_registers_renews_and_unregisters() {
    let mut run = Run::new();
    let first = corpus("register_yealink.sip");
    run.exchange(
        &first,
        401,
        "WWW-Authenticate: Digest realm=\"asterisk\", nonce=\"n\", qop=\"auth\"\r\n",
    );
    assert!(matches!(
        run.events.last().unwrap().kind,
        Kind::Challenged { .. }
    ));
    let auth = corpus("register_yealink_auth.sip");
    run.exchange(
        &auth,
        200,
        "Contact: <sip:201@192.168.1.101:5062>;expires=300\r\n",
    );
    match &run.events.last().unwrap().kind {
        Kind::Registered {
            user,
            expires,
            contact,
        } => {
            assert_eq!(&**user, "201");
            assert_eq!(*expires, Duration::from_secs(300));
            assert_eq!(&**contact, "sip:201@192.168.1.101:5062");
        }
        other => panic!("{other:?}"),
    }
    assert!(run.judge.is_known_good(run.source, run.t));
    let bye = with_header(&with_header(&auth, "Expires", "0"), "CSeq", "3 REGISTER");
    run.exchange(&bye, 200, "");
    assert!(matches!(
        run.events.last().unwrap().kind,
        Kind::Unregistered { .. }
    ));
    assert!(!run.judge.is_known_good(run.source, run.t));
    assert!(matches!(
        run.actions.last(),
        Some(Action::KnownGoodEnd { .. })
    ));
}

#[test]
fn svwar_without_its_user_agent_is_caught_by_the_404s() {
    let mut run = Run::new();
    let template = with_header(&corpus("register_svwar.sip"), "User-Agent", "Zoiper rv2.10");
    for ext in 100..110 {
        let r = with_header(
            &template,
            "To",
            &format!("\"{ext}\"<sip:{ext}@198.51.100.5>"),
        );
        let r = with_header(&r, "CSeq", &format!("{ext} REGISTER"));
        run.exchange(&r, 404, "");
        if !run.bans().is_empty() {
            break;
        }
    }
    let bans = run.bans();
    assert_eq!(bans[0].0, Reason::Enumeration, "{bans:?}");
    let unknown = run
        .events
        .iter()
        .filter(|e| matches!(e.kind, Kind::UnknownUser { .. }))
        .count();
    assert_eq!(
        unknown,
        Responsive::default().detect.distinct_unknown_users as usize
    );
}

/// `request` with its Request-URI (and To) user `from` replaced by `to`, and a
/// Call-ID of its own.
fn dialling(request: &str, from: &str, to: &str) -> String {
    request
        .replace(&format!("sip:{from}@"), &format!("sip:{to}@"))
        .replacen("Call-ID: ", &format!("Call-ID: {to}-"), 1)
}

#[test]
fn a_call_abroad_is_banned_at_the_invite_before_the_pbx_answers() {
    let mut run = Run::new();
    run.feed(Direction::In, &corpus("invite_tech_prefix.sip"));
    let bans = run.bans();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].0, Reason::TollFraud);
    assert!(bans[0].1.contains("9011972595123456"), "{}", bans[0].1);
    // The verdict's evidence names the number dialled.
    let evidence = run
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Ban(v) => Some(v.evidence.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        evidence,
        vec!["INVITE 9011972595123456 ua=\"Z 3.3.21933 r21903\"".to_string()]
    );
}

#[test]
fn a_refused_call_to_a_premium_number_is_banned_at_the_refusal() {
    let mut run = Run::new();
    let request = corpus("invite_premium_auth.sip");
    run.feed(Direction::In, &request);
    assert!(run.bans().is_empty(), "credentials: the PBX judges first");
    run.feed(Direction::Out, &answer(&request, 403, ""));
    let bans = run.bans();
    assert_eq!(bans[0].0, Reason::TollFraud, "{bans:?}");
    assert_eq!(
        bans[0].1,
        "INVITE to 0900123456 (premium prefix 0900) refused for the credentials of 1001"
    );
}

#[test]
fn a_registered_phone_calls_abroad_and_an_extension_unharmed() {
    let mut run = Run::new();
    run.exchange(
        &corpus("register_yealink_auth.sip"),
        200,
        "Contact: <sip:201@192.168.1.101:5062>;expires=300\r\n",
    );
    assert!(run.judge.is_known_good(run.source, run.t));
    for call in [
        "invite_international.sip",
        "invite_tel_plus.sip",
        "invite_premium.sip",
        "invite_extension.sip",
    ] {
        // The phone's own User-Agent (the corpus call abroad is from a tool).
        let call = with_header(&corpus(call), "User-Agent", "Yealink SIP-T46S 66.86.0.15");
        run.exchange(&call, 407, "");
    }
    assert!(run.bans().is_empty(), "{:?}", run.bans());
}

#[test]
fn an_unregistered_phone_calling_extensions_is_not_banned() {
    let mut run = Run::new();
    for ext in 300..330 {
        // A call every ten seconds, each challenged and answered.
        run.t += Duration::from_secs(10);
        let to = ext.to_string();
        run.exchange(
            &dialling(&corpus("invite_extension.sip"), "301", &to),
            401,
            "",
        );
        run.exchange(
            &dialling(&corpus("invite_extension_auth.sip"), "301", &to),
            200,
            "",
        );
    }
    assert!(run.bans().is_empty(), "{:?}", run.bans());
}

#[test]
fn a_sweep_over_extensions_without_credentials_is_banned() {
    let mut run = Run::new();
    let template = corpus("invite_extension.sip");
    for ext in 1000..1010 {
        run.exchange(&dialling(&template, "301", &ext.to_string()), 401, "");
        if !run.bans().is_empty() {
            break;
        }
    }
    let bans = run.bans();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].0, Reason::TollFraud);
    assert!(
        bans[0].1.contains("1000,1001,1002,1003,1004"),
        "{}",
        bans[0].1
    );
}

#[test]
fn an_allow_listed_scanner_and_guesser_is_never_banned() {
    let mut run = Run::new();
    run.judge.reconfigure(Responsive {
        allow: vec!["203.0.113.0/24".parse().unwrap()],
        ..Default::default()
    });
    run.exchange(&corpus("register_svcrack.sip"), 401, "");
    let base = corpus("register_svcrack.sip");
    for i in 0..20 {
        let guess = with_header(&base, "CSeq", &format!("{} REGISTER", 10 + i));
        run.exchange(&guess, 401, "");
    }
    run.exchange(&corpus("invite_tech_prefix.sip"), 407, "");
    run.judge.tier_ban(run.source, run.t, &mut run.actions);
    assert!(run.bans().is_empty(), "{:?}", run.bans());
}

#[test]
fn answers_nobody_asked_for_and_the_pbx_own_requests_are_ignored() {
    let mut run = Run::new();
    run.feed(
        Direction::Out,
        &answer(&corpus("register_yealink.sip"), 401, ""),
    );
    run.feed(Direction::Out, &corpus("options_svmap.sip"));
    run.feed(
        Direction::In,
        &answer(&corpus("register_yealink.sip"), 404, ""),
    );
    assert!(run.events.is_empty(), "{:?}", run.events);
}

#[test]
fn garbage_is_counted_and_a_stream_of_it_banned() {
    let mut run = Run::new();
    for _ in 0..Responsive::default().detect.garbage {
        run.feed(Direction::In, "\u{1}\u{2}binary junk\r\n\r\n");
    }
    assert_eq!(run.bans()[0].0, Reason::Garbage);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn hostile_bytes_never_panic_the_whole_path(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cut in 0usize..4096,
        seed in any::<u8>(),
    ) {
        let mut run = Run::new();
        let text = String::from_utf8_lossy(&bytes).to_string();
        run.feed(Direction::In, &text);
        run.feed(Direction::Out, &text);
        let mut msg = corpus("register_svcrack.sip").into_bytes();
        msg.truncate(cut.min(msg.len()));
        if let Some(b) = msg.get_mut(cut / 2) {
            *b ^= seed;
        }
        run.feed(Direction::In, &String::from_utf8_lossy(&msg));
    }
}
