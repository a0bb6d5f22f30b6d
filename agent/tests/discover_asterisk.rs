//! Asterisk discovery against fixture trees: a FreePBX-generated layout, a
//! hand-written tree with templates, IPv6 and globs, and broken trees. Facts are
//! compared exactly (ports, peers, provenance lines), so a change in how any
//! construct is read shows up here.

#[path = "fixtures/asterisk/freepbx_gen.rs"]
mod freepbx_gen;

use palisade_agent::discover::asterisk::{discover, discover_report, Report};
use palisade_agent::discover::ini;
use palisade_model::{PbxFacts, PbxKind, PeerTarget, PortRange};
use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/asterisk")
        .join(name)
}

fn freepbx_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    freepbx_gen::write_tree(dir.path(), 500).unwrap();
    dir
}

fn listen(f: &PbxFacts) -> Vec<String> {
    f.listen
        .iter()
        .map(|l| {
            let addr = l.addr.map_or("*".to_string(), |a| a.to_string());
            format!("{} {} {} {}", l.transport, l.port, addr, l.provenance)
        })
        .collect()
}

fn target(t: &PeerTarget) -> String {
    match t {
        PeerTarget::Addr(a) => format!("addr {a}"),
        PeerTarget::Net(n) => format!("net {n}"),
        PeerTarget::Host {
            name,
            port,
            transport,
        } => format!(
            "host {name} port={} transport={}",
            port.map_or("-".to_string(), |p| p.to_string()),
            transport.map_or("-".to_string(), |t| t.to_string())
        ),
    }
}

fn peers(f: &PbxFacts) -> Vec<String> {
    f.peers
        .iter()
        .map(|p| format!("{} | {} | {}", p.name, target(&p.target), p.provenance))
        .collect()
}

fn public(f: &PbxFacts) -> Vec<String> {
    f.public
        .iter()
        .map(|p| format!("{} | {}", target(&p.target), p.provenance))
        .collect()
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect()
}

/// (file basename, line, message) of every error.
fn errors(r: &Report) -> Vec<(String, usize, String)> {
    r.discovered
        .errors
        .iter()
        .map(|e| (basename(&e.file).to_string(), e.line, e.message.clone()))
        .collect()
}

fn clean(r: &Report) {
    assert!(
        r.discovered.errors.is_empty(),
        "errors: {:#?}",
        r.discovered.errors
    );
    assert!(r.warnings.is_empty(), "warnings: {:#?}", r.warnings);
}

