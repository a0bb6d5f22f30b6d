//! FreeSWITCH discovery against fixture trees modelled on FreeSWITCH's
//! vanilla configuration, broken trees, and small trees written on the fly.
//!
//! Expected lines are found by searching the fixture text, so the tests say
//! which line they mean and keep meaning it when a fixture is edited.

use palisade_agent::discover::{freeswitch, Discovered};
use palisade_model::{ListenPort, PbxFacts, PbxKind, Peer, PortRange, RtpRange, Transport};
use proptest::prelude::*;
use std::path::PathBuf;

mod common;
use common::*;

fn fixture(name: &str) -> PathBuf {
    common::fixture("freeswitch", name)
}

fn facts(listen: Vec<ListenPort>, rtp: Option<RtpRange>, peers: Vec<Peer>) -> PbxFacts {
    let mut facts = PbxFacts {
        kinds: vec![PbxKind::FreeSwitch],
        listen,
        rtp,
        peers,
        public: vec![],
    };
    facts.normalize();
    facts
}

fn messages(d: &Discovered) -> Vec<String> {
    d.errors.iter().map(|e| e.message.clone()).collect()
}

#[test]
fn vanilla_tree_yields_every_profile_gateway_and_the_rtp_range() {
    let root = fixture("vanilla");
    let d = freeswitch::discover(&root);
    assert_eq!(d.errors, vec![]);

    let internal = root.join("sip_profiles/internal.xml");
    let external = root.join("sip_profiles/external.xml");
    let ipv6 = root.join("sip_profiles/internal-ipv6.xml");
    let sip_internal = prov(&internal, r#""sip-port""#, "profile internal", "sip-port");
    let tls_internal = prov(
        &internal,
        r#""tls-sip-port""#,
        "profile internal",
        "tls-sip-port",
    );
    let ws = prov(
        &internal,
        r#""ws-binding""#,
        "profile internal",
        "ws-binding",
    );
    let wss = prov(
        &internal,
        r#""wss-binding""#,
        "profile internal",
        "wss-binding",
    );
    let sip_external = prov(&external, r#""sip-port""#, "profile external", "sip-port");
    let sip_ipv6 = prov(&ipv6, r#""sip-port""#, "profile internal-ipv6", "sip-port");

    let provider = root.join("sip_profiles/external/provider.xml");
    let branch = root.join("sip_profiles/external/branch.xml");
    let carrier = root.join("sip_profiles/external/carrier.xml");
    let directory = root.join("directory/default.xml");
    let switch_conf = root.join("autoload_configs/switch.conf.xml");

    // ext-sip-ip and ext-rtp-ip are auto-nat in both profiles: FreeSWITCH
    // finds the public address when it starts, so `facts` has none.
    let expected = facts(
        vec![
            // sip-ip is $${local_ip_v4}, known only to the running FreeSWITCH.
            listen(Transport::Udp, 5060, None, &sip_internal),
            listen(Transport::Tcp, 5060, None, &sip_internal),
            // internal_ssl_enable=true in vars.xml.
            listen(Transport::Tls, 5061, None, &tls_internal),
            listen(Transport::Ws, 5066, None, &ws),
            listen(Transport::Wss, 7443, None, &wss),
            // external_ssl_enable=false: no TLS port.
            listen(Transport::Udp, 5080, None, &sip_external),
            listen(Transport::Tcp, 5080, None, &sip_external),
            listen(Transport::Udp, 5060, Some("2001:db8::5"), &sip_ipv6),
            listen(Transport::Tcp, 5060, Some("2001:db8::5"), &sip_ipv6),
        ],
        Some(RtpRange {
            range: PortRange {
                first: 20000,
                last: 30000,
            },
            provenance: prov(
                &switch_conf,
                "rtp-start-port",
                "switch.conf",
                "rtp-start-port, rtp-end-port",
            ),
        }),
        vec![
            // No proxy: FreeSWITCH sends to the realm.
            peer(
                "voip-provider",
                host("sip.provider.example", None, None),
                prov(
                    &provider,
                    r#"name="realm""#,
                    "gateway voip-provider",
                    "gateway realm",
                ),
            ),
            peer(
                "voip-provider",
                host("reg.provider.example", Some(5070), None),
                prov(
                    &provider,
                    r#""register-proxy""#,
                    "gateway voip-provider",
                    "gateway register-proxy",
                ),
            ),
            peer(
                "branch-office",
                addr("198.51.100.20"),
                prov(
                    &branch,
                    r#""proxy""#,
                    "gateway branch-office",
                    "gateway proxy",
                ),
            ),
            // No proxy, no realm: the gateway's name; register-transport
            // is the hint unless the URI names its own (sips: → TLS).
            peer(
                "sip.carrier.example",
                host("sip.carrier.example", None, Some(Transport::Tcp)),
                prov(
                    &carrier,
                    r#"<gateway name="sip.carrier.example">"#,
                    "gateway sip.carrier.example",
                    "gateway name",
                ),
            ),
            peer(
                "sip.carrier.example",
                host("sbc.carrier.example", None, Some(Transport::Tls)),
                prov(
                    &carrier,
                    "outbound-proxy",
                    "gateway sip.carrier.example",
                    "gateway outbound-proxy",
                ),
            ),
            // From the user directory: external has <domain parse="true">.
            peer(
                "user-trunk",
                addr("203.0.113.77"),
                prov(
                    &directory,
                    r#""proxy""#,
                    "gateway user-trunk",
                    "gateway proxy",
                ),
            ),
        ],
    );
    assert_eq!(d.facts, expected);
}

#[test]
fn vanilla_files_list_every_file_read_and_every_glob() {
    let root = fixture("vanilla");
    let d = freeswitch::discover(&root);
    let rel = relative(&root, &d.files);
    assert_eq!(
        rel,
        [
            "freeswitch.xml",
            "vars.xml",
            "autoload_configs/*.xml",
            "autoload_configs/conference.conf.xml",
            "autoload_configs/modules.conf.xml",
            "autoload_configs/sofia.conf.xml",
            // sofia.conf.xml's `../sip_profiles/*.xml`: relative to its own
            // directory, as FreeSWITCH resolves it.
            "sip_profiles/*.xml",
            "sip_profiles/external.xml",
            "sip_profiles/external/*.xml",
            "sip_profiles/external/branch.xml",
            "sip_profiles/external/carrier.xml",
            "sip_profiles/external/provider.xml",
            "sip_profiles/internal-ipv6.xml",
            "sip_profiles/internal.xml",
            "sip_profiles/internal/*.xml",
            "autoload_configs/switch.conf.xml",
            "dialplan/*.xml",
            "dialplan/default.xml",
            "chatplan/*.xml",
            "directory/*.xml",
            "directory/default.xml",
            "lang/en/*.xml",
        ]
    );
}

#[test]
fn discovery_is_deterministic() {
    let root = fixture("vanilla");
    assert_eq!(freeswitch::discover(&root), freeswitch::discover(&root));
}

#[test]
fn malformed_xml_names_the_file_and_the_line_of_the_open_tag() {
    let root = fixture("malformed");
    let d = freeswitch::discover(&root);
    let internal = root.join("sip_profiles/internal.xml");
    assert_eq!(
        d.errors,
        vec![error(
            &internal,
            r#"<param name="sip-port""#,
            "malformed XML: `<param>` is never closed (found `</settings>` first)",
        )]
    );
    // No facts from a document FreeSWITCH would refuse.
    assert_eq!(d.facts, facts(vec![], None, vec![]));
    assert!(d.files.contains(&internal));
}

#[test]
fn include_loop_is_named_and_the_rest_is_still_read() {
    let root = fixture("include-loop");
    let d = freeswitch::discover(&root);
    let a = root.join("loop/a.xml");
    let b = root.join("loop/b.xml");
    assert_eq!(
        d.errors,
        vec![error(
            &b,
            r#"data="a.xml""#,
            &format!(
                "include loop: {} -> {} -> {}",
                a.display(),
                b.display(),
                a.display()
            ),
        )]
    );
    let sip = prov(&b, "sip-port", "profile looped", "sip-port");
    assert_eq!(
        d.facts,
        facts(
            vec![
                listen(Transport::Udp, 5070, None, &sip),
                listen(Transport::Tcp, 5070, None, &sip),
            ],
            None,
            vec![],
        )
    );
}

#[test]
fn bad_values_are_errors_with_lines_and_good_values_remain() {
    // No freeswitch.xml: vars.xml and sip_profiles/*.xml are read directly.
    let root = fixture("bad-values");
    let d = freeswitch::discover(&root);
    let internal = root.join("sip_profiles/internal.xml");
    let external = root.join("sip_profiles/external.xml");
    let trunks = root.join("sip_profiles/external/trunks.xml");
    assert_eq!(
        d.errors,
        vec![
            error(
                &trunks,
                r#""trunk.example.net:65536""#,
                "gateway typo-trunk: proxy `trunk.example.net:65536`: `65536` is not a port number (1-65535)",
            ),
            error(
                &trunks,
                "bad name with spaces",
                "gateway `bad name with spaces` has no proxy or realm, so FreeSWITCH sends to its name, \
                 but `bad name with spaces` is not a host name or IP address",
            ),
            error(
                &internal,
                "70000",
                "sip-port `70000` in profile internal is not a port number (1-65535)",
            ),
            error(
                &internal,
                "10.0.0.300",
                "sip-ip `10.0.0.300` in profile internal: `10.0.0.300` is not a valid IPv4 address",
            ),
            error(
                &internal,
                ":74430",
                "wss-binding `:74430` in profile internal: `74430` is not a port number (1-65535)",
            ),
            error(
                &internal,
                "host:bad_name!",
                "ext-sip-ip `host:bad_name!` in profile internal: `bad_name!` is not a host name or IP address",
            ),
        ]
    );
    let sip = prov(&external, "sip-port", "profile external", "sip-port");
    let ws = prov(&internal, "ws-binding", "profile internal", "ws-binding");
    assert_eq!(
        d.facts,
        facts(
            vec![
                listen(Transport::Udp, 5080, Some("203.0.113.5"), &sip),
                listen(Transport::Tcp, 5080, Some("203.0.113.5"), &sip),
                listen(Transport::Ws, 5066, None, &ws),
            ],
            // No switch.conf.xml in this tree.
            None,
            vec![
                peer(
                    "good-trunk",
                    host("trunk.example.net", Some(5060), Some(Transport::Udp)),
                    prov(
                        &trunks,
                        "sip:trunk.example.net",
                        "gateway good-trunk",
                        "gateway proxy"
                    ),
                ),
                peer(
                    "typo-trunk",
                    addr("2001:db8::7"),
                    prov(
                        &trunks,
                        "register-proxy",
                        "gateway typo-trunk",
                        "gateway register-proxy"
                    ),
                ),
            ],
        )
    );
    assert!(d.files.contains(&root.join("freeswitch.xml")));
}

#[test]
fn missing_literal_include_is_an_error_but_an_empty_glob_is_not() {
    let root = fixture("missing-include");
    let d = freeswitch::discover(&root);
    let main = root.join("freeswitch.xml");
    assert_eq!(
        d.errors,
        vec![error(
            &main,
            r#"data="vars.xml""#,
            &format!(
                "include `vars.xml`: {} does not exist",
                root.join("vars.xml").display()
            ),
        )]
    );
    // switch.conf.xml without rtp-*-port: FreeSWITCH's own defaults.
    let switch_conf = root.join("autoload_configs/switch.conf.xml");
    assert_eq!(
        d.facts.rtp,
        Some(RtpRange {
            range: PortRange {
                first: 16384,
                last: 32768,
            },
            provenance: prov(
                &switch_conf,
                "<configuration",
                "switch.conf",
                "rtp range (FreeSWITCH default 16384-32768)",
            ),
        })
    );
    // The missing file and the empty glob are watched for.
    assert!(d.files.contains(&root.join("vars.xml")));
    assert!(d.files.contains(&root.join("nowhere/*.xml")));
}

#[test]
fn preprocessor_quirks_are_emulated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "freeswitch.xml",
        r#"<?xml version="1.0"?>
<document type="freeswitch/xml">
  <!-- an X-PRE-PROCESS in a comment still runs: -->
  <!-- <X-PRE-PROCESS cmd="set" data="commented_port=5090"/> -->
  <!--#set "hash_port=5091"-->
  <X-PRE-PROCESS cmd="set" data="late_port=$${defined_later}"/>
  <X-PRE-PROCESS cmd="set" data="defined_later=5099"/>
  <X-PRE-PROCESS cmd="set" data="Mixed_Case = 5092"/>
  <section name="configuration">
    <configuration name="sofia.conf">
      <profiles>
        <profile name="a"><settings><param name="sip-port" value="$${commented_port}"/></settings></profile>
        <profile name="b"><settings><param name="sip-port" value="$${hash_port}"/></settings></profile>
        <profile name="c"><settings><param name="sip-port" value="$${late_port}"/></settings></profile>
        <profile name="d"><settings><param name="sip-port" value="$${mixed_case}"/></settings></profile>
      </profiles>
    </configuration>
  </section>
</document>
"#,
    );
    let d = freeswitch::discover(root);
    assert_eq!(d.errors, vec![]);
    let ports: Vec<(String, u16)> = d
        .facts
        .listen
        .iter()
        .filter(|l| l.transport == Transport::Udp)
        .map(|l| (l.provenance.section.clone(), l.port))
        .collect();
    // Profile c: `late_port` holds `$${defined_later}`, unknown when it was
    // set, so its port is skipped rather than guessed.
    assert_eq!(
        ports,
        vec![
            ("profile a".to_string(), 5090),
            ("profile b".to_string(), 5091),
            ("profile d".to_string(), 5092),
        ]
    );
}

#[test]
fn run_time_values_are_unknown_not_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "vars.xml",
        r#"<include>
  <X-PRE-PROCESS cmd="set" data="p1=5060"/>
  <X-PRE-PROCESS cmd="exec-set" data="p1=echo 5070"/>
  <X-PRE-PROCESS cmd="set" data="p2=5060"/>
  <X-PRE-PROCESS cmd="env-set" data="p2=$SIP_PORT"/>
  <X-PRE-PROCESS cmd="stun-set" data="ext=stun:stun.example.org"/>
  <X-PRE-PROCESS cmd="exec" data="/usr/local/bin/make-profiles"/>
</include>
"#,
    );
    write(
        root,
        "sip_profiles/a.xml",
        r#"<profile name="a">
  <settings>
    <param name="sip-port" value="$${p1}"/>
    <param name="tls" value="$${p2}"/>
  </settings>
</profile>
"#,
    );
    write(
        root,
        "sip_profiles/b.xml",
        r#"<profile name="b">
  <settings>
    <param name="sip-port" value="auto"/>
    <param name="sip-ip" value="$${ext}"/>
    <param name="wss-binding" value="$${ext}:7443"/>
  </settings>
  <gateways>
    <gateway name="gw"><param name="proxy" value="$${ext}"/></gateway>
  </gateways>
</profile>
"#,
    );
    let d = freeswitch::discover(root);
    assert_eq!(d.errors, vec![]);
    assert_eq!(d.facts, facts(vec![], None, vec![]));
}

