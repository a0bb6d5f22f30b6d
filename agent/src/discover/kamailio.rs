//! Kamailio: the sockets it binds (`listen=`, `socket = {...}`, or the
//! all-addresses default), and its peers from the dispatcher list and the
//! permissions address list.
//!
//! kamailio.cfg has a preprocessor, and a stock configuration depends on it:
//! features are switched on with `#!define WITH_TLS` and the matching
//! `listen=tls:...` sits inside `#!ifdef WITH_TLS`. So the conditionals are
//! evaluated (`#!define`/`#!trydef`/`#!redefine`/`#!undef`, `#!ifdef`/
//! `#!ifndef`/`#!else`/`#!endif`, and `#!substdef` as far as it defines a
//! name), and defined names are substituted in the values we read, as
//! Kamailio's lexer does (`listen=udp:MY_IP:5060`). What we cannot see:
//! defines passed on the command line (`-A NAME`), `#!defenv` (the daemon's
//! environment) and `#!ifexp` expressions, which we take as false.
//!
//! The public addresses Kamailio advertises as its own (behind NAT or a
//! load balancer) are the `advertise` of `listen=` lines and `socket` blocks,
//! and the core `advertised_address` (the last one set, as Kamailio keeps one).
//!
//! Includes (`include_file`, `import_file`, and their `#!`/`!!` forms) are
//! resolved against the including file's directory. Kamailio tries its
//! working directory first, which for a daemon is `/` and says nothing about
//! the tree. A missing `include_file` stops Kamailio, so it is an error; a
//! missing `import_file` is allowed by design.
//!
//! The permissions address list is read in Kamailio's own format,
//! `group address [netmask [port [tag]]]`, and also in the `address/len` form
//! people write by analogy with every other ACL: Kamailio reads
//! `10.0.0.0/24` as a domain name that never matches, but the writer meant
//! the network, and trusting it at the firewall only lets packets reach
//! Kamailio, which still applies its own rules.

