//! The agent's side of the control plane (`palisade.v1.AgentService`).
//!
//! * [`enroll`]: `palisade-agent enroll --token T` — a key made on the host,
//!   a certificate from the controller's CA, over TLS pinned by the token.
//! * [`sync`]: the daemon's one bidirectional stream over mutual TLS, kept up
//!   with reconnection and backoff: it reports the host's bans and addresses
//!   and applies what the controller sends (shared bans into `ban_shared`,
//!   the tenant's other hosts into `tenant_peer`, policy with
//!   confirm-or-rollback, per-user rules).
//! * [`mirror`]: what to change for each controller message (pure), and the
//!   journal that keeps it across restarts.
//!
//! A host cut off from its controller keeps enforcing everything it has:
//! nothing is removed on a disconnect.

pub mod addrs;
pub mod backoff;
pub mod enroll;
pub mod identity;
pub mod mirror;
pub mod sync;
pub mod tls;
pub mod token;

use serde::Deserialize;
use std::time::Duration;

/// `[agent.controller]`: how the sync stream behaves. Where the controller
/// is and who this host is come from `palisade-agent enroll`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSettings {
    /// How often a heartbeat goes up (a change of the host's addresses goes
    /// at once).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// The longest wait between two connection attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            heartbeat: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The reason of a ban the controller shared (never reported back up).
pub const SHARED_REASON: &str = "shared";

/// `palisade_controller_messages_total{kind}`'s label for a message.
pub fn kind(body: &palisade_proto::v1::controller_message::Body) -> &'static str {
    use palisade_proto::v1::controller_message::Body;
    match body {
        Body::Welcome(_) => "welcome",
        Body::Bans(_) => "bans",
        Body::Trust(_) => "trust",
        Body::Policy(_) => "policy",
        Body::UserRules(_) => "user_rules",
        Body::Explain(_) => "explain",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_section() {
        let s = crate::settings::parse_settings(
            "[agent.controller]\nheartbeat = \"5s\"\nmax_backoff = \"1m\"\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(s.controller.heartbeat, std::time::Duration::from_secs(5));
        assert_eq!(s.controller.max_backoff, std::time::Duration::from_secs(60));
        let d = crate::settings::parse_settings("", "a.toml").unwrap();
        assert_eq!(d.controller, super::ControllerSettings::default());
        let e = crate::settings::parse_settings("[agent.controller]\nurl = \"x\"\n", "a.toml")
            .unwrap_err();
        assert!(e.to_string().contains("url"), "{e}");
    }
}
