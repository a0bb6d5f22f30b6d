//! What the controller has put on this host: the tenant's shared bans (set
//! `ban_shared`) and its other hosts' addresses (set `tenant_peer`), plus the
//! revision they bring the host to.
//!
//! [`Mirror`] decides *what to change* for each controller message and is
//! pure: no kernel, no files, no clock (time is an argument). The sync task
//! applies its [`Changes`] to the kernel and appends them to the journal
//! (`controller/sync.jsonl`), from which the mirror is rebuilt after a
//! restart or a reboot — the kernel forgets its sets on a reboot, the
//! journal does not, and the controller only resends what came after the
//! revision the journal records.
//!
//! Revisions: a delta brings the host to its revision. A full snapshot
//! (`Welcome { snapshot: true }` and the messages that follow it) replaces
//! the sets; while it is in progress the recorded revision is 0, so that a
//! snapshot cut short is asked for again, whole. Nothing is removed before
//! the snapshot is complete (no moment with the shared bans lifted): what
//! the snapshot did not mention is removed when it ends, which is when a
//! message of a later revision arrives or the stream has been quiet a while
//! ([`Mirror::finish_snapshot`]).

use palisade_model::dynamic::clip_comment;
use palisade_proto::v1::{BanDelta, TrustDelta};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One shared ban in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedBan {
    /// Unix seconds; 0: until lifted.
    pub expires_at: u64,
    /// The kernel element's comment: `shared: <reason> from <origin>`.
    pub comment: String,
}