use super::freeswitch::{
    chain, classify_host, lexical, parse_port, parse_public, parse_target, read_limited,
};
use super::Discovered;
use ipnet::IpNet;
use palisade_model::{
    DiscoveryError, ListenPort, PbxFacts, PbxKind, Peer, PeerTarget, Provenance, PublicAddress,
    Transport,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Kamailio's `MAX_INCLUDE_DEPTH`.
const MAX_DEPTH: usize = 10;
/// Bounds on what a hostile or runaway tree can make us hold (files are
/// also capped at 16 MiB each, as in the FreeSWITCH reader).
const MAX_FILES: usize = 1024;
/// A `socket` port range larger than this is a typo, not a plan.
const MAX_RANGE: usize = 1024;
/// A statement spread over more lines than this has lost its closing bracket.
const MAX_STATEMENT_LINES: usize = 200;
const DEFAULT_PORT: u16 = 5060;
const DEFAULT_TLS_PORT: u16 = 5061;

/// Reads the Kamailio tree under `root` (e.g. `/etc/kamailio`), starting at
/// `kamailio.cfg`.
pub fn discover(root: &Path) -> Discovered {
    let cfg = root.join("kamailio.cfg");
    if !cfg.is_file() {
        return Discovered::default();
    }
    let mut reader = Reader::new(root);
    reader.cfg(&cfg, None, true);
    reader.unclosed_conditionals();
    reader.resolve_listens(&cfg);
    if let Some(public) = reader.advertised_address.take() {
        reader.out.facts.public.push(public);
    }
    reader.dispatcher();
    reader.permissions();

    let mut out = reader.out;
    out.facts.kinds = vec![PbxKind::Kamailio];
    out.facts.normalize();
    out.errors
        .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

/// Where something was written.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
}

impl Site {
    fn provenance(&self, section: &str, what: &str) -> Provenance {
        Provenance {
            file: self.file.clone(),
            line: self.line,
            section: section.to_string(),
            what: what.to_string(),
        }
    }
}

/// One `#!ifdef` level: whether its current branch is taken.
struct Cond {
    taken: bool,
    site: Site,
}

/// A listening socket before the global defaults (`port`, `tls_port_no`,
/// `enable_tls`, `disable_tcp`) are known: they may come later in the file.
struct Spec {
    /// `None`: no protocol written, so every enabled one.
    proto: Option<Transport>,
    addr: Option<IpAddr>,
    /// Empty: the default port of each protocol.
    ports: Vec<u16>,
    provenance: Provenance,
}

/// A list file named by `modparam`, or `None` for the default.
struct ListFile {
    path: PathBuf,
    site: Site,
}

struct Reader {
    root: PathBuf,
    defines: HashMap<String, String>,
    conds: Vec<Cond>,
    stack: Vec<(PathBuf, String)>,
    read: usize,
    specs: Vec<Spec>,
    port: Option<u16>,
    tls_port: Option<u16>,
    enable_tls: bool,
    disable_tcp: bool,
    /// `advertised_address`: a later one replaces it (loopback clears it).
    advertised_address: Option<PublicAddress>,
    dispatcher_file: Option<ListFile>,
    dispatcher_db: bool,
    address_file: Option<ListFile>,
    out: Discovered,
}

impl Reader {
    fn new(root: &Path) -> Self {
        Reader {
            root: root.to_path_buf(),
            defines: HashMap::new(),
            conds: Vec::new(),
            stack: Vec::new(),
            read: 0,
            specs: Vec::new(),
            port: None,
            tls_port: None,
            enable_tls: false,
            disable_tcp: false,
            advertised_address: None,
            dispatcher_file: None,
            dispatcher_db: false,
            address_file: None,
            out: Discovered {
                facts: PbxFacts::default(),
                errors: Vec::new(),
                files: Vec::new(),
            },
        }
    }

    fn note(&mut self, path: &Path) {
        let path = lexical(path);
        if !self.out.files.contains(&path) {
            self.out.files.push(path);
        }
    }

    fn error(&mut self, site: &Site, message: String) {
        self.out.errors.push(DiscoveryError {
            file: site.file.clone(),
            line: site.line,
            message,
        });
    }

    fn active(&self) -> bool {
        self.conds.iter().all(|c| c.taken)
    }

    // -- kamailio.cfg and its includes ------------------------------------

    fn cfg(&mut self, path: &Path, site: Option<&Site>, required: bool) {
        let shown = lexical(path).display().to_string();
        let blame = site.cloned().unwrap_or(Site {
            file: shown.clone(),
            line: 0,
        });
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| lexical(path));
        if let Some(at) = self.stack.iter().position(|(k, _)| *k == key) {
            let chain = chain(&self.stack[at..], &shown);
            self.error(&blame, format!("include loop: {chain}"));
            return;
        }
        if self.stack.len() >= MAX_DEPTH {
            let chain = chain(&self.stack, &shown);
            self.error(
                &blame,
                format!("includes nested deeper than {MAX_DEPTH} (Kamailio's limit): {chain}"),
            );
            return;
        }
        self.note(path);
        if !path.is_file() {
            if required {
                let why = if path.exists() {
                    "is not a file"
                } else {
                    "does not exist"
                };
                self.error(&blame, format!("include_file {shown} {why}"));
            }
            return;
        }
        if self.read >= MAX_FILES {
            self.error(&blame, format!("more than {MAX_FILES} files included"));
            return;
        }
        self.read += 1;
        let text = match read_limited(path) {
            Ok(text) => text,
            Err(why) => {
                self.error(
                    &Site {
                        file: shown,
                        line: 0,
                    },
                    why,
                );
                return;
            }
        };
        self.stack.push((key, shown.clone()));
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let mut block = 0usize;
        // A `socket = {` or `modparam(` statement spread over lines.
        let mut pending: Option<(String, Site, usize)> = None;
        let mut i = 0;
        while i < lines.len() {
            let site = Site {
                file: shown.clone(),
                line: i + 1,
            };
            let mut line = lines[i].to_string();
            i += 1;
            if block == 0 {
                let t = line.trim_start();
                if let Some(d) = t.strip_prefix("#!").or_else(|| t.strip_prefix("!!")) {
                    let mut directive = d.to_string();
                    while directive.ends_with('\\') && i < lines.len() {
                        directive.pop();
                        directive.push('\n');
                        directive.push_str(lines[i]);
                        i += 1;
                    }
                    self.directive(&directive, &dir, &site);
                    continue;
                }
            }
            if !self.active() {
                continue;
            }
            line = strip_comments(&line, &mut block);
            if let Some((mut text, start, count)) = pending.take() {
                text.push('\n');
                text.push_str(&line);
                if balanced(&text) || count >= MAX_STATEMENT_LINES {
                    self.statements(&text, &dir, &start);
                } else {
                    pending = Some((text, start, count + 1));
                }
                continue;
            }
            let t = line.trim_start();
            if (keyword(t, "socket").is_some() || keyword(t, "modparam").is_some()) && !balanced(t)
            {
                pending = Some((line, site, 1));
                continue;
            }
            self.statements(&line, &dir, &site);
        }
        if let Some((text, start, _)) = pending {
            self.statements(&text, &dir, &start);
        }
        self.stack.pop();
    }

    fn directive(&mut self, d: &str, dir: &Path, site: &Site) {
        let d = d.trim();
        let word_len = d
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(d.len());
        let (word, rest) = d.split_at(word_len);
        let rest = rest.trim();
        let name = first_word(rest);
        match word {
            "ifdef" | "ifndef" => {
                let defined = self.defines.contains_key(name);
                self.conds.push(Cond {
                    taken: defined == (word == "ifdef"),
                    site: site.clone(),
                });
                return;
            }
            "ifexp" => {
                self.conds.push(Cond {
                    taken: false,
                    site: site.clone(),
                });
                return;
            }
            "else" => {
                match self.conds.last_mut() {
                    Some(c) => c.taken = !c.taken,
                    None => self.error(site, "#!else without #!ifdef".to_string()),
                }
                return;
            }
            "endif" => {
                if self.conds.pop().is_none() {
                    self.error(site, "#!endif without #!ifdef".to_string());
                }
                return;
            }
            _ => {}
        }
        if !self.active() {
            return;
        }
        let value = || rest[name.len()..].trim().to_string();
        match word {
            "define" | "def" | "redefine" | "redef" if !name.is_empty() => {
                self.defines.insert(name.to_string(), value());
            }
            "trydef" if !name.is_empty() && !self.defines.contains_key(name) => {
                self.defines.insert(name.to_string(), value());
            }
            "undef" | "tryundef" => {
                self.defines.remove(name);
            }
            "substdef" | "substdefs" => {
                if let Some((id, replacement)) = substdef(rest) {
                    let replacement = if word == "substdefs" {
                        format!("\"{replacement}\"")
                    } else {
                        replacement
                    };
                    self.defines.insert(id, replacement);
                }
            }
            "include_file" => self.include(rest, dir, site, true),
            "import_file" => self.include(rest, dir, site, false),
            // subst (rewrites text by regex), defenv & co (the daemon's
            // environment), the `#!KAMAILIO` marker: nothing we can use.
            _ => {}
        }
    }

    fn include(&mut self, arg: &str, dir: &Path, site: &Site, required: bool) {
        let directive = if required {
            "include_file"
        } else {
            "import_file"
        };
        let arg = arg.trim();
        let Some(name) = unquote(arg) else {
            self.error(
                site,
                format!("{directive} {arg}: the file name must be between double quotes"),
            );
            return;
        };
        if name.is_empty() {
            self.error(site, format!("{directive}: empty file name"));
            return;
        }
        let path = if Path::new(&name).is_absolute() {
            PathBuf::from(&name)
        } else {
            dir.join(&name)
        };
        self.cfg(&path, Some(site), required);
    }

    fn unclosed_conditionals(&mut self) {
        for cond in std::mem::take(&mut self.conds) {
            self.error(&cond.site, "#!ifdef without #!endif".to_string());
        }
    }

    /// One line of code (or a statement gathered over lines), comments gone.
    fn statements(&mut self, code: &str, dir: &Path, site: &Site) {
        for stmt in split_top(code, ';') {
            let stmt = stmt.trim();
            if stmt.is_empty() {
                continue;
            }
            if let Some(rest) = keyword(stmt, "include_file") {
                self.include(rest, dir, site, true);
            } else if let Some(rest) = keyword(stmt, "import_file") {
                self.include(rest, dir, site, false);
            } else if let Some(rest) = keyword(stmt, "modparam") {
                self.modparam(rest, site);
            } else if let Some((name, value)) = assignment(stmt) {
                self.assign(name, value, site);
            }
        }
    }

    fn assign(&mut self, name: &str, value: &str, site: &Site) {
        let value = value.trim();
        match name {
            "listen" => self.listen(value, site),
            "socket" => self.socket(value, site),
            "advertised_address" => {
                if let Ok(public) = self.public(value, "core", "advertised_address", site) {
                    self.advertised_address = public;
                }
            }
            "port" | "tls_port_no" => {
                let raw = self.substitute(value);
                match parse_port(raw.trim_matches('"')) {
                    Some(port) if name == "port" => self.port = Some(port),
                    Some(port) => self.tls_port = Some(port),
                    None => self.error(
                        site,
                        format!("{name}={value}: `{raw}` is not a port number (1-65535)"),
                    ),
                }
            }
            "enable_tls" | "tls_enable" => {
                if let Some(on) = boolean(&self.substitute(value)) {
                    self.enable_tls = on;
                }
            }
            "disable_tcp" => {
                if let Some(on) = boolean(&self.substitute(value)) {
                    self.disable_tcp = on;
                }
            }
            _ => {}
        }
    }

    /// Replaces defined names, as Kamailio's lexer does with each identifier.
    fn substitute(&self, text: &str) -> String {
        if self.defines.is_empty() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
            out.push_str(&rest[..start]);
            let word = &rest[start..];
            let len = word
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(word.len());
            // A word glued to a preceding digit (`5060abc`) is not an identifier.
            let glued = out
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            match self.defines.get(&word[..len]) {
                Some(value) if !glued => out.push_str(value),
                _ => out.push_str(&word[..len]),
            }
            rest = &word[len..];
        }
        out.push_str(rest);
        out
    }

    // -- sockets ----------------------------------------------------------

    /// `listen = [proto:]addr[:port] ... [advertise addr[:port]] [name "x"] [virtual]`,
    /// several sockets separated by spaces, `(a, b)` for multihomed SCTP.
    fn listen(&mut self, value: &str, site: &Site) {
        let tokens = tokens(value);
        let mut it = tokens.iter();
        while let Some(token) = it.next() {
            match token.to_ascii_lowercase().as_str() {
                "advertise" => match it.next() {
                    Some(public) => {
                        if let Ok(Some(public)) =
                            self.public(public, "listen", "listen advertise", site)
                        {
                            self.out.facts.public.push(public);
                        }
                    }
                    None => self.error(site, "listen: `advertise` without an address".to_string()),
                },
                "name" => {
                    it.next();
                }
                "virtual" => {}
                _ => self.socket_spec(token, false, "listen", site),
            }
        }
    }

    /// `socket = { bind = proto:addr:port[-port]; name = "x"; ... }`.
    fn socket(&mut self, value: &str, site: &Site) {
        let inner = value
            .trim()
            .strip_prefix('{')
            .map(|v| v.trim_end().strip_suffix('}').unwrap_or(v))
            .unwrap_or(value);
        for attr in split_top(inner, ';') {
            match assignment(attr.trim()) {
                Some(("bind", bind)) => self.socket_spec(bind.trim(), true, "socket", site),
                Some(("advertise", public)) => {
                    if let Ok(Some(public)) =
                        self.public(public.trim(), "socket", "socket advertise", site)
                    {
                        self.out.facts.public.push(public);
                    }
                }
                _ => {}
            }
        }
    }

    fn socket_spec(&mut self, token: &str, ranges: bool, section: &str, site: &Site) {
        let written = token.to_string();
        let token = self.substitute(token).replace('"', "");
        let what = format!("{section} {written}");
        let bad = |why: String| format!("{section} `{written}`: {why}");
        let (proto, rest) = match token.split_once(':') {
            Some((p, rest)) if is_proto(p) => (p.to_ascii_lowercase(), rest),
            _ => (String::new(), token.as_str()),
        };
        let proto = match proto.as_str() {
            "" | "*" => None,
            // No SCTP in the firewall's vocabulary; Kamailio's SCTP sockets
            // are rare enough to leave to a custom service.
            "sctp" => return,
            p => Transport::parse(p),
        };
        let (hosts, port): (Vec<&str>, &str) = if let Some(group) = rest.strip_prefix('(') {
            let Some((inside, after)) = group.split_once(')') else {
                let message = bad("`(` without `)`".to_string());
                self.error(site, message);
                return;
            };
            (
                inside.split(',').map(str::trim).collect(),
                after.strip_prefix(':').unwrap_or(after),
            )
        } else if let Some(v6) = rest.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                let message = bad("`[` without `]`".to_string());
                self.error(site, message);
                return;
            };
            (vec![host], after.strip_prefix(':').unwrap_or(after))
        } else if rest.parse::<std::net::Ipv6Addr>().is_ok() {
            (vec![rest], "")
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (vec![host], port),
                None => (vec![rest], ""),
            }
        };
        let ports = match parse_ports(port, ranges) {
            Ok(ports) => ports,
            Err(why) => {
                let message = bad(why);
                self.error(site, message);
                return;
            }
        };
        for host in hosts {
            let addr = if host == "*" {
                None
            } else {
                match classify_host(host) {
                    Ok(addr) => addr,
                    Err(why) => {
                        let message = bad(why);
                        self.error(site, message);
                        continue;
                    }
                }
            };
            self.specs.push(Spec {
                proto,
                addr,
                ports: ports.clone(),
                provenance: site.provenance(section, &what),
            });
        }
    }

    /// An advertised `addr[:port]` (defines substituted, quotes dropped, as in
    /// [`Self::socket_spec`]). `Ok(None)` for loopback and unspecified
    /// addresses; `Err` once the error is recorded.
    fn public(
        &mut self,
        written: &str,
        section: &str,
        what: &str,
        site: &Site,
    ) -> Result<Option<PublicAddress>, ()> {
        let value = self.substitute(written).replace('"', "");
        match parse_public(&value) {
            Ok(target) => Ok(target.map(|target| PublicAddress {
                target,
                provenance: site.provenance(section, &format!("{what} {written}")),
            })),
            Err(why) => {
                self.error(site, format!("{what} `{written}`: {why}"));
                Err(())
            }
        }
    }

    /// Applies the global defaults, wherever in the file they were set.
    fn resolve_listens(&mut self, cfg: &Path) {
        let port = self.port.unwrap_or(DEFAULT_PORT);
        let tls_port = self.tls_port.unwrap_or(DEFAULT_TLS_PORT);
        if self.specs.is_empty() {
            // No listen=: Kamailio binds every local address.
            self.specs.push(Spec {
                proto: None,
                addr: None,
                ports: Vec::new(),
                provenance: Provenance {
                    file: lexical(cfg).display().to_string(),
                    line: 0,
                    section: "core".to_string(),
                    what: "no listen= or socket=: every address".to_string(),
                },
            });
        }
        for spec in std::mem::take(&mut self.specs) {
            let protos = match spec.proto {
                Some(t) => vec![t],
                None => vec![Transport::Udp, Transport::Tcp, Transport::Tls],
            };
            for transport in protos {
                let enabled = match transport {
                    Transport::Tcp | Transport::Ws => !self.disable_tcp,
                    // TLS rides on the TCP machinery.
                    Transport::Tls | Transport::Wss => self.enable_tls && !self.disable_tcp,
                    Transport::Udp | Transport::Iax => true,
                };
                if !enabled {
                    continue;
                }
                let ports = if spec.ports.is_empty() {
                    vec![if transport == Transport::Tls {
                        tls_port
                    } else {
                        port
                    }]
                } else {
                    spec.ports.clone()
                };
                for port in ports {
                    self.out.facts.listen.push(ListenPort {
                        transport,
                        port,
                        addr: spec.addr,
                        provenance: spec.provenance.clone(),
                    });
                }
            }
        }
    }

    // -- lists --------------------------------------------------------------

    fn modparam(&mut self, rest: &str, site: &Site) {
        let rest = rest.trim();
        let Some(inner) = rest
            .strip_prefix('(')
            .and_then(|r| r.trim_end().strip_suffix(')'))
        else {
            return;
        };
        let args: Vec<String> = split_top(inner, ',')
            .into_iter()
            .map(|a| {
                let a = a.trim();
                unquote(a).unwrap_or_else(|| {
                    let v = self.substitute(a);
                    unquote(v.trim()).unwrap_or(v)
                })
            })
            .collect();
        let [module, param, value] = args.as_slice() else {
            return;
        };
        // The module argument is a regular expression; plain names and
        // `a|b` alternatives are what configurations use.
        let is = |m: &str| {
            module
                .split('|')
                .any(|x| x.trim().trim_matches(['^', '$']).eq_ignore_ascii_case(m))
        };
        if is("dispatcher") {
            match param.as_str() {
                "list_file" => {
                    self.dispatcher_file = Some(ListFile {
                        path: self.root.join(value),
                        site: site.clone(),
                    })
                }
                "db_url" => self.dispatcher_db = true,
                _ => {}
            }
        }
        if is("permissions") && param == "address_file" {
            // permissions: a bare name lives next to kamailio.cfg.
            self.address_file = Some(ListFile {
                path: self.root.join(value),
                site: site.clone(),
            });
        }
    }

    /// Opens a list file: the one `modparam` names (missing = an error: the
    /// module fails to load it) or the default in the tree (missing = fine).
    fn list_text(&mut self, named: Option<ListFile>, default: &str) -> Option<(String, String)> {
        let (path, site) = match named {
            Some(ListFile { path, site }) => (path, Some(site)),
            None => (self.root.join(default), None),
        };
        self.note(&path);
        let shown = lexical(&path).display().to_string();
        if !path.is_file() {
            if let Some(site) = site {
                self.error(&site, format!("{shown} does not exist"));
            }
            return None;
        }
        match read_limited(&path) {
            Ok(text) => Some((shown, text)),
            Err(why) => {
                self.error(
                    &Site {
                        file: shown,
                        line: 0,
                    },
                    why,
                );
                None
            }
        }
    }

    /// `setid destination [flags [priority [attrs]]]`, `#` comments.
    fn dispatcher(&mut self) {
        if self.dispatcher_db {
            // Destinations come from the database; a list file is ignored.
            return;
        }
        let named = self.dispatcher_file.take();
        let Some((file, text)) = self.list_text(named, "dispatcher.list") else {
            return;
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let site = Site {
                file: file.clone(),
                line: i + 1,
            };
            let mut fields = line.split_whitespace();
            let setid = fields.next().unwrap_or("");
            let Some(setid) = setid.parse::<u32>().ok() else {
                self.error(
                    &site,
                    format!("dispatcher set id `{setid}` is not a number"),
                );
                continue;
            };
            let Some(uri) = fields.next().map(|u| u.split('#').next().unwrap_or(u)) else {
                self.error(&site, format!("dispatcher set {setid}: no destination"));
                continue;
            };
            match parse_target(uri, true) {
                Ok(target) => {
                    let name = format!("dispatcher set {setid}");
                    let provenance = site.provenance(&name, "dispatcher destination");
                    self.out.facts.peers.push(Peer {
                        name,
                        target: target.into_peer_target(None),
                        provenance,
                    });
                }
                Err(why) => self.error(
                    &site,
                    format!("dispatcher set {setid}: destination `{uri}`: {why}"),
                ),
            }
        }
    }

    /// `group address [netmask [port [tag]]]`; also `address/len`.
    fn permissions(&mut self) {
        let named = self.address_file.take();
        let Some((file, text)) = self.list_text(named, "address.list") else {
            return;
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let site = Site {
                file: file.clone(),
                line: i + 1,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(group) = fields.first().and_then(|g| g.parse::<u32>().ok()) else {
                let group = fields.first().copied().unwrap_or("");
                self.error(
                    &site,
                    format!("permissions group `{group}` is not a number"),
                );
                continue;
            };
            let Some(&address) = fields.get(1) else {
                self.error(&site, format!("permissions group {group}: no address"));
                continue;
            };
            let rest = fields.get(2..).unwrap_or(&[]);
            // Kamailio takes numbers for netmask and port while they come,
            // and the first other word as the tag.
            let numbers: Vec<&str> = rest
                .iter()
                .copied()
                .take_while(|f| f.bytes().all(|b| b.is_ascii_digit()))
                .collect();
            let tag = rest.get(numbers.len()).copied();
            let name = tag.map_or_else(|| format!("permissions group {group}"), str::to_string);
            let netmask = numbers.first().copied();
            let port = numbers.get(1).copied().and_then(parse_port);
            match address_target(address, netmask, port) {
                Ok(target) => {
                    let provenance = site
                        .provenance(&format!("permissions group {group}"), "permissions address");
                    self.out.facts.peers.push(Peer {
                        name,
                        target,
                        provenance,
                    });
                }
                Err(why) => self.error(&site, format!("permissions group {group}: {why}")),
            }
        }
    }
}

