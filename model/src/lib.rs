//! The shared vocabulary of Palisade.
//!
//! Everything here is pure data and logic: the agent renders it to nftables, the
//! controller stores and ships it, and `explain` reasons over it. Keeping it free of
//! I/O is what lets the same policy be validated, rendered and explained anywhere.

pub mod config;
pub mod dynamic;
pub mod explain;
pub mod facts;
pub mod inline;
pub mod net;
pub mod pbxlog;
pub mod pipeline;
pub mod policy;
pub mod responsive;
pub mod service;
pub mod zone;

pub use config::{parse_policy, ConfigError};
pub use dynamic::{DynSet, DynamicState, Grant, TimedAddr};
pub use explain::{explain, Decision, Query, Verdict};
pub use facts::{
    DiscoveryError, ListenPort, PbxFacts, PbxKind, Peer, PeerTarget, Provenance, PublicAddress,
    RtpRange, Transport,
};
pub use net::Family;
pub use pipeline::{Stage, INPUT_PIPELINE};
pub use policy::{Lockout, Origin, Policy, Sourced, ZoneMembers};
pub use responsive::{Detect, Responsive, Tiers, SCANNER_USER_AGENTS};
pub use service::{PortRange, PortSpec, Proto, Service};
pub use zone::Zone;
