//! Kamailio discovery against a fixture modelled on Kamailio's stock
//! kamailio.cfg (with dispatcher and permissions lists), a broken tree, and
//! small trees written on the fly.
//!
//! Expected lines are found by searching the fixture text, so the tests say
//! which line they mean and keep meaning it when a fixture is edited.

use palisade_agent::discover::{kamailio, Discovered};
use palisade_model::{ListenPort, PbxFacts, PbxKind, Peer, Provenance, PublicAddress, Transport};
use proptest::prelude::*;
use std::path::PathBuf;

mod common;
use common::*;

fn fixture(name: &str) -> PathBuf {
    common::fixture("kamailio", name)
}

fn facts(listen: Vec<ListenPort>, peers: Vec<Peer>, public: Vec<PublicAddress>) -> PbxFacts {
    let mut facts = PbxFacts {
        kinds: vec![PbxKind::Kamailio],
        listen,
        rtp: None,
        peers,
        public,
    };
    facts.normalize();
    facts
}

/// (transport, port, addr) of every socket, sorted.
fn sockets(d: &Discovered) -> Vec<(Transport, u16, Option<String>)> {
    d.facts
        .listen
        .iter()
        .map(|l| (l.transport, l.port, l.addr.map(|a| a.to_string())))
        .collect()
}

#[test]
fn standard_tree_yields_sockets_dispatcher_and_permissions() {
    let root = fixture("standard");
    let d = kamailio::discover(&root);
    assert_eq!(d.errors, vec![]);

    let cfg = root.join("kamailio.cfg");
    let l_udp = prov(
        &cfg,
        "listen=udp:PRIVATE_IP",
        "listen",
        "listen udp:PRIVATE_IP:5060",
    );
    let l_tcp = prov(
        &cfg,
        "listen=tcp:PRIVATE_IP:5060",
        "listen",
        "listen tcp:PRIVATE_IP:5060",
    );
    let l_eth = prov(&cfg, "listen=udp:eth1", "listen", "listen udp:eth1:5080");
    let l_v6 = prov(
        &cfg,
        "listen=[2001:db8::10]",
        "listen",
        "listen [2001:db8::10]",
    );
    let l_tls = prov(&cfg, "listen=tls:", "listen", "listen tls:PRIVATE_IP:5061");
    let s_udp = prov(
        &cfg,
        "bind = udp:",
        "socket",
        "socket udp:10.0.0.11:5090-5091",
    );
    // The statement starts on `socket = {`; its provenance is that line.
    let s_udp = Provenance {
        line: line_of(&cfg, "socket = {"),
        ..s_udp
    };

    let ds = root.join("lists/dispatcher.list");
    let al = root.join("address.list");
    let dsp = |needle: &str, set: u32| {
        prov(
            &ds,
            needle,
            &format!("dispatcher set {set}"),
            "dispatcher destination",
        )
    };
    let perm = |needle: &str, group: u32| {
        prov(
            &al,
            needle,
            &format!("permissions group {group}"),
            "permissions address",
        )
    };

    let expected = facts(
        vec![
            // PRIVATE_IP from `#!define`, substituted as Kamailio's lexer does.
            listen(Transport::Udp, 5060, Some("10.0.0.10"), &l_udp),
            listen(Transport::Tcp, 5060, Some("10.0.0.10"), &l_tcp),
            // An interface name: the port is known, the address is not.
            listen(Transport::Udp, 5080, None, &l_eth),
            // No protocol: all of them; TLS is on (WITH_TLS from the import).
            listen(Transport::Udp, 5060, Some("2001:db8::10"), &l_v6),
            listen(Transport::Tcp, 5060, Some("2001:db8::10"), &l_v6),
            listen(Transport::Tls, 5061, Some("2001:db8::10"), &l_v6),
            listen(Transport::Tls, 5061, Some("10.0.0.10"), &l_tls),
            listen(Transport::Udp, 5090, Some("10.0.0.11"), &s_udp),
            listen(Transport::Udp, 5091, Some("10.0.0.11"), &s_udp),
        ],
        vec![
            peer("dispatcher set 1", addr("10.0.0.21"), dsp("10.0.0.21", 1)),
            peer("dispatcher set 1", addr("10.0.0.22"), dsp("10.0.0.22", 1)),
            peer(
                "dispatcher set 2",
                host("sbc.carrier.example", Some(5060), Some(Transport::Tls)),
                dsp("sip:sbc.carrier.example", 2),
            ),
            peer(
                "dispatcher set 2",
                host("sbc2.carrier.example", None, Some(Transport::Tls)),
                dsp("sbc2.carrier.example", 2),
            ),
            peer(
                "dispatcher set 3",
                addr("2001:db8::21"),
                dsp("2001:db8::21", 3),
            ),
            peer("localhost", addr("127.0.0.1"), perm("127.0.0.1", 1)),
            peer(
                "permissions group 1",
                addr("10.0.0.10"),
                perm("1 10.0.0.10", 1),
            ),
            peer("branch-lan", net("192.168.1.0/24"), perm("192.168.1.0", 2)),
            peer(
                "branch-voice",
                net("192.168.2.0/24"),
                perm("192.168.2.0/24", 2),
            ),
            peer(
                "permissions group 3",
                net("2001:db8:1::/48"),
                perm("2001:db8:1::", 3),
            ),
            peer(
                "carrier-trunk",
                host("trunk.example.net", Some(5060), None),
                perm("trunk.example.net", 4),
            ),
        ],
        vec![
            // PUBLIC_IP from `#!substdef`; the UDP and TCP sockets advertise
            // the same address, which is one fact (the first line).
            public(
                addr("198.51.100.10"),
                prov(
                    &cfg,
                    "listen=udp:PRIVATE_IP",
                    "listen",
                    "listen advertise PUBLIC_IP:5060",
                ),
            ),
            // Quotes dropped, the name lower-cased.
            public(
                host("edge.example.net", None, None),
                prov(
                    &cfg,
                    "advertised_address=",
                    "core",
                    r#"advertised_address "Edge.Example.NET""#,
                ),
            ),
        ],
    );
    assert_eq!(d.facts, expected);
}