/// An address.list address with its optional netmask column.
fn address_target(
    address: &str,
    netmask: Option<&str>,
    port: Option<u16>,
) -> Result<PeerTarget, String> {
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    if let Some((ip, len)) = bare.split_once('/') {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let net: IpNet = format!("{ip}/{len}")
            .parse()
            .map_err(|_| format!("`{address}` is not a valid CIDR network"))?;
        return Ok(net_or_addr(net.trunc()));
    }
    match classify_host(bare) {
        Ok(Some(ip)) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match netmask {
                None | Some("0") => max,
                Some(m) => m
                    .parse::<u8>()
                    .ok()
                    .filter(|&l| l <= max)
                    .ok_or_else(|| format!("netmask `{m}` for {ip} is not 0-{max}"))?,
            };
            let net = IpNet::new(ip, len).map_err(|_| format!("netmask {len} for {ip}"))?;
            Ok(net_or_addr(net.trunc()))
        }
        Ok(None) => Ok(PeerTarget::Host {
            name: bare.to_string(),
            port,
            transport: None,
        }),
        Err(why) => Err(why),
    }
}

fn net_or_addr(net: IpNet) -> PeerTarget {
    if net.prefix_len() == net.max_prefix_len() {
        PeerTarget::Addr(net.addr())
    } else {
        PeerTarget::Net(net)
    }
}

