//! Which PBX logs the agent reads, and how.
//!
//! The packet path sees SIP over UDP and TCP; it cannot read SIP over TLS or
//! WSS, nor IAX2 or AMI. What the PBX writes about those in its own logs is the
//! only evidence of an attack on them, so the agent follows these files and
//! feeds what they say to the same detectors.
//!
//! The defaults fit a stock Asterisk/FreePBX or FreeSWITCH host: a file that
//! does not exist is waited for (a cheap `stat` per poll), so listing the
//! other PBX's log costs nothing. Kamailio logs through `xlog` lines the
//! operator writes, so it has no default: each entry says what its lines look
//! like (see [`KamailioLog`]).
//!
//! Reading starts at the end of a file that already exists ([`StartAt::End`]),
//! because replaying old failures would ban on history; a file created later is
//! read from its first line.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Asterisk's `security` logger channel (`logger.conf`: `security => security`).
pub const ASTERISK_SECURITY_LOG: &str = "/var/log/asterisk/security";
/// Asterisk's `full` log, where chan_sip and res_pjsip write their NOTICE lines.
pub const ASTERISK_FULL_LOG: &str = "/var/log/asterisk/full";
/// FreeSWITCH's default log file (mod_logfile).
pub const FREESWITCH_LOG: &str = "/var/log/freeswitch/freeswitch.log";

/// The `[pbx_logs]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PbxLogs {
    /// Read the logs at all.
    pub enabled: bool,
    /// Where reading begins in a file that already exists when the agent
    /// starts following it.
    pub start: StartAt,
    pub asterisk: AsteriskLogs,
    /// FreeSWITCH log files with `sofia_reg.c` warnings. The profile needs
    /// `<param name="log-auth-failures" value="true"/>` for failures and
    /// challenges to be logged at all.
    pub freeswitch: Vec<PathBuf>,
    /// Files whose lines an operator-given pattern describes (Kamailio `xlog`,
    /// or any other registrar).
    pub kamailio: Vec<KamailioLog>,
}

impl Default for PbxLogs {
    fn default() -> Self {
        PbxLogs {
            enabled: true,
            start: StartAt::End,
            asterisk: AsteriskLogs::default(),
            freeswitch: vec![PathBuf::from(FREESWITCH_LOG)],
            kamailio: Vec::new(),
        }
    }
}

/// Where to begin reading a file that exists when it is first opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// At its end: only what is written from now on counts. Old lines carry
    /// no time the detectors could trust, so replaying them would judge a
    /// week of history as if it happened this second.
    #[default]
    End,
    /// At its first line (for tests and for a one-off replay).
    Beginning,
}

/// Asterisk's logs.
///
/// Asterisk reports each authentication failure twice when both channels are
/// on (FreePBX's default): as a security event (`security` channel) and, for
/// chan_sip and res_pjsip, as a NOTICE line (`full`, `messages`). Reading both
/// would count every failure twice and halve every threshold, so the NOTICE
/// lines are a fallback: see [`PbxLogs::asterisk_files`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsteriskLogs {
    /// Files of the `security` channel: security events of every service
    /// (chan_sip, PJSIP, IAX2, AMI), each naming the transport it came over.
    pub security: Vec<PathBuf>,
    /// Files with chan_sip's `Registration from … failed for …` and
    /// res_pjsip's `Request … failed for …` NOTICE lines; read only when none
    /// of the `security` files exists.
    pub notices: Vec<PathBuf>,
}

impl Default for AsteriskLogs {
    fn default() -> Self {
        AsteriskLogs {
            security: vec![PathBuf::from(ASTERISK_SECURITY_LOG)],
            notices: vec![PathBuf::from(ASTERISK_FULL_LOG)],
        }
    }
}

/// Which lines of an Asterisk file to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsteriskLines {
    /// `SECURITY[…] res_security_log.c: SecurityEvent="…",…` lines.
    Security,
    /// chan_sip and res_pjsip NOTICE lines.
    Notices,
}

/// One file described by a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KamailioLog {
    pub path: PathBuf,
    /// The line's text with placeholders: `<ip>` (required, exactly once: the
    /// source address), `<user>` (a run of non-space characters), `<port>`
    /// and `<expires>` (digits). Everything else is literal text, matched
    /// anywhere in the line; e.g. `"AUTHFAIL user=<user> src=<ip>"` for
    /// `xlog("L_WARN", "AUTHFAIL user=$fU src=$si\n")`.
    ///
    /// The pattern decides which `<ip>` is trusted: write `$si` (the packet's
    /// source) into the log, and put client text such as `$fU` or `$ua`
    /// before it rather than after. A line in which the text around `<ip>`
    /// appears more than once is refused as ambiguous, never attributed.
    pub pattern: String,
    /// What such a line means.
    pub kind: PatternKind,
}