#[test]
fn standard_files_list_includes_imports_and_lists() {
    let root = fixture("standard");
    let d = kamailio::discover(&root);
    let rel = relative(&root, &d.files);
    assert_eq!(
        rel,
        [
            "kamailio.cfg",
            "kamailio-local.cfg",
            "routes.cfg",
            // import_file of a file that is not there: watched, not an error.
            "routes-local.cfg",
            // modparam's list_file replaces the default dispatcher.list.
            "lists/dispatcher.list",
            "address.list",
        ]
    );
}

#[test]
fn broken_tree_names_every_mistake_and_keeps_the_rest() {
    let root = fixture("broken");
    let d = kamailio::discover(&root);
    let cfg = root.join("kamailio.cfg");
    let al = root.join("address.list");
    let ds = root.join("dispatcher.list");
    assert_eq!(
        d.errors,
        vec![
            error(&al, "10.0.0.0/33", "permissions group 1: `10.0.0.0/33` is not a valid CIDR network"),
            error(&al, "10.1.0.0 40", "permissions group 2: netmask `40` for 10.1.0.0 is not 0-32"),
            error(&al, "x 10.3.0.1", "permissions group `x` is not a number"),
            error(
                &ds,
                "99999",
                "dispatcher set 1: destination `sip:media.example.com:99999`: `99999` is not a port number (1-65535)",
            ),
            error(&ds, "one sip:", "dispatcher set id `one` is not a number"),
            error(
                &ds,
                "10.0.0.24",
                "dispatcher set 2: destination `10.0.0.24:5060`: not a SIP URI (sip:host[:port][;transport=...])",
            ),
            error(&cfg, "10.0.0.300", "listen `udp:10.0.0.300:5060`: `10.0.0.300` is not a valid IPv4 address"),
            error(&cfg, "70000", "listen `tcp:10.0.0.1:70000`: `70000` is not a port number (1-65535)"),
            error(&cfg, "[2001:db8::1:5061", "listen `tls:[2001:db8::1:5061`: `[` without `]`"),
            error(&cfg, "port=50x0", "port=50x0: `50x0` is not a port number (1-65535)"),
            error(
                &cfg,
                "edge..example.net",
                r#"advertised_address `"edge..example.net"`: `edge..example.net` is not a host name or IP address"#,
            ),
            error(
                &cfg,
                "missing.cfg",
                &format!("include_file {} does not exist", root.join("missing.cfg").display()),
            ),
            error(
                &cfg,
                "unquoted.cfg",
                "include_file unquoted.cfg: the file name must be between double quotes",
            ),
        ]
    );
    let good = prov(&cfg, "10.0.0.2:5060", "listen", "listen udp:10.0.0.2:5060");
    assert_eq!(
        d.facts,
        facts(
            vec![listen(Transport::Udp, 5060, Some("10.0.0.2"), &good)],
            vec![
                peer(
                    "dispatcher set 1",
                    addr("10.0.0.21"),
                    prov(
                        &ds,
                        "10.0.0.21",
                        "dispatcher set 1",
                        "dispatcher destination"
                    ),
                ),
                peer(
                    "good-net",
                    net("10.2.0.0/16"),
                    prov(
                        &al,
                        "good-net",
                        "permissions group 3",
                        "permissions address"
                    ),
                ),
            ],
            vec![],
        )
    );
}