#[test]
fn ext_sip_and_rtp_ip_are_public_unless_freeswitch_finds_them_at_run_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "vars.xml",
        r#"<include>
  <X-PRE-PROCESS cmd="set" data="external_sip_ip=203.0.113.10"/>
  <X-PRE-PROCESS cmd="stun-set" data="external_rtp_ip=stun:stun.example.org"/>
</include>
"#,
    );
    let file = write(
        root,
        "sip_profiles/p.xml",
        r#"<profile name="a">
  <settings>
    <param name="ext-sip-ip" value="$${external_sip_ip}"/>
    <param name="ext-rtp-ip" value="host:Media.Example.NET"/>
  </settings>
</profile>
<profile name="b">
  <settings>
    <param name="ext-sip-ip" value="auto-nat"/>
    <param name="ext-rtp-ip" value="auto"/>
  </settings>
</profile>
<profile name="c">
  <settings>
    <param name="ext-sip-ip" value="stun:stun.example.org"/>
    <param name="ext-rtp-ip" value="$${never_set}"/>
  </settings>
</profile>
<profile name="d">
  <settings>
    <param name="EXT-SIP-IP" value="$${external_rtp_ip}"/>
    <param name="ext-rtp-ip" value=""/>
  </settings>
</profile>
<profile name="e">
  <settings>
    <param name="ext-sip-ip" value="[2001:db8::20]"/>
    <param name="ext-rtp-ip" value="autonat:198.51.100.7"/>
  </settings>
</profile>
<profile name="f">
  <settings>
    <param name="ext-sip-ip" value="127.0.0.1"/>
    <param name="ext-rtp-ip" value="0.0.0.0"/>
  </settings>
</profile>
<profile name="g">
  <settings>
    <param name="ext-sip-ip" value="pbx.example.net"/>
  </settings>
</profile>
"#,
    );
    let d = freeswitch::discover(root);
    assert_eq!(d.errors, vec![]);
    let mut expected = vec![
        // Expanded by the preprocessor where vars.xml sets it.
        public(
            addr("203.0.113.10"),
            prov(&file, "external_sip_ip", "profile a", "ext-sip-ip"),
        ),
        // `host:NAME`: a name sofia resolves, lower-cased like every name.
        public(
            host("media.example.net", None, None),
            prov(&file, "host:Media", "profile a", "ext-rtp-ip"),
        ),
        // b (auto, auto-nat), c (STUN, an unset variable), d (a variable
        // stun-set leaves unknown, empty) and f (loopback, 0.0.0.0, which
        // FreeSWITCH replaces with its guess) give nothing.
        public(
            addr("2001:db8::20"),
            prov(&file, "[2001:db8::20]", "profile e", "ext-sip-ip"),
        ),
        public(
            addr("198.51.100.7"),
            prov(&file, "autonat:", "profile e", "ext-rtp-ip"),
        ),
        public(
            host("pbx.example.net", None, None),
            prov(&file, r#""pbx.example.net""#, "profile g", "ext-sip-ip"),
        ),
    ];
    expected.sort();
    assert_eq!(d.facts.public, expected);
}

