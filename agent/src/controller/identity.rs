//! The host's identity with the controller, in `<state_dir>/controller/`:
//!
//! ```text
//! controller/            0700, replaced as a whole by a new enrolment
//!   key.pem              0600  the host's private key; it never leaves the host
//!   cert.pem                   the host's certificate, signed by the controller's CA
//!   ca.pem                     the controller's CA (pinned at enrolment)
//!   identity.json              url, tenant, site, host, CA fingerprint, dates
//!   sync.jsonl                 shared bans and tenant peers in force, and the
//!                              revision they bring the host to (see `mirror`)
//!   policy.json                the controller's last policy and its confirmation
//!   user-rules.json            the controller's last per-user rules
//!   reported                   bans made before this instant were reported
//! ```
//!
//! Enrolling again builds a fresh directory next to it and swaps the two in
//! one `renameat2(RENAME_EXCHANGE)`: a reader sees the old identity or the
//! new one, never a mix. The sync state goes with the old identity (a new
//! one may be of another tenant); the first connection then asks for a full
//! snapshot.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DIR: &str = "controller";
pub const KEY: &str = "key.pem";
pub const CERT: &str = "cert.pem";
pub const CA: &str = "ca.pem";
pub const IDENTITY: &str = "identity.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `https://host:port`.
    pub url: String,
    pub tenant: String,
    pub site: String,
    pub host: String,
    /// Hex SHA-256 of `ca.pem`'s DER: the pin of the token.
    pub ca_sha256: String,
    /// Unix seconds.
    pub enrolled_at: u64,
}

impl Identity {
    /// `tenant/site/host`, as the controller names hosts.
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.tenant, self.site, self.host)
    }
}

/// Everything a mutual-TLS connection needs.
#[derive(Clone)]
pub struct Enrolled {
    pub identity: Identity,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// The directory's inode: a new enrolment swaps in another directory.
    pub generation: u64,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("identity", &self.identity)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory's inode number, which changes when an enrolment swaps it.
pub fn generation(state_dir: &Path) -> Option<u64> {
    fs::metadata(dir(state_dir)).ok().map(|m| m.ino())
}

/// The enrolment in force, `None` when the host never enrolled.
pub fn load(state_dir: &Path) -> Result<Option<Enrolled>, IdentityError> {
    let d = dir(state_dir);
    let id_path = d.join(IDENTITY);
    let text = match fs::read_to_string(&id_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&id_path)(e)),
    };
    let identity: Identity = serde_json::from_str(&text).map_err(|e| IdentityError::Corrupt {
        path: id_path.clone(),
        detail: e.to_string(),
    })?;
    let read = |name: &str| {
        let p = d.join(name);
        fs::read_to_string(&p).map_err(io(&p))
    };
    Ok(Some(Enrolled {
        identity,
        key_pem: read(KEY)?,
        cert_pem: read(CERT)?,
        ca_pem: read(CA)?,
        generation: fs::metadata(&d).map_err(io(&d))?.ino(),
    }))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Writes a new enrolment and swaps it in for the old one (if any) at once.
pub fn store(state_dir: &Path, e: &Enrolled) -> Result<(), IdentityError> {
    let live = dir(state_dir);
    let fresh = state_dir.join(format!(".{DIR}.new-{}", std::process::id()));
    let _ = fs::remove_dir_all(&fresh);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&fresh)
        .map_err(io(&fresh))?;
    let result = (|| {
        write_file(&fresh.join(KEY), e.key_pem.as_bytes(), 0o600)?;
        write_file(&fresh.join(CERT), e.cert_pem.as_bytes(), 0o644)?;
        write_file(&fresh.join(CA), e.ca_pem.as_bytes(), 0o644)?;
        let json = serde_json::to_vec_pretty(&e.identity).expect("identity serializes");
        write_file(&fresh.join(IDENTITY), &json, 0o644)?;
        fs::File::open(&fresh)
            .and_then(|d| d.sync_all())
            .map_err(io(&fresh))?;
        swap_in(&fresh, &live)
    })();
    // After a swap `fresh` holds the old enrolment; after a failure, the
    // half-written new one. Either way it goes.
    let _ = fs::remove_dir_all(&fresh);
    if let Ok(d) = fs::File::open(state_dir) {
        let _ = d.sync_all();
    }
    result
}

fn swap_in(fresh: &Path, live: &Path) -> Result<(), IdentityError> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(
        AT_FDCWD,
        fresh,
        AT_FDCWD,
        live,
        RenameFlags::RENAME_EXCHANGE,
    ) {
        Ok(()) => Ok(()),
        // Nothing to exchange with: the first enrolment.
        Err(nix::errno::Errno::ENOENT) => fs::rename(fresh, live).map_err(io(live)),
        Err(e) => Err(io(live)(std::io::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn enrolled(host: &str) -> Enrolled {
        Enrolled {
            identity: Identity {
                url: "https://c:7443".into(),
                tenant: "acme".into(),
                site: "hq".into(),
                host: host.into(),
                ca_sha256: "00".into(),
                enrolled_at: 1,
            },
            key_pem: format!("KEY {host}"),
            cert_pem: format!("CERT {host}"),
            ca_pem: "CA".into(),
            generation: 0,
        }
    }

    #[test]
    fn store_load_and_replace_at_once() {
        let state = tempfile::tempdir().unwrap();
        assert!(load(state.path()).unwrap().is_none());
        store(state.path(), &enrolled("pbx1")).unwrap();
        let first = load(state.path()).unwrap().unwrap();
        assert_eq!(first.identity.name(), "acme/hq/pbx1");
        assert_eq!(first.key_pem, "KEY pbx1");
        let mode = |name: &str| {
            fs::metadata(dir(state.path()).join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(KEY), 0o600, "the key is the host's alone");
        assert_eq!(
            fs::metadata(dir(state.path()))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // Sync state of the old identity goes with it.
        fs::write(dir(state.path()).join("sync.jsonl"), "x").unwrap();
        store(state.path(), &enrolled("pbx2")).unwrap();
        let second = load(state.path()).unwrap().unwrap();
        assert_eq!(second.identity.host, "pbx2");
        assert_eq!(second.cert_pem, "CERT pbx2");
        assert_ne!(first.generation, second.generation);
        assert_eq!(generation(state.path()), Some(second.generation));
        assert!(!dir(state.path()).join("sync.jsonl").exists());
        let left: Vec<_> = fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(DIR)], "no leftovers");
    }
}
