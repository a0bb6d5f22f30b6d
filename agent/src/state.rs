//! The state directory (default `/var/lib/palisade`): what survives a restart.
//!
//! Files are replaced atomically (write, fsync, rename) so a crash or a full disk
//! leaves either the old or the new version, never half of one.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/palisade";
/// The last good discovery facts (see [`StateDir::facts`]).
pub const FACTS_FILE: &str = "facts.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// A change applied with `--confirm-within`, waiting for its confirmation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub id: String,
    /// Unix seconds after which the change is rolled back.
    pub deadline: u64,
    /// The policy text in force before; `None` when there was none (then a rollback
    /// removes the table again).
    pub previous: Option<String>,
    /// The policy text applied, becomes last-good on confirmation.
    pub applied: String,
    pub source: String,
}

/// Peers of SSH sessions found when the agent first started on this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FirstStart {
    pub at: u64,
    pub sessions: Vec<GuardedPeer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuardedPeer {
    pub addr: IpAddr,
    pub until: u64,
}

/// A rollback, kept as a JSON line in `rollbacks.jsonl` for the operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub at: u64,
    pub pending_id: String,
    pub reason: String,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn open(path: impl Into<PathBuf>) -> Result<StateDir, StateError> {
        let path = path.into();
        fs::create_dir_all(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(StateDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn io(&self, name: &str) -> impl FnOnce(std::io::Error) -> StateError {
        let path = self.file(name);
        move |source| StateError::Io { path, source }
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let tmp = self.file(&format!(".{name}.tmp"));
        let mut f = fs::File::create(&tmp).map_err(self.io(name))?;
        f.write_all(bytes).map_err(self.io(name))?;
        f.sync_all().map_err(self.io(name))?;
        fs::rename(&tmp, self.file(name)).map_err(self.io(name))?;
        if let Ok(dir) = fs::File::open(&self.path) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn read_opt(&self, name: &str) -> Result<Option<String>, StateError> {
        match fs::read_to_string(self.file(name)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(name)(e)),
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StateError> {
        let Some(text) = self.read_opt(name)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: self.file(name),
                detail: e.to_string(),
            })
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.write_atomic(
            name,
            &serde_json::to_vec_pretty(value).expect("state serializes"),
        )
    }

    fn remove(&self, name: &str) -> Result<(), StateError> {
        match fs::remove_file(self.file(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(name)(e)),
            _ => Ok(()),
        }
    }

    /// The text of the last policy that was applied and confirmed.
    pub fn last_good(&self) -> Result<Option<String>, StateError> {
        self.read_opt("last-good.toml")
    }

    /// Where the last good policy came from (its file), so errors and `explain`
    /// name the operator's file rather than the stored copy. The copy is kept
    /// verbatim, so its line numbers are the original's.
    pub fn last_good_source(&self) -> Result<String, StateError> {
        Ok(self
            .read_opt("last-good.source")?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.file("last-good.toml").display().to_string()))
    }

    pub fn set_last_good(&self, text: &str, source: &str) -> Result<(), StateError> {
        self.write_atomic("last-good.toml", text.as_bytes())?;
        self.write_atomic("last-good.source", source.as_bytes())
    }

    pub fn clear_last_good(&self) -> Result<(), StateError> {
        self.remove("last-good.toml")?;
        self.remove("last-good.source")
    }

    pub fn pending(&self) -> Result<Option<Pending>, StateError> {
        self.read_json("pending.json")
    }

    pub fn set_pending(&self, p: &Pending) -> Result<(), StateError> {
        self.write_json("pending.json", p)
    }

    pub fn clear_pending(&self) -> Result<(), StateError> {
        self.remove("pending.json")
    }

    pub fn first_start(&self) -> Result<Option<FirstStart>, StateError> {
        self.read_json("first-start.json")
    }

    pub fn set_first_start(&self, f: &FirstStart) -> Result<(), StateError> {
        self.write_json("first-start.json", f)
    }

    /// The last facts discovery read without error: a broken PBX file never
    /// takes working rules away, also across a restart.
    pub fn facts(&self) -> Result<Option<palisade_model::PbxFacts>, StateError> {
        self.read_json(FACTS_FILE)
    }

    pub fn set_facts(&self, facts: &palisade_model::PbxFacts) -> Result<(), StateError> {
        self.write_json(FACTS_FILE, facts)
    }

    /// The errors of the latest discovery (empty when it was clean), for `show`.
    pub fn discovery_errors(&self) -> Result<Vec<palisade_model::DiscoveryError>, StateError> {
        Ok(self.read_json("discovery-errors.json")?.unwrap_or_default())
    }

    pub fn set_discovery_errors(
        &self,
        errors: &[palisade_model::DiscoveryError],
    ) -> Result<(), StateError> {
        self.write_json("discovery-errors.json", &errors)
    }

    pub fn record_rollback(&self, r: &RollbackRecord) -> Result<(), StateError> {
        let name = "rollbacks.jsonl";
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(name))
            .map_err(self.io(name))?;
        let mut line = serde_json::to_vec(r).expect("record serializes");
        line.push(b'\n');
        f.write_all(&line).map_err(self.io(name))?;
        f.sync_all().map_err(self.io(name))
    }

    pub fn rollbacks(&self) -> Result<Vec<RollbackRecord>, StateError> {
        Ok(self
            .read_opt("rollbacks.jsonl")?
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Serialises ruleset changes between the daemon, the CLI and the rollback
    /// watchdog. Held until the guard is dropped.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, StateError> {
        let name = "lock";
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.file(name))
            .map_err(self.io(name))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.io(name)(std::io::Error::from(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(s.last_good().unwrap(), None);
        assert_eq!(s.pending().unwrap(), None);
        assert!(s.last_good_source().unwrap().ends_with("last-good.toml"));
        s.set_last_good("management = []\n", "/etc/palisade/agent.toml")
            .unwrap();
        assert_eq!(s.last_good_source().unwrap(), "/etc/palisade/agent.toml");
        assert_eq!(s.last_good().unwrap().as_deref(), Some("management = []\n"));
        let p = Pending {
            id: "x".into(),
            deadline: 5,
            previous: None,
            applied: "a".into(),
            source: "f".into(),
        };
        s.set_pending(&p).unwrap();
        assert_eq!(s.pending().unwrap(), Some(p));
        s.clear_pending().unwrap();
        s.clear_pending().unwrap();
        assert_eq!(s.pending().unwrap(), None);
        std::fs::write(dir.path().join("pending.json"), "{not json").unwrap();
        assert!(matches!(s.pending(), Err(StateError::Corrupt { .. })));
        let _lock = s.lock().unwrap();
    }
}