/// `5060`, `*`/`0`/empty (the default), and with `ranges`, `5060-5062`.
fn parse_ports(port: &str, ranges: bool) -> Result<Vec<u16>, String> {
    let port = port.trim();
    if port.is_empty() || port == "*" || port == "0" {
        return Ok(Vec::new());
    }
    if ranges {
        if let Some((a, b)) = port.split_once('-') {
            let (Some(a), Some(b)) = (parse_port(a), parse_port(b)) else {
                return Err(format!("`{port}` is not a port range (1-65535)"));
            };
            if a > b || usize::from(b - a) >= MAX_RANGE {
                return Err(format!(
                    "port range `{port}` is reversed or wider than {MAX_RANGE}"
                ));
            }
            return Ok((a..=b).collect());
        }
    }
    parse_port(port)
        .map(|p| vec![p])
        .ok_or_else(|| format!("`{port}` is not a port number (1-65535)"))
}

fn is_proto(p: &str) -> bool {
    ["udp", "tcp", "tls", "sctp", "ws", "wss", "*"]
        .iter()
        .any(|k| p.eq_ignore_ascii_case(k))
}

fn boolean(v: &str) -> Option<bool> {
    match v.trim().trim_matches('"').to_ascii_lowercase().as_str() {
        "yes" | "on" | "true" | "enable" | "enabled" | "1" => Some(true),
        "no" | "off" | "false" | "disable" | "disabled" | "0" => Some(false),
        _ => None,
    }
}