/// What one message changes: kernel elements to set (with their expiry and
/// comment) or remove, and addresses the message carried that are not
/// addresses (logged, skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub ban: Vec<(IpAddr, SharedBan)>,
    pub unban: Vec<IpAddr>,
    pub trust: Vec<(IpAddr, String)>,
    pub untrust: Vec<IpAddr>,
    pub rejected: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.ban.is_empty()
            && self.unban.is_empty()
            && self.trust.is_empty()
            && self.untrust.is_empty()
    }

    fn merge(&mut self, other: Changes) {
        self.ban.extend(other.ban);
        self.unban.extend(other.unban);
        self.trust.extend(other.trust);
        self.untrust.extend(other.untrust);
        self.rejected.extend(other.rejected);
    }

    /// The journal lines that record these changes.
    pub fn lines(&self) -> Vec<Line> {
        let mut out = Vec::new();
        out.extend(self.unban.iter().map(|&addr| Line::Lift { addr }));
        out.extend(self.ban.iter().map(|(addr, b)| Line::Ban {
            addr: *addr,
            expires_at: b.expires_at,
            comment: b.comment.clone(),
        }));
        out.extend(self.untrust.iter().map(|&addr| Line::Unpeer { addr }));
        out.extend(self.trust.iter().map(|(addr, host)| Line::Peer {
            addr: *addr,
            host: host.clone(),
        }));
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    /// The highest revision the snapshot's messages carried.
    revision: u64,
    bans: BTreeSet<IpAddr>,
    peers: BTreeSet<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirror {
    pub bans: BTreeMap<IpAddr, SharedBan>,
    /// Address → `tenant/site/host` of the peer.
    pub peers: BTreeMap<IpAddr, String>,
    revision: u64,
    snapshot: Option<Snapshot>,
}

fn parse_addr(text: &str, rejected: &mut Vec<String>) -> Option<IpAddr> {
    match text.trim().parse::<IpAddr>() {
        Ok(a) => Some(palisade_model::net::canonical(a)),
        Err(_) => {
            rejected.push(text.to_string());
            None
        }
    }
}

impl Mirror {
    /// The revision to report in `Hello` and to record: 0 while a snapshot
    /// is incomplete.
    pub fn revision(&self) -> u64 {
        if self.snapshot.is_some() {
            0
        } else {
            self.revision
        }
    }

    pub fn in_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// A message of `revision` arrives: one beyond the snapshot's ends it
    /// (the parts of a snapshot carry its revision, or lower ones).
    fn advance(&mut self, revision: u64) -> Changes {
        let ended = match &self.snapshot {
            Some(s) => revision > s.revision,
            None => false,
        };
        if ended {
            self.finish_snapshot()
        } else {
            Changes::default()
        }
    }

    fn note(&mut self, revision: u64) {
        match &mut self.snapshot {
            Some(s) => s.revision = s.revision.max(revision),
            None => self.revision = self.revision.max(revision),
        }
    }

    /// `Welcome`: a snapshot starts (everything it does not mention goes when
    /// it ends), or deltas follow (nothing to do).
    pub fn welcome(&mut self, revision: u64, snapshot: bool) -> Changes {
        if snapshot {
            // A snapshot cut short before is simply started again.
            self.snapshot = Some(Snapshot {
                revision,
                bans: BTreeSet::new(),
                peers: BTreeSet::new(),
            });
        }
        Changes::default()
    }

    /// Ends a snapshot in progress: removes what it did not mention.
    pub fn finish_snapshot(&mut self) -> Changes {
        let Some(s) = self.snapshot.take() else {
            return Changes::default();
        };
        let mut out = Changes::default();
        self.bans.retain(|a, _| {
            let keep = s.bans.contains(a);
            if !keep {
                out.unban.push(*a);
            }
            keep
        });
        self.peers.retain(|a, _| {
            let keep = s.peers.contains(a);
            if !keep {
                out.untrust.push(*a);
            }
            keep
        });
        self.revision = s.revision;
        out
    }

    pub fn ban_delta(&mut self, revision: u64, delta: &BanDelta, now: u64) -> Changes {
        let mut out = self.advance(revision);
        let mut step = Changes::default();
        for text in &delta.lifted {
            let Some(addr) = parse_addr(text, &mut step.rejected) else {
                continue;
            };
            if let Some(s) = &mut self.snapshot {
                s.bans.remove(&addr);
            }
            self.bans.remove(&addr);
            step.unban.push(addr);
        }
        for ban in &delta.added {
            let Some(addr) = parse_addr(&ban.address, &mut step.rejected) else {
                continue;
            };
            if ban.expires_at != 0 && ban.expires_at <= now {
                // Over already: as good as lifted.
                if self.bans.remove(&addr).is_some() {
                    step.unban.push(addr);
                }
                continue;
            }
            let origin = if ban.origin.is_empty() {
                "the controller"
            } else {
                &ban.origin
            };
            let reason = if ban.reason.is_empty() {
                "banned"
            } else {
                &ban.reason
            };
            let entry = SharedBan {
                expires_at: ban.expires_at,
                comment: clip_comment(&format!("shared: {reason} from {origin}")),
            };
            if let Some(s) = &mut self.snapshot {
                s.bans.insert(addr);
            }
            if self.bans.get(&addr) != Some(&entry) {
                self.bans.insert(addr, entry.clone());
                step.unban.retain(|a| *a != addr);
                step.ban.push((addr, entry));
            }
        }
        self.note(revision);
        out.merge(step);
        out
    }

    pub fn trust_delta(&mut self, revision: u64, delta: &TrustDelta) -> Changes {
        let mut out = self.advance(revision);
        let mut step = Changes::default();
        for text in &delta.removed {
            let Some(addr) = parse_addr(text, &mut step.rejected) else {
                continue;
            };
            if let Some(s) = &mut self.snapshot {
                s.peers.remove(&addr);
            }
            self.peers.remove(&addr);
            step.untrust.push(addr);
        }
        for peer in &delta.added {
            let Some(addr) = parse_addr(&peer.address, &mut step.rejected) else {
                continue;
            };
            if let Some(s) = &mut self.snapshot {
                s.peers.insert(addr);
            }
            if self.peers.get(&addr) != Some(&peer.host) {
                self.peers.insert(addr, peer.host.clone());
                step.untrust.retain(|a| *a != addr);
                step.trust.push((addr, peer.host.clone()));
            }
        }
        self.note(revision);
        out.merge(step);
        out
    }

    /// A message that changes no set (policy, user rules) still moves the
    /// revision on.
    pub fn other(&mut self, revision: u64) -> Changes {
        let out = self.advance(revision);
        self.note(revision);
        out
    }

    /// Forgets shared bans that ran out (the kernel dropped them already).
    pub fn expire(&mut self, now: u64) {
        self.bans
            .retain(|_, b| b.expires_at == 0 || b.expires_at > now);
    }

    /// Everything in force, as changes from nothing (to put it back in the
    /// kernel after a restart or a reboot).
    pub fn all(&self) -> Changes {
        Changes {
            ban: self.bans.iter().map(|(a, b)| (*a, b.clone())).collect(),
            trust: self.peers.iter().map(|(a, h)| (*a, h.clone())).collect(),
            ..Changes::default()
        }
    }

    fn replay(&mut self, line: Line) {
        match line {
            Line::Ban {
                addr,
                expires_at,
                comment,
            } => {
                self.bans.insert(
                    addr,
                    SharedBan {
                        expires_at,
                        comment,
                    },
                );
            }
            Line::Lift { addr } => {
                self.bans.remove(&addr);
            }
            Line::Peer { addr, host } => {
                self.peers.insert(addr, host);
            }
            Line::Unpeer { addr } => {
                self.peers.remove(&addr);
            }
            Line::Rev { rev } => self.revision = rev,
        }
    }
}

/// One line of `sync.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Line {
    Ban {
        addr: IpAddr,
        expires_at: u64,
        comment: String,
    },
    Lift {
        addr: IpAddr,
    },
    Peer {
        addr: IpAddr,
        host: String,
    },
    Unpeer {
        addr: IpAddr,
    },
    /// The revision the lines before bring the host to.
    Rev {
        rev: u64,
    },
}

