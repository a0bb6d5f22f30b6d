//! A reader for Asterisk's configuration syntax (`pjsip.conf`, `sip.conf`,
//! `iax.conf`, `rtp.conf`, `http.conf`, ...), generic so every Asterisk-family
//! parser shares one notion of sections, templates, comments and includes.
//!
//! It follows `main/config.c` of Asterisk where that matters for which options
//! end up in which section, because a firewall built from a different reading
//! than the PBX's own would open the wrong ports:
//!
//! - `[name]`, `[name](!)` (template), `[name](a,b)` (inherit: the templates'
//!   options are copied first, in order, then the section's own follow),
//!   `[name](+)` (add to the first section of that name). Templates must be
//!   defined above their use, as Asterisk requires.
//! - `key = value` and `key => value` are the same; `key += value` appends to
//!   the last value of that key. Options are kept in order and never merged, so
//!   the consumer decides between "last wins" ([`Section::get`]) and
//!   "all accumulate" ([`Section::get_all`]).
//! - `;` starts a comment, `\;` is a literal semicolon, `;--` ... `--;` is a
//!   (nestable, multi-line) block comment, and `;---` is *not* a block opener
//!   (FreePBX's `;-----;` banners rely on that).
//! - `#include` / `#tryinclude` continue in the section that was current at the
//!   directive (FreePBX's `[general]` + `#include sip_general_additional.conf`
//!   depends on it), and the including file carries on in its own section after.
//!
//! Deliberate differences from Asterisk, each chosen so that a broken or hostile
//! tree is reported instead of silently misread:
//!
//! - Relative include paths resolve against the *including file's directory*.
//!   Asterisk resolves them against its config directory; for files in that
//!   directory (all of FreePBX's) the two agree, and for trees in sub-directories
//!   this is what their authors mean.
//! - Globs are expanded by [`super::glob`] like glob(3): `*`, `?` and `[...]`
//!   in the last path component only (`pjsip.d/*.conf`, `pjsip_custom*.conf`),
//!   sorted, hidden files not matched by a leading wildcard. Wildcards in
//!   directory components are an error rather than a silent miss; `{a,b}` is
//!   taken literally. A glob that matches nothing is not an error (Asterisk
//!   fails the file then).
//! - Include loops, includes nested deeper than [`MAX_INCLUDE_DEPTH`], more than
//!   [`MAX_FILES`] file reads and files over [`MAX_FILE_BYTES`] are errors, so
//!   no input can make the reader recurse or allocate without bound.
//! - An option before any section (Asterisk fails the file) and a line that is
//!   neither section, directive nor `key = value` (Asterisk warns) are
//!   *warnings*: they change nothing Asterisk would act on.
//! - `#exec` is never run; it is a warning.
//! - Bytes that are not UTF-8 are read lossily; the reader never panics.

use super::glob::has_wildcard;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Far more than any real tree (FreePBX nests two levels) and small enough
/// that a chain of includes cannot exhaust the stack.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// Bounds the total work for trees that include the same files many times
/// (a diamond of includes is legal and would otherwise grow exponentially).
pub const MAX_FILES: usize = 4096;

/// A configuration file larger than this is not a configuration file (or is a
/// device like `/dev/zero` behind a symlink).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Asterisk's own limit for nested `;--` comments.
const MAX_NESTED_COMMENTS: usize = 128;

/// Index of a file in [`Config::path`]; entries carry it instead of a path so
/// a 15,000-section tree does not hold 150,000 copies of a handful of paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(u32);

/// One `key = value` line with where it was written.
///
/// Keys and values are shared strings: a FreePBX tree repeats the same few
/// hundred of them across 15,000 sections, and one allocation each (instead of
/// one per line) halves the time to read and to drop a large tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Arc<str>,
    pub value: Arc<str>,
    pub file: FileId,
    pub line: usize,
    /// The template section (index into [`Config::sections`]) the line was
    /// written in, when it reached this section by inheritance: provenance then
    /// points at the template's line, and says so.
    pub inherited_from: Option<usize>,
}

/// A `[section]` with its options in file order (templates' options first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// `(!)`: a template, not an object of its own.
    pub is_template: bool,
    /// The templates named in the header, in order.
    pub templates: Vec<String>,
    pub file: FileId,
    pub line: usize,
    pub entries: Vec<Entry>,
}

impl Section {
    /// The effective value of a single-valued option: the last one wins, as
    /// with `ast_variable_retrieve`, so a section overrides its templates.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|e| &*e.value)
    }

    /// Every occurrence, for options that accumulate (`match=`, `contact=`,
    /// `register =>`, `bindaddr` in iax.conf).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.key.eq_ignore_ascii_case(key))
    }
}