/// `#!substdef "/ID/value/flags"`: the define it makes, when the match is a
/// plain name (a regular expression defines nothing we can use).
fn substdef(arg: &str) -> Option<(String, String)> {
    let body = unquote(arg.trim())?;
    let mut chars = body.chars();
    let delim = chars.next()?;
    let rest = chars.as_str();
    let mut parts = rest.split(delim);
    let id = parts.next()?;
    let replacement = parts.next()?;
    let is_id = !id.is_empty()
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !id.starts_with(|c: char| c.is_ascii_digit());
    is_id.then(|| (id.to_string(), replacement.to_string()))
}

/// `"text"` with Kamailio's escapes; `None` if not a double-quoted string.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn first_word(s: &str) -> &str {
    s.split(|c: char| c.is_whitespace()).next().unwrap_or("")
}

/// `keyword rest` or `keyword(rest`: the rest, when `s` starts with the
/// keyword as a whole word.
fn keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(word)?;
    match rest.chars().next() {
        None => Some(rest),
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => None,
        Some(_) => Some(rest),
    }
}

/// `name = value` (not `==`), `name` an identifier.
fn assignment(s: &str) -> Option<(&str, &str)> {
    let (name, value) = s.split_once('=')?;
    let name = name.trim();
    let ident = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    (ident && !value.starts_with('=')).then_some((name, value))
}