#[test]
fn freepbx_tree_facts_are_exact() {
    let dir = freepbx_tree();
    let r = discover_report(dir.path());
    clean(&r);
    let f = &r.discovered.facts;
    assert_eq!(f.kinds, vec![PbxKind::Asterisk]);
    assert_eq!(
        listen(f),
        vec![
            "udp 5060 0.0.0.0 pjsip.transports.conf:13, [0.0.0.0-udp] transport bind",
            "udp 5160 0.0.0.0 sip_general_additional.conf:19, [general] bindport",
            "tcp 5060 0.0.0.0 pjsip.transports.conf:24, [0.0.0.0-tcp] transport bind",
            "tcp 5160 0.0.0.0 sip_general_additional.conf:20, [general] tcpenable (UDP address and port)",
            "tls 5061 0.0.0.0 pjsip.transports.conf:35, [0.0.0.0-tls] transport bind",
            "ws 8088 :: http_additional.conf:10, [general] bindport",
            "wss 8089 :: http_additional.conf:13, [general] tlsbindaddr",
            "iax 4569 * iax_general_additional.conf:7, [general] bindport",
        ]
    );
    let rtp = f.rtp.as_ref().expect("rtp.conf sets a range");
    assert_eq!(
        rtp.range,
        PortRange {
            first: 16384,
            last: 32767
        }
    );
    assert_eq!(
        rtp.provenance.to_string(),
        "rtp_custom.conf:2, [general] rtpstart"
    );
    // Trunk sections follow the 500 extensions in the generated files:
    // pjsip.aor.conf: 9 header lines + 500 × 9-line AORs, so [carrier-ip] is at 4510;
    // pjsip.endpoint.conf: 9 + 500 × 43-line endpoints, so [carrier-ip] is at 21510.
    // Duplicates (same trunk, same target from several options) keep the first
    // provenance in sort order, which is pjsip.aor.conf.
    assert_eq!(
        peers(f),
        vec![
            "branch-iax | addr 203.0.113.40 | iax_additional.conf:13, [branch-iax] peer host",
            "branch-tcp | host pbx.branch.example port=- transport=- | pjsip.identify.conf:23, [branch-tcp] identify match",
            "branch-tcp | host pbx.branch.example port=5060 transport=tcp | pjsip.aor.conf:4524, [branch-tcp] aor contact",
            "carrier-ip | addr 198.51.100.10 | pjsip.aor.conf:4513, [carrier-ip] aor contact",
            "carrier-ip | net 198.51.100.0/28 | pjsip.identify.conf:13, [carrier-ip] identify match",
            "iax.branch.example | host iax.branch.example port=- transport=iax | iax_registrations.conf:7, [general] register",
            "legacy-carrier | host sip.legacy-carrier.example port=5080 transport=- | sip_additional.conf:10, [legacy-carrier] peer host",
            "sip.legacy-carrier.example | host sip.legacy-carrier.example port=5080 transport=- | sip_registrations.conf:7, [general] register",
            "voip-provider | host proxy.voip-provider.example port=- transport=udp | pjsip.aor.conf:4519, [voip-provider] aor outbound_proxy",
            "voip-provider | host sip.voip-provider.example port=- transport=- | pjsip.identify.conf:18, [voip-provider] identify match",
            "voip-provider | host sip.voip-provider.example port=5060 transport=udp | pjsip.aor.conf:4518, [voip-provider] aor contact",
        ]
    );
    // The NAT's address, in three transports (signaling and media) and
    // sip_nat.conf's externip: one fact, with the first provenance.
    assert_eq!(
        public(f),
        vec!["addr 203.0.113.5 | pjsip.transports.conf:14, [0.0.0.0-udp] transport external_media_address"]
    );
}

#[test]
fn freepbx_sip_nat_externip_is_read() {
    // Without the transports' copies, chan_sip's externip is what remains.
    let dir = freepbx_tree();
    let path = dir.path().join("pjsip.transports.conf");
    let transports: String = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("external_"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&path, transports).unwrap();
    let r = discover_report(dir.path());
    clean(&r);
    assert_eq!(
        public(&r.discovered.facts),
        vec!["addr 203.0.113.5 | sip_nat.conf:2, [general] externip"]
    );
}

#[test]
fn freepbx_endpoint_outbound_proxy_and_registration_lines_are_found() {
    // The normalized facts keep one provenance per (trunk, target); the others
    // must still be read from the right lines. Remove the AOR's copies and look.
    let dir = freepbx_tree();
    let aor = fs::read_to_string(dir.path().join("pjsip.aor.conf")).unwrap();
    let aor = aor
        .replace("outbound_proxy=sip:proxy.voip-provider.example\\;lr\n", "")
        .replace(
            "contact=sip:4155551234@sip.voip-provider.example:5060\n",
            "",
        );
    fs::write(dir.path().join("pjsip.aor.conf"), aor).unwrap();
    let r = discover_report(dir.path());
    clean(&r);
    let got: Vec<String> = peers(&r.discovered.facts)
        .into_iter()
        .filter(|p| p.starts_with("voip-provider"))
        .collect();
    assert_eq!(
        got,
        vec![
            "voip-provider | host proxy.voip-provider.example port=- transport=udp | pjsip.endpoint.conf:21532, [voip-provider] endpoint outbound_proxy",
            "voip-provider | host sip.voip-provider.example port=- transport=- | pjsip.identify.conf:18, [voip-provider] identify match",
            "voip-provider | host sip.voip-provider.example port=5060 transport=udp | pjsip.registration.conf:23, [voip-provider] registration server_uri",
        ]
    );
}

