//! Following the PBX's security logs: a poll-based tailer per file and a
//! [`LogSource`] that parses what it reads into [`LogFact`]s for the judge.
//!
//! Why polling: a poll every [`POLL_INTERVAL`] costs one `fstat`, one `stat`
//! and one `read` per file, handles every way a log file changes (appended,
//! truncated, renamed away and recreated, deleted, not there yet) with one
//! code path, and is testable without threads or timing. inotify would save
//! the stat calls but not the code for the cases it does not report
//! (a file replaced while its directory was not watched yet).
//!
//! What the tailer promises:
//! - a file that exists at the first poll is read from its end
//!   ([`StartAt::End`], the default: old failures carry no usable time) or
//!   its beginning; a file that appears later is read from its beginning;
//! - a partial line stays buffered until its newline arrives; a line longer
//!   than [`MAX_LINE`] is dropped up to its newline and reported once, so
//!   memory stays bounded whatever a client gets the PBX to write;
//! - rotation by rename (`logrotate` `create`, Asterisk's `logger rotate`):
//!   when the path names a new file, the old one is read to its end and then
//!   still drained for [`DRAIN_POLLS`] quiet polls, because the PBX keeps
//!   writing to it until it reopens its logs; the new one is read from its
//!   beginning;
//! - truncation (`copytruncate`): a file shorter than what was read is read
//!   again from its beginning. A file truncated and refilled past the old
//!   length between two polls cannot be told from one that grew; such lines
//!   are lost (a limit of every tailer);
//! - at most [`READ_BUDGET`] bytes per file per poll ([`TailReport::more`]
//!   says to poll again soon), so a huge backlog never stalls the caller.

use palisade_guard::pbxlog::{LogFact, Parser, Pattern, PatternError, MAX_LINE};
pub use palisade_model::pbxlog::StartAt;
use palisade_model::pbxlog::{AsteriskLines, PbxLogs};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often the agent should poll each file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Most bytes read from one file in one poll.
pub const READ_BUDGET: usize = 4 << 20;
/// Quiet polls (about 5 s at [`POLL_INTERVAL`]) an old file is still read
/// after the path moved on to a new one.
pub const DRAIN_POLLS: u32 = 25;
/// Unreadable lines logged one by one per poll and file; the rest are
/// counted in one message, so a flood of garbage cannot flood the journal.
const WARNINGS_PER_POLL: usize = 5;
const CHUNK: usize = 64 * 1024;

/// One complete line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Without its line ending; invalid UTF-8 replaced.
    pub text: String,
    /// Byte offset of the line's start in its file.
    pub offset: u64,
    /// 1-based line number, when the file was read from its beginning.
    pub number: Option<u64>,
}

/// What one poll found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailReport {
    /// Complete lines appended to the output.
    pub lines: usize,
    /// A file was opened at the path (the first one, or one that appeared).
    pub opened: bool,
    /// Nothing exists at the path; the tailer waits for it.
    pub missing: bool,
    /// The file shrank and is read again from its beginning.
    pub truncated: bool,
    /// The path names a new file, now read from its beginning.
    pub rotated: bool,
    /// Offsets of lines longer than [`MAX_LINE`], dropped unread.
    pub too_long: Vec<u64>,
    /// The read budget ran out: there is more to read now.
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    No,
    /// The rest of a line that was being written when reading began at the
    /// end of the file: not a line of ours, dropped silently.
    Fragment,
    /// The rest of an over-long line, already reported.
    TooLong,
}

/// An open file and where reading stands in it.
#[derive(Debug)]
struct Reader {
    file: File,
    id: (u64, u64),
    /// Bytes of the file consumed so far.
    pos: u64,
    /// The incomplete last line.
    partial: Vec<u8>,
    /// Where the line being assembled starts.
    line_at: u64,
    skip: Skip,
    /// Lines completed so far, when counted from the file's beginning.
    lines: Option<u64>,
}