/// Why a line or a file could not be read as Asterisk would read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IniErrorKind {
    // Errors: the tree does not mean what it says, or could not be read.
    #[error("#include target `{0}` does not exist")]
    MissingInclude(String),
    #[error("include loop: {0}")]
    IncludeLoop(String),
    #[error("includes nested deeper than {MAX_INCLUDE_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_FILES} files read; giving up")]
    TooManyFiles,
    #[error("cannot read `{path}`: {why}")]
    Unreadable { path: String, why: String },
    #[error("`{0}` is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge(String),
    #[error("section header `{0}` has no closing `]`")]
    UnterminatedSection(String),
    #[error("section header `{0}` has no closing `)` after its options")]
    UnterminatedOptions(String),
    #[error("template `{0}` is not defined above this section")]
    UnknownTemplate(String),
    #[error("`(+)` adds to section `{0}`, which is not defined above")]
    UnknownAppend(String),
    #[error("`{0}`: wildcards are supported in the last path component only")]
    UnsupportedGlob(String),
    // Warnings: Asterisk skips these too, or they change nothing it acts on.
    #[error("`{0}` is neither a section, a directive nor `key = value`; skipped")]
    NotKeyValue(String),
    #[error("option `{0}` before any section; ignored")]
    NoSection(String),
    #[error("no option name before `=`; skipped")]
    EmptyKey,
    #[error("unknown directive `#{0}`; ignored")]
    UnknownDirective(String),
    #[error("`#{0}` needs a file name; ignored")]
    MissingArgument(String),
    #[error("`#exec` is never run by discovery; ignored")]
    Exec,
    #[error("block comment opened here is never closed")]
    UnterminatedComment,
    #[error("block comments nested deeper than {MAX_NESTED_COMMENTS}; `;--` taken as a comment")]
    CommentsTooDeep,
}

impl IniErrorKind {
    /// Warnings never make a tree unusable; errors do.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            IniErrorKind::NotKeyValue(_)
                | IniErrorKind::NoSection(_)
                | IniErrorKind::EmptyKey
                | IniErrorKind::UnknownDirective(_)
                | IniErrorKind::MissingArgument(_)
                | IniErrorKind::Exec
                | IniErrorKind::UnterminatedComment
                | IniErrorKind::CommentsTooDeep
        )
    }
}

/// A problem with the file and line it is in (line 0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {kind}", file.display())]
pub struct IniError {
    pub file: PathBuf,
    pub line: usize,
    pub kind: IniErrorKind,
}

/// One configuration file with everything it includes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub sections: Vec<Section>,
    paths: Vec<PathBuf>,
    /// Every file read and every file looked for (missing `#tryinclude`
    /// targets, glob patterns — whose parent is the directory a new match would
    /// appear in), in the order first met, so a watcher can follow them.
    pub files: Vec<PathBuf>,
    pub errors: Vec<IniError>,
    pub warnings: Vec<IniError>,
}

impl Config {
    pub fn path(&self, id: FileId) -> &Path {
        self.paths
            .get(id.0 as usize)
            .map(PathBuf::as_path)
            .unwrap_or_else(|| Path::new(""))
    }

    /// All sections of that name (Asterisk compares names case-insensitively),
    /// templates included.
    pub fn sections_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.sections
            .iter()
            .filter(move |s| s.name.eq_ignore_ascii_case(name))
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Reads `path` and its includes. A missing or unreadable `path` is an error
/// at line 0.
pub fn load(path: &Path) -> Config {
    let mut loader = Loader::new(path);
    loader.read_file(path, None, Current::None);
    loader.finish()
}

/// Like [`load`], but a `path` that does not exist is `None`: optional files
/// (`iax.conf` on a PJSIP-only box) are not errors.
pub fn load_optional(path: &Path) -> Option<Config> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        _ => Some(load(path)),
    }
}

/// Parses `text` as if it had been read from `path`; includes are resolved
/// against `path`'s directory and read from disk.
pub fn parse(path: &Path, text: &[u8]) -> Config {
    let mut loader = Loader::new(path);
    loader.parse_root(path, text);
    loader.finish()
}

/// Where an `#include` was written, for errors about its target.
#[derive(Clone, Copy)]
struct Site {
    file: FileId,
    line: usize,
}

struct Loader {
    cfg: Config,
    ids: HashMap<PathBuf, FileId>,
    watched: HashSet<PathBuf>,
    /// Lower-cased section name → first section of that name: Asterisk finds
    /// templates and `(+)` targets by the first match.
    by_name: HashMap<String, usize>,
    /// The include chain being read: (canonical path, path as reached).
    stack: Vec<(PathBuf, PathBuf)>,
    reads: usize,
    /// Directory of the top file, to print include chains short.
    base: PathBuf,
    strings: Interner,
}

/// Parser state for one file: the current section, or "skip until the next
/// header" after a header Asterisk would have rejected.
#[derive(Clone, Copy)]
enum Current {
    None,
    Section(usize),
    Broken,
}