#[test]
fn freepbx_tree_has_the_generated_shape() {
    let dir = freepbx_tree();
    let cfg = ini::load(&dir.path().join("pjsip.conf"));
    assert!(cfg.is_ok() && cfg.warnings.is_empty(), "{:?}", cfg.errors);
    let count = |t: &str| {
        cfg.sections
            .iter()
            .filter(|s| s.value("type") == Some(t))
            .count()
    };
    // 500 extensions + 3 trunks; auths: 500 + the registering trunk.
    assert_eq!(count("endpoint"), 503);
    assert_eq!(count("aor"), 503);
    assert_eq!(count("auth"), 501);
    assert_eq!(count("transport"), 4);
    assert_eq!(count("identify"), 3);
    assert_eq!(count("registration"), 1);
    assert_eq!(count("global"), 1);
    let e1499 = cfg.sections_named("1499").next().unwrap();
    assert_eq!(e1499.value("callerid"), Some("Extension 1499 <1499>"));
    assert!(cfg.sections_named("1500").next().is_none());
}

#[test]
fn freepbx_files_include_every_include_and_tryinclude_target() {
    let dir = freepbx_tree();
    let r = discover_report(dir.path());
    let expected = [
        "pjsip.conf",
        "pjsip_custom.conf",
        "pjsip.transports.conf",
        "pjsip.transports_custom.conf",
        "pjsip.transports_custom_post.conf",
        "pjsip.endpoint.conf",
        "pjsip.endpoint_custom.conf",
        "pjsip.endpoint_custom_post.conf",
        "pjsip.aor.conf",
        "pjsip.aor_custom.conf",
        "pjsip.aor_custom_post.conf",
        "pjsip.auth.conf",
        "pjsip.auth_custom.conf",
        "pjsip.auth_custom_post.conf",
        "pjsip.registration.conf",
        "pjsip.registration_custom.conf",
        "pjsip.registration_custom_post.conf",
        "pjsip.identify.conf",
        "pjsip.identify_custom.conf",
        "pjsip.identify_custom_post.conf",
        "pjsip_custom_post.conf",
        "sip.conf",
        "sip_general_additional.conf",
        "sip_general_custom.conf",
        "sip_nat.conf",
        "sip_registrations_custom.conf",
        "sip_registrations.conf",
        "sip_custom.conf",
        "sip_additional.conf",
        "sip_custom_post.conf",
        "iax.conf",
        "iax_general_additional.conf",
        "iax_general_custom.conf",
        "iax_registrations_custom.conf",
        "iax_registrations.conf",
        "iax_custom.conf",
        "iax_additional.conf",
        "iax_custom_post.conf",
        "rtp.conf",
        "rtp_additional.conf",
        "rtp_custom.conf",
        "http.conf",
        "http_additional.conf",
        "http_custom.conf",
    ];
    assert_eq!(names(&r.discovered.files), expected);
    assert!(r
        .discovered
        .files
        .iter()
        .all(|f| f.parent() == Some(dir.path())));
}