#[test]
fn without_listen_every_address_on_the_global_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cfg = write(
        root,
        "kamailio.cfg",
        "#!KAMAILIO\nenable_tls=yes\ntls_port_no=5071\nport=5070\n",
    );
    let d = kamailio::discover(root);
    assert_eq!(d.errors, vec![]);
    let every = Provenance {
        file: cfg.display().to_string(),
        line: 0,
        section: "core".to_string(),
        what: "no listen= or socket=: every address".to_string(),
    };
    assert_eq!(
        d.facts,
        facts(
            vec![
                listen(Transport::Udp, 5070, None, &every),
                listen(Transport::Tcp, 5070, None, &every),
                listen(Transport::Tls, 5071, None, &every),
            ],
            vec![],
            vec![],
        )
    );
}

#[test]
fn disable_tcp_drops_tcp_and_tls_and_defaults_apply_late() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "kamailio.cfg",
        "listen=10.0.0.1 tcp:10.0.0.2:5080 tls:10.0.0.3\nlisten=(10.0.0.4, 10.0.0.5):5062\n\
         enable_tls=1\ndisable_tcp=yes\nport=5066\n",
    );
    let d = kamailio::discover(root);
    assert_eq!(d.errors, vec![]);
    assert_eq!(
        sockets(&d),
        vec![
            (Transport::Udp, 5062, Some("10.0.0.4".to_string())),
            (Transport::Udp, 5062, Some("10.0.0.5".to_string())),
            (Transport::Udp, 5066, Some("10.0.0.1".to_string())),
        ]
    );
}

#[test]
fn plain_listen_is_udp_and_tcp_on_5060_without_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "kamailio.cfg",
        "listen=10.0.0.1\nlisten=tls:10.0.0.1:5061\nlisten=sctp:10.0.0.1:5060\n",
    );
    let d = kamailio::discover(root);
    assert_eq!(d.errors, vec![]);
    // TLS is off (no enable_tls), SCTP has no firewall transport.
    assert_eq!(
        sockets(&d),
        vec![
            (Transport::Udp, 5060, Some("10.0.0.1".to_string())),
            (Transport::Tcp, 5060, Some("10.0.0.1".to_string())),
        ]
    );
}