impl Loader {
    fn new(top: &Path) -> Loader {
        Loader {
            cfg: Config::default(),
            ids: HashMap::new(),
            watched: HashSet::new(),
            by_name: HashMap::new(),
            stack: Vec::new(),
            reads: 0,
            base: top.parent().map(Path::to_path_buf).unwrap_or_default(),
            strings: Interner::new(),
        }
    }

    fn finish(self) -> Config {
        self.cfg
    }

    fn watch(&mut self, path: &Path) {
        if self.watched.insert(path.to_path_buf()) {
            self.cfg.files.push(path.to_path_buf());
        }
    }

    fn file_id(&mut self, path: &Path) -> FileId {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        let id = FileId(self.cfg.paths.len() as u32);
        self.cfg.paths.push(path.to_path_buf());
        self.ids.insert(path.to_path_buf(), id);
        id
    }

    fn report(&mut self, file: &Path, line: usize, kind: IniErrorKind) {
        let e = IniError {
            file: file.to_path_buf(),
            line,
            kind,
        };
        if e.kind.is_warning() {
            self.cfg.warnings.push(e);
        } else {
            self.cfg.errors.push(e);
        }
    }

    /// Reports at the include site when there is one (that is the line to
    /// fix), else at line 0 of the file itself.
    fn report_at(&mut self, site: Option<Site>, path: &Path, kind: IniErrorKind) {
        match site {
            Some(s) => {
                let file = self.cfg.path(s.file).to_path_buf();
                self.report(&file, s.line, kind);
            }
            None => self.report(path, 0, kind),
        }
    }

    fn short(&self, p: &Path) -> String {
        p.strip_prefix(&self.base)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn parse_root(&mut self, path: &Path, text: &[u8]) {
        self.watch(path);
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.reads += 1;
        self.stack.push((canonical, path.to_path_buf()));
        let id = self.file_id(path);
        let text = utf8(text);
        self.parse_text(id, path, &text, Current::None);
        self.stack.pop();
    }

    fn read_file(&mut self, path: &Path, site: Option<Site>, cur: Current) {
        self.watch(path);
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            self.report_at(site, path, IniErrorKind::TooDeep);
            return;
        }
        if self.reads >= MAX_FILES {
            self.report_at(site, path, IniErrorKind::TooManyFiles);
            return;
        }
        self.reads += 1;
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.stack.iter().any(|(c, _)| *c == canonical) {
            // The whole chain from the top file: the loop may be entered from
            // anywhere, and the operator needs to see how it was reached.
            let mut chain: Vec<String> = self
                .stack
                .iter()
                .map(|(_, shown)| self.short(shown))
                .collect();
            chain.push(self.short(path));
            let chain = chain.join(" -> ");
            self.report_at(site, path, IniErrorKind::IncludeLoop(chain));
            return;
        }
        let bytes = match read_limited(path) {
            Ok(b) => b,
            Err(kind) => {
                self.report_at(site, path, kind);
                return;
            }
        };
        self.stack.push((canonical, path.to_path_buf()));
        let id = self.file_id(path);
        let text = utf8(&bytes);
        self.parse_text(id, path, &text, cur);
        self.stack.pop();
    }