#[test]
fn plain_tree_facts_are_exact() {
    let r = discover_report(&fixture("plain"));
    clean(&r);
    let f = &r.discovered.facts;
    assert_eq!(f.kinds, vec![PbxKind::Asterisk]);
    assert_eq!(
        listen(f),
        vec![
            "udp 5062 2001:db8::10 pjsip.conf:15, [transport-udp6] transport bind",
            "udp 5070 :: sip.conf:2, [general] udpbindaddr",
            "tcp 5060 :: pjsip.conf:20, [transport-tcp6] transport bind",
            "tcp 5071 :: sip.conf:4, [general] tcpbindaddr",
            "tls 5061 0.0.0.0 pjsip.conf:30, [transport-tls] transport bind",
            "tls 5061 :: sip.conf:5, [general] tlsenable (UDP address, port 5061)",
            "tls 5063 :: pjsip.conf:33, [transport-tls6] transport bind",
            "ws 8080 127.0.0.1 http.conf:4, [general] bindport",
            "wss 8443 2001:db8::10 http.conf:6, [general] tlsbindaddr",
            "iax 4570 0.0.0.0 iax.conf:3, [general] bindaddr",
            "iax 4571 2001:db8::10 iax.conf:4, [general] bindaddr",
        ]
    );
    let rtp = f.rtp.as_ref().expect("rtp.conf exists");
    assert_eq!(
        rtp.range,
        PortRange {
            first: 10000,
            last: 20000
        }
    );
    assert_eq!(
        rtp.provenance.to_string(),
        "rtp.conf:2, [general] default range 10000-20000"
    );
    assert_eq!(
        peers(f),
        vec![
            "192.0.2.44 | addr 192.0.2.44 | iax.conf:6, [general] register",
            "2001:db8:5::1 | addr 2001:db8:5::1 | sip.conf:7, [general] register",
            "branch6 | addr 2001:db8:4::20 | 20-branch6.conf:10, [branch6] aor contact",
            "branch6 | net 2001:db8:4::/64 | 20-branch6.conf:15, [branch6] identify match",
            "iax.example.com | host iax.example.com port=- transport=iax | iax.conf:5, [general] register",
            "iaxhost | host iax2.example.com port=4569 transport=iax | iax.conf:14, [iaxhost] peer host",
            "iaxpeer | addr 198.51.100.4 | iax.conf:10, [iaxpeer] peer host",
            "itsp | addr 198.51.100.77 | 10-itsp.conf:16, [itsp-identify] identify match",
            "itsp | addr 203.0.113.7 | 10-itsp.conf:8, [itsp] aor contact",
            "itsp | addr 2001:db8:100::1 | 10-itsp.conf:12, [itsp-identify] identify match",
            "itsp | addr 2001:db8:300::5 | 10-itsp.conf:8, [itsp] aor contact",
            "itsp | net 10.0.0.0/8 | 10-itsp.conf:13, [itsp-identify] identify match",
            "itsp | net 192.0.2.0/24 | trunks.conf:19, [itsp-identify] identify match (from template [identify-defaults])",
            "itsp | net 2001:db8:200::/48 | 10-itsp.conf:12, [itsp-identify] identify match",
            "itsp | host edge.itsp.example port=- transport=tls | trunks.conf:10, [itsp] endpoint outbound_proxy (from template [itsp-endpoint])",
            "itsp | host sbc.itsp.example port=5070 transport=- | 10-itsp.conf:13, [itsp-identify] identify match",
            "itsp | host sbc1.itsp.example port=- transport=tls | trunks.conf:15, [itsp] aor contact (from template [itsp-aor])",
            "itsp | host sbc2.itsp.example port=5080 transport=tcp | 10-itsp.conf:7, [itsp] aor contact",
            "itsp-reg | host edge.itsp.example port=5061 transport=tcp | 10-itsp.conf:20, [itsp-reg] registration outbound_proxy",
            "itsp-reg | host reg.itsp.example port=- transport=tls | 10-itsp.conf:19, [itsp-reg] registration server_uri",
            "legacy-trunk | host sip.legacy.example port=5080 transport=tcp | sip.conf:17, [legacy-trunk] peer host",
            "sip.example.net | host sip.example.net port=5061 transport=tls | sip.conf:6, [general] register",
            "trunk-v6 | addr 2001:db8:5::1 | sip.conf:14, [trunk-v6] peer host",
        ]
    );
}

#[test]
fn plain_tree_files_follow_relative_and_glob_includes() {
    let root = fixture("plain");
    let r = discover_report(&root);
    let rel: Vec<String> = r
        .discovered
        .files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(
        rel,
        vec![
            "pjsip.conf",
            "templates/trunks.conf",
            // Relative to the including file (templates/), not to the root.
            "templates/registration.conf",
            // The pattern itself: its directory is where new matches appear.
            "pjsip.d/*.conf",
            "pjsip.d/10-itsp.conf",
            "pjsip.d/20-branch6.conf",
            "pjsip.d/none-*.conf",
            "pjsip.local.conf",
            "sip.conf",
            "iax.conf",
            "rtp.conf",
            "http.conf",
        ]
    );
}

#[test]
fn broken_missing_include() {
    let r = discover_report(&fixture("broken/missing-include"));
    assert_eq!(
        errors(&r),
        vec![(
            "pjsip.conf".to_string(),
            6,
            "#include target `pjsip.gone.conf` does not exist".to_string()
        )]
    );
    // What could be read is still reported; the agent ignores it while errors exist.
    assert_eq!(listen(&r.discovered.facts).len(), 1);
    assert!(!r.discovered.is_ok());
}