#[test]
fn tls_only_bind_params_and_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let file = write(
        root,
        "sip_profiles/p.xml",
        r#"<profile name="tls-only">
  <settings>
    <param name="sip-port" value="5060"/>
    <param name="tls" value="true"/>
    <param name="tls-only" value="true"/>
  </settings>
</profile>
<profile name="udp-only">
  <settings>
    <param name="sip-port" value="5070"/>
    <param name="bind-params" value="transport=udp"/>
    <param name="sip-ip" value="[2001:db8::9]"/>
  </settings>
</profile>
<profile name="bare">
</profile>
"#,
    );
    let d = freeswitch::discover(root);
    assert_eq!(d.errors, vec![]);
    let tls = prov(
        &file,
        r#""tls" value"#,
        "profile tls-only",
        "tls-sip-port (default 5061)",
    );
    let udp = prov(&file, "5070", "profile udp-only", "sip-port");
    let bare = prov(
        &file,
        r#"name="bare""#,
        "profile bare",
        "sip-port (default 5060)",
    );
    assert_eq!(
        d.facts,
        facts(
            vec![
                listen(Transport::Tls, 5061, None, &tls),
                listen(Transport::Udp, 5070, Some("2001:db8::9"), &udp),
                listen(Transport::Udp, 5060, None, &bare),
                listen(Transport::Tcp, 5060, None, &bare),
            ],
            None,
            vec![],
        )
    );
}