    fn parse_text(&mut self, id: FileId, path: &Path, text: &str, start: Current) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut cur = start;
        let mut nest: Vec<usize> = Vec::new();
        for (idx, raw) in text.split('\n').enumerate() {
            let lineno = idx + 1;
            let content = match strip_comments(raw, &mut nest, lineno) {
                Ok(c) => c,
                Err(c) => {
                    self.report(path, lineno, IniErrorKind::CommentsTooDeep);
                    c
                }
            };
            let line = content.trim();
            if line.is_empty() {
                continue;
            }
            self.line(id, path, lineno, line, &mut cur);
        }
        if let Some(&opened) = nest.first() {
            self.report(path, opened, IniErrorKind::UnterminatedComment);
        }
    }

    fn line(&mut self, id: FileId, path: &Path, lineno: usize, line: &str, cur: &mut Current) {
        if line.starts_with('[') {
            *cur = self.header(id, path, lineno, line);
        } else if let Some(directive) = line.strip_prefix('#') {
            self.directive(id, path, lineno, directive, *cur);
        } else {
            self.option(id, path, lineno, line, *cur);
        }
    }

    fn header(&mut self, id: FileId, path: &Path, lineno: usize, line: &str) -> Current {
        let Some(close) = find_byte(line, b']') else {
            self.report(path, lineno, IniErrorKind::UnterminatedSection(clip(line)));
            return Current::Broken;
        };
        let name = &line[1..close];
        let mut template = false;
        let mut append = false;
        let mut bases: Vec<&str> = Vec::new();
        if let Some(opts) = line[close + 1..].strip_prefix('(') {
            let Some(end) = find_byte(opts, b')') else {
                self.report(path, lineno, IniErrorKind::UnterminatedOptions(clip(line)));
                return Current::Broken;
            };
            for opt in opts[..end].split(',').map(str::trim) {
                if opt == "!" {
                    template = true;
                } else if opt.starts_with('+') {
                    append = true;
                } else if !opt.is_empty() {
                    bases.push(opt);
                }
            }
        }
        let key = name.to_ascii_lowercase();
        let target = if append {
            match self.by_name.get(&key) {
                Some(&idx) => {
                    self.cfg.sections[idx].is_template |= template;
                    idx
                }
                None => {
                    self.report(path, lineno, IniErrorKind::UnknownAppend(name.into()));
                    return Current::Broken;
                }
            }
        } else {
            self.cfg.sections.push(Section {
                name: name.to_string(),
                is_template: template,
                templates: bases.iter().map(|b| b.to_string()).collect(),
                file: id,
                line: lineno,
                entries: Vec::new(),
            });
            self.cfg.sections.len() - 1
        };
        for base in bases {
            // Only sections above this header count, as in Asterisk; a fresh
            // section is not in `by_name` yet, so `[a](a)` needs an earlier `[a]`.
            match self.by_name.get(&base.to_ascii_lowercase()).copied() {
                Some(b) if b != target => {
                    let inherited: Vec<Entry> = self.cfg.sections[b]
                        .entries
                        .iter()
                        .map(|e| Entry {
                            inherited_from: Some(e.inherited_from.unwrap_or(b)),
                            ..e.clone()
                        })
                        .collect();
                    self.cfg.sections[target].entries.extend(inherited);
                }
                _ => self.report(path, lineno, IniErrorKind::UnknownTemplate(base.into())),
            }
        }
        self.by_name.entry(key).or_insert(target);
        Current::Section(target)
    }

    fn directive(&mut self, id: FileId, path: &Path, lineno: usize, body: &str, cur: Current) {
        let split = body.find(|c: char| c <= ' ').unwrap_or(body.len());
        let (name, arg) = body.split_at(split);
        let arg = dequote(arg.trim());
        let include = if name.eq_ignore_ascii_case("include") {
            true
        } else if name.eq_ignore_ascii_case("tryinclude") {
            false
        } else if name.eq_ignore_ascii_case("exec") {
            self.report(path, lineno, IniErrorKind::Exec);
            return;
        } else {
            self.report(path, lineno, IniErrorKind::UnknownDirective(clip(name)));
            return;
        };
        if arg.is_empty() {
            self.report(
                path,
                lineno,
                IniErrorKind::MissingArgument(name.to_string()),
            );
            return;
        }
        let site = Site {
            file: id,
            line: lineno,
        };
        let target = Path::new(arg);
        let full = if target.is_absolute() {
            target.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new("")).join(target)
        };
        if has_wildcard(arg) {
            self.glob(&full, arg, site, path, cur);
            return;
        }
        match fs::metadata(&full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.watch(&full);
                if include {
                    self.report(path, lineno, IniErrorKind::MissingInclude(arg.to_string()));
                }
            }
            _ => self.read_file(&full, Some(site), cur),
        }
    }

    fn glob(&mut self, full: &Path, arg: &str, site: Site, path: &Path, cur: Current) {
        let (Some(dir), Some(pattern)) = (full.parent(), full.file_name()) else {
            self.report(path, site.line, IniErrorKind::UnsupportedGlob(arg.into()));
            return;
        };
        // Only the directive's own directory part counts: the including file's
        // directory may legitimately contain `*` or `?`.
        let arg_dir = arg.rsplit_once('/').map_or("", |(d, _)| d);
        if has_wildcard(arg_dir) {
            self.report(path, site.line, IniErrorKind::UnsupportedGlob(arg.into()));
            return;
        }
        let pattern = pattern.to_string_lossy();
        self.watch(full);
        let matches = super::glob::matches_in(dir, &pattern);
        for m in matches.into_iter().filter(|p| p.is_file()) {
            self.read_file(&m, Some(site), cur);
        }
    }

    fn option(&mut self, id: FileId, path: &Path, lineno: usize, line: &str, cur: Current) {
        let idx = match cur {
            Current::Section(i) => i,
            Current::Broken => return,
            Current::None => {
                let key = line.split('=').next().unwrap_or(line).trim();
                self.report(path, lineno, IniErrorKind::NoSection(clip(key)));
                return;
            }
        };
        // A leading backslash lets an option name start with `[`, `#` or `;`.
        let body = line.strip_prefix('\\').unwrap_or(line);
        let Some(eq) = find_byte(body, b'=') else {
            self.report(path, lineno, IniErrorKind::NotKeyValue(clip(line)));
            return;
        };
        let (raw_key, rest) = (&body[..eq], &body[eq + 1..]);
        if let Some(k) = raw_key.strip_suffix('+').filter(|k| !k.is_empty()) {
            let key = k.trim();
            let section = &mut self.cfg.sections[idx];
            if let Some(pos) = section.entries.iter().rposition(|e| &*e.key == key) {
                let joined = format!("{}{}", section.entries[pos].value, rest);
                let value = self.intern(joined.trim());
                self.cfg.sections[idx].entries[pos].value = value;
                return;
            }
            self.push(idx, id, lineno, key, rest.trim(), path);
            return;
        }
        let value = rest.strip_prefix('>').unwrap_or(rest);
        self.push(idx, id, lineno, raw_key.trim(), value.trim(), path);
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        self.strings.get(s)
    }

    fn push(&mut self, idx: usize, id: FileId, lineno: usize, key: &str, value: &str, path: &Path) {
        if key.is_empty() {
            self.report(path, lineno, IniErrorKind::EmptyKey);
            return;
        }
        let (key, value) = (self.intern(key), self.intern(value));
        self.cfg.sections[idx].entries.push(Entry {
            key,
            value,
            file: id,
            line: lineno,
            inherited_from: None,
        });
    }
}

