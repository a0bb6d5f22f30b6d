//! Integration tests of the SIP parser against the corpus in `tests/corpus/`:
//! realistic messages from phones, PBXs and scanners, stored byte for byte (CRLF
//! line endings, except `bare_lf.sip`). Every corpus file must have an entry in
//! [`EXPECTED`], so a new file cannot be added without saying what it parses to.
//!
//! Also here: hostile input (garbage, huge lines, huge header counts, injection
//! bytes) and property tests (no panic on any input; truncation never yields a
//! wrong message; TCP reassembly gives back exactly what was sent).

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_guard::sip::{
    parse, split_list, unfold, HeaderName, Limits, Message, Method, ParseError, Parsed,
    StreamBuffer, Transport,
};
use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every `.sip` file of the corpus as `(file name, bytes)`, sorted by name.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sip"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).expect("corpus file"))
        })
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> Vec<u8> {
    fs::read(corpus_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn message<'a>(buf: &'a [u8], transport: Transport) -> Message<'a> {
    match parse(buf, transport, &Limits::default()) {
        Ok(Parsed::Message(m, consumed)) => {
            assert_eq!(consumed, buf.len(), "whole buffer consumed");
            m
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

fn text(bytes: Option<&[u8]>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned())
}

/// What a corpus file must parse to.
struct Expected {
    file: &'static str,
    /// A request's method, or a response's status code.
    start: Start,
    request_uri_user: Option<&'static str>,
    cseq: (u32, Method<'static>),
    call_id: &'static str,
    from_user: Option<&'static str>,
    to_user: Option<&'static str>,
    user_agent: Option<&'static str>,
    server: Option<&'static str>,
    expires: Option<u32>,
    has_credentials: bool,
    auth_username: Option<&'static str>,
    /// `(uri, ;expires=)` of each binding; `"*"` for a star contact.
    contacts: &'static [(&'static str, Option<u32>)],
    stale: bool,
    vias: usize,
    headers: usize,
    body_len: usize,
}

enum Start {
    Request(Method<'static>),
    Response(u16),
}

/// The common case: one Via, no credentials, no challenge, no body.
const BASE: Expected = Expected {
    file: "",
    start: Start::Response(0),
    request_uri_user: None,
    cseq: (0, Method::Register),
    call_id: "",
    from_user: None,
    to_user: None,
    user_agent: None,
    server: None,
    expires: None,
    has_credentials: false,
    auth_username: None,
    contacts: &[],
    stale: false,
    vias: 1,
    headers: 0,
    body_len: 0,
};

const SDP_LEN: usize = 219;

const EXPECTED: &[Expected] = &[
    Expected {
        file: "register_yealink.sip",
        start: Start::Request(Method::Register),
        cseq: (1, Method::Register),
        call_id: "0_1384823514@192.168.1.101",
        from_user: Some("201"),
        to_user: Some("201"),
        user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
        expires: Some(3600),
        contacts: &[("sip:201@192.168.1.101:5062", None)],
        headers: 12,
        ..BASE
    },
    Expected {
        file: "register_yealink_auth.sip",
        start: Start::Request(Method::Register),
        cseq: (2, Method::Register),
        call_id: "0_1384823514@192.168.1.101",
        from_user: Some("201"),
        to_user: Some("201"),
        user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
        expires: Some(3600),
        has_credentials: true,
        auth_username: Some("201"),
        contacts: &[("sip:201@192.168.1.101:5062", None)],
        headers: 13,
        ..BASE
    },
    Expected {
        file: "register_polycom.sip",
        start: Start::Request(Method::Register),
        cseq: (1, Method::Register),
        call_id: "4b8c1d2e-9a7f3c6b-0d5e1f2a@10.20.30.41",
        from_user: Some("302"),
        to_user: Some("302"),
        user_agent: Some("PolycomVVX-VVX_411-UA/6.4.3.5018"),
        expires: Some(3600),
        contacts: &[("sip:302@10.20.30.41", None)],
        headers: 13,
        ..BASE
    },
    Expected {
        file: "register_grandstream_auth.sip",
        start: Start::Request(Method::Register),
        cseq: (2001, Method::Register),
        call_id: "1425368810-5060-1@BHC.BGE.A.CD",
        from_user: Some("1005"),
        to_user: Some("1005"),
        user_agent: Some("Grandstream GXP2170 1.0.11.23"),
        expires: Some(3600),
        has_credentials: true,
        auth_username: Some("1005"),
        contacts: &[("sip:1005@192.168.0.23:5060;transport=udp", None)],
        headers: 13,
        ..BASE
    },
    Expected {
        file: "register_zoiper_tcp.sip",
        start: Start::Request(Method::Register),
        cseq: (1, Method::Register),
        call_id: "Njg4ZTk0YzA1ZjEzMGU2YjQ2ZWI3ZDVhOGYxMjM0NTY",
        from_user: Some("204"),
        to_user: Some("204"),
        user_agent: Some("Z 5.6.1 v2.10.19.9"),
        expires: Some(60),
        contacts: &[(
            "sip:204@203.0.113.77:50644;transport=TCP;rinstance=2f8e4a1c9b3d7e60",
            None,
        )],
        headers: 13,
        ..BASE
    },
    Expected {
        file: "register_linphone.sip",
        start: Start::Request(Method::Register),
        cseq: (20, Method::Register),
        call_id: "c5sR5XGp3J",
        from_user: Some("alice"),
        to_user: Some("alice"),
        user_agent: Some("Linphone-Desktop/5.2.4 (ubuntu) LinphoneSDK/5.3.41"),
        expires: Some(600),
        contacts: &[("sip:alice@192.168.1.50:49271;transport=udp", Some(600))],
        headers: 14,
        ..BASE
    },
    Expected {
        file: "401_register.sip",
        start: Start::Response(401),
        cseq: (1, Method::Register),
        call_id: "0_1384823514@192.168.1.101",
        from_user: Some("201"),
        to_user: Some("201"),
        server: Some("Asterisk PBX 18.20.0"),
        headers: 10,
        ..BASE
    },
    Expected {
        file: "401_stale.sip",
        start: Start::Response(401),
        cseq: (2002, Method::Register),
        call_id: "1425368810-5060-1@BHC.BGE.A.CD",
        from_user: Some("1005"),
        to_user: Some("1005"),
        server: Some("Asterisk PBX 20.5.0"),
        stale: true,
        headers: 8,
        ..BASE
    },
    Expected {
        file: "200_register_bindings.sip",
        start: Start::Response(200),
        cseq: (21, Method::Register),
        call_id: "c5sR5XGp3J",
        from_user: Some("alice"),
        to_user: Some("alice"),
        server: Some("Asterisk PBX 20.5.0"),
        expires: Some(600),
        contacts: &[
            ("sip:alice@192.168.1.50:49271;transport=udp", Some(599)),
            ("sip:alice@10.1.2.3:5060", Some(3112)),
            ("sip:alice@198.51.100.77:38001;transport=tcp;ob", Some(45)),
        ],
        headers: 11,
        ..BASE
    },
    Expected {
        file: "register_unregister.sip",
        start: Start::Request(Method::Register),
        cseq: (3, Method::Register),
        call_id: "4b8c1d2e-9a7f3c6b-0d5e1f2a@10.20.30.41",
        from_user: Some("302"),
        to_user: Some("302"),
        user_agent: Some("PolycomVVX-VVX_411-UA/6.4.3.5018"),
        expires: Some(0),
        contacts: &[("sip:302@10.20.30.41", None)],
        headers: 10,
        ..BASE
    },
    Expected {
        file: "register_star.sip",
        start: Start::Request(Method::Register),
        cseq: (22, Method::Register),
        call_id: "c5sR5XGp3J",
        from_user: Some("alice"),
        to_user: Some("alice"),
        user_agent: Some("Linphone-Desktop/5.2.4 (ubuntu) LinphoneSDK/5.3.41"),
        expires: Some(0),
        contacts: &[("*", None)],
        headers: 10,
        ..BASE
    },
    Expected {
        file: "options_svmap.sip",
        start: Start::Request(Method::Options),
        request_uri_user: Some("100"),
        cseq: (1, Method::Options),
        call_id: "656630345739213133393734363235",
        from_user: Some("100"),
        to_user: Some("100"),
        user_agent: Some("friendly-scanner"),
        contacts: &[("sip:100@127.0.1.1:5060", None)],
        headers: 10,
        ..BASE
    },
    Expected {
        file: "register_svcrack.sip",
        start: Start::Request(Method::Register),
        cseq: (2, Method::Register),
        call_id: "1190637893",
        from_user: Some("100"),
        to_user: Some("100"),
        user_agent: Some("friendly-scanner"),
        has_credentials: true,
        auth_username: Some("100"),
        contacts: &[("sip:100@127.0.1.1:5060", None)],
        headers: 11,
        ..BASE
    },
    Expected {
        file: "register_svwar.sip",
        start: Start::Request(Method::Register),
        request_uri_user: Some("1001"),
        cseq: (1, Method::Register),
        call_id: "1738924001",
        from_user: Some("1001"),
        to_user: Some("1001"),
        user_agent: Some("friendly-scanner"),
        contacts: &[("sip:1001@198.51.100.5", None)],
        headers: 10,
        ..BASE
    },
    Expected {
        file: "invite_svwar.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("1002"),
        cseq: (1, Method::Invite),
        call_id: "2061239947",
        from_user: Some("1002"),
        to_user: Some("1002"),
        user_agent: Some("friendly-scanner"),
        contacts: &[("sip:1002@198.51.100.5", None)],
        headers: 10,
        ..BASE
    },
    Expected {
        file: "invite_international.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("00442079460000"),
        cseq: (1, Method::Invite),
        call_id: "ZTg5NzQzMjFhYjEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY.",
        from_user: Some("1000"),
        to_user: Some("00442079460000"),
        user_agent: Some("VaxSIPUserAgent/3.1"),
        contacts: &[("sip:1000@203.0.113.50:5071", None)],
        headers: 12,
        body_len: SDP_LEN,
        ..BASE
    },
    Expected {
        file: "invite_proxy_auth.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("00442079460000"),
        cseq: (2, Method::Invite),
        call_id: "ZTg5NzQzMjFhYjEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY.",
        from_user: Some("1000"),
        to_user: Some("00442079460000"),
        user_agent: Some("VaxSIPUserAgent/3.1"),
        has_credentials: true,
        auth_username: Some("1000"),
        contacts: &[("sip:1000@203.0.113.50:5071", None)],
        headers: 11,
        body_len: SDP_LEN,
        ..BASE
    },
    Expected {
        file: "invite_tech_prefix.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("9011972595123456"),
        cseq: (1, Method::Invite),
        call_id: "NzE5MzQ4ZTk0NmRkYTQ3ZGM2NTc1NWFiNzg0YzE2ZjQ.",
        from_user: Some("100"),
        to_user: Some("9011972595123456"),
        user_agent: Some("Z 3.3.21933 r21903"),
        contacts: &[("sip:100@192.0.2.199:5071", None)],
        headers: 12,
        body_len: 216,
        ..BASE
    },
    Expected {
        file: "invite_tel_plus.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("+44-20-7946-0000"),
        cseq: (102, Method::Invite),
        call_id: "1b6a2e3c4d5f60718293a4b5c6d7e8f9@192.0.2.77:5060",
        from_user: Some("asterisk"),
        to_user: Some("+44-20-7946-0000"),
        user_agent: Some("Asterisk PBX 16.2.1~dfsg-1"),
        contacts: &[("sip:asterisk@192.0.2.77:5060", None)],
        headers: 13,
        body_len: 218,
        ..BASE
    },
    Expected {
        file: "invite_premium.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("1-900-555-0123"),
        cseq: (1, Method::Invite),
        call_id: "4b3b3a1e-5c2ee8f1-7d8c2f1a@192.0.2.140",
        from_user: Some("101"),
        to_user: Some("1-900-555-0123"),
        user_agent: Some("PolycomVVX-VVX_411-UA/6.4.3.5018"),
        contacts: &[("sip:101@192.0.2.140:5060", None)],
        headers: 14,
        body_len: 216,
        ..BASE
    },
    Expected {
        file: "invite_premium_auth.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("0900123456"),
        cseq: (2, Method::Invite),
        call_id: "1530853389@192.0.2.140",
        from_user: Some("1001"),
        to_user: Some("0900123456"),
        user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
        has_credentials: true,
        auth_username: Some("1001"),
        contacts: &[("sip:1001@192.0.2.140:5060", None)],
        headers: 11,
        ..BASE
    },
    Expected {
        file: "invite_extension.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("301"),
        cseq: (1, Method::Invite),
        call_id: "1408237516@192.168.1.101",
        from_user: Some("201"),
        to_user: Some("301"),
        user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
        contacts: &[("sip:201@192.168.1.101:5062", None)],
        headers: 12,
        body_len: 221,
        ..BASE
    },
    Expected {
        file: "invite_extension_auth.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("301"),
        cseq: (2, Method::Invite),
        call_id: "1408237516@192.168.1.101",
        from_user: Some("201"),
        to_user: Some("301"),
        user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
        has_credentials: true,
        auth_username: Some("201"),
        contacts: &[("sip:201@192.168.1.101:5062", None)],
        headers: 13,
        body_len: 221,
        ..BASE
    },
    Expected {
        file: "invite_reinvite.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("00442079460000"),
        cseq: (3, Method::Invite),
        call_id: "2519348627@192.168.1.101",
        from_user: Some("201"),
        to_user: Some("00442079460000"),
        user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
        contacts: &[("sip:201@192.168.1.101:5062", None)],
        headers: 10,
        body_len: 221,
        ..BASE
    },
    Expected {
        file: "subscribe_blf.sip",
        start: Start::Request(Method::Subscribe),
        request_uri_user: Some("202"),
        cseq: (1, Method::Subscribe),
        call_id: "2_2631471003@192.168.1.101",
        from_user: Some("201"),
        to_user: Some("202"),
        user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
        expires: Some(1800),
        contacts: &[("sip:201@192.168.1.101:5062", None)],
        headers: 12,
        ..BASE
    },
    Expected {
        file: "notify_mwi.sip",
        start: Start::Request(Method::Notify),
        request_uri_user: Some("201"),
        cseq: (102, Method::Notify),
        call_id: "1f6e2a0b3c9d7e5f41a2b3c4d5e6f708@198.51.100.5:5060",
        from_user: Some("asterisk"),
        to_user: Some("201"),
        user_agent: Some("Asterisk PBX 18.20.0"),
        contacts: &[("sip:asterisk@198.51.100.5:5060", None)],
        headers: 11,
        body_len: 88,
        ..BASE
    },
    Expected {
        file: "compact_headers.sip",
        start: Start::Request(Method::Invite),
        request_uri_user: Some("bob"),
        cseq: (2, Method::Invite),
        call_id: "3848276298220188511@atlanta.example.com",
        from_user: Some("alice"),
        to_user: Some("bob"),
        contacts: &[("sip:alice@client.atlanta.example.com;transport=tcp", None)],
        headers: 13,
        body_len: SDP_LEN,
        ..BASE
    },
    Expected {
        file: "folded_headers.sip",
        start: Start::Request(Method::Options),
        request_uri_user: Some("carol"),
        cseq: (63104, Method::Options),
        call_id: "a84b4c76e66710",
        from_user: Some("alice"),
        to_user: Some("carol"),
        contacts: &[("sip:alice@pc33.atlanta.example.com", None)],
        vias: 2,
        headers: 10,
        ..BASE
    },
    Expected {
        file: "bare_lf.sip",
        start: Start::Request(Method::Register),
        cseq: (7, Method::Register),
        call_id: "bare-lf-1@10.0.0.77",
        from_user: Some("555"),
        to_user: Some("555"),
        user_agent: Some("OldGateway/1.0"),
        contacts: &[("sip:555@10.0.0.77:5060", Some(300))],
        headers: 8,
        ..BASE
    },
    Expected {
        file: "404.sip",
        start: Start::Response(404),
        cseq: (1, Method::Invite),
        call_id: "2061239947",
        from_user: Some("1002"),
        to_user: Some("1002"),
        server: Some("FPBX-16.0.40(18.20.0)"),
        headers: 10,
        ..BASE
    },
    Expected {
        file: "403.sip",
        start: Start::Response(403),
        cseq: (2, Method::Register),
        call_id: "1190637893",
        from_user: Some("100"),
        to_user: Some("100"),
        server: Some("FreeSWITCH-mod_sofia/1.10.10-release~64bit"),
        headers: 7,
        ..BASE
    },
    Expected {
        file: "407_proxy_auth.sip",
        start: Start::Response(407),
        cseq: (1, Method::Invite),
        call_id: "ZTg5NzQzMjFhYjEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY.",
        from_user: Some("1000"),
        to_user: Some("00442079460000"),
        server: Some("kamailio (5.7.2 (x86_64/linux))"),
        headers: 8,
        ..BASE
    },
    Expected {
        file: "register_ipv6.sip",
        start: Start::Request(Method::Register),
        cseq: (1, Method::Register),
        call_id: "7731-v6@2001:db8::42",
        from_user: Some("300"),
        to_user: Some("300"),
        user_agent: Some("Yealink SIP-T54W 96.86.0.70"),
        expires: Some(1800),
        contacts: &[("sip:300@[2001:db8::42]:5060", Some(1800))],
        headers: 10,
        ..BASE
    },
    Expected {
        file: "200_options.sip",
        start: Start::Response(200),
        cseq: (1, Method::Options),
        call_id: "656630345739213133393734363235",
        from_user: Some("100"),
        to_user: Some("100"),
        server: Some("Asterisk PBX 18.20.0"),
        contacts: &[("sip:198.51.100.5:5060", None)],
        headers: 11,
        ..BASE
    },
];

fn check(expected: &Expected, m: &Message<'_>) {
    let file = expected.file;
    match expected.start {
        Start::Request(method) => {
            assert!(m.is_request(), "{file}");
            assert_eq!(m.method(), Some(&method), "{file}");
            assert_eq!(m.status(), None, "{file}");
        }
        Start::Response(code) => {
            assert!(!m.is_request(), "{file}");
            assert_eq!(m.status(), Some(code), "{file}");
            assert_eq!(m.method(), None, "{file}");
        }
    }
    let s = |v: Option<&str>| v.map(str::to_owned);
    assert_eq!(
        text(m.request_uri_user()),
        s(expected.request_uri_user),
        "{file}"
    );
    assert_eq!(m.cseq(), Some(expected.cseq), "{file}");
    assert_eq!(
        text(m.call_id()),
        Some(expected.call_id.to_owned()),
        "{file}"
    );
    assert_eq!(text(m.from_user()), s(expected.from_user), "{file}");
    assert_eq!(text(m.to_user()), s(expected.to_user), "{file}");
    assert_eq!(text(m.user_agent()), s(expected.user_agent), "{file}");
    assert_eq!(text(m.server()), s(expected.server), "{file}");
    assert_eq!(m.expires(), expected.expires, "{file}");
    assert_eq!(m.has_credentials(), expected.has_credentials, "{file}");
    assert_eq!(text(m.auth_username()), s(expected.auth_username), "{file}");
    let contacts: Vec<(String, Option<u32>)> = m
        .contacts()
        .map(|c| {
            let uri = if c.is_star {
                "*".to_owned()
            } else {
                text(Some(c.uri)).unwrap()
            };
            (uri, c.expires)
        })
        .collect();
    let want: Vec<(String, Option<u32>)> = expected
        .contacts
        .iter()
        .map(|(u, e)| ((*u).to_owned(), *e))
        .collect();
    assert_eq!(contacts, want, "{file}");
    assert_eq!(m.challenge_is_stale(), expected.stale, "{file}");
    assert_eq!(m.via_count_at_most(100), expected.vias, "{file}");
    assert_eq!(m.header_count(), expected.headers, "{file}");
    assert_eq!(m.body.len(), expected.body_len, "{file}");
}

#[test]
fn corpus_has_enough_files_and_each_has_expectations() {
    let files = corpus();
    assert!(files.len() >= 20, "only {} corpus files", files.len());
    for (name, _) in &files {
        assert!(
            EXPECTED.iter().any(|e| e.file == name),
            "{name} has no entry in EXPECTED"
        );
    }
    for expected in EXPECTED {
        assert!(
            files.iter().any(|(name, _)| name == expected.file),
            "{} is expected but missing",
            expected.file
        );
    }
}

#[test]
fn every_corpus_file_parses_to_its_expected_fields() {
    for expected in EXPECTED {
        let buf = load(expected.file);
        for transport in [Transport::Datagram, Transport::Stream] {
            check(expected, &message(&buf, transport));
        }
    }
}

#[test]
fn challenges_carry_their_parameters() {
    use palisade_guard::sip::auth_param;
    let buf = load("401_register.sip");
    let m = message(&buf, Transport::Datagram);
    let challenge = m.header(HeaderName::WwwAuthenticate).unwrap();
    assert_eq!(auth_param(challenge, b"realm"), Some(&b"asterisk"[..]));
    assert_eq!(auth_param(challenge, b"qop"), Some(&b"auth"[..]));
    assert_eq!(
        auth_param(challenge, b"nonce"),
        Some(&b"1700000000/5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"[..])
    );

    let buf = load("register_svcrack.sip");
    let m = message(&buf, Transport::Datagram);
    let credentials = m.header(HeaderName::Authorization).unwrap();
    assert_eq!(auth_param(credentials, b"qop"), Some(&b"auth"[..]));
    assert_eq!(auth_param(credentials, b"nc"), Some(&b"00000001"[..]));
    assert_eq!(
        auth_param(credentials, b"cnonce"),
        Some(&b"fd3e21a09c7b"[..])
    );
    assert_eq!(
        auth_param(credentials, b"uri"),
        Some(&b"sip:198.51.100.5"[..])
    );

    let buf = load("407_proxy_auth.sip");
    let m = message(&buf, Transport::Datagram);
    assert!(m.header(HeaderName::ProxyAuthenticate).is_some());
    assert!(!m.challenge_is_stale());
}

#[test]
fn scanner_fingerprints_are_visible() {
    use palisade_guard::sip::param;
    let buf = load("options_svmap.sip");
    let m = message(&buf, Transport::Datagram);
    let from = m.header(HeaderName::From).unwrap();
    assert!(from.starts_with(b"\"sipvicious\""));
    // "; tag=" with a space, as sipvicious writes it.
    assert_eq!(
        param(from, b"tag"),
        Some(&b"6633353338336339313363340131393338383239373636"[..])
    );
    assert_eq!(m.from_tag(), param(from, b"tag"));
    assert_eq!(m.header(HeaderName::MaxForwards), Some(&b"70"[..]));
}

#[test]
fn folded_and_compact_headers_read_like_plain_ones() {
    let buf = load("folded_headers.sip");
    let m = message(&buf, Transport::Datagram);
    let subject = m.header(HeaderName::Subject).unwrap();
    assert!(
        subject.windows(2).any(|w| w == b"\r\n"),
        "raw value keeps the folding"
    );
    assert_eq!(
        &*unfold(subject),
        b"I know you're there, pick up the phone and talk to me!"
    );
    let via = m.header(HeaderName::Via).unwrap();
    let entries: Vec<_> = split_list(via).collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1], b"SIP/2.0/UDP 192.0.2.4;branch=z9hG4bK776asdhds");
    assert_eq!(m.from_tag(), Some(&b"1928301774"[..]));

    let buf = load("compact_headers.sip");
    let m = message(&buf, Transport::Datagram);
    assert_eq!(m.header(HeaderName::Supported), Some(&b"timer, 100rel"[..]));
    assert_eq!(
        m.header(HeaderName::SessionExpires),
        Some(&b"1800;refresher=uac"[..])
    );
    assert_eq!(m.header(HeaderName::Event), Some(&b"presence"[..]));
    assert_eq!(m.header(HeaderName::AllowEvents), Some(&b"talk, hold"[..]));
    assert_eq!(m.header(HeaderName::Subject), Some(&b"Where are you?"[..]));
    assert_eq!(
        m.header(HeaderName::ContentType),
        Some(&b"application/sdp"[..])
    );
    assert!(m.body.starts_with(b"v=0\r\n"));

    let buf = load("subscribe_blf.sip");
    assert_eq!(
        message(&buf, Transport::Datagram).header(HeaderName::Event),
        Some(&b"dialog"[..])
    );
    let buf = load("notify_mwi.sip");
    let m = message(&buf, Transport::Datagram);
    assert_eq!(m.header(HeaderName::Event), Some(&b"message-summary"[..]));
    assert!(m.body.starts_with(b"Messages-Waiting: yes"));
}