#[test]
fn rtp_start_alone_above_the_default_end_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let conf = write(
        root,
        "autoload_configs/switch.conf.xml",
        r#"<configuration name="switch.conf">
  <settings>
    <param name="rtp-start-port" value="40000"/>
  </settings>
</configuration>
"#,
    );
    let d = freeswitch::discover(root);
    assert_eq!(
        d.errors,
        vec![error(
            &conf,
            "rtp-start-port",
            "switch.conf: rtp-start-port 40000 is above rtp-end-port 32768",
        )]
    );
    assert_eq!(d.facts.rtp, None);
}

#[test]
fn rtp_start_above_end_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let conf = write(
        root,
        "autoload_configs/switch.conf.xml",
        r#"<configuration name="switch.conf">
  <settings>
    <param name="rtp-start-port" value="30000"/>
    <param name="rtp-end-port" value="20000"/>
  </settings>
</configuration>
"#,
    );
    let d = freeswitch::discover(root);
    assert_eq!(
        d.errors,
        vec![error(
            &conf,
            "rtp-start-port",
            "switch.conf: rtp-start-port 30000 is above rtp-end-port 20000",
        )]
    );
    assert_eq!(d.facts.rtp, None);

    let conf = write(
        root,
        "autoload_configs/switch.conf.xml",
        r#"<configuration name="switch.conf">
  <settings>
    <param name="rtp-end-port" value="20000"/>
  </settings>
</configuration>
"#,
    );
    let d = freeswitch::discover(root);
    assert_eq!(d.errors, vec![]);
    assert_eq!(
        d.facts.rtp,
        Some(RtpRange {
            range: PortRange {
                first: 16384,
                last: 20000,
            },
            provenance: prov(
                &conf,
                "rtp-end-port",
                "switch.conf",
                "rtp-end-port (the other end is FreeSWITCH's default)",
            ),
        })
    );
}

