//! Asterisk: what `pjsip.conf`, `sip.conf`, `iax.conf`, `rtp.conf` and
//! `http.conf` (with everything they include) say the PBX listens on and talks
//! to. Only facts are produced; which of them are opened is the policy's call.
//!
//! The reading follows what Asterisk itself would do with the same files, since
//! a port the firewall believes closed but Asterisk opens (or the reverse) is the
//! failure this module exists to prevent:
//!
//! - PJSIP transports listen on `bind` (port defaults 5060, 5061 for TLS); `ws`
//!   and `wss` transports do not bind at all but ride on the HTTP server, so
//!   their ports come from `http.conf` (`bindport`, `tlsbindaddr`, defaults
//!   8088/8089). The HTTP ports are reported as `Ws`/`Wss` when http.conf enables
//!   the server, or with the default ports when a ws/wss transport exists but
//!   http.conf is absent or does not start the server (then with a warning), so
//!   WebRTC is never cut off by a missing or separately managed http.conf.
//! - chan_sip: `bindport` wins over a port in `bindaddr`/`udpbindaddr`, TCP
//!   without `tcpbindaddr` shares the UDP address and port, TLS without
//!   `tlsbindaddr` uses the UDP address and port 5061 (all as chan_sip does).
//! - chan_iax2: `bindport` applies to the `bindaddr` lines after it; without any
//!   `bindaddr` it listens on `bindport` (default 4569) on all addresses.
//! - Peers are the trunks: the section name (for `identify`, its `endpoint=`;
//!   for a registration, its `endpoint=` if set; for `register =>` lines, the
//!   host). Host names are lower-cased; an IP with a
//!   port becomes [`PeerTarget::Addr`] (the port is not a trust property).
//!   The transport hint on names comes from the URI's `;transport=`, then
//!   `sips:`, then the section's own `transport=` (for an AOR, the transport of
//!   the endpoint that lists it in `aors=`).
//! - Public addresses (what the PBX tells peers to reach it at, behind NAT):
//!   every PJSIP transport's `external_signaling_address` and
//!   `external_media_address`, and chan_sip's `externip`, `externaddr` and
//!   `externhost`. The three chan_sip options all set the one address chan_sip
//!   puts in its messages, so only the last valid one counts, as in chan_sip.
//!   A port written with them is dropped; loopback and unspecified addresses
//!   say nothing about where the PBX's traffic comes from, so they give no fact.
//!
//! A value Asterisk would reject (bad address, bad port, unknown protocol) is an
//! error with file and line, so the agent keeps its last good facts. Things
//! Asterisk merely skips are warnings: [`discover`] logs them, [`discover_report`]
//! returns them.

use super::ini::{self, Config, Entry, Section};
use super::Discovered;
use ipnet::IpNet;
use palisade_model::{
    DiscoveryError, ListenPort, PbxKind, Peer, PeerTarget, PortRange, Provenance, PublicAddress,
    RtpRange, Transport,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The files read from the configuration directory, in this order.
pub const FILES: [&str; 5] = [
    "pjsip.conf",
    "sip.conf",
    "iax.conf",
    "rtp.conf",
    "http.conf",
];

const SIP_PORT: u16 = 5060;
const SIP_TLS_PORT: u16 = 5061;
const IAX_PORT: u16 = 4569;
const HTTP_PORT: u16 = 8088;
const HTTPS_PORT: u16 = 8089;
const RTP_START: u16 = 10000;
const RTP_END: u16 = 20000;

/// [`Discovered`] plus the warnings, for callers (and tests) that want to show
/// them rather than only log them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub discovered: Discovered,
    pub warnings: Vec<DiscoveryError>,
}

/// Reads the tree under `root` (normally `/etc/asterisk`). Warnings go to the
/// log at warn level; they never make the result unusable.
pub fn discover(root: &Path) -> Discovered {
    let report = discover_report(root);
    for w in &report.warnings {
        tracing::warn!(warning = %w, "Asterisk configuration");
    }
    report.discovered
}

/// Like [`discover`], returning the warnings instead of logging them.
pub fn discover_report(root: &Path) -> Report {
    let mut b = Builder::default();
    let load = |name: &str, b: &mut Builder| -> Option<Config> {
        let path = root.join(name);
        b.watch(&path);
        let cfg = ini::load_optional(&path)?;
        b.absorb(&cfg);
        Some(cfg)
    };
    let pjsip = load("pjsip.conf", &mut b);
    let sip = load("sip.conf", &mut b);
    let iax = load("iax.conf", &mut b);
    let rtp = load("rtp.conf", &mut b);
    let http_cfg = load("http.conf", &mut b);

    let http = http_cfg.as_ref().map(|c| b.http(c));
    let http_present = http.is_some();
    let http = http.unwrap_or_default();
    let mut web = WebTransports::default();
    if let Some(c) = &pjsip {
        web = b.pjsip(c);
    }
    b.web_listen(&http, &web, http_present);
    if let Some(c) = &sip {
        b.chan_sip(c);
    }
    if let Some(c) = &iax {
        b.iax(c);
    }
    if let Some(c) = &rtp {
        b.rtp(c);
    }
    let found =
        pjsip.is_some() || sip.is_some() || iax.is_some() || rtp.is_some() || http_cfg.is_some();
    if found {
        b.facts.kinds.push(PbxKind::Asterisk);
    }
    b.facts.normalize();
    Report {
        discovered: Discovered {
            facts: b.facts,
            errors: b.errors,
            files: b.files,
        },
        warnings: b.warnings,
    }
}