#[test]
fn broken_include_loop() {
    let r = discover_report(&fixture("broken/include-loop"));
    assert_eq!(
        errors(&r),
        vec![(
            "loop-b.conf".to_string(),
            3,
            "include loop: pjsip.conf -> loop-a.conf -> loop-b.conf -> loop-a.conf".to_string()
        )]
    );
}

#[test]
fn broken_unterminated_section_header() {
    let r = discover_report(&fixture("broken/unterminated-section"));
    assert_eq!(
        errors(&r),
        vec![(
            "pjsip.conf".to_string(),
            5,
            "section header `[trunk` has no closing `]`".to_string()
        )]
    );
    assert!(
        r.warnings.is_empty(),
        "the options after it are dropped quietly"
    );
}

#[test]
fn broken_identify_match_address() {
    let r = discover_report(&fixture("broken/bad-match"));
    assert_eq!(
        errors(&r),
        vec![(
            "pjsip.conf".to_string(),
            8,
            "[trunk] match `300.1.2.3`: `300.1.2.3` is not a valid IPv4 address".to_string()
        )]
    );
    // The good item on the same line is still read.
    assert_eq!(
        peers(&r.discovered.facts),
        vec!["trunk | addr 192.0.2.1 | pjsip.conf:8, [trunk] identify match"]
    );
}

#[test]
fn broken_bind_port() {
    let r = discover_report(&fixture("broken/bad-port"));
    assert_eq!(
        errors(&r),
        vec![(
            "pjsip.conf".to_string(),
            4,
            "[transport-udp] bind `0.0.0.0:70000`: port 70000 is out of range (1-65535)"
                .to_string()
        )]
    );
    assert!(r.discovered.facts.listen.is_empty());
}

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn an_empty_directory_is_no_pbx_and_no_error() {
    let dir = tree(&[]);
    let r = discover_report(dir.path());
    clean(&r);
    assert_eq!(r.discovered.facts, PbxFacts::default());
    assert_eq!(
        names(&r.discovered.files),
        vec![
            "pjsip.conf",
            "sip.conf",
            "iax.conf",
            "rtp.conf",
            "http.conf"
        ]
    );
}

#[test]
fn without_rtp_conf_there_is_no_rtp_range() {
    let dir = tree(&[("iax.conf", "[general]\n")]);
    let r = discover_report(dir.path());
    clean(&r);
    let f = &r.discovered.facts;
    assert_eq!(f.kinds, vec![PbxKind::Asterisk]);
    assert!(f.rtp.is_none());
    assert_eq!(
        listen(f),
        vec!["iax 4569 * iax.conf:1, [general] default port 4569"]
    );
}

#[test]
fn defaults_without_a_general_section() {
    let dir = tree(&[("sip.conf", "; nothing\n"), ("rtp.conf", "")]);
    let r = discover_report(dir.path());
    clean(&r);
    let f = &r.discovered.facts;
    assert_eq!(
        listen(f),
        vec!["udp 5060 * sip.conf:0, [general] default port 5060"]
    );
    let rtp = f.rtp.as_ref().unwrap();
    assert_eq!(
        rtp.range,
        PortRange {
            first: 10000,
            last: 20000
        }
    );
    assert_eq!(rtp.provenance.line, 0);
}

#[test]
fn websocket_transports_without_an_http_server() {
    let pjsip = "[ws]\ntype=transport\nprotocol=ws\n[wss]\ntype=transport\nprotocol=wss\n";
    // No http.conf: the default ports, quietly.
    let dir = tree(&[("pjsip.conf", pjsip)]);
    let r = discover_report(dir.path());
    clean(&r);
    assert_eq!(
        listen(&r.discovered.facts),
        vec![
            "ws 8088 * pjsip.conf:1, [ws] ws transport (HTTP server default port 8088)",
            "wss 8089 * pjsip.conf:4, [wss] wss transport (HTTP server default port 8089)",
        ]
    );
    // An http.conf that does not start the server: the same, with a warning each.
    let dir = tree(&[
        ("pjsip.conf", pjsip),
        ("http.conf", "[general]\nenabled=no\n"),
    ]);
    let r = discover_report(dir.path());
    assert!(r.discovered.errors.is_empty());
    assert_eq!(listen(&r.discovered.facts).len(), 2);
    assert_eq!(r.warnings.len(), 2);
    assert!(
        r.warnings[0].message.contains("needs the HTTP server"),
        "{:?}",
        r.warnings
    );
    // An enabled HTTP server without TLS address serves TLS on its own address.
    let dir = tree(&[(
        "http.conf",
        "[general]\nenabled=yes\nbindaddr=0.0.0.0:8000\ntlsenable=yes\ntlsbindport=8443\n",
    )]);
    let r = discover_report(dir.path());
    clean(&r);
    assert_eq!(
        listen(&r.discovered.facts),
        vec![
            "ws 8000 0.0.0.0 http.conf:3, [general] bindaddr",
            "wss 8443 0.0.0.0 http.conf:4, [general] tlsenable (HTTP address)",
        ]
    );
}