/// Shares repeated keys and values (`type=endpoint`, `direct_media=yes`, ...).
/// A direct-mapped cache rather than a set: a lookup is one cheap hash and at
/// most one comparison whatever the input, so crafted strings can make it miss
/// but never slow.
struct Interner {
    slots: Vec<Option<Arc<str>>>,
}

impl Interner {
    const SLOTS: usize = 4096;

    fn new() -> Interner {
        Interner {
            slots: vec![None; Self::SLOTS],
        }
    }

    fn get(&mut self, s: &str) -> Arc<str> {
        // FNV-1a: a few cycles per byte on the short strings of a config file.
        let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let slot = &mut self.slots[(h as usize) & (Self::SLOTS - 1)];
        match slot {
            Some(shared) if **shared == *s => shared.clone(),
            _ => {
                let shared: Arc<str> = Arc::from(s);
                *slot = Some(shared.clone());
                shared
            }
        }
    }
}

/// Valid UTF-8 (the normal case) is borrowed after the fast check; anything
/// else is read lossily.
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Reads a regular file of bounded size. FIFOs, devices and directories are
/// refused before opening, so a hostile include cannot block or flood us.
fn read_limited(path: &Path) -> Result<Vec<u8>, IniErrorKind> {
    let shown = || path.display().to_string();
    let unreadable = |e: io::Error| IniErrorKind::Unreadable {
        path: shown(),
        why: e.to_string(),
    };
    let meta = fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(IniErrorKind::Unreadable {
            path: shown(),
            why: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(IniErrorKind::TooLarge(shown()));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf))
        .map_err(unreadable)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(IniErrorKind::TooLarge(shown()));
    }
    Ok(buf)
}