#[test]
fn globs_skip_hidden_and_non_matching_files_and_may_cross_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let profile = |port: u16| {
        format!(
            r#"<profile name="p{port}"><settings><param name="sip-port" value="{port}"/></settings></profile>"#
        )
    };
    write(
        root,
        "freeswitch.xml",
        r#"<document>
  <section name="configuration">
    <configuration name="sofia.conf">
      <profiles>
        <X-PRE-PROCESS cmd="include" data="sites/*/profile-[0-9].xml"/>
      </profiles>
    </configuration>
  </section>
</document>
"#,
    );
    write(root, "sites/east/profile-1.xml", &profile(5061));
    write(root, "sites/west/profile-2.xml", &profile(5062));
    write(root, "sites/west/.profile-3.xml", &profile(5063));
    write(root, "sites/west/profile-4.xml.bak", &profile(5064));
    write(root, "sites/west/profile-x.xml", &profile(5065));
    let d = freeswitch::discover(root);
    assert_eq!(d.errors, vec![]);
    let mut ports: Vec<u16> = d.facts.listen.iter().map(|l| l.port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports, vec![5061, 5062]);
    assert!(d.files.contains(&root.join("sites/*")));
    assert!(d.files.contains(&root.join("sites/west/profile-[0-9].xml")));
}

