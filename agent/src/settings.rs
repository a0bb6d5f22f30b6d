//! The daemon's own settings: the `[agent]` table of the agent's config file. The
//! rest of that file is the policy (see `palisade_model::parse_policy`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "/etc/palisade/agent.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Where the last good policy, pending confirmations and the first-start guard live.
    pub state_dir: PathBuf,
    /// Prometheus scrape address (`/metrics`); loopback by default.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the daemon checks the live table against the policy and repairs drift.
    #[serde(with = "humantime_serde")]
    pub check_interval: std::time::Duration,
    /// Where the PBX configuration is read from (`[agent.discovery]`).
    pub discovery: crate::discover::DiscoveryPaths,
    /// How host names are resolved (`[agent.resolver]`).
    pub resolver: crate::resolve::ResolverConfig,
    /// Which PBX security logs feed the detectors (`[agent.pbx_logs]`).
    pub pbx_logs: palisade_model::pbxlog::PbxLogs,
    /// The sync stream with the controller (`[agent.controller]`).
    pub controller: crate::controller::ControllerSettings,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            state_dir: crate::state::DEFAULT_STATE_DIR.into(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            check_interval: std::time::Duration::from_secs(30),
            discovery: Default::default(),
            resolver: Default::default(),
            pbx_logs: Default::default(),
            controller: Default::default(),
        }
    }
}

/// Reads `[agent]` from the config text; other tables are the policy's business.
pub fn parse_settings(text: &str, file: &str) -> anyhow::Result<AgentSettings> {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default)]
        agent: Option<toml::Table>,
    }
    let loose: Loose =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {}", e.message()))?;
    let Some(table) = loose.agent else {
        return Ok(AgentSettings::default());
    };
    let settings: AgentSettings = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{file}: [agent]: {}", e.message()))?;
    settings
        .resolver
        .validate()
        .map_err(|e| anyhow::anyhow!("{file}: [agent.resolver]: {e}"))?;
    // A bad pattern is refused now, naming it, rather than when the watch starts.
    crate::pbxlog::sources(&settings.pbx_logs)
        .map_err(|e| anyhow::anyhow!("{file}: [agent.pbx_logs]: {e}"))?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_tables_and_defaults() {
        let s = parse_settings(
            "management = []\n[agent]\nstate_dir = \"/tmp/x\"\n[agent.discovery]\nasterisk = \"/srv/ast\"\n[zones.local]\nnetworks = []\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(s.state_dir, std::path::PathBuf::from("/tmp/x"));
        assert_eq!(s.discovery.asterisk, std::path::PathBuf::from("/srv/ast"));
        assert_eq!(
            s.discovery.freeswitch,
            std::path::PathBuf::from("/etc/freeswitch")
        );
        assert_eq!(
            parse_settings("", "a.toml").unwrap(),
            AgentSettings::default()
        );
        let e = parse_settings("[agent]\nstate_dri = \"/x\"\n", "a.toml").unwrap_err();
        assert!(e.to_string().contains("state_dri"), "{e}");
    }
}