/// A message with one Via line of `entries` entries.
fn huge_via(entries: usize) -> Vec<u8> {
    let mut buf = b"OPTIONS sip:100@pbx SIP/2.0\r\nVia: ".to_vec();
    for i in 0..entries {
        if i > 0 {
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(
            format!(
                "SIP/2.0/UDP 10.0.{}.{}:5060;branch=z9hG4bK{i}",
                i / 256 % 256,
                i % 256
            )
            .as_bytes(),
        );
    }
    buf.extend_from_slice(
        b"\r\nCall-ID: via-flood\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    );
    buf
}

#[test]
fn a_ten_thousand_entry_via_is_cheap() {
    let buf = huge_via(10_000);
    let started = Instant::now();
    // Over the default header-section limit: refused, naming the limit.
    let e = parse(&buf, Transport::Datagram, &Limits::default()).unwrap_err();
    assert_eq!(e, ParseError::HeaderSectionTooLarge { limit: 64 * 1024 });
    assert!(e.to_string().contains("max_header_bytes"), "{e}");

    // With room for it: parsed, and the entries are counted only as far as asked.
    let limits = Limits {
        max_header_bytes: 1 << 20,
        ..Limits::default()
    };
    let Ok(Parsed::Message(m, _)) = parse(&buf, Transport::Datagram, &limits) else {
        panic!("the huge Via should parse with a 1 MiB limit");
    };
    assert_eq!(m.call_id(), Some(&b"via-flood"[..]));
    assert_eq!(m.via_count_at_most(5), 5);
    assert_eq!(
        m.top_via(),
        Some(&b"SIP/2.0/UDP 10.0.0.0:5060;branch=z9hG4bK0"[..])
    );
    assert_eq!(m.via_count_at_most(usize::MAX), 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_megabyte_start_line_is_refused_fast() {
    let mut buf = b"INVITE sip:".to_vec();
    buf.extend(std::iter::repeat_n(b'a', 1 << 20));
    buf.extend_from_slice(b"@pbx SIP/2.0\r\n\r\n");
    let started = Instant::now();
    for transport in [Transport::Datagram, Transport::Stream] {
        let e = parse(&buf, transport, &Limits::default()).unwrap_err();
        assert_eq!(e, ParseError::HeaderSectionTooLarge { limit: 64 * 1024 });
        // Without its end, a stream still stops at the limit instead of waiting.
        let e = parse(&buf[..200_000], transport, &Limits::default()).unwrap_err();
        assert_eq!(e, ParseError::HeaderSectionTooLarge { limit: 64 * 1024 });
    }
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_hundred_thousand_headers_are_refused_fast() {
    let mut buf = b"REGISTER sip:pbx SIP/2.0\r\n".to_vec();
    for i in 0..100_000 {
        buf.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let e = parse(&buf, Transport::Datagram, &Limits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "too many header lines (limit 256, max_headers)"
    );
    // Allowed any number of lines, the byte limit still stops it.
    let limits = Limits {
        max_headers: usize::MAX,
        ..Limits::default()
    };
    let e = parse(&buf, Transport::Datagram, &limits).unwrap_err();
    assert!(matches!(e, ParseError::HeaderSectionTooLarge { .. }), "{e}");
    // Allowed everything, it parses, in linear time.
    let limits = Limits {
        max_headers: usize::MAX,
        max_header_bytes: usize::MAX,
        ..Limits::default()
    };
    let Ok(Parsed::Message(m, _)) = parse(&buf, Transport::Datagram, &limits) else {
        panic!("should parse without limits");
    };
    assert_eq!(m.header_count(), 100_000);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn header_injection_bytes_are_refused() {
    let base = load("register_yealink.sip");
    let call_id = base.windows(8).position(|w| w == b"Call-ID:").unwrap();
    for (insert, what) in [
        (&b"\rVia: SIP/2.0/UDP evil"[..], "bare CR"),
        (b"\0", "NUL"),
        (b"\x1b[2J", "ESC"),
        (b"\x7f", "DEL"),
    ] {
        let mut buf = base.clone();
        buf.splice(call_id + 10..call_id + 10, insert.iter().copied());
        for transport in [Transport::Datagram, Transport::Stream] {
            let result = parse(&buf, transport, &Limits::default());
            assert!(result.is_err(), "{what}: {result:?}");
        }
    }
    // A bare LF inside a value is a line ending, so what follows must be a header.
    let mut buf = base.clone();
    buf.splice(
        call_id + 10..call_id + 10,
        b"\nnot a header".iter().copied(),
    );
    assert!(matches!(
        parse(&buf, Transport::Datagram, &Limits::default()),
        Err(ParseError::NoColon { .. })
    ));
}

#[test]
fn binary_junk_is_an_error() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut junk = vec![0u8; 4096];
    for byte in &mut junk {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    for transport in [Transport::Datagram, Transport::Stream] {
        assert!(parse(&junk, transport, &Limits::default()).is_err());
    }
    // A TLS ClientHello on the SIP port.
    assert!(parse(
        b"\x16\x03\x01\x00\xa5\x01\x00",
        Transport::Stream,
        &Limits::default()
    )
    .is_err());
}

#[test]
fn every_truncation_is_incomplete_or_an_error_never_a_message() {
    for (name, buf) in corpus() {
        for cut in 0..buf.len() {
            let prefix = &buf[..cut];
            match parse(prefix, Transport::Stream, &Limits::default()) {
                Ok(Parsed::Incomplete) | Err(_) => {}
                Ok(Parsed::KeepAlive(_)) => panic!("{name} cut at {cut}: keep-alive"),
                Ok(Parsed::Message(..)) => panic!("{name} cut at {cut}: a message"),
            }
            assert!(
                !matches!(
                    parse(prefix, Transport::Datagram, &Limits::default()),
                    Ok(Parsed::Message(..))
                ),
                "{name} cut at {cut}: a datagram message"
            );
        }
    }
}

#[test]
fn back_to_back_messages_on_a_stream_parse_one_by_one() {
    let files = corpus();
    let mut stream = Vec::new();
    for (_, buf) in &files {
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(buf);
    }
    let mut rest = &stream[..];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        match parse(rest, Transport::Stream, &Limits::default()).unwrap() {
            Parsed::Message(m, n) => {
                seen.push(m.raw().to_vec());
                rest = &rest[n..];
            }
            Parsed::KeepAlive(n) => rest = &rest[n..],
            Parsed::Incomplete => panic!("incomplete with {} bytes left", rest.len()),
        }
    }
    let want: Vec<Vec<u8>> = files.into_iter().map(|(_, b)| b).collect();
    assert_eq!(seen, want);
}

/// Calls every accessor, so property tests check that none of them panics.
fn exercise(m: &Message<'_>) {
    let _ = (
        m.is_request(),
        m.method(),
        m.status(),
        m.request_uri(),
        m.call_id(),
        m.cseq(),
    );
    let _ = (
        m.user_agent(),
        m.server(),
        m.has_credentials(),
        m.auth_username(),
    );
    let _ = (
        m.from_user(),
        m.to_user(),
        m.from_tag(),
        m.to_tag(),
        m.request_uri_user(),
    );
    let _ = (
        m.expires(),
        m.challenge_is_stale(),
        m.via_count_at_most(1000),
        m.top_via(),
    );
    for contact in m.contacts() {
        let _ = contact;
    }
    for (_, value) in m.iter() {
        let _ = unfold(value);
        let _ = split_list(value).count();
    }
    assert!(m.raw().len() >= m.body.len());
}

fn parse_everything(buf: &[u8]) {
    for transport in [Transport::Datagram, Transport::Stream] {
        match parse(buf, transport, &Limits::default()) {
            Ok(Parsed::Message(m, n)) => {
                assert!(n <= buf.len());
                assert!(n >= m.raw().len());
                exercise(&m);
            }
            Ok(Parsed::KeepAlive(n)) => assert!(n > 0 && n <= buf.len()),
            Ok(Parsed::Incomplete) => assert_eq!(transport, Transport::Stream),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let special = prop::sample::select(vec![
        b'\r', b'\n', 0u8, b' ', b'\t', b':', b',', b';', b'"', b'<', b'>', b'\\', 0xff,
    ]);
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1..=255u8).prop_map(|(at, x)| Mutation::Flip(at, x)),
        (any::<usize>(), special).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1..50usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1..50usize).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
    ]
}

fn apply(buf: &mut Vec<u8>, mutation: &Mutation) {
    let len = buf.len().max(1);
    match *mutation {
        Mutation::Truncate(at) => buf.truncate(at % len),
        Mutation::Flip(at, x) => {
            if let Some(b) = buf.get_mut(at % len) {
                *b ^= x;
            }
        }
        Mutation::Insert(at, b) => buf.insert((at % len).min(buf.len()), b),
        Mutation::Delete(at, n) => {
            let start = (at % len).min(buf.len());
            let end = (start + n).min(buf.len());
            buf.drain(start..end);
        }
        Mutation::Duplicate(at, n) => {
            let start = (at % len).min(buf.len());
            let end = (start + n).min(buf.len());
            let copy = buf[start..end].to_vec();
            buf.splice(end..end, copy);
        }
    }
}

/// Splits `data` into segments as TCP might send them and the watch might see
/// them: random sizes, some retransmitted whole later, some resent overlapping
/// what came before. Returns `(offset, bytes)` pairs.
fn segments(data: &[u8], plan: &[(usize, u8, usize)]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut plan = plan.iter().cycle();
    while pos < data.len() {
        let &(size, kind, back) = plan.next().unwrap();
        let end = (pos + size).min(data.len());
        match kind % 4 {
            // Overlap: starts before `pos`, some old bytes then the new ones.
            1 => {
                let start = pos.saturating_sub(back);
                out.push((start, data[start..end].to_vec()));
            }
            // The new segment, then an old range again (a duplicate).
            2 => {
                out.push((pos, data[pos..end].to_vec()));
                let start = end.saturating_sub(back + 1);
                let stop = (start + size).min(end);
                out.push((start, data[start..stop].to_vec()));
            }
            // The same segment twice in a row.
            3 => {
                out.push((pos, data[pos..end].to_vec()));
                out.push((pos, data[pos..end].to_vec()));
            }
            _ => out.push((pos, data[pos..end].to_vec())),
        }
        pos = end;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&buf);
    }

    #[test]
    fn sip_like_bytes_never_panic(
        buf in prop::collection::vec(
            prop::sample::select(b"SIP/2.0 INVITE sip:@;=,<>\"\\:\r\n\t 0123456789lmviRrEGISTRo".to_vec()),
            0..1024,
        )
    ) {
        parse_everything(&buf);
    }

    #[test]
    fn mutated_corpus_messages_never_panic(
        file in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let files = corpus();
        let mut buf = files[file.index(files.len())].1.clone();
        for m in &mutations {
            apply(&mut buf, m);
        }
        parse_everything(&buf);
    }

    #[test]
    fn reassembly_gives_back_exactly_the_messages_sent(
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
        keep_alives in prop::collection::vec(any::<bool>(), 8),
        plan in prop::collection::vec((1..300usize, any::<u8>(), 0..200usize), 1..40),
        isn in any::<u32>(),
    ) {
        let files = corpus();
        let mut data = Vec::new();
        let mut sent = Vec::new();
        for (i, pick) in picks.iter().enumerate() {
            if keep_alives[i] {
                data.extend_from_slice(b"\r\n\r\n");
            }
            let message = &files[pick.index(files.len())].1;
            data.extend_from_slice(message);
            sent.push(message.clone());
        }
        let mut buffer = StreamBuffer::default();
        buffer.sync_at(isn);
        let mut received = Vec::new();
        for (offset, bytes) in segments(&data, &plan) {
            let seq = isn.wrapping_add(offset as u32);
            let report = buffer.push(seq, &bytes, |m| received.push(m.to_vec()));
            prop_assert!(!report.gap && !report.overflow && report.malformed.is_none(), "{:?}", report);
        }
        prop_assert_eq!(received, sent);
        prop_assert_eq!(buffer.buffered(), 0);
    }

    #[test]
    fn reassembly_of_mutated_streams_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        plan in prop::collection::vec((1..300usize, any::<u8>(), 0..200usize), 1..40),
        jumps in prop::collection::vec(any::<u32>(), 1..8),
    ) {
        let mut buffer = StreamBuffer::default();
        let mut total = 0usize;
        for (i, (offset, bytes)) in segments(&data, &plan).into_iter().enumerate() {
            let seq = (offset as u32).wrapping_add(jumps[i % jumps.len()] % 3 * 1000);
            buffer.push(seq, &bytes, |m| total += m.len());
            prop_assert!(buffer.buffered() <= 64 * 1024);
        }
    }
}