#[test]
fn include_depth_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "freeswitch.xml",
        "<document>\n<X-PRE-PROCESS cmd=\"include\" data=\"d/0.xml\"/>\n</document>\n",
    );
    for i in 0..40 {
        write(
            root,
            &format!("d/{i}.xml"),
            &format!(
                "<include>\n<X-PRE-PROCESS cmd=\"include\" data=\"{}.xml\"/>\n</include>\n",
                i + 1
            ),
        );
    }
    let d = freeswitch::discover(root);
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(
        d.errors[0]
            .message
            .starts_with("includes nested deeper than 32: "),
        "{}",
        d.errors[0].message
    );
    assert_eq!(d.errors[0].line, 2);
    assert_eq!(
        d.errors[0].file,
        root.join("d/30.xml").display().to_string()
    );
}

#[test]
fn absolute_includes_and_include_wrappers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let gw = write(
        elsewhere.path(),
        "gw.xml",
        "<include>\n  <gateway name=\"abs\">\n    <param name=\"proxy\" value=\"192.0.2.1\"/>\n  </gateway>\n</include>\n",
    );
    write(
        root,
        "sip_profiles/p.xml",
        &format!(
            "<profile name=\"p\">\n  <gateways>\n    <X-PRE-PROCESS cmd=\"include\" data=\"{}\"/>\n  </gateways>\n</profile>\n",
            gw.display()
        ),
    );
    let d = freeswitch::discover(root);
    assert_eq!(d.errors, vec![]);
    assert_eq!(
        d.facts.peers,
        vec![peer(
            "abs",
            addr("192.0.2.1"),
            prov(&gw, "proxy", "gateway abs", "gateway proxy"),
        )]
    );
}

