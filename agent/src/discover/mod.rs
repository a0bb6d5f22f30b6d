//! Discovery: reading the PBX's own configuration into [`PbxFacts`].
//!
//! Each PBX family has its own reader; all of them return a [`Discovered`]: the
//! facts, the errors (file, line, why) and every file read, so the watcher can
//! follow includes. A tree with errors never replaces the last good facts.

pub mod asterisk;
pub mod freeswitch;
pub mod glob;
pub mod ini;
pub mod kamailio;

use palisade_model::{DiscoveryError, PbxFacts, PeerTarget};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

/// Where each PBX keeps its configuration. The usual paths by default, so a
/// stock install needs no setting; a PBX whose directory is absent is skipped.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryPaths {
    /// Set to false to enforce only the configured policy.
    pub enabled: bool,
    pub asterisk: PathBuf,
    pub freeswitch: PathBuf,
    pub kamailio: PathBuf,
}

impl Default for DiscoveryPaths {
    fn default() -> Self {
        DiscoveryPaths {
            enabled: true,
            asterisk: "/etc/asterisk".into(),
            freeswitch: "/etc/freeswitch".into(),
            kamailio: "/etc/kamailio".into(),
        }
    }
}

/// Reads every configured PBX tree. Facts are normalised (sorted, without
/// duplicates) so that two reads of an unchanged tree compare equal.
pub fn discover_all(paths: &DiscoveryPaths) -> Discovered {
    let mut all = Discovered::default();
    if !paths.enabled {
        return all;
    }
    all.merge(asterisk::discover(&paths.asterisk));
    all.merge(freeswitch::discover(&paths.freeswitch));
    all.merge(kamailio::discover(&paths.kamailio));
    all.facts.normalize();
    all.files.sort();
    all.files.dedup();
    all
}

/// The outcome of reading one configuration tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    pub facts: PbxFacts,
    pub errors: Vec<DiscoveryError>,
    /// Every file read (includes too) and every file that would be read if it
    /// existed (`#tryinclude`, optional files), so edits to them are noticed.
    pub files: Vec<PathBuf>,
}

impl Discovered {
    pub fn merge(&mut self, other: Discovered) {
        self.facts.merge(other.facts);
        self.errors.extend(other.errors);
        self.files.extend(other.files);
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// An address a PBX advertises as its own (`PbxFacts::public`): `ip` when
/// the host is one, else the name `host` (without its trailing dot and case,
/// so one name is one fact). `None` for loopback and unspecified addresses
/// (also IPv4-mapped): no other site sees the PBX's traffic come from them.
fn public_target(host: &str, ip: Option<IpAddr>) -> Option<PeerTarget> {
    match ip {
        Some(ip) => {
            let canonical = ip.to_canonical();
            let local = canonical.is_loopback() || canonical.is_unspecified();
            (!local).then_some(PeerTarget::Addr(ip))
        }
        None => Some(PeerTarget::Host {
            name: host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
            port: None,
            transport: None,
        }),
    }
}
