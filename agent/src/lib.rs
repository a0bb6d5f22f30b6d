//! The Palisade agent: one per PBX host. It owns the nftables table
//! `inet palisade`, renders its policy into it atomically, and keeps the operator
//! from ever being locked out.

pub mod bans;
pub mod cli;
pub mod controller;
pub mod discover;
pub mod engine;
pub mod events;
pub mod follow;
pub mod lockout;
pub mod names;
pub mod pbxlog;
pub mod resolve;
pub mod ruleset;
pub mod settings;
pub mod show;
pub mod state;
pub mod telemetry;
pub mod watch;