#[derive(Default)]
struct Builder {
    facts: palisade_model::PbxFacts,
    errors: Vec<DiscoveryError>,
    warnings: Vec<DiscoveryError>,
    files: Vec<PathBuf>,
    seen: HashSet<PathBuf>,
}

/// A listening socket before it becomes a [`ListenPort`].
#[derive(Debug, Clone)]
struct Listen {
    port: u16,
    addr: Option<IpAddr>,
    prov: Provenance,
}

#[derive(Debug, Clone, Default)]
struct Http {
    http: Option<Listen>,
    https: Option<Listen>,
}

/// The first ws and wss transports, which need the HTTP server.
#[derive(Debug, Clone, Default)]
struct WebTransports {
    ws: Option<Provenance>,
    wss: Option<Provenance>,
}

impl Builder {
    fn watch(&mut self, path: &Path) {
        if self.seen.insert(path.to_path_buf()) {
            self.files.push(path.to_path_buf());
        }
    }

    fn absorb(&mut self, cfg: &Config) {
        for f in &cfg.files {
            self.watch(f);
        }
        let conv = |e: &ini::IniError| DiscoveryError {
            file: e.file.display().to_string(),
            line: e.line,
            message: e.kind.to_string(),
        };
        self.errors.extend(cfg.errors.iter().map(conv));
        self.warnings.extend(cfg.warnings.iter().map(conv));
    }

    /// An option with a value Asterisk would refuse: the line and what to fix.
    fn bad(&mut self, cfg: &Config, sec: &Section, e: &Entry, value: &str, why: &str) {
        self.errors.push(DiscoveryError {
            file: cfg.path(e.file).display().to_string(),
            line: e.line,
            message: format!("[{}] {} `{}`: {}", sec.name, e.key, value, why),
        });
    }

    fn warn_section(&mut self, cfg: &Config, sec: &Section, why: String) {
        self.warnings.push(DiscoveryError {
            file: cfg.path(sec.file).display().to_string(),
            line: sec.line,
            message: format!("[{}] {}", sec.name, why),
        });
    }

    fn listen(&mut self, transport: Transport, l: Listen) {
        self.facts.listen.push(ListenPort {
            transport,
            port: l.port,
            addr: l.addr,
            provenance: l.prov,
        });
    }

    fn peer(&mut self, name: &str, target: PeerTarget, prov: Provenance) {
        self.facts.peers.push(Peer {
            name: name.to_string(),
            target,
            provenance: prov,
        });
    }

    fn public(&mut self, target: PeerTarget, prov: Provenance) {
        self.facts.public.push(PublicAddress {
            target,
            provenance: prov,
        });
    }

    // ---------------------------------------------------------------- pjsip

    fn pjsip(&mut self, cfg: &Config) -> WebTransports {
        let objects: Vec<(Kind, &Section)> = cfg
            .sections
            .iter()
            .filter(|s| !s.is_template)
            .map(|s| (Kind::of(s), s))
            .collect();

        // Transports first: endpoints and registrations refer to them by name.
        let mut transports: HashMap<String, Transport> = HashMap::new();
        let mut web = WebTransports::default();
        for (_, s) in objects.iter().filter(|(k, _)| *k == Kind::Transport) {
            let protocol = match s.get("protocol") {
                None => Transport::Udp,
                Some(e) => match Transport::parse(&e.value).filter(|t| *t != Transport::Iax) {
                    Some(t) => t,
                    None => {
                        self.bad(
                            cfg,
                            s,
                            e,
                            &e.value,
                            "unknown protocol (udp, tcp, tls, ws or wss)",
                        );
                        continue;
                    }
                },
            };
            transports.insert(s.name.to_ascii_lowercase(), protocol);
            // A UDP/TCP/TLS transport without bind= never starts, so it
            // advertises nothing (its warning comes from pjsip_bind).
            if matches!(protocol, Transport::Ws | Transport::Wss) || s.get("bind").is_some() {
                self.pjsip_external(cfg, s);
            }
            match protocol {
                Transport::Ws => {
                    web.ws
                        .get_or_insert_with(|| header_prov(cfg, s, "ws transport"));
                }
                Transport::Wss => {
                    web.wss
                        .get_or_insert_with(|| header_prov(cfg, s, "wss transport"));
                }
                _ => self.pjsip_bind(cfg, s, protocol),
            }
        }
        let hint = |s: &Section| -> Option<Transport> {
            s.value("transport")
                .and_then(|t| transports.get(&t.trim().to_ascii_lowercase()).copied())
        };

        // An AOR's contacts are reached over its endpoint's transport.
        let mut aor_transport: HashMap<String, Transport> = HashMap::new();
        for (_, s) in objects.iter().filter(|(k, _)| *k == Kind::Endpoint) {
            if let (Some(t), Some(aors)) = (hint(s), s.value("aors")) {
                for aor in aors.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    aor_transport.entry(aor.to_ascii_lowercase()).or_insert(t);
                }
            }
        }