/// What a pattern's line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternKind {
    /// Credentials were given and refused (`auth_check` returned -2/-3).
    AuthFailed,
    /// The user does not exist (answered 404, or 403 without a challenge).
    UnknownUser,
    /// A request without credentials was challenged.
    Challenged,
    /// A registration was accepted; the pattern must capture `<expires>`,
    /// since the source stays known-good for exactly that long.
    Registered,
    /// Credentials were accepted (not necessarily a registration).
    AuthSucceeded,
}

impl PatternKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PatternKind::AuthFailed => "auth-failed",
            PatternKind::UnknownUser => "unknown-user",
            PatternKind::Challenged => "challenged",
            PatternKind::Registered => "registered",
            PatternKind::AuthSucceeded => "auth-succeeded",
        }
    }
}

impl PbxLogs {
    /// The Asterisk files to follow and which lines to read from each:
    /// every `security` file, and the `notices` files only when none of the
    /// `security` files exists (`exists` asks the file system; this crate does
    /// no I/O). Called again on a configuration reload, this picks up a
    /// `security` channel the operator turned on since.
    pub fn asterisk_files(&self, exists: impl Fn(&Path) -> bool) -> Vec<(PathBuf, AsteriskLines)> {
        if !self.enabled {
            return Vec::new();
        }
        let security = self.asterisk.security.iter().any(|p| exists(p));
        let mut files: Vec<(PathBuf, AsteriskLines)> = self
            .asterisk
            .security
            .iter()
            .map(|p| (p.clone(), AsteriskLines::Security))
            .collect();
        if !security {
            files.extend(
                self.asterisk
                    .notices
                    .iter()
                    .filter(|p| !self.asterisk.security.contains(p))
                    .map(|p| (p.clone(), AsteriskLines::Notices)),
            );
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_asterisk_and_freeswitch() {
        let logs: PbxLogs = toml::from_str("").unwrap();
        assert_eq!(logs, PbxLogs::default());
        assert!(logs.enabled);
        assert_eq!(logs.start, StartAt::End);
        assert_eq!(
            logs.asterisk.security,
            vec![PathBuf::from(ASTERISK_SECURITY_LOG)]
        );
        assert_eq!(
            logs.asterisk.notices,
            vec![PathBuf::from(ASTERISK_FULL_LOG)]
        );
        assert_eq!(logs.freeswitch, vec![PathBuf::from(FREESWITCH_LOG)]);
        assert!(logs.kamailio.is_empty());
    }

    #[test]
    fn kamailio_patterns_parse() {
        let logs: PbxLogs = toml::from_str(
            r#"
            start = "beginning"
            freeswitch = []
            [asterisk]
            security = ["/var/log/asterisk/security"]
            notices = []
            [[kamailio]]
            path = "/var/log/kamailio.log"
            pattern = "AUTHFAIL user=<user> src=<ip>"
            kind = "auth-failed"
            [[kamailio]]
            path = "/var/log/kamailio.log"
            pattern = "REGOK <user> from <ip> for <expires>s"
            kind = "registered"
            "#,
        )
        .unwrap();
        assert_eq!(logs.start, StartAt::Beginning);
        assert!(logs.freeswitch.is_empty());
        assert_eq!(logs.kamailio.len(), 2);
        assert_eq!(logs.kamailio[0].kind, PatternKind::AuthFailed);
        assert_eq!(logs.kamailio[1].kind.as_str(), "registered");
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        assert!(toml::from_str::<PbxLogs>("asterix = []").is_err());
        let bad_kind = r#"
            [[kamailio]]
            path = "/x"
            pattern = "<ip>"
            kind = "banned"
        "#;
        let err = toml::from_str::<PbxLogs>(bad_kind).unwrap_err().to_string();
        assert!(err.contains("banned"), "{err}");
    }

    #[test]
    fn notices_are_a_fallback_for_a_missing_security_channel() {
        let logs = PbxLogs::default();
        let with = logs.asterisk_files(|p| p == Path::new(ASTERISK_SECURITY_LOG));
        assert_eq!(
            with,
            vec![(
                PathBuf::from(ASTERISK_SECURITY_LOG),
                AsteriskLines::Security
            )]
        );
        let without = logs.asterisk_files(|_| false);
        assert_eq!(
            without,
            vec![
                (
                    PathBuf::from(ASTERISK_SECURITY_LOG),
                    AsteriskLines::Security
                ),
                (PathBuf::from(ASTERISK_FULL_LOG), AsteriskLines::Notices),
            ]
        );
        let off = PbxLogs {
            enabled: false,
            ..PbxLogs::default()
        };
        assert!(off.asterisk_files(|_| true).is_empty());
    }
}
