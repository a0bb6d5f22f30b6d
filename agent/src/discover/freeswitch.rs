//! FreeSWITCH: the sofia profiles (which ports FreeSWITCH listens on), their
//! gateways (the trunks it talks to) and switch.conf's RTP range.
//!
//! FreeSWITCH never parses its XML files one by one. A line-based preprocessor
//! (`preprocess()` in `src/switch_xml.c`) first expands `$${var}`, runs the
//! `X-PRE-PROCESS` commands and splices included files into one document, and
//! only that document is parsed. We emulate the preprocessor line for line,
//! quirks included, because the firewall must open what FreeSWITCH binds, not
//! what a reader of the files would expect:
//!
//! - variables are expanded on each line before anything else, in reading
//!   order, so a variable is known only to lines read after its `set`;
//! - an `X-PRE-PROCESS` line runs even inside an XML comment (vanilla's
//!   vars.xml warns about exactly this), and a line that mentions
//!   `X-PRE-PROCESS` without a `<` right before it is dropped;
//! - a line holding `<include>`, `</include>` or `<?` is dropped whole; that is
//!   how an included file's `<include>` wrapper disappears and its children end
//!   up where the include stood;
//! - include paths are relative to the directory of the file holding the
//!   include: FreeSWITCH starts at the conf dir with freeswitch.xml and hands
//!   each included file its own directory as the new base. That is why
//!   vanilla's `autoload_configs/sofia.conf.xml` includes
//!   `../sip_profiles/*.xml`, and why `external.xml` includes `external/*.xml`.
//!
//! Where FreeSWITCH learns a value only at run time (`exec-set`, `stun-set`,
//! `env-set`, `exec`, and core variables such as `local_ip_v4`), the variable
//! stays unknown: `$${name}` is left in place and a fact that depends on it is
//! skipped rather than guessed. FreeSWITCH itself would expand an unknown
//! variable to an empty string; we cannot tell that case from the run-time ones.
//!
//! A profile's `ext-sip-ip` and `ext-rtp-ip` are the addresses it advertises
//! behind NAT. Only what the configuration states is a fact: a literal IP, a
//! host name, or `host:NAME` (sofia resolves NAME). `auto`, `auto-nat`,
//! `stun:...` and an unexpanded variable are worked out by FreeSWITCH when it
//! starts, so they give no fact and no error either.
//!
//! FreeSWITCH's XML parser (ezxml) is more forgiving than XML: it takes `--`
//! inside comments, a bare `&` or `<` in attribute values, repeated attributes,
//! undeclared namespace prefixes and DOCTYPEs, all of which occur in real
//! configurations. Those are normalised before the document reaches roxmltree,
//! so a "malformed XML" error here is one FreeSWITCH would also stumble on.
//! Normalising never adds or removes a line break, so every node's line maps
//! back to the file and line it came from.

use super::glob::{has_wildcard, matches_in};
use super::Discovered;
use palisade_model::{
    DiscoveryError, ListenPort, PbxKind, Peer, PeerTarget, PortRange, Provenance, PublicAddress,
    RtpRange, Transport,
};
use roxmltree::{Document, Node, ParsingOptions};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

/// FreeSWITCH itself gives up at 100 levels; a real tree needs a handful, and
/// a lower cap names the runaway chain sooner.
const MAX_DEPTH: usize = 32;
/// Bounds on what a hostile or runaway tree (a glob matching a log directory,
/// a variable doubling on every line) can make us hold in memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
const MAX_TOTAL_BYTES: usize = 64 * 1024 * 1024;
const MAX_FILES: usize = 4096;
const MAX_NODES: u32 = 4_000_000;
/// sofia's `SOFIA_DEFAULT_PORT` and `SOFIA_DEFAULT_TLS_PORT`.
const DEFAULT_SIP_PORT: u16 = 5060;
const DEFAULT_TLS_PORT: u16 = 5061;
/// switch_rtp.c's `RTP_START_PORT`/`RTP_END_PORT`.
const DEFAULT_RTP: PortRange = PortRange {
    first: 16384,
    last: 32768,
};
/// The synthetic root that lets several top-level elements (the fallback
/// reading, or one included file on its own) parse as one document.
const ROOT_TAG: &str = "palisade-root";