        for &(kind, s) in &objects {
            match kind {
                Kind::Endpoint => {
                    let t = hint(s);
                    if let Some(e) = s.get("outbound_proxy") {
                        self.uri_peer(cfg, s, e, &s.name, "endpoint outbound_proxy", t);
                    }
                }
                Kind::Aor => {
                    let t = aor_transport.get(&s.name.to_ascii_lowercase()).copied();
                    for e in s.get_all("contact") {
                        for item in split_list(&e.value) {
                            self.uri_item(cfg, s, e, item, &s.name, "aor contact", t);
                        }
                    }
                    if let Some(e) = s.get("outbound_proxy") {
                        self.uri_peer(cfg, s, e, &s.name, "aor outbound_proxy", t);
                    }
                }
                Kind::Identify => self.identify(cfg, s),
                Kind::Registration => {
                    let t = hint(s);
                    // `endpoint=` (set by FreePBX) names the trunk the registration is for.
                    let name = s
                        .value("endpoint")
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .unwrap_or(&s.name)
                        .to_string();
                    match s.get("server_uri") {
                        Some(e) => self.uri_peer(cfg, s, e, &name, "registration server_uri", t),
                        None => self.warn_section(
                            cfg,
                            s,
                            "registration has no server_uri; Asterisk does not send it".into(),
                        ),
                    }
                    if let Some(e) = s.get("outbound_proxy") {
                        self.uri_peer(cfg, s, e, &name, "registration outbound_proxy", t);
                    }
                }
                Kind::Transport | Kind::Other => {}
                Kind::Missing => {
                    self.warn_section(cfg, s, "section has no type=; Asterisk ignores it".into())
                }
            }
        }
        web
    }

    fn pjsip_bind(&mut self, cfg: &Config, s: &Section, protocol: Transport) {
        let Some(e) = s.get("bind") else {
            self.warn_section(
                cfg,
                s,
                "transport has no bind=; Asterisk does not start it".into(),
            );
            return;
        };
        match parse_bind(&e.value) {
            Ok((addr, port)) => {
                let default = if protocol == Transport::Tls {
                    SIP_TLS_PORT
                } else {
                    SIP_PORT
                };
                self.listen(
                    protocol,
                    Listen {
                        port: port.unwrap_or(default),
                        addr: Some(addr),
                        prov: prov(cfg, s, e, "transport bind"),
                    },
                );
            }
            Err(why) => self.bad(cfg, s, e, &e.value, &why),
        }
    }

    /// A transport's NAT addresses. Asterisk does not start a transport whose
    /// external address it cannot use, hence an error for a bad one.
    fn pjsip_external(&mut self, cfg: &Config, s: &Section) {
        for key in ["external_signaling_address", "external_media_address"] {
            let Some(e) = s.get(key) else { continue };
            let value = e.value.trim();
            if value.is_empty() {
                continue;
            }
            match parse_public(value) {
                Ok(Some(target)) => {
                    let p = prov(cfg, s, e, &format!("transport {key}"));
                    self.public(target, p);
                }
                Ok(None) => {}
                Err(why) => self.bad(cfg, s, e, value, &why),
            }
        }
    }

    fn identify(&mut self, cfg: &Config, s: &Section) {
        let Some(endpoint) = s.value("endpoint").map(str::trim).filter(|v| !v.is_empty()) else {
            self.warn_section(
                cfg,
                s,
                "identify has no endpoint=; Asterisk ignores it".into(),
            );
            return;
        };
        let endpoint = endpoint.to_string();
        for e in s.get_all("match") {
            for item in split_list(&e.value) {
                match parse_match(item) {
                    Ok(target) => {
                        let p = prov(cfg, s, e, "identify match");
                        self.peer(&endpoint, target, p);
                    }
                    Err(why) => self.bad(cfg, s, e, item, &why),
                }
            }
        }
    }

    fn uri_peer(
        &mut self,
        cfg: &Config,
        s: &Section,
        e: &Entry,
        name: &str,
        what: &str,
        t: Option<Transport>,
    ) {
        let value = e.value.trim();
        if !value.is_empty() {
            self.uri_item(cfg, s, e, value, name, what, t);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn uri_item(
        &mut self,
        cfg: &Config,
        s: &Section,
        e: &Entry,
        item: &str,
        name: &str,
        what: &str,
        t: Option<Transport>,
    ) {
        match parse_sip_uri(item) {
            Ok((hp, uri_t)) => {
                let p = prov(cfg, s, e, what);
                self.peer(name, hp.target(uri_t.or(t)), p);
            }
            Err(why) => self.bad(cfg, s, e, item, &why),
        }
    }

    // ---------------------------------------------------------------- http

    fn http(&mut self, cfg: &Config) -> Http {
        let g = General::of(cfg);
        let mut out = Http::default();
        let enabled = g.last(&["enabled"]).is_some_and(|(_, e)| truthy(&e.value));
        let bindport = g.port(self, cfg, &["bindport"]);
        if enabled {
            if let Some((s, e)) = g.last(&["bindaddr"]) {
                match parse_hostport(&e.value) {
                    Ok(hp) => {
                        let addr = hp.ip();
                        out.http = Some(match (hp.port, &bindport) {
                            (Some(port), _) => Listen {
                                port,
                                addr,
                                prov: prov(cfg, s, e, "bindaddr"),
                            },
                            (None, Some((port, ps, pe))) => Listen {
                                port: *port,
                                addr,
                                prov: prov(cfg, ps, pe, "bindport"),
                            },
                            (None, None) => Listen {
                                port: HTTP_PORT,
                                addr,
                                prov: prov(cfg, s, e, "bindaddr (default port 8088)"),
                            },
                        });
                    }
                    Err(why) => self.bad(cfg, s, e, &e.value, &why),
                }
            }
        }
        let tls = g
            .last(&["tlsenable", "sslenable"])
            .filter(|(_, e)| truthy(&e.value));
        let tlsport = g.port(self, cfg, &["tlsbindport"]).map(|(p, _, _)| p);
        if let Some((ts, te)) = tls {
            if let Some((s, e)) = g.last(&["tlsbindaddr", "sslbindaddr"]) {
                match parse_hostport(&e.value) {
                    Ok(hp) => {
                        out.https = Some(Listen {
                            port: hp.port.or(tlsport).unwrap_or(HTTPS_PORT),
                            addr: hp.ip(),
                            prov: prov(cfg, s, e, "tlsbindaddr"),
                        })
                    }
                    Err(why) => self.bad(cfg, s, e, &e.value, &why),
                }
            } else if let Some(h) = &out.http {
                // Asterisk serves TLS on the HTTP address when no TLS one is given.
                out.https = Some(Listen {
                    port: tlsport.unwrap_or(HTTPS_PORT),
                    addr: h.addr,
                    prov: prov(cfg, ts, te, "tlsenable (HTTP address)"),
                });
            }
        }
        out
    }

    fn web_listen(&mut self, http: &Http, web: &WebTransports, http_present: bool) {
        let pairs = [
            (Transport::Ws, &http.http, &web.ws, HTTP_PORT, "enabled"),
            (
                Transport::Wss,
                &http.https,
                &web.wss,
                HTTPS_PORT,
                "tlsenable",
            ),
        ];
        for (transport, served, needed, default, option) in pairs {
            match (served, needed) {
                (Some(l), _) => self.listen(transport, l.clone()),
                (None, Some(p)) => {
                    if http_present {
                        self.warnings.push(DiscoveryError {
                            file: p.file.clone(),
                            line: p.line,
                            message: format!(
                                "[{}] {transport} transport needs the HTTP server, which http.conf does not \
                                 start (`{option}`, `bindaddr`); reporting port {default} anyway",
                                p.section
                            ),
                        });
                    }
                    let mut prov = p.clone();
                    prov.what = format!("{} (HTTP server default port {default})", prov.what);
                    self.listen(
                        transport,
                        Listen {
                            port: default,
                            addr: None,
                            prov,
                        },
                    );
                }
                (None, None) => {}
            }
        }
    }

    // ---------------------------------------------------------------- chan_sip

    fn chan_sip(&mut self, cfg: &Config) {
        let g = General::of(cfg);
        let bindport = g.port(self, cfg, &["bindport"]);
        let bindaddr =
            g.last(&["bindaddr", "udpbindaddr"])
                .and_then(|(s, e)| match parse_bind(&e.value) {
                    Ok(b) => Some((b, s, e)),
                    Err(why) => {
                        self.bad(cfg, s, e, &e.value, &why);
                        None
                    }
                });
        let udp_addr = bindaddr.map(|((a, _), _, _)| a);
        let udp = match (&bindport, &bindaddr) {
            (Some((port, s, e)), _) => Listen {
                port: *port,
                addr: udp_addr,
                prov: prov(cfg, s, e, "bindport"),
            },
            (None, Some(((_, port), s, e))) => Listen {
                port: port.unwrap_or(SIP_PORT),
                addr: udp_addr,
                prov: prov(cfg, s, e, &e.key.to_ascii_lowercase()),
            },
            (None, None) => Listen {
                port: SIP_PORT,
                addr: None,
                prov: g.default_prov(cfg, "default port 5060"),
            },
        };
        if let Some((s, e)) = g.last(&["tcpenable"]).filter(|(_, e)| truthy(&e.value)) {
            match g.last(&["tcpbindaddr"]) {
                Some((bs, be)) => match parse_bind(&be.value) {
                    Ok((addr, port)) => self.listen(
                        Transport::Tcp,
                        Listen {
                            port: port.unwrap_or(SIP_PORT),
                            addr: Some(addr),
                            prov: prov(cfg, bs, be, "tcpbindaddr"),
                        },
                    ),
                    Err(why) => self.bad(cfg, bs, be, &be.value, &why),
                },
                None => self.listen(
                    Transport::Tcp,
                    Listen {
                        prov: prov(cfg, s, e, "tcpenable (UDP address and port)"),
                        ..udp.clone()
                    },
                ),
            }
        }
        if let Some((s, e)) = g
            .last(&["tlsenable", "sslenable"])
            .filter(|(_, e)| truthy(&e.value))
        {
            match g.last(&["tlsbindaddr", "sslbindaddr"]) {
                Some((bs, be)) => match parse_bind(&be.value) {
                    Ok((addr, port)) => self.listen(
                        Transport::Tls,
                        Listen {
                            port: port.unwrap_or(SIP_TLS_PORT),
                            addr: Some(addr),
                            prov: prov(cfg, bs, be, "tlsbindaddr"),
                        },
                    ),
                    Err(why) => self.bad(cfg, bs, be, &be.value, &why),
                },
                None => self.listen(
                    Transport::Tls,
                    Listen {
                        port: SIP_TLS_PORT,
                        addr: udp_addr,
                        prov: prov(cfg, s, e, "tlsenable (UDP address, port 5061)"),
                    },
                ),
            }
        }
        self.listen(Transport::Udp, udp);
        self.chan_sip_extern(cfg, &g);

        for (s, e) in g.all(&["register"]) {
            match parse_sip_register(&e.value) {
                Ok((hp, t)) => {
                    let name = hp.host_string();
                    let p = prov(cfg, s, e, "register");
                    self.peer(&name, hp.target(t), p);
                }
                Err(why) => self.bad(cfg, s, e, &e.value, &why),
            }
        }
        if let Some((s, e)) = g.last(&["outboundproxy"]) {
            self.sip_proxy(cfg, s, e, None);
        }
        for s in cfg.sections.iter().filter(|s| {
            !s.is_template
                && !s.name.eq_ignore_ascii_case("general")
                && !s.name.eq_ignore_ascii_case("authentication")
        }) {
            let t = s.value("transport").and_then(|v| {
                let first = v.split(',').next().unwrap_or("");
                Transport::parse(first)
                    .filter(|t| matches!(t, Transport::Udp | Transport::Tcp | Transport::Tls))
            });
            self.host_peer(cfg, s, t);
            if let Some(e) = s.get("outboundproxy") {
                self.sip_proxy(cfg, s, e, t);
            }
        }
    }

    /// `externip`, `externaddr` and `externhost` all set the address chan_sip
    /// advertises; a later valid line replaces an earlier one. chan_sip logs a
    /// bad one and carries on, so that is a warning here.
    fn chan_sip_extern(&mut self, cfg: &Config, g: &General) {
        let mut last: Option<(Option<PeerTarget>, Provenance)> = None;
        for (s, e) in g.all(&["externip", "externaddr", "externhost"]) {
            let value = e.value.trim();
            if value.is_empty() {
                continue;
            }
            match parse_public(value) {
                Ok(target) => last = Some((target, prov(cfg, s, e, &e.key.to_ascii_lowercase()))),
                Err(why) => self.warnings.push(DiscoveryError {
                    file: cfg.path(e.file).display().to_string(),
                    line: e.line,
                    message: format!(
                        "[{}] {} `{value}`: {why}; chan_sip ignores it",
                        s.name, e.key
                    ),
                }),
            }
        }
        if let Some((Some(target), p)) = last {
            self.public(target, p);
        }
    }

    /// `host=` (not `dynamic`) with an optional `port=`, for chan_sip and IAX2.
    fn host_peer(&mut self, cfg: &Config, s: &Section, t: Option<Transport>) {
        let Some(e) = s.get("host") else { return };
        let value = e.value.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("dynamic") {
            return;
        }
        let mut hp = match parse_hostport(value) {
            Ok(hp) => hp,
            Err(why) => return self.bad(cfg, s, e, value, &why),
        };
        if let Some(pe) = s.get("port") {
            match parse_port(&pe.value) {
                Ok(p) => hp.port = Some(p),
                Err(why) => return self.bad(cfg, s, pe, &pe.value, &why),
            }
        }
        let p = prov(cfg, s, e, "peer host");
        self.peer(&s.name, hp.target(t), p);
    }

    /// chan_sip's `outboundproxy=[transport://]host[:port]` (a `sip:` URI is
    /// accepted too).
    fn sip_proxy(&mut self, cfg: &Config, s: &Section, e: &Entry, t: Option<Transport>) {
        let value = e.value.trim();
        if value.is_empty() {
            return;
        }
        let parsed = match value.split_once("://") {
            Some((scheme, rest)) => match Transport::parse(scheme) {
                Some(pt @ (Transport::Udp | Transport::Tcp | Transport::Tls)) => {
                    parse_hostport(rest).map(|hp| (hp, Some(pt)))
                }
                _ => Err(format!("unknown transport `{scheme}://`")),
            },
            None => parse_sip_uri(value),
        };
        match parsed {
            Ok((hp, pt)) => {
                let p = prov(cfg, s, e, "outboundproxy");
                self.peer(&s.name, hp.target(pt.or(t)), p);
            }
            Err(why) => self.bad(cfg, s, e, value, &why),
        }
    }

    // ---------------------------------------------------------------- iax

    fn iax(&mut self, cfg: &Config) {
        let g = General::of(cfg);
        // bindport applies to the bindaddr lines that follow it, as in chan_iax2.
        let mut port: Option<(u16, &Section, &Entry)> = None;
        let mut any_bindaddr = false;
        for (s, e) in &g.entries {
            if e.key.eq_ignore_ascii_case("bindport") {
                match parse_port(&e.value) {
                    Ok(p) => port = Some((p, s, e)),
                    Err(why) => self.bad(cfg, s, e, &e.value, &why),
                }
            } else if e.key.eq_ignore_ascii_case("bindaddr") {
                any_bindaddr = true;
                match parse_bind(&e.value) {
                    Ok((addr, p)) => {
                        let l = Listen {
                            port: p.or(port.map(|(p, _, _)| p)).unwrap_or(IAX_PORT),
                            addr: Some(addr),
                            prov: prov(cfg, s, e, "bindaddr"),
                        };
                        self.listen(Transport::Iax, l);
                    }
                    Err(why) => self.bad(cfg, s, e, &e.value, &why),
                }
            }
        }
        if !any_bindaddr {
            let l = match port {
                Some((p, s, e)) => Listen {
                    port: p,
                    addr: None,
                    prov: prov(cfg, s, e, "bindport"),
                },
                None => Listen {
                    port: IAX_PORT,
                    addr: None,
                    prov: g.default_prov(cfg, "default port 4569"),
                },
            };
            self.listen(Transport::Iax, l);
        }
        for (s, e) in g.all(&["register"]) {
            match parse_iax_register(&e.value) {
                Ok(hp) => {
                    let name = hp.host_string();
                    let p = prov(cfg, s, e, "register");
                    self.peer(&name, hp.target(Some(Transport::Iax)), p);
                }
                Err(why) => self.bad(cfg, s, e, &e.value, &why),
            }
        }
        for s in cfg
            .sections
            .iter()
            .filter(|s| !s.is_template && !s.name.eq_ignore_ascii_case("general"))
        {
            self.host_peer(cfg, s, Some(Transport::Iax));
        }
    }

    // ---------------------------------------------------------------- rtp

    fn rtp(&mut self, cfg: &Config) {
        let g = General::of(cfg);
        let start = g.port(self, cfg, &["rtpstart"]);
        let end = g.port(self, cfg, &["rtpend"]);
        let (first, last) = (
            start.as_ref().map_or(RTP_START, |(p, _, _)| *p),
            end.as_ref().map_or(RTP_END, |(p, _, _)| *p),
        );
        let prov = match (&start, &end) {
            (Some((_, s, e)), _) => prov(cfg, s, e, "rtpstart"),
            (None, Some((_, s, e))) => prov(cfg, s, e, "rtpend"),
            (None, None) => g.default_prov(cfg, "default range 10000-20000"),
        };
        if first > last {
            let (s, e) = match (&end, &start) {
                (Some((_, s, e)), _) | (None, Some((_, s, e))) => (*s, *e),
                (None, None) => return,
            };
            self.bad(
                cfg,
                s,
                e,
                &e.value,
                &format!("rtpstart {first} is above rtpend {last}"),
            );
            return;
        }
        self.facts.rtp = Some(RtpRange {
            range: PortRange { first, last },
            provenance: prov,
        });
    }
}

/// The `type=` of a PJSIP section, as far as facts are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transport,
    Endpoint,
    Aor,
    Identify,
    Registration,
    Other,
    Missing,
}