#[test]
fn advertised_addresses_are_public_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cfg = write(
        root,
        "kamailio.cfg",
        r#"#!define PUB "203.0.113.20"
listen=udp:10.0.0.1:5060 advertise PUB:5060 name "pub"
listen=tcp:10.0.0.1:5060 advertise "sbc.example.net":5060
listen=udp:[2001:db8::1]:5060 ADVERTISE [2001:db8:ffff::1]:5060 virtual
listen=udp:10.0.0.2:5062 advertise 127.0.0.1:5062
listen=udp:10.0.0.3:5064 advertise 203.0.113.21
socket = {
  bind = udp:10.0.0.4:5070;
  advertise = 198.51.100.30:5070;
}
advertised_address="replaced.example.net"
advertised_address=[2001:db8:ffff::2]
#!ifdef NEVER
advertised_address=192.0.2.99
#!endif
"#,
    );
    let d = kamailio::discover(root);
    assert_eq!(d.errors, vec![]);
    // Every listen socket is still read, `name` and `virtual` included.
    assert_eq!(sockets(&d).len(), 6);
    let listen_prov = |needle: &str, what: &str| prov(&cfg, needle, "listen", what);
    // The statement starts on `socket = {`; its provenance is that line.
    let socket = Provenance {
        line: line_of(&cfg, "socket = {"),
        ..prov(
            &cfg,
            "advertise = ",
            "socket",
            "socket advertise 198.51.100.30:5070",
        )
    };
    let mut expected = vec![
        public(
            addr("203.0.113.20"),
            listen_prov("PUB:5060", "listen advertise PUB:5060"),
        ),
        public(
            host("sbc.example.net", None, None),
            listen_prov(
                "sbc.example.net",
                r#"listen advertise "sbc.example.net":5060"#,
            ),
        ),
        public(
            addr("2001:db8:ffff::1"),
            listen_prov("ADVERTISE", "listen advertise [2001:db8:ffff::1]:5060"),
        ),
        // No port: Kamailio advertises the socket's own.
        public(
            addr("203.0.113.21"),
            listen_prov("203.0.113.21", "listen advertise 203.0.113.21"),
        ),
        public(addr("198.51.100.30"), socket),
        // The last advertised_address is the one Kamailio keeps; loopback
        // (10.0.0.2's advertise) is nobody's public address.
        public(
            addr("2001:db8:ffff::2"),
            prov(
                &cfg,
                "[2001:db8:ffff::2]",
                "core",
                "advertised_address [2001:db8:ffff::2]",
            ),
        ),
    ];
    expected.sort();
    assert_eq!(d.facts.public, expected);
}

#[test]
fn bad_advertised_addresses_are_errors_and_the_last_good_one_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cfg = write(
        root,
        "kamailio.cfg",
        "listen=udp:10.0.0.1:5060 advertise 203.0.113.300:5060\n\
         listen=udp:10.0.0.1:5061 advertise\n\
         listen=udp:10.0.0.1:5062 advertise sbc.example.net:99999\n\
         advertised_address=203.0.113.1\n\
         advertised_address=\"bad name\"\n",
    );
    let d = kamailio::discover(root);
    assert_eq!(
        d.errors,
        vec![
            error(
                &cfg,
                "203.0.113.300",
                "listen advertise `203.0.113.300:5060`: `203.0.113.300` is not a valid IPv4 address",
            ),
            error(&cfg, "5061", "listen: `advertise` without an address"),
            error(
                &cfg,
                "99999",
                "listen advertise `sbc.example.net:99999`: `99999` is not a port number (1-65535)",
            ),
            error(
                &cfg,
                "bad name",
                r#"advertised_address `"bad name"`: `bad name` is not a host name or IP address"#,
            ),
        ]
    );
    // The sockets themselves are fine.
    assert_eq!(sockets(&d).len(), 3);
    assert_eq!(
        d.facts.public,
        vec![public(
            addr("203.0.113.1"),
            prov(
                &cfg,
                "advertised_address=203",
                "core",
                "advertised_address 203.0.113.1"
            ),
        )]
    );
}

#[test]
fn conditionals_defines_and_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "kamailio.cfg",
        r#"#!KAMAILIO