/// Reads the FreeSWITCH tree under `root` (e.g. `/etc/freeswitch`).
///
/// Starts at `freeswitch.xml` like FreeSWITCH does. Without it, but with
/// `vars.xml`, `autoload_configs/switch.conf.xml` or `sip_profiles/`, those are
/// read directly, so a partial or packaged tree still yields its profiles.
pub fn discover(root: &Path) -> Discovered {
    let main = root.join("freeswitch.xml");
    let mut pre = Preprocessor::new(root);
    let fallback = !main.is_file();
    if !fallback {
        pre.file(&main, None);
    } else {
        let vars = root.join("vars.xml");
        let switch_conf = root.join("autoload_configs").join("switch.conf.xml");
        if !(vars.is_file() || switch_conf.is_file() || root.join("sip_profiles").is_dir()) {
            return Discovered::default();
        }
        // If freeswitch.xml appears later, the whole reading changes.
        pre.note(&main);
        for file in [vars, switch_conf] {
            if file.is_file() {
                pre.file(&file, None);
            } else {
                pre.note(&file);
            }
        }
        pre.glob(root, "sip_profiles/*.xml", None);
    }

    let Preprocessor {
        names,
        lines,
        origin,
        errors,
        files,
        ..
    } = pre;
    let mut out = Discovered {
        facts: palisade_model::PbxFacts {
            kinds: vec![PbxKind::FreeSwitch],
            ..Default::default()
        },
        errors,
        files,
    };

    let text = sanitize(&assemble(lines.iter().map(String::as_str)));
    match Document::parse_with_options(&text, parsing_options()) {
        Ok(doc) => Extract {
            doc: &doc,
            origin: &origin,
            names: &names,
            fallback,
            out: &mut out,
        }
        .run(),
        Err(e) => {
            let errors = locate_xml_error(&e, &text, &lines, &origin, &names);
            out.errors.extend(errors);
        }
    }
    out.facts.normalize();
    out.errors
        .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

// ---------------------------------------------------------------------------
// The preprocessor.

/// Where an include was asked for, so its failure points at the asking line.
#[derive(Clone)]
struct Site {
    file: String,
    line: usize,
}

struct Preprocessor {
    /// Preprocessor variables. FreeSWITCH keeps them in an event's headers,
    /// which compare names without case.
    vars: HashMap<String, String>,
    /// Display name of each file read, indexed by file id.
    names: Vec<String>,
    /// The preprocessed document, one entry per output line...
    lines: Vec<String>,
    /// ...and the (file id, line) it came from.
    origin: Vec<(usize, usize)>,
    errors: Vec<DiscoveryError>,
    files: Vec<PathBuf>,
    /// The include chain being read: (identity, display name).
    stack: Vec<(PathBuf, String)>,
    total: usize,
    overflow: bool,
}

impl Preprocessor {
    fn new(root: &Path) -> Self {
        let mut vars = HashMap::new();
        // The one core variable whose value we know for sure.
        vars.insert("conf_dir".to_string(), root.display().to_string());
        Preprocessor {
            vars,
            names: Vec::new(),
            lines: Vec::new(),
            origin: Vec::new(),
            errors: Vec::new(),
            files: Vec::new(),
            stack: Vec::new(),
            total: 0,
            overflow: false,
        }
    }

    /// Records a path whose change must trigger a new reading.
    fn note(&mut self, path: &Path) {
        let path = lexical(path);
        if !self.files.contains(&path) {
            self.files.push(path);
        }
    }

    fn error(&mut self, site: Option<&Site>, file: &str, message: String) {
        let (file, line) = match site {
            Some(s) => (s.file.clone(), s.line),
            None => (file.to_string(), 0),
        };
        self.errors.push(DiscoveryError {
            file,
            line,
            message,
        });
    }

    fn file(&mut self, path: &Path, site: Option<&Site>) {
        let shown = display(path);
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| lexical(path));
        if let Some(at) = self.stack.iter().position(|(k, _)| *k == key) {
            let chain = chain(&self.stack[at..], &shown);
            self.error(site, &shown, format!("include loop: {chain}"));
            return;
        }
        if self.stack.len() >= MAX_DEPTH {
            let chain = chain(&self.stack, &shown);
            self.error(
                site,
                &shown,
                format!("includes nested deeper than {MAX_DEPTH}: {chain}"),
            );
            return;
        }
        if self.names.len() >= MAX_FILES {
            self.error(
                site,
                &shown,
                format!("more than {MAX_FILES} files included; stopped reading"),
            );
            self.overflow = true;
            return;
        }
        self.note(path);
        let text = match read_limited(path) {
            Ok(text) => text,
            Err(why) => {
                self.errors.push(DiscoveryError {
                    file: shown,
                    line: 0,
                    message: why,
                });
                return;
            }
        };
        let id = self.names.len();
        self.names.push(shown.clone());
        self.stack.push((key, shown));
        let cwd = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut in_comment = false;
        for (i, raw) in text.split('\n').enumerate() {
            if self.overflow {
                break;
            }
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            self.line(raw, id, i + 1, &cwd, &mut in_comment);
        }
        self.stack.pop();
    }

    /// One line, in the order `preprocess()` looks at it.
    fn line(&mut self, raw: &str, id: usize, n: usize, cwd: &Path, in_comment: &mut bool) {
        let expanded = self.expand(raw);
        if raw.contains("<include>") || raw.contains("</include>") || raw.contains("<?") {
            return;
        }
        let mut bp: &str = &expanded;
        if *in_comment {
            match bp.find("-->") {
                Some(end) => {
                    *in_comment = false;
                    bp = &bp[end + 3..];
                }
                None => return,
            }
        }
        let site = Site {
            file: self.names.get(id).cloned().unwrap_or_default(),
            line: n,
        };
        if let Some(at) = find_ci(bp, "x-pre-process") {
            if at > 0 && bp.as_bytes()[at - 1] == b'<' {
                if let Some((cmd, data)) = xpp_args(&bp[at..]) {
                    self.command(cmd, data, cwd, &site, false);
                }
            }
            return;
        }
        // `<!--#cmd arg-->`: the older spelling of the same commands.
        if let Some(at) = bp.find("<!--#") {
            let body = &bp[at + 5..];
            let mut kept = bp[..at].to_string();
            let cmdline = match body.find("-->") {
                Some(end) => {
                    kept.push_str(&body[end + 3..]);
                    &body[..end]
                }
                None => {
                    *in_comment = true;
                    body
                }
            };
            self.emit(kept, id, n);
            if let Some((cmd, arg)) = cmdline.split_once(' ') {
                let arg = match arg.split_once('"') {
                    Some((_, quoted)) => match quoted.split_once('"') {
                        Some((inner, _)) => inner,
                        None => arg,
                    },
                    None => arg,
                };
                self.command(cmd, arg, cwd, &site, true);
            }
            return;
        }
        self.emit(bp.to_string(), id, n);
    }

    fn emit(&mut self, text: String, id: usize, n: usize) {
        if self.overflow {
            return;
        }
        self.total += text.len() + 1;
        if self.total > MAX_TOTAL_BYTES {
            self.overflow = true;
            let file = self.names.get(id).cloned().unwrap_or_default();
            self.errors.push(DiscoveryError {
                file,
                line: n,
                message: format!(
                    "the configuration expands to more than {} MiB; stopped reading",
                    MAX_TOTAL_BYTES >> 20
                ),
            });
            return;
        }
        self.lines.push(text);
        self.origin.push((id, n));
    }

    fn command(&mut self, cmd: &str, data: &str, cwd: &Path, site: &Site, comment_form: bool) {
        match cmd.to_ascii_lowercase().as_str() {
            "set" => {
                if let Some((name, value)) = data.split_once('=') {
                    let name = name.trim_end_matches(' ').to_ascii_lowercase();
                    let value = value.trim_start_matches(' ').to_string();
                    self.vars.insert(name, value);
                }
            }
            // Their values come from a command, a STUN server or FreeSWITCH's
            // environment at start: unknown here, so later uses are skipped.
            "exec-set" | "stun-set" => self.forget(data),
            "env-set" if !comment_form => self.forget(data),
            "include" => self.include(data, cwd, site),
            // `exec` splices a command's output: unknowable, so nothing.
            _ => {}
        }
    }

    fn forget(&mut self, data: &str) {
        let name = data.split_once('=').map_or(data, |(name, _)| name);
        self.vars.remove(&name.trim().to_ascii_lowercase());
    }

    fn include(&mut self, data: &str, cwd: &Path, site: &Site) {
        if data.is_empty() || data.contains("$${") {
            return;
        }
        let (base, rel) = match data.strip_prefix('/') {
            Some(rel) => (PathBuf::from("/"), rel),
            None => (cwd.to_path_buf(), data),
        };
        if has_wildcard(rel) {
            self.glob(&base, rel, Some(site));
            return;
        }
        let target = base.join(rel);
        if target.is_file() {
            self.file(&target, Some(site));
        } else {
            self.note(&target);
            let why = if target.exists() {
                "is not a file"
            } else {
                "does not exist"
            };
            self.error(
                Some(site),
                &site.file,
                format!("include `{data}`: {} {why}", display(&target)),
            );
        }
    }

    /// Reads every file matching `rel` under `base`, in glob(3)'s sorted
    /// order. A pattern that matches nothing is fine, as in FreeSWITCH
    /// (vanilla includes `dialplan/*.xml` and a dozen language directories).
    fn glob(&mut self, base: &Path, rel: &str, site: Option<&Site>) {
        let mut current = vec![base.to_path_buf()];
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            let mut next = Vec::new();
            for dir in &current {
                if !has_wildcard(comp) {
                    next.push(dir.join(comp));
                    continue;
                }
                // The pattern's own path: whoever watches `files` watches its
                // directory, so a file added there is noticed.
                self.note(&dir.join(comp));
                next.extend(matches_in(dir, comp));
                if next.len() > MAX_FILES {
                    next.truncate(MAX_FILES);
                    break;
                }
            }
            current = next;
        }
        for path in current {
            if path.is_file() {
                self.file(&path, site);
            }
        }
    }

    /// `$${name}` → its value; unknown names stay as written.
    fn expand(&self, line: &str) -> String {
        if !line.contains("$${") {
            return line.to_string();
        }
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        while let Some(at) = rest.find("$${") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 3..];
            let Some(end) = closing_brace(after) else {
                out.push_str(&rest[at..]);
                return out;
            };
            match self.vars.get(&after[..end].to_ascii_lowercase()) {
                Some(value) => out.push_str(value),
                None => out.push_str(&rest[at..at + 3 + end + 1]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

pub(super) fn chain(stack: &[(PathBuf, String)], last: &str) -> String {
    stack
        .iter()
        .map(|(_, shown)| shown.as_str())
        .chain([last])
        .collect::<Vec<_>>()
        .join(" -> ")
}

pub(super) fn read_limited(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.is_dir() {
        return Err("is a directory, not a file".to_string());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "is larger than {} MiB; not read",
            MAX_FILE_BYTES >> 20
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The byte index of the `}` closing a `$${`, nested braces counted
/// (`switch_find_end_paren`).
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `cmd="..." data="..."` the way `preprocess()` finds them: the first `cmd`,
/// then `=`, then a quoted value; then `data` after it, likewise. Anything
/// else is not a command and the line is dropped, as FreeSWITCH does.
fn xpp_args(s: &str) -> Option<(&str, &str)> {
    fn quoted_after<'a>(s: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
        let s = &s[find_ci(s, key)?..];
        let s = &s[s.find('=')?..];
        let s = &s[s.find('"')? + 1..];
        match s.find('"') {
            Some(end) => Some((&s[..end], &s[end + 1..])),
            None => Some((s, "")),
        }
    }
    let (cmd, rest) = quoted_after(s, "cmd")?;
    if rest.is_empty() {
        return None;
    }
    let (data, _) = quoted_after(rest, "data")?;
    Some((cmd, data))
}

/// ASCII-case-insensitive search for an ASCII needle. A match starts at an
/// ASCII byte, so the index is always a char boundary.
fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let n = needle.len();
    if n == 0 || haystack.len() < n {
        return None;
    }
    haystack
        .as_bytes()
        .windows(n)
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `a/./b/../c` → `a/c` for display and for `files`, without touching the
/// file system. Reading always uses the path as FreeSWITCH would.
pub(super) fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn display(path: &Path) -> String {
    lexical(path).display().to_string()
}

// ---------------------------------------------------------------------------
// From ezxml's leniency to XML.

fn parsing_options<'input>() -> ParsingOptions<'input> {
    ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    }
}

/// The preprocessed lines as one document under [`ROOT_TAG`]. Row `r` of the
/// result is line `r - 1` of `lines`; the closing tag adds one last row.
fn assemble<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut text = format!("<{ROOT_TAG}>");
    for (i, line) in lines.enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(line);
    }
    text.push_str(&format!("\n</{ROOT_TAG}>"));
    text
}