impl Reader {
    fn open(path: &Path, at_end: bool) -> io::Result<Reader> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other(format!(
                "{} is a directory, not a log file",
                path.display()
            )));
        }
        let mut r = Reader {
            id: (meta.dev(), meta.ino()),
            file,
            pos: 0,
            partial: Vec::new(),
            line_at: 0,
            skip: Skip::No,
            lines: Some(0),
        };
        if at_end {
            let len = meta.len();
            r.file.seek(SeekFrom::Start(len))?;
            r.pos = len;
            r.line_at = len;
            r.lines = None;
            let mut last = [0u8];
            if len > 0 && r.file.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
                r.skip = Skip::Fragment;
            }
        }
        Ok(r)
    }

    fn restart(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.pos = 0;
        self.line_at = 0;
        self.partial.clear();
        self.skip = Skip::No;
        self.lines = Some(0);
        Ok(())
    }

    /// Reads to the end of the file or of the budget; returns the bytes read.
    fn read(
        &mut self,
        scratch: &mut [u8],
        budget: &mut usize,
        out: &mut Vec<Line>,
        report: &mut TailReport,
    ) -> io::Result<usize> {
        let mut total = 0;
        loop {
            if *budget == 0 {
                report.more = true;
                break;
            }
            let want = scratch.len().min(*budget);
            let n = match self.file.read(&mut scratch[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(&scratch[..n], out, report);
            *budget -= n;
            total += n;
        }
        Ok(total)
    }

    fn consume(&mut self, chunk: &[u8], out: &mut Vec<Line>, report: &mut TailReport) {
        let base = self.pos;
        let mut start = 0;
        while let Some(i) = chunk[start..].iter().position(|&b| b == b'\n') {
            let end = start + i;
            let piece = &chunk[start..end];
            match self.skip {
                Skip::Fragment | Skip::TooLong => {
                    self.skip = Skip::No;
                    self.count();
                }
                Skip::No if self.partial.len() + piece.len() > MAX_LINE => {
                    report.too_long.push(self.line_at);
                    self.partial.clear();
                    self.count();
                }
                Skip::No => {
                    self.partial.extend_from_slice(piece);
                    self.emit(out, report);
                }
            }
            start = end + 1;
            self.line_at = base + start as u64;
        }
        let rest = &chunk[start..];
        if self.skip == Skip::No {
            if self.partial.len() + rest.len() > MAX_LINE {
                report.too_long.push(self.line_at);
                self.partial = Vec::new();
                self.skip = Skip::TooLong;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        self.pos = base + chunk.len() as u64;
    }

    fn count(&mut self) -> Option<u64> {
        self.lines = self.lines.map(|n| n + 1);
        self.lines
    }

    fn emit(&mut self, out: &mut Vec<Line>, report: &mut TailReport) {
        let bytes = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        let text = String::from_utf8_lossy(bytes).into_owned();
        self.partial.clear();
        let number = self.count();
        out.push(Line {
            text,
            offset: self.line_at,
            number,
        });
        report.lines += 1;
    }

    /// The file is done with: a last line without its newline still counts,
    /// since nobody will finish it.
    fn finish(mut self, out: &mut Vec<Line>, report: &mut TailReport) {
        if self.skip == Skip::No && !self.partial.is_empty() {
            self.emit(out, report);
        }
    }
}

/// Follows one log file by path.
#[derive(Debug)]
pub struct Tailer {
    path: PathBuf,
    start: StartAt,
    /// A file has been opened at the path before.
    opened_once: bool,
    /// The path was found empty before the first open: what appears there
    /// later is new, and read from its beginning.
    seen_missing: bool,
    current: Option<Reader>,
    /// The previous file after a rotation, and its quiet polls since.
    old: Option<(Reader, u32)>,
    scratch: Vec<u8>,
}

impl Tailer {
    /// Opens nothing yet: the first [`Tailer::poll`] does.
    pub fn new(path: impl Into<PathBuf>, start: StartAt) -> Tailer {
        Tailer {
            path: path.into(),
            start,
            opened_once: false,
            seen_missing: false,
            current: None,
            old: None,
            scratch: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the complete lines written since the last poll to `out`.
    pub fn poll(&mut self, out: &mut Vec<Line>) -> io::Result<TailReport> {
        let mut report = TailReport::default();
        let mut budget = READ_BUDGET;
        if self.scratch.is_empty() {
            self.scratch = vec![0; CHUNK];
        }

        if let Some((old, quiet)) = &mut self.old {
            let n = match old.read(&mut self.scratch, &mut budget, out, &mut report) {
                Ok(n) => n,
                Err(e) => {
                    self.old = None;
                    return Err(e);
                }
            };
            *quiet = if n == 0 { *quiet + 1 } else { 0 };
            if *quiet >= DRAIN_POLLS {
                if let Some((old, _)) = self.old.take() {
                    old.finish(out, &mut report);
                }
            }
        }

        if self.current.is_none() {
            let at_end = self.start == StartAt::End && !self.opened_once && !self.seen_missing;
            match Reader::open(&self.path, at_end) {
                Ok(r) => {
                    self.current = Some(r);
                    self.opened_once = true;
                    report.opened = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.seen_missing = true;
                    report.missing = true;
                    return Ok(report);
                }
                Err(e) => return Err(e),
            }
        }
        let Some(cur) = self.current.as_mut() else {
            return Ok(report);
        };
        let meta = cur.file.metadata()?;
        if meta.len() < cur.pos {
            cur.restart()?;
            report.truncated = true;
        }
        let n = cur.read(&mut self.scratch, &mut budget, out, &mut report)?;

        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != cur.id => {
                // Rotated: keep draining the old file, read the new one from
                // its beginning.
                if let Some((older, _)) = self.old.take() {
                    older.finish(out, &mut report);
                }
                self.old = self.current.take().map(|r| (r, 0));
                report.rotated = true;
                match Reader::open(&self.path, false) {
                    Ok(mut r) => {
                        r.read(&mut self.scratch, &mut budget, out, &mut report)?;
                        self.current = Some(r);
                        report.opened = true;
                    }
                    // Gone again between stat and open: the next poll looks.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Renamed away and not recreated yet: the PBX still writes
                // to the old file, so keep reading it. Deleted and fully
                // read: let it go, or its disk space is never freed.
                if n == 0 && meta.nlink() == 0 {
                    if let Some(r) = self.current.take() {
                        r.finish(out, &mut report);
                    }
                }
                report.missing = true;
            }
            Err(e) => return Err(e),
        }
        Ok(report)
    }
}

/// What one [`LogSource::poll`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceReport {
    pub tail: TailReport,
    /// Facts appended to the output.
    pub facts: usize,
    /// Lines the parser recognised but could not use (each logged, up to a
    /// few per poll).
    pub errors: usize,
}

/// A followed file and the parser for its lines.
#[derive(Debug)]
pub struct LogSource {
    tailer: Tailer,
    parser: Parser,
    lines: Vec<Line>,
    waiting: bool,
}

impl LogSource {
    pub fn new(path: impl Into<PathBuf>, start: StartAt, parser: Parser) -> LogSource {
        LogSource {
            tailer: Tailer::new(path, start),
            parser,
            lines: Vec::new(),
            waiting: false,
        }
    }

    pub fn path(&self) -> &Path {
        self.tailer.path()
    }

    pub fn parser(&self) -> &Parser {
        &self.parser
    }

    /// Reads what is new and appends its facts to `out`. Lines that cannot
    /// be used are logged with the file and line (or byte offset) and
    /// counted; an I/O error is for the caller to log, and the next poll
    /// tries again.
    pub fn poll(&mut self, out: &mut Vec<LogFact>) -> io::Result<SourceReport> {
        self.lines.clear();
        let tail = self.tailer.poll(&mut self.lines)?;
        let file = self.tailer.path().display().to_string();
        let parser = self.parser.name();
        if tail.missing && !self.waiting {
            debug!(%file, "PBX log not there (yet); waiting for it");
        }
        self.waiting = tail.missing;
        if tail.opened {
            info!(%file, parser, "following PBX log");
        }
        if tail.rotated {
            info!(%file, "PBX log rotated; reading the new file from its beginning");
        }
        if tail.truncated {
            info!(%file, "PBX log truncated; reading it again from its beginning");
        }
        for offset in &tail.too_long {
            warn!(%file, offset, max = MAX_LINE, "PBX log line longer than the limit dropped unread");
        }
        let mut report = SourceReport {
            facts: 0,
            errors: 0,
            tail,
        };
        for line in &self.lines {
            match self.parser.parse(&line.text) {
                Ok(Some(fact)) => {
                    out.push(fact);
                    report.facts += 1;
                }
                Ok(None) => {}
                Err(error) => {
                    report.errors += 1;
                    if report.errors <= WARNINGS_PER_POLL {
                        match line.number {
                            Some(number) => {
                                warn!(%file, line = number, %error, "unreadable PBX log line")
                            }
                            None => {
                                warn!(%file, offset = line.offset, %error, "unreadable PBX log line")
                            }
                        }
                    }
                }
            }
        }
        if report.errors > WARNINGS_PER_POLL {
            warn!(
                %file,
                more = report.errors - WARNINGS_PER_POLL,
                "more unreadable PBX log lines in this read"
            );
        }
        metrics::counter!("palisade_pbxlog_lines_total", "parser" => parser)
            .increment(report.tail.lines as u64);
        metrics::counter!("palisade_pbxlog_facts_total", "parser" => parser)
            .increment(report.facts as u64);
        metrics::counter!("palisade_pbxlog_unreadable_total", "parser" => parser)
            .increment((report.errors + report.tail.too_long.len()) as u64);
        Ok(report)
    }
}

/// A pattern in the settings that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("pbx_logs: the pattern for {} ({:?}): {}", .path.display(), .pattern, .error)]
pub struct BadPattern {
    pub path: PathBuf,
    pub pattern: String,
    #[source]
    pub error: PatternError,
}

/// The sources the settings describe: the Asterisk files per
/// [`PbxLogs::asterisk_files`] (asked of the file system now: build again
/// after a `security` log appears), every FreeSWITCH file, every pattern.
/// Nothing when `enabled` is false.
pub fn sources(cfg: &PbxLogs) -> Result<Vec<LogSource>, BadPattern> {
    if !cfg.enabled {
        return Ok(Vec::new());
    }
    let mut out: Vec<LogSource> = cfg
        .asterisk_files(Path::exists)
        .into_iter()
        .map(|(path, lines)| {
            let parser = match lines {
                AsteriskLines::Security => Parser::AsteriskSecurity,
                AsteriskLines::Notices => Parser::AsteriskNotices,
            };
            LogSource::new(path, cfg.start, parser)
        })
        .collect();
    out.extend(
        cfg.freeswitch
            .iter()
            .map(|p| LogSource::new(p, cfg.start, Parser::FreeSwitch)),
    );
    for k in &cfg.kamailio {
        let pattern = Pattern::compile(&k.pattern, k.kind).map_err(|error| BadPattern {
            path: k.path.clone(),
            pattern: k.pattern.clone(),
            error,
        })?;
        out.push(LogSource::new(
            &k.path,
            cfg.start,
            Parser::Pattern(Box::new(pattern)),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_guard::pbxlog::LogKind;
    use palisade_model::pbxlog::{KamailioLog, PatternKind};
    use std::fs::OpenOptions;
    use std::io::Write;

    fn append(path: &Path, text: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text).unwrap();
    }

    fn poll(t: &mut Tailer) -> (Vec<String>, TailReport) {
        let mut out = Vec::new();
        let report = t.poll(&mut out).unwrap();
        assert_eq!(report.lines, out.len());
        (out.into_iter().map(|l| l.text).collect(), report)
    }

    fn texts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn starts_at_the_end_and_follows_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("security");
        append(&path, b"old 1\nold 2\n");
        let mut t = Tailer::new(&path, StartAt::End);
        let (lines, report) = poll(&mut t);
        assert!(lines.is_empty());
        assert!(report.opened && !report.missing);
        append(&path, b"new 1\nnew 2\n");
        let mut out = Vec::new();
        t.poll(&mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Line {
                    text: "new 1".into(),
                    offset: 12,
                    number: None
                },
                Line {
                    text: "new 2".into(),
                    offset: 18,
                    number: None
                },
            ]
        );
        assert_eq!(poll(&mut t).0, Vec::<String>::new());
    }

    #[test]
    fn starts_at_the_beginning_when_asked_and_numbers_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, b"a\r\nb\n");
        let mut t = Tailer::new(&path, StartAt::Beginning);
        let mut out = Vec::new();
        t.poll(&mut out).unwrap();
        assert_eq!(out[0].text, "a");
        assert_eq!(out[0].number, Some(1));
        assert_eq!(out[1].text, "b");
        assert_eq!((out[1].number, out[1].offset), (Some(2), 3));
    }

    #[test]
    fn a_line_being_written_at_start_is_not_half_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, b"old\nhalf of a li");
        let mut t = Tailer::new(&path, StartAt::End);
        poll(&mut t);
        append(&path, b"ne\nnext\n");
        assert_eq!(poll(&mut t).0, texts(&["next"]));
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, b"");
        let mut t = Tailer::new(&path, StartAt::End);
        poll(&mut t);
        append(&path, b"first half");
        assert_eq!(poll(&mut t).0, Vec::<String>::new());
        append(&path, b", second half\nnext");
        assert_eq!(poll(&mut t).0, texts(&["first half, second half"]));
        append(&path, b"\n");
        assert_eq!(poll(&mut t).0, texts(&["next"]));
    }

    #[test]
    fn a_truncated_file_is_read_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, b"one\ntwo\nthree\n");
        let mut t = Tailer::new(&path, StartAt::Beginning);
        assert_eq!(poll(&mut t).0.len(), 3);
        std::fs::write(&path, b"").unwrap();
        let (lines, report) = poll(&mut t);
        assert!(report.truncated);
        assert!(lines.is_empty());
        append(&path, b"after\n");
        let mut out = Vec::new();
        t.poll(&mut out).unwrap();
        assert_eq!(out[0].text, "after");
        assert_eq!((out[0].offset, out[0].number), (0, Some(1)));
    }

    #[test]
    fn rotation_finishes_the_old_file_then_reads_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full");
        let rotated = dir.path().join("full.1");
        append(&path, b"before\n");
        let mut t = Tailer::new(&path, StartAt::End);
        poll(&mut t);
        append(&path, b"old 1\n");
        std::fs::rename(&path, &rotated).unwrap();
        // Renamed away, not recreated yet: the PBX still writes the old file.
        append(&rotated, b"old 2\n");
        let (lines, report) = poll(&mut t);
        assert_eq!(lines, texts(&["old 1", "old 2"]));
        assert!(!report.rotated);
        // The new file appears; the old one still gets a late line.
        append(&rotated, b"old 3\n");
        append(&path, b"new 1\n");
        let (lines, report) = poll(&mut t);
        assert!(report.rotated && report.opened);
        assert_eq!(lines, texts(&["old 3", "new 1"]));
        append(&rotated, b"old 4, after the switch\n");
        append(&path, b"new 2\n");
        assert_eq!(poll(&mut t).0, texts(&["old 4, after the switch", "new 2"]));
        // The old file is let go after DRAIN_POLLS quiet polls; its
        // unfinished last line still counts.
        append(&rotated, b"unfinished");
        assert!(poll(&mut t).0.is_empty());
        let mut late = Vec::new();
        for _ in 0..DRAIN_POLLS {
            assert!(t.old.is_some());
            late.extend(poll(&mut t).0);
        }
        assert!(t.old.is_none());
        assert_eq!(late, texts(&["unfinished"]));
        append(&path, b"new 3\n");
        assert_eq!(poll(&mut t).0, texts(&["new 3"]));
    }

    #[test]
    fn an_unfinished_last_line_of_a_drained_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, b"");
        let mut t = Tailer::new(&path, StartAt::End);
        poll(&mut t);
        append(&path, b"no newline");
        std::fs::rename(&path, dir.path().join("log.1")).unwrap();
        append(&path, b"");
        let mut all = Vec::new();
        for _ in 0..=DRAIN_POLLS {
            all.extend(poll(&mut t).0);
        }
        assert_eq!(all, texts(&["no newline"]));
    }

    #[test]
    fn a_missing_file_is_waited_for_and_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freeswitch.log");
        let mut t = Tailer::new(&path, StartAt::End);
        let (lines, report) = poll(&mut t);
        assert!(lines.is_empty() && report.missing && !report.opened);
        assert!(poll(&mut t).1.missing);
        append(&path, b"first\n");
        let (lines, report) = poll(&mut t);
        assert!(report.opened && !report.missing);
        assert_eq!(lines, texts(&["first"]));
    }

    #[test]
    fn a_deleted_file_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, b"");
        let mut t = Tailer::new(&path, StartAt::End);
        poll(&mut t);
        append(&path, b"last\n");
        std::fs::remove_file(&path).unwrap();
        let (lines, report) = poll(&mut t);
        assert_eq!(lines, texts(&["last"]));
        assert!(report.missing);
        poll(&mut t);
        assert!(t.current.is_none());
        append(&path, b"again\n");
        assert_eq!(poll(&mut t).0, texts(&["again"]));
    }

    #[test]
    fn a_megabyte_line_is_dropped_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, b"");
        let mut t = Tailer::new(&path, StartAt::End);
        poll(&mut t);
        append(&path, b"before\n");
        // Written in pieces, across several polls, then finished.
        let big = vec![b'x'; 256 * 1024];
        let mut too_long = Vec::new();
        let mut lines = Vec::new();
        for _ in 0..4 {
            append(&path, &big);
            let (l, r) = poll(&mut t);
            lines.extend(l);
            too_long.extend(r.too_long);
        }
        append(&path, b"\nafter\n");
        let (l, r) = poll(&mut t);
        lines.extend(l);
        too_long.extend(r.too_long);
        assert_eq!(lines, texts(&["before", "after"]));
        assert_eq!(too_long, vec![7]);
        assert!(t.current.as_ref().unwrap().partial.capacity() <= 2 * MAX_LINE);
        // All at once, newline included.
        let mut line = vec![b'y'; 1 << 20];
        line.push(b'\n');
        append(&path, &line);
        append(&path, b"fine\n");
        let (l, r) = poll(&mut t);
        assert_eq!(l, texts(&["fine"]));
        assert_eq!(r.too_long.len(), 1);
        // Exactly at the limit is still a line.
        let mut line = vec![b'z'; MAX_LINE];
        line.push(b'\n');
        append(&path, &line);
        assert_eq!(poll(&mut t).0[0].len(), MAX_LINE);
    }

    #[test]
    fn a_backlog_is_read_in_budgeted_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let line = format!("{}\n", "a".repeat(1023));
        let count = (READ_BUDGET / 1024) * 2 + 10;
        std::fs::write(&path, line.repeat(count)).unwrap();
        let mut t = Tailer::new(&path, StartAt::Beginning);
        let mut total = 0;
        let mut polls = 0;
        loop {
            let (lines, report) = poll(&mut t);
            total += lines.len();
            polls += 1;
            if !report.more {
                break;
            }
        }
        assert_eq!(total, count);
        assert_eq!(polls, 3);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"bad \xff\xfe byte\n\0nul\n").unwrap();
        let mut t = Tailer::new(&path, StartAt::Beginning);
        assert_eq!(
            poll(&mut t).0,
            texts(&["bad \u{fffd}\u{fffd} byte", "\0nul"])
        );
    }

    #[test]
    fn a_source_yields_facts_and_counts_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("security");
        append(&path, b"");
        let mut s = LogSource::new(&path, StartAt::End, Parser::AsteriskSecurity);
        let mut facts = Vec::new();
        s.poll(&mut facts).unwrap();
        let good = r#"[Nov 25 10:00:01] SECURITY[1234] res_security_log.c: SecurityEvent="InvalidPassword",EventTV="2026-11-25T10:00:01.123+0000",Severity="Error",Service="PJSIP",EventVersion="2",AccountID="300",SessionID="0x1",LocalAddress="IPV4/TLS/10.0.0.1/5061",RemoteAddress="IPV4/TLS/203.0.113.5/5061",Challenge="a",ReceivedChallenge="a",ReceivedHash="b""#;
        let injected = good.replace(
            "SessionID=\"0x1\"",
            "SessionID=\"x\",RemoteAddress=\"IPV4/UDP/192.0.2.1/5060\"",
        );
        append(
            &path,
            format!("{good}\n{injected}\n[Nov 25 10:00:02] VERBOSE[1] pbx.c: hello\n").as_bytes(),
        );
        let report = s.poll(&mut facts).unwrap();
        assert_eq!((report.tail.lines, report.facts, report.errors), (3, 1, 1));
        assert_eq!(facts.len(), 1);
        assert_eq!(
            facts[0].source,
            "203.0.113.5".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(facts[0].kind, LogKind::AuthFailed { user: "300".into() });
    }

    #[test]
    fn sources_follow_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let security = dir.path().join("security");
        let full = dir.path().join("full");
        let mut cfg = PbxLogs::default();
        cfg.asterisk.security = vec![security.clone()];
        cfg.asterisk.notices = vec![full.clone()];
        cfg.freeswitch = vec![dir.path().join("freeswitch.log")];
        cfg.kamailio = vec![KamailioLog {
            path: dir.path().join("kamailio.log"),
            pattern: "AUTHFAIL <user> <ip>".into(),
            kind: PatternKind::AuthFailed,
        }];
        let names = |v: Vec<LogSource>| -> Vec<&'static str> {
            v.iter().map(|s| s.parser().name()).collect()
        };
        assert_eq!(
            names(sources(&cfg).unwrap()),
            [
                "asterisk-security",
                "asterisk-notices",
                "freeswitch",
                "pattern"
            ]
        );
        append(&security, b"");
        assert_eq!(
            names(sources(&cfg).unwrap()),
            ["asterisk-security", "freeswitch", "pattern"]
        );
        cfg.kamailio[0].pattern = "AUTHFAIL <user>".into();
        let err = sources(&cfg).unwrap_err();
        assert_eq!(err.error, PatternError::NoIp);
        assert!(err.to_string().contains("kamailio.log"), "{err}");
        cfg.enabled = false;
        assert!(sources(&cfg).unwrap().is_empty());
    }
}