#!define WITH_A
#!trydef WITH_A "ignored, already defined"
#!define IP_B 10.0.0.2
#!redefine IP_B 10.0.0.22
#!define GONE
#!undef GONE
#!ifdef WITH_A
listen=udp:10.0.0.1:5060
#!ifndef WITH_B
listen=udp:IP_B:5060
#!else
listen=udp:10.0.0.3:5060
#!endif
#!else
listen=udp:10.0.0.4:5060
#!endif
#!ifdef GONE
listen=udp:10.0.0.5:5060
#!endif
#!ifexp WITH_A && WITH_C
listen=udp:10.0.0.6:5060
#!endif
/* a block comment
   listen=udp:10.0.0.7:5060
   /* nested */
   listen=udp:10.0.0.8:5060
*/ listen=udp:10.0.0.9:5060
# listen=udp:10.0.0.10:5060
// listen=udp:10.0.0.11:5060
listen=udp:10.0.0.12:5060 // trailing comment
listen=udp:10.0.0.13:5060;port=5070
"#,
    );
    let d = kamailio::discover(root);
    assert_eq!(d.errors, vec![]);
    let ips: Vec<String> = sockets(&d).into_iter().filter_map(|(_, _, a)| a).collect();
    assert_eq!(
        ips,
        [
            "10.0.0.1",
            "10.0.0.9",
            "10.0.0.12",
            "10.0.0.13",
            "10.0.0.22"
        ]
    );
}

#[test]
fn unbalanced_conditionals_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cfg = write(
        root,
        "kamailio.cfg",
        "#!endif\n#!else\nlisten=udp:10.0.0.1:5060\n#!ifdef OPEN\nlisten=udp:10.0.0.2:5060\n",
    );
    let d = kamailio::discover(root);
    assert_eq!(
        d.errors,
        vec![
            error(&cfg, "#!endif", "#!endif without #!ifdef"),
            error(&cfg, "#!else", "#!else without #!ifdef"),
            error(&cfg, "#!ifdef OPEN", "#!ifdef without #!endif"),
        ]
    );
    assert_eq!(
        sockets(&d),
        vec![(Transport::Udp, 5060, Some("10.0.0.1".to_string()))]
    );
}

#[test]
fn includes_resolve_against_the_including_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "kamailio.cfg",
        "#!include_file \"conf.d/net.cfg\"\n!!import_file \"conf.d/none.cfg\"\n",
    );
    write(root, "conf.d/net.cfg", "include_file \"sockets.cfg\"\n");
    let sockets_cfg = write(root, "conf.d/sockets.cfg", "listen=udp:10.0.0.1:5060\n");
    let d = kamailio::discover(root);
    assert_eq!(d.errors, vec![]);
    assert_eq!(
        d.facts.listen,
        vec![listen(
            Transport::Udp,
            5060,
            Some("10.0.0.1"),
            &prov(&sockets_cfg, "listen", "listen", "listen udp:10.0.0.1:5060"),
        )]
    );
    assert!(d.files.contains(&root.join("conf.d/none.cfg")));
}

#[test]
fn include_loops_and_depth_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cfg = write(root, "kamailio.cfg", "include_file \"a.cfg\"\n");
    let a = write(
        root,
        "a.cfg",
        "listen=udp:10.0.0.1:5060\ninclude_file \"kamailio.cfg\"\n",
    );
    let d = kamailio::discover(root);
    assert_eq!(
        d.errors,
        vec![error(
            &a,
            "kamailio.cfg",
            &format!(
                "include loop: {} -> {} -> {}",
                cfg.display(),
                a.display(),
                cfg.display()
            ),
        )]
    );
    assert_eq!(sockets(&d).len(), 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "kamailio.cfg", "include_file \"0.cfg\"\n");
    for i in 0..12 {
        write(
            root,
            &format!("{i}.cfg"),
            &format!("include_file \"{}.cfg\"\n", i + 1),
        );
    }
    let d = kamailio::discover(root);
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(d.errors[0]
        .message
        .starts_with("includes nested deeper than 10 (Kamailio's limit): "));
    assert_eq!(d.errors[0].file, root.join("8.cfg").display().to_string());
}

