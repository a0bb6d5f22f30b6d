//! Attack tools by fingerprint: the User-Agent (or From user) they announce.
//!
//! The cheapest and fastest detector — one request is proof — but beaten by any
//! attacker who changes the string, which is why the behavioural detectors
//! exist beside it. Fragments are matched case-insensitively as substrings.

use super::{Finding, Reason};

/// The compiled fingerprint list.
#[derive(Debug, Clone)]
pub struct Fingerprints {
    /// Lower-case fragments.
    fragments: Vec<String>,
}

/// From users that only attack tools send.
const TOOL_FROM_USERS: &[&str] = &["sipvicious"];

impl Fingerprints {
    pub fn new(fragments: impl IntoIterator<Item = String>) -> Fingerprints {
        Fingerprints {
            fragments: fragments
                .into_iter()
                .map(|f| f.to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .collect(),
        }
    }

    /// The fragment `user_agent` contains, if any.
    pub fn matches(&self, user_agent: &str) -> Option<&str> {
        let ua = user_agent.to_ascii_lowercase();
        self.fragments
            .iter()
            .find(|f| ua.contains(f.as_str()))
            .map(String::as_str)
    }

    /// Judges one request by its User-Agent and From user.
    pub fn judge(&self, user_agent: Option<&str>, from_user: Option<&str>) -> Option<Finding> {
        if let Some(ua) = user_agent {
            if let Some(fragment) = self.matches(ua) {
                return Some(Finding {
                    reason: Reason::Scanner,
                    detail: format!("attack tool User-Agent {ua:?} (matches {fragment:?})"),
                });
            }
        }
        let from = from_user?;
        TOOL_FROM_USERS
            .iter()
            .find(|t| from.eq_ignore_ascii_case(t))
            .map(|t| Finding {
                reason: Reason::Scanner,
                detail: format!("attack tool From user {t:?}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::Responsive;

    fn builtin() -> Fingerprints {
        Fingerprints::new(Responsive::default().scanner_fragments())
    }

    #[test]
    fn known_tools_are_recognised_in_any_case() {
        let f = builtin();
        for ua in [
            "friendly-scanner",
            "Friendly-Scanner 1.0",
            "sipcli/v1.8",
            "VaxSIPUserAgent/3.1",
            "sipvicious",
            "pplsip",
        ] {
            assert!(f.judge(Some(ua), None).is_some(), "{ua} not recognised");
        }
        let finding = f.judge(None, Some("sipvicious")).unwrap();
        assert_eq!(finding.reason, Reason::Scanner);
    }

    #[test]
    fn real_phones_and_dual_use_tools_pass() {
        let f = builtin();
        for ua in [
            "Yealink SIP-T46S 66.86.0.15",
            "PolycomVVX-VVX_411-UA/6.4.3.5018",
            "Grandstream GXP2170 1.0.11.3",
            "Zoiper rv2.10.20.1",
            "Linphone Desktop/5.2.0 (Debian GNU/Linux 12) LinphoneCore/5.3.0",
            "sipsak 0.9.8",
            "PortSIP VoIP SDK 11.2",
            "Ozeki VoIP SIP SDK",
            "Asterisk PBX 20.5.0",
        ] {
            assert_eq!(f.judge(Some(ua), Some("300")), None, "{ua} banned");
        }
    }

    #[test]
    fn operator_fragments_extend_the_list() {
        let mut r = Responsive::default();
        r.scanner_user_agents.push("EvilDialer".into());
        let f = Fingerprints::new(r.scanner_fragments());
        assert!(f.judge(Some("evildialer/2"), None).is_some());
    }
}