/// Removes comments from one physical line, tracking block comments across
/// lines in `nest` (the line each open `;--` was on). Mirrors the scan in
/// Asterisk's `config_text_file_load`, including its order of checks.
/// `Err` carries the text too, when `;--` nested too deep (a warning).
fn strip_comments<'a>(
    raw: &'a str,
    nest: &mut Vec<usize>,
    lineno: usize,
) -> Result<Cow<'a, str>, Cow<'a, str>> {
    let b = raw.as_bytes();
    if nest.is_empty() && !b.contains(&b';') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::new();
    let mut too_deep = false;
    // `seg` is where the current scan segment starts (Asterisk's `new_buf`);
    // `copy` is where uncommented text to keep starts, if we are outside a comment.
    let mut seg = 0usize;
    let mut copy: Option<usize> = if nest.is_empty() { Some(0) } else { None };
    let mut pos = 0usize;
    while let Some(off) = b[pos..].iter().position(|&c| c == b';') {
        let p = pos + off;
        if p > seg && b[p - 1] == b'\\' {
            if let Some(from) = copy {
                out.push_str(&raw[from..p - 1]);
                out.push(';');
                copy = Some(p + 1);
            }
            seg = p + 1;
            pos = p + 1;
        } else if b.get(p + 1) == Some(&b'-')
            && b.get(p + 2) == Some(&b'-')
            && b.get(p + 3) != Some(&b'-')
        {
            if nest.len() < MAX_NESTED_COMMENTS {
                if let Some(from) = copy.take() {
                    out.push_str(&raw[from..p]);
                }
                nest.push(lineno);
                seg = p + 3;
                pos = p + 3;
            } else {
                too_deep = true;
                pos = p + 1;
            }
        } else if !nest.is_empty() && p >= seg + 2 && b[p - 1] == b'-' && b[p - 2] == b'-' {
            nest.pop();
            seg = p + 1;
            pos = p + 1;
            if nest.is_empty() {
                copy = Some(p + 1);
            }
        } else if nest.is_empty() {
            if let Some(from) = copy.take() {
                out.push_str(&raw[from..p]);
            }
            break;
        } else {
            seg = p + 1;
            pos = p + 1;
        }
    }
    if let Some(from) = copy {
        out.push_str(&raw[from..]);
    }
    if too_deep {
        Err(Cow::Owned(out))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// `str::find` with a `char` goes through a UTF-8 searcher; the delimiters
/// are ASCII, and this is the inner loop of reading a large tree.
fn find_byte(s: &str, b: u8) -> Option<usize> {
    s.as_bytes().iter().position(|&c| c == b)
}

/// `"file"` and `<file>` name the same file as `file`.
fn dequote(s: &str) -> &str {
    for (open, close) in [('"', '"'), ('<', '>')] {
        if let Some(inner) = s.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            return inner;
        }
    }
    s
}

/// Keeps messages about garbage lines readable.
fn clip(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Config {
        parse(Path::new("/nonexistent/test.conf"), text.as_bytes())
    }

    fn kv(s: &Section) -> Vec<(String, String, usize)> {
        s.entries
            .iter()
            .map(|e| (e.key.to_string(), e.value.to_string(), e.line))
            .collect()
    }

    fn owned(v: &[(&str, &str, usize)]) -> Vec<(String, String, usize)> {
        v.iter()
            .map(|(k, v, l)| (k.to_string(), v.to_string(), *l))
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn sections_options_and_object_syntax() {
        let c = p("[general]\nbindport = 5060\nregister => 1000:pw@host\n\n[peer]\nhost=1.2.3.4\n");
        assert!(c.is_ok() && c.warnings.is_empty(), "{:?}", c);
        assert_eq!(c.sections.len(), 2);
        assert_eq!(c.sections[0].name, "general");
        assert_eq!(
            kv(&c.sections[0]),
            owned(&[("bindport", "5060", 2), ("register", "1000:pw@host", 3)])
        );
        assert_eq!(c.sections[1].line, 5);
        assert_eq!(c.sections[1].value("HOST"), Some("1.2.3.4"));
    }

    #[test]
    fn comments_and_escaped_semicolons() {
        let c = p(
            "[s] ; header comment\na=1 ; trailing\n; whole line\nb=sip:x\\;lr;comment\nc = \\;\n",
        );
        assert_eq!(
            kv(&c.sections[0]),
            owned(&[("a", "1", 2), ("b", "sip:x;lr", 4), ("c", ";", 5)])
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn block_comments_span_lines_nest_and_spare_banners() {
        let text = "\
;--------------------------------------;
;  banner lines start with ;--- and are plain comments
;--------------------------------------;
[s]
a=1 ;-- starts here
[hidden]
b=2 ;-- nested --; still inside
 --; c=3
d=4;-- inline --;5
";
        let c = p(text);
        assert!(c.is_ok(), "{:?}", c.errors);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.sections.len(), 1);
        assert_eq!(
            kv(&c.sections[0]),
            owned(&[("a", "1", 5), ("c", "3", 8), ("d", "45", 9)])
        );
    }

    #[test]
    fn unterminated_block_comment_is_a_warning_at_its_start() {
        let c = p("[s]\na=1\n;-- never closed\nb=2\n");
        assert!(c.is_ok());
        assert_eq!(kv(&c.sections[0]), owned(&[("a", "1", 2)]));
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].line, 3);
        assert_eq!(c.warnings[0].kind, IniErrorKind::UnterminatedComment);
    }

    #[test]
    fn templates_inherit_in_order_and_the_section_wins() {
        let text = "\
[t1](!)
type=endpoint
context=one
match=1.1.1.1
[t2](!,t1)
context=two
match=2.2.2.2
[real](t2)
context=mine
match=3.3.3.3
";
        let c = p(text);
        assert!(c.is_ok(), "{:?}", c.errors);
        let real = &c.sections[2];
        assert!(!real.is_template && c.sections[0].is_template && c.sections[1].is_template);
        assert_eq!(real.templates, vec!["t2".to_string()]);
        assert_eq!(real.value("context"), Some("mine"));
        assert_eq!(real.value("type"), Some("endpoint"));
        let matches: Vec<(&str, usize, Option<usize>)> = real
            .get_all("match")
            .map(|e| (&*e.value, e.line, e.inherited_from))
            .collect();
        // t1's line keeps pointing at t1 even though it came through t2.
        assert_eq!(
            matches,
            vec![
                ("1.1.1.1", 4, Some(0)),
                ("2.2.2.2", 7, Some(1)),
                ("3.3.3.3", 10, None)
            ]
        );
    }

    #[test]
    fn several_templates_apply_in_header_order() {
        let c = p("[a](!)\nx=a\ny=a\n[b](!)\nx=b\n[s](a,b)\n");
        let s = &c.sections[2];
        assert_eq!(s.value("x"), Some("b"));
        assert_eq!(s.value("y"), Some("a"));
    }

    #[test]
    fn unknown_template_is_an_error_but_the_section_is_kept() {
        let c = p("[s](nope)\na=1\n[later](!)\n");
        assert_eq!(c.errors.len(), 1);
        assert_eq!(c.errors[0].line, 1);
        assert_eq!(
            c.errors[0].kind,
            IniErrorKind::UnknownTemplate("nope".into())
        );
        assert_eq!(c.sections[0].value("a"), Some("1"));
    }

    #[test]
    fn plus_appends_to_the_first_section_of_that_name() {
        let c = p("[s]\na=1\n[other]\nb=2\n[S](+)\nc=3\n[missing](+)\nd=4\n");
        assert_eq!(c.sections.len(), 2);
        assert_eq!(kv(&c.sections[0]), owned(&[("a", "1", 2), ("c", "3", 6)]));
        assert_eq!(c.errors.len(), 1);
        assert_eq!(c.errors[0].line, 7);
        assert_eq!(
            c.errors[0].kind,
            IniErrorKind::UnknownAppend("missing".into())
        );
    }

    #[test]
    fn plus_equals_appends_to_the_value() {
        let c = p("[s]\nallow=ulaw\nallow+=,alaw\nnew+=x\n");
        assert_eq!(
            kv(&c.sections[0]),
            owned(&[("allow", "ulaw,alaw", 2), ("new", "x", 4)])
        );
    }

    #[test]
    fn options_before_any_section_and_garbage_are_warnings() {
        let c = p("orphan=1\n[s]\nthis is not an option\na=1\n=novalue\n#frobnicate x\n#exec /bin/true\n#include\n");
        assert!(c.is_ok(), "{:?}", c.errors);
        assert_eq!(kv(&c.sections[0]), owned(&[("a", "1", 4)]));
        let got: Vec<(usize, IniErrorKind)> = c
            .warnings
            .iter()
            .map(|w| (w.line, w.kind.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, IniErrorKind::NoSection("orphan".into())),
                (3, IniErrorKind::NotKeyValue("this is not an option".into())),
                (5, IniErrorKind::EmptyKey),
                (6, IniErrorKind::UnknownDirective("frobnicate".into())),
                (7, IniErrorKind::Exec),
                (8, IniErrorKind::MissingArgument("include".into())),
            ]
        );
    }

    #[test]
    fn unterminated_header_is_an_error_and_its_options_are_dropped() {
        let c = p("[good]\na=1\n[bad\nb=2\n[bad2](!\nc=3\n[next]\nd=4\n");
        let got: Vec<(usize, String)> = c
            .errors
            .iter()
            .map(|e| (e.line, e.kind.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, "section header `[bad` has no closing `]`".to_string()),
                (
                    5,
                    "section header `[bad2](!` has no closing `)` after its options".to_string()
                ),
            ]
        );
        assert!(c.warnings.is_empty());
        assert_eq!(c.sections.len(), 2);
        assert_eq!(kv(&c.sections[1]), owned(&[("d", "4", 8)]));
    }

    #[test]
    fn non_utf8_crlf_and_bom_are_read() {
        let mut bytes = b"\xEF\xBB\xBF[s]\r\nname=caf\xE9\r\nb=2\r\n".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
        let c = parse(Path::new("/x/y.conf"), &bytes);
        assert_eq!(c.sections[0].name, "s");
        assert_eq!(c.sections[0].value("name"), Some("caf\u{FFFD}"));
        assert_eq!(c.sections[0].value("b"), Some("2"));
        assert!(c.is_ok());
        assert_eq!(c.warnings.len(), 1, "the 0xff 0xfe line is garbage");
    }

    #[test]
    fn includes_resolve_against_the_including_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(
            dir.path(),
            "top.conf",
            "[a]\nx=1\n#include sub/one.conf\ny=2\n",
        );
        write(
            dir.path(),
            "sub/one.conf",
            "z=3\n#include two.conf\n[b]\nw=4\n",
        );
        write(dir.path(), "sub/two.conf", "v=5\n");
        let c = load(&top);
        assert!(c.is_ok() && c.warnings.is_empty(), "{:?}", c);
        // one.conf continues in [a]; top.conf carries on in [a] after it.
        let a = &c.sections[0];
        let got: Vec<(&str, &str, String)> = a
            .entries
            .iter()
            .map(|e| {
                let f = c
                    .path(e.file)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                (&*e.key, &*e.value, format!("{f}:{}", e.line))
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("x", "1", "top.conf:2".to_string()),
                ("z", "3", "one.conf:1".to_string()),
                ("v", "5", "two.conf:1".to_string()),
                ("y", "2", "top.conf:4".to_string()),
            ]
        );
        assert_eq!(c.sections[1].name, "b");
        assert_eq!(
            c.files,
            vec![
                top,
                dir.path().join("sub/one.conf"),
                dir.path().join("sub/two.conf")
            ]
        );
    }

    #[test]
    fn quoted_include_and_missing_targets() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "there.conf", "[t]\n");
        let top = write(
            dir.path(),
            "top.conf",
            "#include \"there.conf\"\n#tryinclude optional.conf\n#include <missing.conf>\n",
        );
        let c = load(&top);
        assert_eq!(c.sections.len(), 1);
        assert_eq!(c.errors.len(), 1);
        let e = &c.errors[0];
        assert_eq!((e.file.as_path(), e.line), (top.as_path(), 3));
        assert_eq!(
            e.kind.to_string(),
            "#include target `missing.conf` does not exist"
        );
        assert!(c.files.contains(&dir.path().join("optional.conf")));
        assert!(c.files.contains(&dir.path().join("missing.conf")));
    }

    #[test]
    fn globs_are_sorted_skip_hidden_files_and_may_match_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "d/20-b.conf", "[b]\n");
        write(dir.path(), "d/10-a.conf", "[a]\n");
        write(dir.path(), "d/.hidden.conf", "[hidden\n");
        write(dir.path(), "d/notes.txt", "garbage\n");
        fs::create_dir_all(dir.path().join("d/dir.conf")).unwrap();
        let top = write(
            dir.path(),
            "top.conf",
            "#include d/*.conf\n#include d/nothing*.conf\n#include nodir/*.conf\n",
        );
        let c = load(&top);
        assert!(c.is_ok() && c.warnings.is_empty(), "{:?}", c);
        let names: Vec<&str> = c.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(c.files.contains(&dir.path().join("d/*.conf")));
        assert!(c.files.contains(&dir.path().join("d/nothing*.conf")));
        assert!(c.files.contains(&dir.path().join("d/10-a.conf")));
    }

    #[test]
    fn wildcards_in_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(dir.path(), "top.conf", "\n#include */x.conf\n");
        let c = load(&top);
        assert_eq!(c.errors.len(), 1);
        assert_eq!(c.errors[0].line, 2);
        assert_eq!(
            c.errors[0].kind,
            IniErrorKind::UnsupportedGlob("*/x.conf".into())
        );
        // A wildcard in the including file's own directory is not the directive's.
        let odd = dir.path().join("we*ird");
        write(&odd, "d/a.conf", "[a]\n");
        let top = write(&odd, "top.conf", "#include d/*.conf\n");
        let c = load(&top);
        assert!(c.is_ok(), "{:?}", c.errors);
        assert_eq!(c.sections.len(), 1);
    }

    #[test]
    fn include_loops_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(dir.path(), "top.conf", "#include a.conf\n");
        write(dir.path(), "a.conf", "[a]\n#include b.conf\n");
        write(dir.path(), "b.conf", "\n\n#include a.conf\n");
        let c = load(&top);
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        let e = &c.errors[0];
        assert_eq!(e.file, dir.path().join("b.conf"));
        assert_eq!(e.line, 3);
        assert_eq!(
            e.kind.to_string(),
            "include loop: top.conf -> a.conf -> b.conf -> a.conf"
        );
        let self_loop = write(dir.path(), "self.conf", "#include self.conf\n");
        let c = load(&self_loop);
        assert_eq!(
            c.errors[0].kind.to_string(),
            "include loop: self.conf -> self.conf"
        );
    }

    #[test]
    fn include_depth_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            write(
                dir.path(),
                &format!("f{i}.conf"),
                &format!("[s{i}]\n#include f{}.conf\n", i + 1),
            );
        }
        write(dir.path(), "f40.conf", "[end]\n");
        let c = load(&dir.path().join("f0.conf"));
        assert_eq!(c.errors.len(), 1);
        let e = &c.errors[0];
        assert_eq!(e.kind, IniErrorKind::TooDeep);
        assert_eq!(
            e.file,
            dir.path().join(format!("f{}.conf", MAX_INCLUDE_DEPTH - 1))
        );
        assert_eq!(c.sections.len(), MAX_INCLUDE_DEPTH);
    }

    #[test]
    fn diamonds_are_bounded() {
        // Each file includes the next one twice: 2^n reads without a cap.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            write(
                dir.path(),
                &format!("d{i}.conf"),
                &format!("#include d{n}.conf\n#include d{n}.conf\n", n = i + 1),
            );
        }
        write(dir.path(), "d20.conf", "[leaf]\n");
        let c = load(&dir.path().join("d0.conf"));
        assert!(c
            .errors
            .iter()
            .any(|e| e.kind == IniErrorKind::TooManyFiles));
    }

    #[test]
    fn missing_top_file() {
        assert!(load_optional(Path::new("/nonexistent/palisade/x.conf")).is_none());
        let c = load(Path::new("/nonexistent/palisade/x.conf"));
        assert_eq!(c.errors.len(), 1);
        assert_eq!(c.errors[0].line, 0);
        assert!(matches!(c.errors[0].kind, IniErrorKind::Unreadable { .. }));
    }

    #[test]
    fn directories_and_fifos_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("adir")).unwrap();
        let top = write(dir.path(), "top.conf", "#include adir\n");
        let c = load(&top);
        assert_eq!(c.errors.len(), 1);
        assert_eq!(c.errors[0].line, 1);
        assert!(c.errors[0].kind.to_string().contains("not a regular file"));
    }
}
