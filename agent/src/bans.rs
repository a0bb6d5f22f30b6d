//! The ban book: every ban and lift, kept in the state directory, so bans
//! survive a reboot (the kernel keeps them across an agent restart, not
//! across a reboot) and an operator's `unban` reaches the running daemon.
//!
//! An append-only file of JSON lines: appending one line per ban costs
//! nothing on the packet path's enforcer, a crash can tear at most the last
//! line (skipped with a warning naming it, never losing the others), and the
//! daemon compacts it at start, keeping only bans still running.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tracing::warn;

pub const FILE: &str = "bans.jsonl";
/// The reason of a ban an operator made.
pub const MANUAL: &str = "manual";

/// One line of the book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Entry {
    Ban(BanRecord),
    Lift { addr: IpAddr, at: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    pub addr: IpAddr,
    /// Unix seconds.
    pub at: u64,
    pub until: u64,
    /// `password-guessing`, `scanner`, ..., or `manual`.
    pub reason: String,
    /// The kernel element's comment: reason, detail, evidence summary.
    pub comment: String,
    pub offence: u32,
    /// What the source sent (the judge's last lines), shared with the
    /// controller and shown to operators; empty for manual bans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("ban book {path}: {source}")]
pub struct BookError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

pub struct BanBook {
    path: PathBuf,
}

impl BanBook {
    pub fn new(state_dir: &Path) -> BanBook {
        BanBook {
            path: state_dir.join(FILE),
        }
    }

    fn err(&self, source: io::Error) -> BookError {
        BookError {
            path: self.path.clone(),
            source,
        }
    }

    /// Serialises writers: the daemon's enforcer, its compaction, and an
    /// operator's `ban`/`unban` in another process. A file of its own, since
    /// compaction replaces the book's inode.
    fn lock(&self) -> Result<nix::fcntl::Flock<File>, BookError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .map_err(|e| self.err(e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.err(io::Error::from(e)))
    }

    pub fn append(&self, entries: &[Entry]) -> Result<(), BookError> {
        if entries.is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut text = String::new();
        for e in entries {
            text.push_str(&serde_json::to_string(e).expect("entries serialize"));
            text.push('\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        f.write_all(text.as_bytes()).map_err(|e| self.err(e))
    }

    /// Reads entries from byte `offset` on; returns them with the offset after
    /// the last complete line (a line still being written is left for later).
    pub fn read_from(&self, offset: u64) -> Result<(Vec<Entry>, u64), BookError> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(self.err(e)),
        };
        let len = f.metadata().map_err(|e| self.err(e))?.len();
        // Compacted meanwhile: start over.
        let offset = if offset > len { 0 } else { offset };
        f.seek(SeekFrom::Start(offset)).map_err(|e| self.err(e))?;
        let mut reader = BufReader::new(f);
        let mut out = Vec::new();
        let mut pos = offset;
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| self.err(e))?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            number += 1;
            pos += n as u64;
            match serde_json::from_str::<Entry>(line.trim_end()) {
                Ok(e) => out.push(e),
                Err(e) => warn!(
                    file = %self.path.display(),
                    line = number,
                    error = %e,
                    "unreadable line in the ban book, skipped"
                ),
            }
        }
        Ok((out, pos))
    }

    /// Bytes on disk (0 when absent).
    pub fn size(&self) -> u64 {
        fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// The bans still running at `now` (last word per address wins).
    pub fn live(&self, now: u64) -> Result<Vec<BanRecord>, BookError> {
        let (entries, _) = self.read_from(0)?;
        Ok(fold(entries, now))
    }

    /// Rewrites the book with the running bans only (atomically: a temporary
    /// file renamed over it).
    pub fn compact(&self, now: u64) -> Result<Vec<BanRecord>, BookError> {
        let _lock = self.lock()?;
        let live = self.live(now)?;
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp).map_err(|e| self.err(e))?;
            for b in &live {
                let line = serde_json::to_string(&Entry::Ban(b.clone())).expect("serializes");
                writeln!(f, "{line}").map_err(|e| self.err(e))?;
            }
            f.sync_all().map_err(|e| self.err(e))?;
        }
        fs::rename(&tmp, &self.path).map_err(|e| self.err(e))?;
        Ok(live)
    }
}

fn fold(entries: Vec<Entry>, now: u64) -> Vec<BanRecord> {
    let mut by_addr: BTreeMap<IpAddr, BanRecord> = BTreeMap::new();
    for e in entries {
        match e {
            Entry::Ban(b) => {
                by_addr.insert(b.addr, b);
            }
            Entry::Lift { addr, .. } => {
                by_addr.remove(&addr);
            }
        }
    }
    by_addr.into_values().filter(|b| b.until > now).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(addr: &str, until: u64) -> Entry {
        Entry::Ban(BanRecord {
            addr: addr.parse().unwrap(),
            at: 1,
            until,
            reason: "scanner".into(),
            comment: "scanner: friendly-scanner".into(),
            offence: 1,
            evidence: Vec::new(),
        })
    }

    #[test]
    fn bans_lifts_expiry_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let book = BanBook::new(dir.path());
        book.append(&[
            ban("192.0.2.1", 100),
            ban("192.0.2.2", 100),
            ban("192.0.2.3", 10),
        ])
        .unwrap();
        book.append(&[Entry::Lift {
            addr: "192.0.2.2".parse().unwrap(),
            at: 5,
        }])
        .unwrap();
        // A crash in the middle of a line, then garbage on a line of its own.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(b"not json\n{\"op\":\"ban\",\"addr\":\"192.0.2.9\"")
            .unwrap();
        let live = book.live(50).unwrap();
        let addrs: Vec<String> = live.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.1"]);

        let (entries, offset) = book.read_from(0).unwrap();
        assert_eq!(
            entries.len(),
            4,
            "the torn line waits, the garbage one is skipped"
        );

        let kept = book.compact(50).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            book.live(50).unwrap(),
            kept,
            "compaction keeps exactly the live bans"
        );
        // A reader past the end of the compacted book starts over.
        let (again, _) = book.read_from(offset).unwrap();
        assert_eq!(again.len(), 1);
    }
}