impl Kind {
    fn of(s: &Section) -> Kind {
        let Some(t) = s.value("type").map(str::trim) else {
            return Kind::Missing;
        };
        [
            ("transport", Kind::Transport),
            ("endpoint", Kind::Endpoint),
            ("aor", Kind::Aor),
            ("identify", Kind::Identify),
            ("registration", Kind::Registration),
        ]
        .into_iter()
        .find(|(name, _)| t.eq_ignore_ascii_case(name))
        .map_or(Kind::Other, |(_, k)| k)
    }
}

/// The options of all `[general]` sections in file order: chan_sip, IAX2, RTP
/// and HTTP settings, often spread over FreePBX's `*_additional.conf` includes.
struct General<'a> {
    first: Option<&'a Section>,
    entries: Vec<(&'a Section, &'a Entry)>,
}

type PortAt<'a> = (u16, &'a Section, &'a Entry);

impl<'a> General<'a> {
    fn of(cfg: &'a Config) -> General<'a> {
        let mut first = None;
        let mut entries = Vec::new();
        for s in cfg.sections_named("general").filter(|s| !s.is_template) {
            first.get_or_insert(s);
            entries.extend(s.entries.iter().map(|e| (s, e)));
        }
        General { first, entries }
    }

    fn last(&self, keys: &[&str]) -> Option<(&'a Section, &'a Entry)> {
        self.entries
            .iter()
            .rev()
            .find(|(_, e)| keys.iter().any(|k| e.key.eq_ignore_ascii_case(k)))
            .copied()
    }

    fn all<'b>(
        &'b self,
        keys: &'b [&'b str],
    ) -> impl Iterator<Item = (&'a Section, &'a Entry)> + 'b {
        self.entries
            .iter()
            .filter(move |(_, e)| keys.iter().any(|k| e.key.eq_ignore_ascii_case(k)))
            .copied()
    }

    /// The last of `keys` as a port; an invalid one is reported and ignored.
    fn port(&self, b: &mut Builder, cfg: &Config, keys: &[&str]) -> Option<PortAt<'a>> {
        let (s, e) = self.last(keys)?;
        match parse_port(&e.value) {
            Ok(p) => Some((p, s, e)),
            Err(why) => {
                b.bad(cfg, s, e, &e.value, &why);
                None
            }
        }
    }

    /// Where a default applies: the `[general]` header, or line 0 (the whole
    /// file) when there is none.
    fn default_prov(&self, cfg: &Config, what: &str) -> Provenance {
        match self.first {
            Some(s) => header_prov(cfg, s, what),
            None => Provenance {
                // The top file is always the first one met.
                file: cfg
                    .files
                    .first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                line: 0,
                section: "general".into(),
                what: what.into(),
            },
        }
    }
}