#[test]
fn dispatcher_from_a_database_ignores_the_list_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "kamailio.cfg",
        "#!define DBURL \"mysql://kamailio:pw@localhost/kamailio\"\n\
         modparam(\"dispatcher\", \"db_url\", DBURL)\n",
    );
    write(root, "dispatcher.list", "1 sip:10.0.0.21:5060\n");
    let d = kamailio::discover(root);
    assert_eq!(d.errors, vec![]);
    assert_eq!(d.facts.peers, vec![]);
}

#[test]
fn a_named_list_file_that_is_missing_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cfg = write(
        root,
        "kamailio.cfg",
        "modparam(\"dispatcher|permissions\", \"list_file\", \"/nonexistent/palisade/ds.list\")\n",
    );
    let d = kamailio::discover(root);
    assert_eq!(
        d.errors,
        vec![error(
            &cfg,
            "modparam",
            "/nonexistent/palisade/ds.list does not exist"
        )]
    );
}

#[test]
fn not_a_kamailio_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(kamailio::discover(dir.path()), Discovered::default());
    assert_eq!(
        kamailio::discover(&dir.path().join("absent")),
        Discovered::default()
    );
    write(dir.path(), "dispatcher.list", "1 sip:10.0.0.1\n");
    assert_eq!(kamailio::discover(dir.path()), Discovered::default());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_as_kamailio_cfg_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kamailio.cfg"), &bytes).expect("write");
        let d = kamailio::discover(dir.path());
        prop_assert_eq!(d.facts.kinds, vec![PbxKind::Kamailio]);
    }

    #[test]
    fn arbitrary_bytes_as_lists_never_panic(
        ds in proptest::collection::vec(any::<u8>(), 0..1024),
        al in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kamailio.cfg"), "listen=udp:10.0.0.1:5060\n").expect("write");
        std::fs::write(dir.path().join("dispatcher.list"), &ds).expect("write");
        std::fs::write(dir.path().join("address.list"), &al).expect("write");
        let _ = kamailio::discover(dir.path());
    }

    #[test]
    fn cfg_like_noise_never_panics(parts in proptest::collection::vec(prop_oneof![
        Just("\n".to_string()), Just("#!define X ".to_string()), Just("#!ifdef X\n".to_string()),
        Just("#!else\n".to_string()), Just("#!endif\n".to_string()), Just("#!substdef \"!X!".to_string()),
        Just("listen=".to_string()), Just("socket = {".to_string()), Just("bind = ".to_string()), Just("}".to_string()),
        Just("udp:".to_string()), Just("tls:".to_string()), Just("sctp:".to_string()), Just("*:".to_string()),
        Just("(".to_string()), Just(")".to_string()), Just(",".to_string()), Just("[".to_string()), Just("]".to_string()),
        Just(":".to_string()), Just("-".to_string()), Just(";".to_string()), Just("\"".to_string()), Just("\\".to_string()),
        Just("/*".to_string()), Just("*/".to_string()), Just("//".to_string()), Just("#".to_string()),
        Just("include_file \"kamailio.cfg\"".to_string()), Just("import_file \"".to_string()),
        Just("modparam(\"dispatcher\", \"list_file\", \"".to_string()), Just("port=".to_string()),
        Just("advertise ".to_string()), Just("advertise = ".to_string()), Just("advertised_address=".to_string()),
        Just("name ".to_string()), Just("X".to_string()),
        Just("10.0.0.1".to_string()), Just("::1".to_string()), Just("5060".to_string()), Just("65536".to_string()),
        Just("é".to_string()), Just("\u{0}".to_string()),
        "[a-z0-9. ]{0,8}",
    ], 0..64)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kamailio.cfg"), parts.concat()).expect("write");
        let _ = kamailio::discover(dir.path());
    }
}