#[test]
fn values_asterisk_would_refuse_are_errors_with_lines() {
    let dir = tree(&[
        (
            "pjsip.conf",
            "[t]\ntype=transport\nprotocol=sctp\nbind=0.0.0.0\n\
             [t6]\ntype=transport\nbind=[::1\n\
             [h]\ntype=transport\nbind=pbx.example.com\n\
             [a]\ntype=aor\ncontact=tel:+15551234\n\
             [r]\ntype=registration\nserver_uri=sip:host.example:99999\n\
             [i]\ntype=identify\nendpoint=x\nmatch=10.0.0.0/33, 10.0.0.0/255.0.255.0\n",
        ),
        (
            "sip.conf",
            "[general]\nbindport=fifty\nregister => nohost\n[p]\nhost=h.example\nport=0\n",
        ),
        ("iax.conf", "[general]\nbindaddr=iax.example.com\n"),
        ("rtp.conf", "[general]\nrtpstart=30000\nrtpend=20000\n"),
    ]);
    let r = discover_report(dir.path());
    assert_eq!(
        errors(&r),
        vec![
            ("pjsip.conf".into(), 3, "[t] protocol `sctp`: unknown protocol (udp, tcp, tls, ws or wss)".into()),
            ("pjsip.conf".into(), 7, "[t6] bind `[::1`: `[::1` has no closing `]`".into()),
            (
                "pjsip.conf".into(),
                10,
                "[h] bind `pbx.example.com`: `pbx.example.com` is not an IP address, which a bind address must be".into()
            ),
            ("pjsip.conf".into(), 13, "[a] contact `tel:+15551234`: `tel:+15551234` is not a sip: or sips: URI".into()),
            (
                "pjsip.conf".into(),
                16,
                "[r] server_uri `sip:host.example:99999`: port 99999 is out of range (1-65535)".into()
            ),
            ("pjsip.conf".into(), 20, "[i] match `10.0.0.0/33`: prefix length /33 is too long for 10.0.0.0".into()),
            (
                "pjsip.conf".into(),
                20,
                "[i] match `10.0.0.0/255.0.255.0`: `255.0.255.0` is not a contiguous netmask for 10.0.0.0".into()
            ),
            ("sip.conf".into(), 2, "[general] bindport `fifty`: port `fifty` is not a number".into()),
            ("sip.conf".into(), 3, "[general] register `nohost`: no `@host` in the registration".into()),
            ("sip.conf".into(), 6, "[p] port `0`: port 0 is out of range (1-65535)".into()),
            (
                "iax.conf".into(),
                2,
                "[general] bindaddr `iax.example.com`: `iax.example.com` is not an IP address, which a bind address must be".into()
            ),
            ("rtp.conf".into(), 3, "[general] rtpend `20000`: rtpstart 30000 is above rtpend 20000".into()),
        ]
    );
    assert!(r.discovered.facts.rtp.is_none());
}