/// Rewrites what ezxml accepts and XML does not, keeping every line break
/// where it was. Tag structure is left alone: a tag that is really broken
/// stays broken, for the parser to report.
pub(super) fn sanitize(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + src.len() / 16);
    let mut rest = src;
    while let Some(c) = rest.chars().next() {
        let used = match c {
            '<' if rest.starts_with("<!--") => match rest[4..].find("-->") {
                // Comments carry nothing we read; blanking them also drops
                // the `--` XML forbids inside them.
                Some(end) => blank(&mut out, &rest[..end + 7]),
                None => verbatim(&mut out, rest),
            },
            '<' if rest.starts_with("<![CDATA[") => match rest.find("]]>") {
                Some(end) => verbatim(&mut out, &rest[..end + 3]),
                None => verbatim(&mut out, rest),
            },
            '<' if rest.starts_with("<?") => match rest.find("?>") {
                Some(end) => blank(&mut out, &rest[..end + 2]),
                None => verbatim(&mut out, rest),
            },
            '<' if rest.starts_with("<!") => match declaration_end(rest) {
                Some(end) => blank(&mut out, &rest[..end]),
                None => verbatim(&mut out, rest),
            },
            '<' => tag(rest, &mut out),
            '&' => reference(rest, &mut out),
            c => {
                push_xml_char(&mut out, c);
                c.len_utf8()
            }
        };
        rest = &rest[used..];
    }
    out
}

fn verbatim(out: &mut String, s: &str) -> usize {
    out.push_str(s);
    s.len()
}