#[test]
fn not_a_freeswitch_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(freeswitch::discover(dir.path()), Discovered::default());
    assert_eq!(
        freeswitch::discover(&dir.path().join("absent")),
        Discovered::default()
    );
    write(dir.path(), "asterisk.conf", "[directories]\n");
    assert_eq!(freeswitch::discover(dir.path()), Discovered::default());
}

#[test]
fn an_empty_or_garbage_main_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "freeswitch.xml", "<document>\n  <section>\n");
    let d = freeswitch::discover(root);
    assert_eq!(d.facts.kinds, vec![PbxKind::FreeSwitch]);
    assert_eq!(
        messages(&d),
        vec!["malformed XML: `<section>` is never closed (found the end of the file)"]
    );
    assert_eq!(d.errors[0].line, 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_as_freeswitch_xml_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("freeswitch.xml"), &bytes).expect("write");
        let d = freeswitch::discover(dir.path());
        prop_assert_eq!(d.facts.kinds, vec![PbxKind::FreeSwitch]);
    }

    #[test]
    fn xml_like_noise_never_panics(parts in proptest::collection::vec(prop_oneof![
        Just("<".to_string()), Just(">".to_string()), Just("/>".to_string()), Just("</".to_string()),
        Just("\n".to_string()), Just("\"".to_string()), Just("'".to_string()), Just("=".to_string()),
        Just("&".to_string()), Just("&amp;".to_string()), Just("&#x0;".to_string()), Just(";".to_string()),
        Just("<!--".to_string()), Just("-->".to_string()), Just("<!--#set \"x=1\"".to_string()),
        Just("<![CDATA[".to_string()), Just("]]>".to_string()), Just("<?".to_string()), Just("?>".to_string()),
        Just("<!DOCTYPE [".to_string()), Just("]".to_string()),
        Just("<X-PRE-PROCESS cmd=\"set\" data=\"p=".to_string()),
        Just("<X-PRE-PROCESS cmd=\"include\" data=\"".to_string()),
        Just("freeswitch.xml".to_string()), Just("*".to_string()), Just("[".to_string()), Just("../".to_string()),
        Just("$${".to_string()), Just("$${p}".to_string()), Just("}".to_string()),
        Just("<include>".to_string()), Just("<configuration name=\"sofia.conf\">".to_string()),
        Just("<profiles>".to_string()), Just("<profile name=\"x\">".to_string()), Just("<settings>".to_string()),
        Just("<param name=\"sip-port\" value=\"".to_string()), Just("<param name=\"ws-binding\" value=\"".to_string()),
        Just("<param name=\"sip-ip\" value=\"".to_string()), Just("<gateways><gateway name=\"".to_string()),
        Just("<param name=\"ext-sip-ip\" value=\"".to_string()), Just("<param name=\"ext-rtp-ip\" value=\"".to_string()),
        Just("host:".to_string()), Just("autonat:".to_string()), Just("stun:".to_string()), Just("auto-nat".to_string()),
        Just("<param name=\"proxy\" value=\"".to_string()), Just("<configuration name=\"switch.conf\">".to_string()),
        Just("<param name=\"rtp-start-port\" value=\"".to_string()),
        Just("5060".to_string()), Just(":".to_string()), Just("[::1]".to_string()), Just("sip:".to_string()),
        Just("é".to_string()), Just("\u{0}".to_string()), Just("ns:a".to_string()),
        "[a-z0-9. ]{0,8}",
    ], 0..64)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("freeswitch.xml"), parts.concat()).expect("write");
        let _ = freeswitch::discover(dir.path());
    }
}
