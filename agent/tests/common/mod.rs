//! Helpers shared by the discovery tests: fixture paths, and facts and errors
//! built from a needle in the fixture text, so a test names the line it means
//! and keeps meaning it when a fixture is edited.
#![allow(dead_code)] // each test binary uses its own subset

use palisade_model::{
    DiscoveryError, ListenPort, Peer, PeerTarget, Provenance, PublicAddress, Transport,
};
use std::path::{Path, PathBuf};

/// `agent/tests/fixtures/<kind>/<name>`.
pub fn fixture(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .join(name)
}

/// The 1-based line of the only line of `file` containing `needle`.
pub fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("fixture readable");
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "`{needle}` in {}: {hits:?}", file.display());
    hits[0]
}

pub fn prov(file: &Path, needle: &str, section: &str, what: &str) -> Provenance {
    Provenance {
        file: file.display().to_string(),
        line: line_of(file, needle),
        section: section.to_string(),
        what: what.to_string(),
    }
}

pub fn listen(
    transport: Transport,
    port: u16,
    addr: Option<&str>,
    provenance: &Provenance,
) -> ListenPort {
    ListenPort {
        transport,
        port,
        addr: addr.map(|a| a.parse().expect("test address")),
        provenance: provenance.clone(),
    }
}

pub fn peer(name: &str, target: PeerTarget, provenance: Provenance) -> Peer {
    Peer {
        name: name.to_string(),
        target,
        provenance,
    }
}

pub fn public(target: PeerTarget, provenance: Provenance) -> PublicAddress {
    PublicAddress { target, provenance }
}

pub fn addr(a: &str) -> PeerTarget {
    PeerTarget::Addr(a.parse().expect("test address"))
}

pub fn net(n: &str) -> PeerTarget {
    PeerTarget::Net(n.parse().expect("test network"))
}

pub fn host(name: &str, port: Option<u16>, transport: Option<Transport>) -> PeerTarget {
    PeerTarget::Host {
        name: name.to_string(),
        port,
        transport,
    }
}

pub fn error(file: &Path, needle: &str, message: &str) -> DiscoveryError {
    DiscoveryError {
        file: file.display().to_string(),
        line: line_of(file, needle),
        message: message.to_string(),
    }
}

/// Writes `text` to `root/rel`, creating directories.
pub fn write(root: &Path, rel: &str, text: &str) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
    std::fs::write(&path, text).expect("write");
    path
}

/// The paths of `files`, relative to `root`, as strings.
pub fn relative(root: &Path, files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            f.strip_prefix(root)
                .expect("inside the tree")
                .display()
                .to_string()
        })
        .collect()
}