fn prov(cfg: &Config, s: &Section, e: &Entry, what: &str) -> Provenance {
    let what = match e.inherited_from.and_then(|t| cfg.sections.get(t)) {
        Some(t) => format!("{what} (from template [{}])", t.name),
        None => what.to_string(),
    };
    Provenance {
        file: cfg.path(e.file).display().to_string(),
        line: e.line,
        section: s.name.clone(),
        what,
    }
}

fn header_prov(cfg: &Config, s: &Section, what: &str) -> Provenance {
    Provenance {
        file: cfg.path(s.file).display().to_string(),
        line: s.line,
        section: s.name.clone(),
        what: what.to_string(),
    }
}

/// Asterisk's `ast_true`.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "yes" | "true" | "y" | "t" | "1" | "on"
    )
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

// -------------------------------------------------------------------- addresses

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPort {
    host: Host,
    port: Option<u16>,
}

impl HostPort {
    fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(a) => Some(a),
            Host::Name(_) => None,
        }
    }

    fn host_string(&self) -> String {
        match &self.host {
            Host::Ip(a) => a.to_string(),
            Host::Name(n) => n.clone(),
        }
    }

    fn target(self, transport: Option<Transport>) -> PeerTarget {
        match self.host {
            Host::Ip(a) => PeerTarget::Addr(a),
            Host::Name(name) => PeerTarget::Host {
                name,
                port: self.port,
                transport,
            },
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port `{s}` is not a number"));
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("port {s} is out of range (1-65535)")),
    }
}