/// Splits on `sep` outside quotes, parentheses and braces.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth = depth.saturating_sub(1),
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Whether brackets outside quotes are balanced (a statement is complete).
fn balanced(s: &str) -> bool {
    let mut depth = 0i64;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '{' => depth += 1,
            ')' | '}' => depth -= 1,
            _ => {}
        }
    }
    depth <= 0
}

/// Whitespace-separated words; quotes and `(...)` groups stay whole.
fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote = false;
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '"' => {
                quote = !quote;
                current.push(c);
            }
            '(' if !quote => {
                depth += 1;
                current.push(c);
            }
            ')' if !quote => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            c if c.is_whitespace() && !quote && depth == 0 => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c if c.is_whitespace() && !quote => {}
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Drops `#` and `//` line comments and `/* */` blocks (nested, as in
/// Kamailio), leaving strings alone: `"mysql://..."` is not a comment.
/// `block` carries an open block comment to the next line.
fn strip_comments(line: &str, block: &mut usize) -> String {
    let b = line.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        if *block > 0 {
            if b[i..].starts_with(b"*/") {
                *block -= 1;
                i += 2;
            } else if b[i..].starts_with(b"/*") {
                *block += 1;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        let c = b[i];
        if let Some(q) = quote {
            out.push(c);
            if c == b'\\' {
                if let Some(&next) = b.get(i + 1) {
                    out.push(next);
                    i += 1;
                }
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' => {
                quote = Some(c);
                out.push(c);
            }
            b'#' => break,
            b'/' if b.get(i + 1) == Some(&b'/') => break,
            b'/' if b.get(i + 1) == Some(&b'*') => {
                *block += 1;
                i += 1;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    // Cuts only happen at ASCII bytes, so this never loses anything.
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_respect_strings() {
        let mut block = 0;
        assert_eq!(
            strip_comments(r#"modparam("x", "db_url", "mysql://a#b") # c"#, &mut block),
            r#"modparam("x", "db_url", "mysql://a#b") "#
        );
        assert_eq!(strip_comments("a /* b /* c */ d", &mut block), "a ");
        assert_eq!(block, 1);
        assert_eq!(strip_comments("e */ f // g", &mut block), " f ");
        assert_eq!(block, 0);
    }

    #[test]
    fn substdef_defines_plain_names() {
        assert_eq!(
            substdef(r#""!MY_IP!10.0.0.1!g""#),
            Some(("MY_IP".to_string(), "10.0.0.1".to_string()))
        );
        assert_eq!(substdef(r#""/a.*b/x/""#), None);
    }

    #[test]
    fn address_targets() {
        assert_eq!(
            address_target("192.168.1.0", Some("24"), None),
            Ok(PeerTarget::Net("192.168.1.0/24".parse().unwrap()))
        );
        assert_eq!(
            address_target("10.0.0.10", None, None),
            Ok(PeerTarget::Addr("10.0.0.10".parse().unwrap()))
        );
        assert_eq!(
            address_target("[1:5ee::900d:c0de]", None, None),
            Ok(PeerTarget::Addr("1:5ee::900d:c0de".parse().unwrap()))
        );
        assert!(address_target("10.0.0.0/33", None, None).is_err());
        assert!(address_target("10.0.0.1", Some("40"), None).is_err());
    }
}