#[test]
fn public_addresses_from_transports_and_chan_sip() {
    let dir = tree(&[
        (
            "pjsip.conf",
            "[nat](!)\n\
             external_signaling_address=203.0.113.9\n\
             external_media_address=203.0.113.9\n\
             [t-udp](nat)\n\
             type=transport\n\
             bind=0.0.0.0:5060\n\
             [t-udp6]\n\
             type=transport\n\
             bind=[::]:5060\n\
             external_signaling_address=[2001:db8::5]:5060\n\
             external_media_address=2001:db8::6\n\
             [t-tcp]\n\
             type=transport\n\
             protocol=tcp\n\
             bind=0.0.0.0:5060\n\
             external_signaling_address=PBX.Example.NET.:5060\n\
             external_media_address=127.0.0.1\n\
             [t-wss]\n\
             type=transport\n\
             protocol=wss\n\
             external_signaling_address=::\n\
             external_media_address=\n\
             [t-unbound]\n\
             type=transport\n\
             external_signaling_address=198.51.100.97\n",
        ),
        (
            "sip.conf",
            "[general]\n\
             externip=192.0.2.1\n\
             externaddr=192.0.2.2:5060\n\
             externhost=Dyn.Example.ORG:5060\n\
             [peer]\n\
             host=192.0.2.50\n\
             externip=198.51.100.98\n",
        ),
    ]);
    let r = discover_report(dir.path());
    assert!(r.discovered.errors.is_empty(), "{:?}", r.discovered.errors);
    // [t-unbound] never starts, so its external address is no fact either.
    assert_eq!(
        r.warnings
            .iter()
            .map(|w| w.message.as_str())
            .collect::<Vec<_>>(),
        vec!["[t-unbound] transport has no bind=; Asterisk does not start it"]
    );
    assert_eq!(
        public(&r.discovered.facts),
        vec![
            "addr 203.0.113.9 | pjsip.conf:2, [t-udp] transport external_signaling_address (from template [nat])",
            "addr 2001:db8::5 | pjsip.conf:10, [t-udp6] transport external_signaling_address",
            "addr 2001:db8::6 | pjsip.conf:11, [t-udp6] transport external_media_address",
            // The last of externip/externaddr/externhost wins, as in chan_sip;
            // a peer's externip is no chan_sip option.
            "host dyn.example.org port=- transport=- | sip.conf:4, [general] externhost",
            // Loopback and `::` are nobody's public address.
            "host pbx.example.net port=- transport=- | pjsip.conf:16, [t-tcp] transport external_signaling_address",
        ]
    );

    // An externhost chan_sip cannot use leaves the externaddr before it.
    let dir = tree(&[(
        "sip.conf",
        "[general]\nexternaddr=[2001:db8::7]:5060\nexternhost=bad_name!\n",
    )]);
    let r = discover_report(dir.path());
    assert!(r.discovered.errors.is_empty(), "{:?}", r.discovered.errors);
    let warnings: Vec<(String, usize, String)> = r
        .warnings
        .iter()
        .map(|w| (basename(&w.file).to_string(), w.line, w.message.clone()))
        .collect();
    assert_eq!(
        warnings,
        vec![(
            "sip.conf".to_string(),
            3,
            "[general] externhost `bad_name!`: `bad_name!` is neither an IP address nor a valid host name; chan_sip ignores it".to_string()
        )]
    );
    assert_eq!(
        public(&r.discovered.facts),
        vec!["addr 2001:db8::7 | sip.conf:2, [general] externaddr"]
    );
}

#[test]
fn bad_external_addresses_are_errors_with_lines() {
    let dir = tree(&[(
        "pjsip.conf",
        "[t]\ntype=transport\nbind=0.0.0.0\n\
         external_signaling_address=300.1.2.3\n\
         external_media_address=[2001:db8::1\n\
         [t6]\ntype=transport\nbind=[::]\n\
         external_signaling_address=bad_name!:5060\n",
    )]);
    let r = discover_report(dir.path());
    assert_eq!(
        errors(&r),
        vec![
            ("pjsip.conf".into(), 4, "[t] external_signaling_address `300.1.2.3`: `300.1.2.3` is not a valid IPv4 address".into()),
            ("pjsip.conf".into(), 5, "[t] external_media_address `[2001:db8::1`: `[2001:db8::1` has no closing `]`".into()),
            (
                "pjsip.conf".into(),
                9,
                "[t6] external_signaling_address `bad_name!:5060`: `bad_name!` is neither an IP address nor a valid host name".into()
            ),
        ]
    );
    assert_eq!(r.discovered.facts.public, vec![]);
}