fn blank(out: &mut String, s: &str) -> usize {
    out.extend(s.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
    s.len()
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn leading_space(s: &str) -> usize {
    s.find(|c: char| !is_xml_space(c)).unwrap_or(s.len())
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn push_xml_char(out: &mut String, c: char) {
    out.push(if is_xml_char(c) { c } else { ' ' });
}

/// The end of `<!DOCTYPE ...>` and kin, internal subset `[...]` included.
fn declaration_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    for (i, b) in s.bytes().enumerate().skip(2) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'[') => depth += 1,
            (None, b']') => depth = depth.saturating_sub(1),
            (None, b'>') if depth == 0 => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// A start or end tag: names lose namespace prefixes (`a:b` → `a_b`),
/// attribute values get `<` and stray `&` escaped, a repeated attribute is
/// dropped (ezxml reads the first). Returns the bytes consumed.
fn tag(s: &str, out: &mut String) -> usize {
    let stop = |c: char| is_xml_space(c) || matches!(c, '/' | '>' | '<' | '"' | '\'' | '=');
    let closing = s.as_bytes().get(1) == Some(&b'/');
    let mut i = if closing { 2 } else { 1 };
    let name_len = s[i..].find(stop).unwrap_or(s.len() - i);
    if name_len == 0 {
        // Not a tag: the parser will say so.
        out.push('<');
        return 1;
    }
    out.push_str(&s[..i]);
    out.push_str(&s[i..i + name_len].replace(':', "_"));
    i += name_len;
    if closing {
        return i;
    }
    let mut seen: Vec<String> = Vec::new();
    loop {
        let space = leading_space(&s[i..]);
        out.push_str(&s[i..i + space]);
        i += space;
        let r = &s[i..];
        if r.starts_with("/>") {
            out.push_str("/>");
            return i + 2;
        }
        if r.starts_with('>') {
            out.push('>');
            return i + 1;
        }
        let name_len = r.find(stop).unwrap_or(r.len());
        if name_len == 0 {
            return i;
        }
        let mut j = name_len + leading_space(&r[name_len..]);
        if !r[j..].starts_with('=') {
            out.push_str(&r[..j]);
            return i + j;
        }
        j += 1;
        j += leading_space(&r[j..]);
        let quote = match r[j..].chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => {
                out.push_str(&r[..j]);
                return i + j;
            }
        };
        let start = j + 1;
        let Some(len) = r[start..].find(quote) else {
            out.push_str(r);
            return s.len();
        };
        let end = start + len;
        let name = r[..name_len].replace(':', "_");
        if seen.contains(&name) {
            blank(out, &r[..end + 1]);
        } else {
            out.push_str(&name);
            out.push_str(&r[name_len..start]);
            attribute_value(&r[start..end], out);
            out.push(quote);
            seen.push(name);
        }
        i += end + 1;
    }
}

fn attribute_value(v: &str, out: &mut String) {
    let mut rest = v;
    while let Some(c) = rest.chars().next() {
        let used = match c {
            '<' => {
                out.push_str("&lt;");
                1
            }
            '&' => reference(rest, out),
            c => {
                push_xml_char(out, c);
                c.len_utf8()
            }
        };
        rest = &rest[used..];
    }
}

/// Keeps a well-formed character or predefined entity reference; anything
/// else starting with `&` is a literal ampersand, as ezxml reads it.
fn reference(s: &str, out: &mut String) -> usize {
    let semi = s.bytes().take(12).position(|b| b == b';');
    if let Some(semi) = semi {
        let body = &s[1..semi];
        let ok = match body {
            "amp" | "lt" | "gt" | "quot" | "apos" => true,
            _ => body
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| body.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32)
                .is_some_and(is_xml_char),
        };
        if ok {
            out.push_str(&s[..=semi]);
            return semi + 1;
        }
    }
    out.push_str("&amp;");
    1
}

// ---------------------------------------------------------------------------
// Errors in the document.

/// Names the file and line of a parse error. The combined document is what
/// FreeSWITCH parses, but its error may surface in a later file (a tag left
/// open in a profile is noticed at `</profiles>`), so each file's own lines
/// are parsed alone to find the culprit; only if none fails alone is the
/// combined error reported.
fn locate_xml_error(
    combined: &roxmltree::Error,
    combined_text: &str,
    lines: &[String],
    origin: &[(usize, usize)],
    names: &[String],
) -> Vec<DiscoveryError> {
    // Output line indices of each file, in order.
    let mut own: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (idx, &(f, _)) in origin.iter().enumerate() {
        if let Some(v) = own.get_mut(f) {
            v.push(idx);
        }
    }
    let mut found = Vec::new();
    for (name, idxs) in names.iter().zip(&own) {
        let text = sanitize(&assemble(idxs.iter().map(|&i| lines[i].as_str())));
        if let Err(e) = Document::parse_with_options(&text, parsing_options()) {
            let (row, message) = describe(&e, &text);
            let rows: Vec<usize> = idxs.iter().map(|&i| origin[i].1).collect();
            found.push(DiscoveryError {
                file: name.clone(),
                line: map_row(row, &rows),
                message,
            });
        }
    }
    if found.is_empty() {
        let (row, message) = describe(combined, combined_text);
        let idx = row.saturating_sub(1).min(origin.len().saturating_sub(1));
        let (file, line) = match origin.get(idx) {
            Some(&(f, l)) => (names.get(f).cloned().unwrap_or_default(), l),
            None => (names.first().cloned().unwrap_or_default(), 0),
        };
        found.push(DiscoveryError {
            file,
            line,
            message,
        });
    }
    found
}

fn map_row(row: usize, rows: &[usize]) -> usize {
    let idx = row.saturating_sub(1).min(rows.len().saturating_sub(1));
    rows.get(idx).copied().unwrap_or(0)
}

/// The row to blame and a message without roxmltree's positions (they count
/// in the preprocessed document, which nobody can open).
fn describe(e: &roxmltree::Error, text: &str) -> (usize, String) {
    let pos = e.pos();
    let row = pos.row as usize;
    if let roxmltree::Error::UnexpectedCloseTag(expected, actual, _) = e {
        let found = if actual == ROOT_TAG {
            "the end of the file".to_string()
        } else {
            format!("`</{actual}>` first")
        };
        let offset = offset_of(text, row, pos.col as usize);
        return match unclosed_open(text, offset, expected) {
            Some(open) => (
                open,
                format!("malformed XML: `<{expected}>` is never closed (found {found})"),
            ),
            None => (
                row,
                format!("malformed XML: expected `</{expected}>`, found {found}"),
            ),
        };
    }
    let mut message = e.to_string();
    let at = format!(" at {}:{}", pos.row, pos.col);
    if let Some(stripped) = message.strip_suffix(&at) {
        message = stripped.to_string();
    }
    message = message.replace(&at, "");
    (row, format!("malformed XML: {message}"))
}

