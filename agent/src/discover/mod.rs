//! Discovery: reading the PBX's own configuration into [`PbxFacts`].
//!
//! Each PBX family has its own reader; all of them return a [`Discovered`]: the
//! facts, the errors (file, line, why) and every file read, so the watcher can
//! follow includes. A tree with errors never replaces the last good facts.

pub mod asterisk;
pub mod freeswitch;
pub mod kamailio;

use palisade_model::{DiscoveryError, PbxFacts};
use std::path::PathBuf;

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