pub const JOURNAL: &str = "sync.jsonl";

/// The append-only record of the mirror (a torn last line is ignored: the
/// controller sends that message again, the revision before it being the
/// one recorded).
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(controller_dir: &Path) -> Journal {
        Journal {
            path: controller_dir.join(JOURNAL),
        }
    }

    /// The mirror as the journal left it (empty when there is none).
    pub fn load(&self) -> io::Result<Mirror> {
        let mut mirror = Mirror::default();
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(mirror),
            Err(e) => return Err(e),
        };
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line?;
            match serde_json::from_str::<Line>(&line) {
                Ok(l) => mirror.replay(l),
                Err(e) => tracing::warn!(
                    file = %self.path.display(),
                    line = n + 1,
                    error = %e,
                    "unreadable line in the sync journal, skipped"
                ),
            }
        }
        Ok(mirror)
    }

    /// Appends `changes` and the revision they bring the host to, in one write.
    pub fn append(&self, changes: &Changes, revision: u64) -> io::Result<()> {
        let mut text = String::new();
        for l in changes
            .lines()
            .into_iter()
            .chain([Line::Rev { rev: revision }])
        {
            text.push_str(&serde_json::to_string(&l).expect("lines serialize"));
            text.push('\n');
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(text.as_bytes())
    }

    pub fn size(&self) -> u64 {
        fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Rewrites the journal as the mirror is now (atomically).
    pub fn compact(&self, mirror: &Mirror) -> io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            for l in mirror.all().lines() {
                writeln!(f, "{}", serde_json::to_string(&l).expect("serializes"))?;
            }
            writeln!(
                f,
                "{}",
                serde_json::to_string(&Line::Rev {
                    rev: mirror.revision()
                })
                .expect("serializes")
            )?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_proto::v1::{Ban, TrustedPeer};

    fn ban(addr: &str, expires_at: u64) -> Ban {
        Ban {
            address: addr.into(),
            reason: "scanner".into(),
            origin: "acme/hq/pbx1".into(),
            expires_at,
            ..Ban::default()
        }
    }

    fn bans(added: &[Ban], lifted: &[&str]) -> BanDelta {
        BanDelta {
            added: added.to_vec(),
            lifted: lifted.iter().map(|s| s.to_string()).collect(),
            lifted_at: 0,
        }
    }

    fn peer(addr: &str, host: &str) -> TrustedPeer {
        TrustedPeer {
            address: addr.into(),
            host: host.into(),
        }
    }

    fn trust(added: &[TrustedPeer], removed: &[&str]) -> TrustDelta {
        TrustDelta {
            added: added.to_vec(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deltas_add_and_lift() {
        let mut m = Mirror::default();
        let c = m.ban_delta(
            5,
            &bans(&[ban("192.0.2.1", 2000), ban("::ffff:192.0.2.2", 0)], &[]),
            1000,
        );
        assert_eq!(c.ban.len(), 2);
        assert_eq!(c.ban[0].0, ip("192.0.2.1"));
        assert_eq!(c.ban[0].1.comment, "shared: scanner from acme/hq/pbx1");
        assert_eq!(c.ban[0].1.expires_at, 2000);
        assert_eq!(c.ban[1].0, ip("192.0.2.2"), "mapped addresses canonical");
        assert_eq!(m.revision(), 5);

        // The same ban again changes nothing; a renewed one is set again.
        let c = m.ban_delta(6, &bans(&[ban("192.0.2.1", 2000)], &[]), 1000);
        assert!(c.is_empty(), "{c:?}");
        let c = m.ban_delta(7, &bans(&[ban("192.0.2.1", 3000)], &[]), 1000);
        assert_eq!(c.ban, [(ip("192.0.2.1"), m.bans[&ip("192.0.2.1")].clone())]);

        let c = m.ban_delta(8, &bans(&[], &["192.0.2.1", "nonsense"]), 1000);
        assert_eq!(c.unban, [ip("192.0.2.1")]);
        assert_eq!(c.rejected, ["nonsense"]);
        assert!(!m.bans.contains_key(&ip("192.0.2.1")));

        // A ban that is over when it arrives is not added.
        let c = m.ban_delta(9, &bans(&[ban("192.0.2.3", 999)], &[]), 1000);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(m.revision(), 9);

        let c = m.trust_delta(10, &trust(&[peer("198.51.100.2", "acme/branch/pbx2")], &[]));
        assert_eq!(c.trust, [(ip("198.51.100.2"), "acme/branch/pbx2".into())]);
        let c = m.trust_delta(11, &trust(&[], &["198.51.100.2"]));
        assert_eq!(c.untrust, [ip("198.51.100.2")]);
        assert!(m.peers.is_empty());
        // Revisions never go back.
        m.other(3);
        assert_eq!(m.revision(), 11);
    }

    #[test]
    fn a_snapshot_replaces_what_it_does_not_mention_when_it_ends() {
        let mut m = Mirror::default();
        m.ban_delta(
            3,
            &bans(&[ban("192.0.2.1", 0), ban("192.0.2.2", 0)], &[]),
            10,
        );
        m.trust_delta(
            4,
            &trust(
                &[
                    peer("198.51.100.1", "t/a/h1"),
                    peer("198.51.100.2", "t/b/h2"),
                ],
                &[],
            ),
        );

        // A snapshot at revision 20 that keeps .2 and peer .2, adds .3.
        assert!(m.welcome(20, true).is_empty());
        assert!(m.in_snapshot());
        assert_eq!(m.revision(), 0, "a snapshot cut short is asked again");
        let c = m.ban_delta(
            20,
            &bans(&[ban("192.0.2.2", 0), ban("192.0.2.3", 0)], &[]),
            10,
        );
        assert_eq!(c.ban.len(), 1, "only the new one: {c:?}");
        assert!(
            c.unban.is_empty(),
            "nothing lifted before the snapshot ends"
        );
        let c = m.trust_delta(20, &trust(&[peer("198.51.100.2", "t/b/h2")], &[]));
        assert!(c.is_empty(), "{c:?}");
        assert!(m.bans.contains_key(&ip("192.0.2.1")), "still enforced");

        // The first message after the snapshot ends it.
        let c = m.ban_delta(21, &bans(&[ban("192.0.2.4", 0)], &[]), 10);
        assert_eq!(c.unban, [ip("192.0.2.1")]);
        assert_eq!(c.untrust, [ip("198.51.100.1")]);
        assert_eq!(c.ban.len(), 1);
        assert_eq!(c.ban[0].0, ip("192.0.2.4"));
        assert!(!m.in_snapshot());
        assert_eq!(m.revision(), 21);
        let addrs: Vec<_> = m.bans.keys().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.2", "192.0.2.3", "192.0.2.4"]);
        assert_eq!(m.peers.len(), 1);
    }

    #[test]
    fn an_empty_snapshot_clears_everything_when_it_settles() {
        let mut m = Mirror::default();
        m.ban_delta(3, &bans(&[ban("192.0.2.1", 0)], &[]), 10);
        m.trust_delta(4, &trust(&[peer("198.51.100.1", "t/a/h1")], &[]));
        m.welcome(9, true);
        // Parts at the snapshot's revision or below belong to it.
        assert!(m.other(9).is_empty());
        assert!(m.other(8).is_empty());
        assert!(m.in_snapshot());
        let c = m.finish_snapshot();
        assert_eq!(c.unban, [ip("192.0.2.1")]);
        assert_eq!(c.untrust, [ip("198.51.100.1")]);
        assert_eq!(m.revision(), 9);
        assert!(m.finish_snapshot().is_empty(), "only once");
        // Or the next revision ends it.
        m.ban_delta(10, &bans(&[ban("192.0.2.1", 0)], &[]), 10);
        m.welcome(12, true);
        let c = m.other(13);
        assert_eq!(c.unban, [ip("192.0.2.1")]);
        assert_eq!(m.revision(), 13);
    }

    #[test]
    fn deltas_after_a_welcome_without_snapshot_keep_the_rest() {
        let mut m = Mirror::default();
        m.ban_delta(3, &bans(&[ban("192.0.2.1", 0)], &[]), 10);
        assert!(m.welcome(7, false).is_empty());
        assert_eq!(m.revision(), 3, "a welcome brings nothing by itself");
        let c = m.ban_delta(4, &bans(&[ban("192.0.2.2", 0)], &[]), 10);
        assert_eq!(c.ban.len(), 1);
        assert!(c.unban.is_empty());
        assert_eq!(m.bans.len(), 2);
    }

    #[test]
    fn the_journal_rebuilds_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        assert_eq!(j.load().unwrap(), Mirror::default());
        let mut m = Mirror::default();
        let c = m.ban_delta(
            5,
            &bans(&[ban("192.0.2.1", 0), ban("2001:db8::1", 99)], &[]),
            10,
        );
        j.append(&c, m.revision()).unwrap();
        let c = m.trust_delta(6, &trust(&[peer("198.51.100.1", "t/a/h")], &[]));
        j.append(&c, m.revision()).unwrap();
        let c = m.ban_delta(7, &bans(&[], &["2001:db8::1"]), 10);
        j.append(&c, m.revision()).unwrap();
        assert_eq!(j.load().unwrap(), m);

        // A snapshot in progress is recorded as revision 0.
        m.welcome(30, true);
        j.append(&Changes::default(), m.revision()).unwrap();
        let mut torn = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        torn.write_all(b"{\"op\":\"ban\",\"addr\":\"192.0").unwrap();
        let back = j.load().unwrap();
        assert_eq!(back.revision(), 0);
        assert_eq!(back.bans, m.bans);

        m.finish_snapshot();
        j.compact(&m).unwrap();
        assert_eq!(j.load().unwrap(), m);
        assert_eq!(m.revision(), 30);
    }

    #[test]
    fn expiry_and_everything_in_force() {
        let mut m = Mirror::default();
        m.ban_delta(
            1,
            &bans(&[ban("192.0.2.1", 50), ban("192.0.2.2", 0)], &[]),
            10,
        );
        m.trust_delta(2, &trust(&[peer("198.51.100.1", "t/a/h")], &[]));
        m.expire(60);
        let all = m.all();
        assert_eq!(all.ban.len(), 1);
        assert_eq!(all.ban[0].0, ip("192.0.2.2"));
        assert_eq!(all.trust.len(), 1);
    }
}