#[test]
fn things_asterisk_skips_are_warnings() {
    let dir = tree(&[(
        "pjsip.conf",
        "stray=1\n[x]\nnot an option\n[t]\ntype=transport\n[i]\ntype=identify\nmatch=1.2.3.4\n\
         [r]\ntype=registration\n[n]\nfoo=bar\n",
    )]);
    let r = discover_report(dir.path());
    assert!(r.discovered.errors.is_empty(), "{:?}", r.discovered.errors);
    let got: Vec<(usize, String)> = r
        .warnings
        .iter()
        .map(|w| (w.line, w.message.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "option `stray` before any section; ignored".to_string()),
            (
                3,
                "`not an option` is neither a section, a directive nor `key = value`; skipped"
                    .to_string()
            ),
            // Transports are read first: other sections refer to them.
            (
                4,
                "[t] transport has no bind=; Asterisk does not start it".to_string()
            ),
            (
                2,
                "[x] section has no type=; Asterisk ignores it".to_string()
            ),
            (
                6,
                "[i] identify has no endpoint=; Asterisk ignores it".to_string()
            ),
            (
                9,
                "[r] registration has no server_uri; Asterisk does not send it".to_string()
            ),
            (
                11,
                "[n] section has no type=; Asterisk ignores it".to_string()
            ),
        ]
    );
    assert_eq!(r.discovered.facts.peers, vec![]);
    // `discover` logs them and returns the same result.
    assert_eq!(discover(dir.path()), r.discovered);
}

#[test]
fn two_discoveries_of_one_tree_are_equal() {
    let dir = freepbx_tree();
    let a = discover(dir.path());
    let b = discover(dir.path());
    assert_eq!(a, b);
}

/// Pieces of Asterisk syntax, so generated files reach past the first `[`.
const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "[t]",
    "[t](!)",
    "[u](t)",
    "[t](+)",
    "(",
    ")",
    "(!,t)",
    "#include ",
    "#tryinclude ",
    "pjsip.conf",
    "*.conf",
    "*",
    "sip.conf",
    "=",
    "=>",
    "+=",
    ";",
    ";--",
    "--;",
    "\\;",
    "\n",
    "\r\n",
    "type=transport",
    "type=identify",
    "type=aor",
    "type=endpoint",
    "type=registration",
    "protocol=ws",
    "protocol=tls",
    "bind=",
    "match=",
    "contact=",
    "server_uri=",
    "outbound_proxy=",
    "endpoint=",
    "transport=t",
    "aors=u",
    "sip:",
    "sips:",
    "[::1]",
    "::",
    "300.1.2.3",
    "0.0.0.0:70000",
    "10.0.0.0/255.0.0.0",
    "/24",
    "/",
    "@",
    ":",
    ",",
    "host=",
    "port=",
    "register => ",
    "rtpstart=",
    "rtpend=",
    "bindport=",
    "bindaddr=",
    "external_signaling_address=",
    "external_media_address=",
    "externip=",
    "externhost=",
    "[general]",
    "enabled=yes",
    "tlsenable=yes",
    "tcpenable=yes",
    "tls://",
    "~",
    "?",
    "é",
    "\u{0}",
    " ",
    "x",
    "1",
    "65535",
];

fn fragments() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..80)
        .prop_map(|v| v.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_reader_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let cfg = ini::parse(Path::new("/nonexistent/pjsip.conf"), &bytes);
        prop_assert!(cfg.sections.len() <= bytes.len());
    }

    #[test]
    fn the_reader_never_panics_on_fragments(bytes in fragments()) {
        let _ = ini::parse(Path::new("/nonexistent/pjsip.conf"), &bytes);
    }

    #[test]
    fn discovery_never_panics(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), fragments()],
    ) {
        let dir = tempfile::tempdir().unwrap();
        // The same bytes in every file, so includes of each other (and globs of
        // the directory) are exercised too.
        for name in ["pjsip.conf", "sip.conf", "iax.conf", "rtp.conf", "http.conf"] {
            fs::write(dir.path().join(name), &bytes).unwrap();
        }
        let r = discover_report(dir.path());
        prop_assert_eq!(&r.discovered.facts.kinds, &vec![PbxKind::Asterisk]);
        // Normalized: a second read gives the same facts.
        prop_assert_eq!(discover(dir.path()), r.discovered);
    }
}