/// `addr`, `addr:port`, `[v6]`, `[v6]:port`, bare `v6`, `name`, `name:port`.
fn parse_hostport(s: &str) -> Result<HostPort, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("no address".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(format!("`{s}` has no closing `]`"));
        };
        let inner = &rest[..close];
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("`{inner}` is not a valid IPv6 address"))?;
        let after = &rest[close + 1..];
        let port = if after.is_empty() {
            None
        } else if let Some(p) = after.strip_prefix(':') {
            Some(parse_port(p)?)
        } else {
            return Err(format!("unexpected `{after}` after `[{inner}]`"));
        };
        return Ok(HostPort {
            host: Host::Ip(IpAddr::V6(ip)),
            port,
        });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(HostPort {
            host: Host::Ip(ip),
            port: None,
        });
    }
    let (host, port) = match s.split_once(':') {
        None => (s, None),
        Some((h, p)) if !p.contains(':') => (h, Some(parse_port(p)?)),
        Some(_) => {
            return Err(format!(
                "`{s}` is not a valid IPv6 address (write [address]:port to give a port)"
            ))
        }
    };
    Ok(HostPort {
        host: parse_host(host)?,
        port,
    })
}

fn parse_host(s: &str) -> Result<Host, String> {
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{s}` is not a valid IPv4 address"));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if palisade_model::net::is_host_name(name) {
        Ok(Host::Name(name.to_ascii_lowercase()))
    } else if s.is_empty() {
        Err("no host".into())
    } else {
        Err(format!(
            "`{s}` is neither an IP address nor a valid host name"
        ))
    }
}

/// An address the PBX advertises as its own, `host[:port]` as
/// [`parse_hostport`] reads it; the port is dropped (see
/// [`super::public_target`]).
fn parse_public(s: &str) -> Result<Option<PeerTarget>, String> {
    Ok(match parse_hostport(s)?.host {
        Host::Ip(a) => super::public_target("", Some(a)),
        Host::Name(name) => super::public_target(&name, None),
    })
}

/// An IP with a bind (pjsip `bind`, chan_sip and IAX2 `bindaddr`): no names.
fn parse_bind(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let hp = parse_hostport(s)?;
    match hp.host {
        Host::Ip(a) => Ok((a, hp.port)),
        Host::Name(n) => Err(format!(
            "`{n}` is not an IP address, which a bind address must be"
        )),
    }
}

/// `addr/prefix` or `addr/netmask`; host bits are cleared as Asterisk's ACLs do.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let (a, m) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("`{s}` is not a network"))?;
    let a = a.trim();
    let bare = a
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(a);
    let addr: IpAddr = match bare.parse() {
        Ok(ip) => ip,
        Err(_) => {
            return Err(match parse_host(bare) {
                Err(why) => why,
                Ok(_) => format!("`{bare}` is not an IP address, which a network needs"),
            })
        }
    };
    let m = m.trim();
    let net = if !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()) {
        let len = m.parse::<u8>().ok();
        len.and_then(|l| IpNet::new(addr, l).ok())
            .ok_or_else(|| format!("prefix length /{m} is too long for {addr}"))?
    } else {
        let mask: IpAddr = m
            .parse()
            .map_err(|_| format!("`{m}` is neither a prefix length nor a netmask"))?;
        IpNet::with_netmask(addr, mask)
            .map_err(|_| format!("`{m}` is not a contiguous netmask for {addr}"))?
    };
    Ok(net.trunc())
}

/// One item of an `identify` `match=`: address, network or host name, each
/// optionally with a port.
fn parse_match(item: &str) -> Result<PeerTarget, String> {
    if item.contains('/') {
        return parse_net(item).map(PeerTarget::Net);
    }
    parse_hostport(item).map(|hp| hp.target(None))
}

/// `sip:` / `sips:` URIs as pjsip writes them (`<...>`, user part, `;params`,
/// `?headers`). A bare `host[:port]` is accepted; other schemes are errors.
fn parse_sip_uri(s: &str) -> Result<(HostPort, Option<Transport>), String> {
    let mut s = s.trim();
    if let (Some(a), Some(b)) = (s.find('<'), s.rfind('>')) {
        if a < b {
            s = &s[a + 1..b];
        }
    }
    let lower = s.get(..5).unwrap_or(s).to_ascii_lowercase();
    let (rest, secure) = if lower.starts_with("sips:") {
        (&s[5..], true)
    } else if lower.starts_with("sip:") {
        (&s[4..], false)
    } else {
        if let Some((scheme, after)) = s.split_once(':') {
            let port_like = after
                .split([';', '?', '/'])
                .next()
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphabetic()) && !port_like {
                return Err(format!("`{s}` is not a sip: or sips: URI"));
            }
        }
        (s, false)
    };
    let rest = rest.split('?').next().unwrap_or(rest);
    let hostpart = match rest.rfind('@') {
        Some(i) => &rest[i + 1..],
        None => rest,
    };
    let mut parts = hostpart.split(';');
    let hostport = parts.next().unwrap_or("");
    let mut transport = None;
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("transport") {
                transport = Transport::parse(v).filter(|t| *t != Transport::Iax);
            }
        }
    }
    if secure && transport.is_none() {
        transport = Some(Transport::Tls);
    }
    if hostport.trim().is_empty() {
        return Err("URI has no host".into());
    }
    Ok((parse_hostport(hostport)?, transport))
}

/// chan_sip's `register => [peer?][transport://]user[@domain][:secret[:authuser]]@host[:port][/extension][~expiry]`.
fn parse_sip_register(v: &str) -> Result<(HostPort, Option<Transport>), String> {
    let mut s = v.trim();
    if let Some((before, after)) = s.split_once('?') {
        if !before.contains(['@', ':', '/']) {
            s = after;
        }
    }
    let mut transport = None;
    if let Some((scheme, rest)) = s.split_once("://") {
        match Transport::parse(scheme) {
            Some(t @ (Transport::Udp | Transport::Tcp | Transport::Tls)) => transport = Some(t),
            _ => return Err(format!("unknown transport `{scheme}://`")),
        }
        s = rest;
    }
    let at = s.rfind('@').ok_or("no `@host` in the registration")?;
    let hostport = s[at + 1..].split(['/', '~']).next().unwrap_or("");
    Ok((parse_hostport(hostport)?, transport))
}

/// IAX2's `register => user[:secret]@host[:port]`.
fn parse_iax_register(v: &str) -> Result<HostPort, String> {
    let s = v.trim();
    let at = s.rfind('@').ok_or("no `@host` in the registration")?;
    parse_hostport(&s[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, port: Option<u16>, t: Option<Transport>) -> PeerTarget {
        PeerTarget::Host {
            name: n.into(),
            port,
            transport: t,
        }
    }

    #[test]
    fn host_ports() {
        let ok = |s: &str| parse_hostport(s).unwrap();
        assert_eq!(ok("10.1.2.3").ip(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(ok("10.1.2.3:5080").port, Some(5080));
        assert_eq!(ok("[2001:db8::1]:5061").port, Some(5061));
        assert_eq!(ok("2001:db8::1").ip(), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(ok("::").ip(), Some("::".parse().unwrap()));
        assert_eq!(
            ok("SIP.Example.COM.:5070").host,
            Host::Name("sip.example.com".into())
        );
        let err = |s: &str| parse_hostport(s).unwrap_err();
        assert_eq!(err("300.1.2.3"), "`300.1.2.3` is not a valid IPv4 address");
        assert_eq!(err("0.0.0.0:70000"), "port 70000 is out of range (1-65535)");
        assert_eq!(err("host:abc"), "port `abc` is not a number");
        assert_eq!(err("[::1"), "`[::1` has no closing `]`");
        assert_eq!(err("[fe80::zz]"), "`fe80::zz` is not a valid IPv6 address");
        assert!(err("2001:db8::1:5060x").contains("not a valid IPv6 address"));
        assert!(err("bad_name!").contains("neither an IP address nor a valid host name"));
        assert_eq!(err(":5060"), "no host");
    }

    #[test]
    fn public_addresses() {
        let ok = |s: &str| parse_public(s).unwrap();
        let addr = |a: &str| Some(PeerTarget::Addr(a.parse().unwrap()));
        assert_eq!(ok("203.0.113.5:5060"), addr("203.0.113.5"));
        assert_eq!(ok("[2001:db8::1]:5060"), addr("2001:db8::1"));
        assert_eq!(
            ok("Pbx.Example.NET.:5060"),
            Some(name("pbx.example.net", None, None))
        );
        for local in [
            "127.0.0.1",
            "[::1]:5060",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(ok(local), None, "{local}");
        }
        assert!(parse_public("300.1.2.3").is_err());
        assert!(parse_public("bad_name!").is_err());
    }

    #[test]
    fn networks() {
        assert_eq!(
            parse_net("10.1.2.3/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("10.0.0.0/255.0.0.0").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("[2001:db8::]/32").unwrap(),
            "2001:db8::/32".parse::<IpNet>().unwrap()
        );
        assert!(parse_net("10.0.0.0/33").unwrap_err().contains("too long"));
        assert!(parse_net("10.0.0.0/255.0.255.0")
            .unwrap_err()
            .contains("contiguous"));
        assert!(parse_net("300.0.0.0/8")
            .unwrap_err()
            .contains("not a valid IPv4"));
        assert!(parse_net("host.example/8")
            .unwrap_err()
            .contains("not an IP address"));
    }

    #[test]
    fn sip_uris() {
        let t = |s: &str| {
            let (hp, t) = parse_sip_uri(s).unwrap();
            hp.target(t)
        };
        assert_eq!(
            t("sip:1234@sbc.example.net:5080;transport=TCP"),
            name("sbc.example.net", Some(5080), Some(Transport::Tcp))
        );
        assert_eq!(
            t("sips:reg.example"),
            name("reg.example", None, Some(Transport::Tls))
        );
        assert_eq!(
            t("<sip:proxy.example;lr>"),
            name("proxy.example", None, None)
        );
        assert_eq!(
            t("sip:u@[2001:db8::5]:5070"),
            PeerTarget::Addr("2001:db8::5".parse().unwrap())
        );
        assert_eq!(
            t("192.0.2.1:5060"),
            PeerTarget::Addr("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            t("sip:user;x=y@h.example?Subject=a@b"),
            name("h.example", None, None)
        );
        assert!(parse_sip_uri("tel:+15551234")
            .unwrap_err()
            .contains("not a sip: or sips: URI"));
        assert_eq!(parse_sip_uri("sip:user@").unwrap_err(), "URI has no host");
    }

    #[test]
    fn registrations() {
        let sip = |s: &str| {
            let (hp, t) = parse_sip_register(s).unwrap();
            hp.target(t)
        };
        assert_eq!(
            sip("tls://alice@example.net:secret:authalice@Sip.Example.NET:5061/1234~3600"),
            name("sip.example.net", Some(5061), Some(Transport::Tls))
        );
        assert_eq!(
            sip("trunk?2000:pw@192.0.2.9"),
            PeerTarget::Addr("192.0.2.9".parse().unwrap())
        );
        assert_eq!(sip("u:p@h.example~120"), name("h.example", None, None));
        assert!(parse_sip_register("nohost").is_err());
        assert!(parse_sip_register("sctp://u@h").is_err());
        let iax = parse_iax_register("user:[rsakey]@iax.example.com:4570").unwrap();
        assert_eq!(iax.port, Some(4570));
    }
}