/// Byte offset of a 1-based row/column (columns count chars).
fn offset_of(text: &str, row: usize, col: usize) -> usize {
    let mut start = 0;
    for _ in 1..row {
        match text[start..].find('\n') {
            Some(nl) => start += nl + 1,
            None => return text.len(),
        }
    }
    let line = &text[start..];
    let within = line
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(line.len(), |(i, _)| i);
    start + within
}

/// The row where the innermost still-open `<name` before `limit` starts.
/// Works on sanitised text: comments are blank, quotes are balanced.
fn unclosed_open(text: &str, limit: usize, name: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let limit = limit.min(bytes.len());
    let mut stack: Vec<(&str, usize)> = Vec::new();
    let mut row = 1;
    let mut i = 0;
    while i < limit {
        match bytes[i] {
            b'\n' => {
                row += 1;
                i += 1;
            }
            b'<' => {
                let open_row = row;
                let closing = bytes.get(i + 1) == Some(&b'/');
                let start = if closing { i + 2 } else { i + 1 };
                let len = text[start..]
                    .find(|c: char| is_xml_space(c) || matches!(c, '/' | '>' | '<'))
                    .unwrap_or(text.len() - start);
                let tag = &text[start..start + len];
                let mut j = start + len;
                let mut quote: Option<u8> = None;
                let mut self_closing = false;
                while j < limit {
                    let b = bytes[j];
                    if b == b'\n' {
                        row += 1;
                    }
                    match quote {
                        Some(q) if b == q => quote = None,
                        Some(_) => {}
                        None if b == b'"' || b == b'\'' => quote = Some(b),
                        None if b == b'>' => {
                            self_closing = bytes[j - 1] == b'/';
                            break;
                        }
                        None => {}
                    }
                    j += 1;
                }
                if !tag.is_empty() && !tag.starts_with(['!', '?']) {
                    if closing {
                        if let Some(at) = stack.iter().rposition(|(t, _)| *t == tag) {
                            stack.truncate(at);
                        }
                    } else if !self_closing {
                        stack.push((tag, open_row));
                    }
                }
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    stack
        .iter()
        .rev()
        .find(|(t, _)| *t == name)
        .map(|(_, r)| *r)
}

// ---------------------------------------------------------------------------
// Facts.

struct Extract<'a, 'input> {
    doc: &'a Document<'input>,
    origin: &'a [(usize, usize)],
    names: &'a [String],
    fallback: bool,
    out: &'a mut Discovered,
}

type Params<'a, 'input> = HashMap<String, (&'a str, Node<'a, 'input>)>;

impl<'a, 'input> Extract<'a, 'input> {
    fn run(mut self) {
        let root = self.doc.root_element();
        let mut parse_directory = false;
        for profile in root.descendants().filter(|n| n.has_tag_name("profile")) {
            if self.is_sofia_profile(profile) {
                parse_directory |= self.profile(profile);
            }
        }
        // Gateways in the user directory are loaded by a profile whose
        // `<domain parse="true">` asks for it (vanilla's external does).
        if parse_directory {
            let directory = root
                .descendants()
                .filter(|n| n.has_tag_name("section") && attr_is(*n, "name", "directory"));
            for section in directory {
                for gateways in section.descendants().filter(|n| n.has_tag_name("gateways")) {
                    for gateway in element_children(gateways, "gateway") {
                        self.gateway(gateway);
                    }
                }
            }
        }
        self.rtp(root);
    }

    /// A `<profile>` sofia loads: under `<profiles>` of `sofia.conf` (other
    /// modules, e.g. conference and verto, have `<profile>`s too), or, in the
    /// fallback reading, a top-level `sip_profiles/*.xml` profile.
    fn is_sofia_profile(&self, profile: Node) -> bool {
        match profile.parent_element() {
            Some(p) if p.has_tag_name("profiles") => p.parent_element().is_some_and(|c| {
                c.has_tag_name("configuration") && attr_is(c, "name", "sofia.conf")
            }),
            Some(p) => self.fallback && p.has_tag_name(ROOT_TAG),
            None => false,
        }
    }

    fn at(&self, node: Node) -> (String, usize) {
        let row = self.doc.text_pos_at(node.range().start).row as usize;
        let idx = row
            .saturating_sub(1)
            .min(self.origin.len().saturating_sub(1));
        match self.origin.get(idx) {
            Some(&(f, line)) => (self.names.get(f).cloned().unwrap_or_default(), line),
            None => (String::new(), 0),
        }
    }

    fn prov(&self, node: Node, section: &str, what: &str) -> Provenance {
        let (file, line) = self.at(node);
        Provenance {
            file,
            line,
            section: section.to_string(),
            what: what.to_string(),
        }
    }

    fn error(&mut self, node: Node, message: String) {
        let (file, line) = self.at(node);
        self.out.errors.push(DiscoveryError {
            file,
            line,
            message,
        });
    }

    /// `<param name= value=>` children of `holder`, by lower-cased name (sofia
    /// compares profile parameter names without case); the last one wins.
    fn params(holder: Option<Node<'a, 'input>>, fold_case: bool) -> Params<'a, 'input> {
        let mut params = HashMap::new();
        if let Some(holder) = holder {
            for param in element_children(holder, "param") {
                let name = param.attribute("name").unwrap_or("");
                let name = if fold_case {
                    name.to_ascii_lowercase()
                } else {
                    name.to_string()
                };
                params.insert(name, (param.attribute("value").unwrap_or(""), param));
            }
        }
        params
    }

    /// Reads one profile's listening ports and gateways; returns whether it
    /// asks for the directory's gateways too.
    fn profile(&mut self, profile: Node<'a, 'input>) -> bool {
        let name = profile.attribute("name").unwrap_or("(unnamed)");
        let section = format!("profile {name}");
        let settings = element_children(profile, "settings").next();
        let params = Self::params(settings, true);
        if let Some(settings) = settings {
            for param in element_children(settings, "param") {
                if attr_is(param, "name", "rtp-ip") {
                    let value = param.attribute("value").unwrap_or("");
                    self.bind_addr(param, name, "rtp-ip", value);
                }
            }
        }

        let sip_addr = params
            .get("sip-ip")
            .and_then(|&(v, node)| self.bind_addr(node, name, "sip-ip", v));
        let sip_port = match params.get("sip-port") {
            Some(&(v, node)) if !v.trim().is_empty() => self.port(node, name, "sip-port", v),
            _ => Some((DEFAULT_SIP_PORT, profile, "sip-port (default 5060)")),
        };
        let tls = match params.get("tls") {
            None => Some(false),
            Some((v, _)) if v.contains("$${") => None,
            Some((v, _)) => Some(switch_true(v)),
        };
        let tls_only = params
            .get("tls-only")
            .is_some_and(|(v, _)| !v.contains("$${") && switch_true(v));
        let transports = params
            .get("bind-params")
            .map_or(vec![Transport::Udp, Transport::Tcp], |(v, _)| {
                bind_transports(v)
            });

        if let Some((port, node, what)) = sip_port {
            if !(tls == Some(true) && tls_only) {
                let provenance = self.prov(node, &section, what);
                for transport in transports {
                    self.listen(transport, port, sip_addr, provenance.clone());
                }
            }
        }
        if tls == Some(true) {
            let tls_port = match params.get("tls-sip-port") {
                Some(&(v, node)) if !v.trim().is_empty() => {
                    self.port(node, name, "tls-sip-port", v)
                }
                _ => {
                    let node = params.get("tls").map_or(profile, |&(_, n)| n);
                    Some((DEFAULT_TLS_PORT, node, "tls-sip-port (default 5061)"))
                }
            };
            if let Some((port, node, what)) = tls_port {
                let provenance = self.prov(node, &section, what);
                self.listen(Transport::Tls, port, sip_addr, provenance);
            }
        }
        for (key, transport) in [
            ("ws-binding", Transport::Ws),
            ("wss-binding", Transport::Wss),
        ] {
            if let Some(&(v, node)) = params.get(key) {
                self.websocket(node, name, key, v, transport, sip_addr);
            }
        }

        for key in ["ext-sip-ip", "ext-rtp-ip"] {
            if let Some(&(v, node)) = params.get(key) {
                self.public(node, name, key, v);
            }
        }

        if let Some(gateways) = element_children(profile, "gateways").next() {
            for gateway in element_children(gateways, "gateway") {
                self.gateway(gateway);
            }
        }
        element_children(profile, "domains").any(|domains| {
            element_children(domains, "domain")
                .any(|d| d.attribute("parse").is_some_and(switch_true))
        })
    }

    fn listen(
        &mut self,
        transport: Transport,
        port: u16,
        addr: Option<IpAddr>,
        provenance: Provenance,
    ) {
        self.out.facts.listen.push(ListenPort {
            transport,
            port,
            addr,
            provenance,
        });
    }

    /// A port parameter: `auto` (sofia picks one) and unknown variables give
    /// no fact; anything but 1-65535 is an error.
    fn port(
        &mut self,
        node: Node<'a, 'input>,
        profile: &str,
        what: &'static str,
        value: &str,
    ) -> Option<(u16, Node<'a, 'input>, &'static str)> {
        let value = value.trim();
        if value.contains("$${") || value.eq_ignore_ascii_case("auto") {
            return None;
        }
        match parse_port(value) {
            Some(port) => Some((port, node, what)),
            None => {
                self.error(
                    node,
                    format!("{what} `{value}` in profile {profile} is not a port number (1-65535)"),
                );
                None
            }
        }
    }

    /// `sip-ip`/`rtp-ip`: the bind address when it is numeric. `auto`,
    /// `interface:...`, unknown variables and host names give none; FreeSWITCH
    /// replaces `0.0.0.0` with its guessed address, so that gives none too.
    fn bind_addr(&mut self, node: Node, profile: &str, what: &str, value: &str) -> Option<IpAddr> {
        let value = value.trim();
        if value.is_empty()
            || value.contains("$${")
            || value.eq_ignore_ascii_case("auto")
            || find_ci(value, "interface:") == Some(0)
        {
            return None;
        }
        let bare = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(value);
        match bare.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if v4.is_unspecified() => None,
            Ok(ip) => Some(ip),
            Err(_) => {
                if let Err(why) = classify_host(bare) {
                    self.error(
                        node,
                        format!("{what} `{value}` in profile {profile}: {why}"),
                    );
                }
                None
            }
        }
    }

    /// `ext-sip-ip`/`ext-rtp-ip`. `autonat:IP` is sofia's way to state the IP
    /// and keep its NAT detection on, so the IP is a fact as well.
    fn public(&mut self, node: Node, profile: &str, what: &str, value: &str) {
        let value = value.trim();
        let at_run_time = value.is_empty()
            || value.contains("$${")
            || value.eq_ignore_ascii_case("auto")
            || value.eq_ignore_ascii_case("auto-nat")
            || strip_prefix_ci(value, "stun:").is_some();
        if at_run_time {
            return;
        }
        let host = strip_prefix_ci(value, "host:")
            .or_else(|| strip_prefix_ci(value, "autonat:"))
            .unwrap_or(value)
            .trim();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
            .unwrap_or(host);
        match classify_host(bare) {
            Ok(ip) => {
                if let Some(target) = super::public_target(bare, ip) {
                    let provenance = self.prov(node, &format!("profile {profile}"), what);
                    self.out
                        .facts
                        .public
                        .push(PublicAddress { target, provenance });
                }
            }
            Err(why) => self.error(
                node,
                format!("{what} `{value}` in profile {profile}: {why}"),
            ),
        }
    }

    /// `ws-binding`/`wss-binding` = `[ip]:port`; an empty ip means sip-ip.
    fn websocket(
        &mut self,
        node: Node,
        profile: &str,
        key: &str,
        value: &str,
        transport: Transport,
        sip_addr: Option<IpAddr>,
    ) {
        let value = value.trim();
        if value.is_empty() || value.contains("$${") {
            return;
        }
        let Some((ip, port)) = value.rsplit_once(':') else {
            self.error(
                node,
                format!(
                    "{key} `{value}` in profile {profile} has no port (write `:port` or `ip:port`)"
                ),
            );
            return;
        };
        let Some(port) = parse_port(port) else {
            self.error(
                node,
                format!(
                    "{key} `{value}` in profile {profile}: `{port}` is not a port number (1-65535)"
                ),
            );
            return;
        };
        let addr = if ip.is_empty() {
            sip_addr
        } else {
            self.bind_addr(node, profile, key, ip)
        };
        let provenance = self.prov(node, &format!("profile {profile}"), key);
        self.listen(transport, port, addr, provenance);
    }

    fn gateway(&mut self, gateway: Node<'a, 'input>) {
        let Some(name) = gateway.attribute("name") else {
            return;
        };
        let holder = element_children(gateway, "params")
            .next()
            .unwrap_or(gateway);
        // sofia compares gateway parameter names with case.
        let params = Self::params(Some(holder), false);
        let given = |key: &str| {
            params
                .get(key)
                .copied()
                .filter(|(v, _)| !v.trim().is_empty())
        };
        let hint = match given("register-transport") {
            Some((v, _)) if v.contains("$${") => None,
            Some((v, node)) => match v.trim().to_ascii_lowercase().as_str() {
                "sctp" => None,
                other => match Transport::parse(other) {
                    Some(t) if t != Transport::Iax => Some(t),
                    _ => {
                        self.error(
                            node,
                            format!(
                                "gateway {name}: register-transport `{v}` is not udp, tcp, tls, ws or wss"
                            ),
                        );
                        None
                    }
                },
            },
            None => None,
        };
        // sofia: no proxy → the realm; no realm either → the gateway's name.
        let (value, node, what) = match (given("proxy"), given("realm")) {
            (Some((v, n)), _) => (v, n, "gateway proxy"),
            (None, Some((v, n))) => (v, n, "gateway realm"),
            (None, None) => (name, gateway, "gateway name"),
        };
        self.peer(name, value, node, what, hint);
        for (key, what) in [
            ("register-proxy", "gateway register-proxy"),
            ("outbound-proxy", "gateway outbound-proxy"),
        ] {
            if let Some((value, node)) = given(key) {
                self.peer(name, value, node, what, hint);
            }
        }
    }

    fn peer(
        &mut self,
        gateway: &str,
        value: &str,
        node: Node,
        what: &str,
        hint: Option<Transport>,
    ) {
        if value.contains("$${") {
            return;
        }
        match parse_target(value, false) {
            Ok(target) => {
                let provenance = self.prov(node, &format!("gateway {gateway}"), what);
                self.out.facts.peers.push(Peer {
                    name: gateway.to_string(),
                    target: target.into_peer_target(hint),
                    provenance,
                });
            }
            Err(why) if what == "gateway name" => self.error(
                node,
                format!(
                    "gateway `{gateway}` has no proxy or realm, so FreeSWITCH sends to its name, but {why}"
                ),
            ),
            Err(why) => {
                let key = what.trim_start_matches("gateway ");
                self.error(node, format!("gateway {gateway}: {key} `{value}`: {why}"));
            }
        }
    }

    /// switch.conf's RTP range; FreeSWITCH's defaults fill what it leaves out.
    fn rtp(&mut self, root: Node<'a, 'input>) {
        let Some(conf) = root
            .descendants()
            .find(|n| n.has_tag_name("configuration") && attr_is(*n, "name", "switch.conf"))
        else {
            return;
        };
        let params = Self::params(element_children(conf, "settings").next(), true);
        let mut ends = [DEFAULT_RTP.first, DEFAULT_RTP.last];
        let mut seen: Vec<(Node, &str)> = Vec::new();
        for (i, key) in ["rtp-start-port", "rtp-end-port"].into_iter().enumerate() {
            let Some(&(value, node)) = params.get(key) else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            if value.contains("$${") {
                return;
            }
            match parse_port(value) {
                Some(port) => {
                    ends[i] = port;
                    seen.push((node, key));
                }
                None => {
                    self.error(
                        node,
                        format!("{key} `{value}` in switch.conf is not a port number (1-65535)"),
                    );
                    return;
                }
            }
        }
        let [first, last] = ends;
        let (node, what) = match seen.as_slice() {
            [] => (
                conf,
                "rtp range (FreeSWITCH default 16384-32768)".to_string(),
            ),
            [(node, key)] => (
                *node,
                format!("{key} (the other end is FreeSWITCH's default)"),
            ),
            [(node, _), ..] => (*node, "rtp-start-port, rtp-end-port".to_string()),
        };
        if first > last {
            self.error(
                node,
                format!("switch.conf: rtp-start-port {first} is above rtp-end-port {last}"),
            );
            return;
        }
        let provenance = self.prov(node, "switch.conf", &what);
        self.out.facts.rtp = Some(RtpRange {
            range: PortRange { first, last },
            provenance,
        });
    }
}

fn element_children<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    tag: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    node.children().filter(move |c| c.has_tag_name(tag))
}

fn attr_is(node: Node, attr: &str, value: &str) -> bool {
    node.attribute(attr)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// FreeSWITCH's `switch_true`.
fn switch_true(v: &str) -> bool {
    let v = v.trim();
    ["yes", "on", "true", "t", "enabled", "active", "allow"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
        || v.parse::<i64>().is_ok_and(|n| n != 0)
}

/// `bind-params` with `transport=udp` (or `tcp`, `udp,tcp`) limits the
/// transports sofia binds `sip-port` on; without it, both.
fn bind_transports(v: &str) -> Vec<Transport> {
    let Some(at) = find_ci(v, "transport=") else {
        return vec![Transport::Udp, Transport::Tcp];
    };
    let list = &v[at + "transport=".len()..];
    let list = list.split(';').next().unwrap_or("");
    let mut out: Vec<Transport> = list
        .split(',')
        .filter_map(Transport::parse)
        .filter(|t| matches!(t, Transport::Udp | Transport::Tcp))
        .collect();
    out.dedup();
    if out.is_empty() {
        vec![Transport::Udp, Transport::Tcp]
    } else {
        out
    }
}

// ---------------------------------------------------------------------------
// Addresses, shared with the Kamailio reader.

/// A strict port number: 1-65535, digits only.
pub(super) fn parse_port(s: &str) -> Option<u16> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// `Ok(Some(ip))` for an address, `Ok(None)` for a plausible host (or
/// interface) name, `Err(why)` for something that is neither. A dotted
/// all-numeric string that is not IPv4 is an error, not a name: `10.0.0.300`
/// is a typo, and resolving it as a name would hide that.
pub(super) fn classify_host(host: &str) -> Result<Option<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Some(ip));
    }
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    if host.contains(':') {
        return Err(format!("`{host}` is not a valid IPv6 address"));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{host}` is not a valid IPv4 address"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if palisade_model::net::is_host_name(name) {
        Ok(None)
    } else {
        Err(format!("`{host}` is not a host name or IP address"))
    }
}

/// `host[:port]`, `[v6]`, `[v6]:port` or a bare IPv6 address as a public
/// address (see [`super::public_target`]); the port is dropped.
pub(super) fn parse_public(value: &str) -> Result<Option<PeerTarget>, String> {
    let (host, _port, bracketed) = split_hostport(value)?;
    match classify_host(host)? {
        Some(IpAddr::V4(_)) | None if bracketed => {
            Err(format!("`[{host}]` is not an IPv6 address"))
        }
        ip => Ok(super::public_target(host, ip)),
    }
}

/// A peer as written: `host`, `host:port`, `ip`, `[v6]:port`, or a SIP URI
/// (`sip:user@host:port;transport=tcp`, `sips:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub host: String,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
}

impl Target {
    /// `hint` is the transport the configuration names elsewhere; the URI's
    /// own `transport=` (or `sips:`) wins over it.
    pub(super) fn into_peer_target(self, hint: Option<Transport>) -> PeerTarget {
        match self.ip {
            Some(ip) => PeerTarget::Addr(ip),
            None => PeerTarget::Host {
                name: self.host,
                port: self.port,
                transport: self.transport.or(hint),
            },
        }
    }
}

/// Parses a peer. With `require_scheme`, only a `sip:`/`sips:` URI is taken.
pub(super) fn parse_target(value: &str, require_scheme: bool) -> Result<Target, String> {
    let mut s = value.trim();
    s = s.strip_prefix('<').unwrap_or(s);
    s = s.strip_suffix('>').unwrap_or(s);
    let mut transport = None;
    if let Some(rest) = strip_prefix_ci(s, "sips:") {
        s = rest;
        transport = Some(Transport::Tls);
    } else if let Some(rest) = strip_prefix_ci(s, "sip:") {
        s = rest;
    } else if require_scheme {
        return Err("not a SIP URI (sip:host[:port][;transport=...])".to_string());
    }
    let (hostpart, params) = s.split_once(';').unwrap_or((s, ""));
    let hostpart = hostpart.split('?').next().unwrap_or("");
    for param in params.split(';') {
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case("transport") {
                // An unknown transport (sctp) gives no hint rather than an error.
                transport = Transport::parse(v)
                    .filter(|t| *t != Transport::Iax)
                    .or(transport);
            }
        }
    }
    let hostport = hostpart.rsplit_once('@').map_or(hostpart, |(_, h)| h);
    let (host, port, bracketed) = split_hostport(hostport)?;
    let ip = classify_host(host)?;
    if bracketed && !matches!(ip, Some(IpAddr::V6(_))) {
        return Err(format!("`[{host}]` is not an IPv6 address"));
    }
    Ok(Target {
        host: host.to_string(),
        ip,
        port,
        transport,
    })
}

fn strip_prefix_ci<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    (find_ci(s, prefix) == Some(0)).then(|| &s[prefix.len()..])
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (two or
/// more colons: it cannot carry a port).
fn split_hostport(s: &str) -> Result<(&str, Option<u16>, bool), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the host is empty".to_string());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("`{s}` opens `[` without closing it"));
        };
        return match after {
            "" => Ok((host, None, true)),
            _ => match after.strip_prefix(':').map(parse_port) {
                Some(Some(port)) => Ok((host, Some(port), true)),
                _ => Err(format!(
                    "`{after}` after `[{host}]` is not `:port` (1-65535)"
                )),
            },
        };
    }
    if s.matches(':').count() >= 2 {
        return Ok((s, None, false));
    }
    match s.split_once(':') {
        Some((host, port)) => match parse_port(port) {
            Some(port) => Ok((host, Some(port), false)),
            None => Err(format!("`{port}` is not a port number (1-65535)")),
        },
        None => Ok((s, None, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_lines_and_fixes_ezxml_leniency() {
        let src = "<a x=\"1\" x=\"2\" y=\"a&b<c\">\n<!-- a -- b\n -->t & u<ns:b/></a>";
        let clean = sanitize(src);
        assert_eq!(clean.matches('\n').count(), src.matches('\n').count());
        let doc = Document::parse(&clean).expect("parses");
        let a = doc.root_element();
        assert_eq!(a.attribute("x"), Some("1"));
        assert_eq!(a.attribute("y"), Some("a&b<c"));
    }

    #[test]
    fn expand_leaves_unknown_variables() {
        let mut pre = Preprocessor::new(Path::new("/etc/freeswitch"));
        pre.vars.insert("a".into(), "1".into());
        assert_eq!(pre.expand("x$${A}y$${b}z$${"), "x1y$${b}z$${");
        assert_eq!(pre.expand("$${conf_dir}/x"), "/etc/freeswitch/x");
    }

    #[test]
    fn targets() {
        let t = parse_target("sip:trunk@sip.example.com:5070;transport=TCP", false).unwrap();
        assert_eq!(t.host, "sip.example.com");
        assert_eq!(t.port, Some(5070));
        assert_eq!(t.transport, Some(Transport::Tcp));
        let t = parse_target("[2001:db8::1]:5060", false).unwrap();
        assert_eq!(t.ip, Some("2001:db8::1".parse().unwrap()));
        assert!(parse_target("10.0.0.300", false).is_err());
        assert!(parse_target("host:99999", false).is_err());
        assert!(parse_target("[10.0.0.1]", false).is_err());
        assert!(parse_target("host.example.com", true).is_err());
    }

    #[test]
    fn public_addresses() {
        let addr = |a: &str| Ok(Some(PeerTarget::Addr(a.parse().unwrap())));
        assert_eq!(parse_public("203.0.113.5:5060"), addr("203.0.113.5"));
        assert_eq!(parse_public("[2001:db8::1]:5060"), addr("2001:db8::1"));
        assert_eq!(parse_public("2001:db8::1"), addr("2001:db8::1"));
        assert_eq!(
            parse_public("PBX.Example.NET.:5061"),
            Ok(Some(PeerTarget::Host {
                name: "pbx.example.net".into(),
                port: None,
                transport: None,
            }))
        );
        for local in [
            "127.0.0.1",
            "[::1]:5060",
            "0.0.0.0:5060",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(parse_public(local), Ok(None), "{local}");
        }
        assert!(parse_public("[10.0.0.1]").is_err());
        assert!(parse_public("[pbx.example.net]").is_err());
        assert!(parse_public("10.0.0.300").is_err());
        assert!(parse_public("pbx.example.net:0").is_err());
        assert!(parse_public("").is_err());
    }
}
