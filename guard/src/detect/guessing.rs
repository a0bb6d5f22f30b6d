//! Password guessing, judged on the PBX's answers rather than the tool's
//! announcements: a 401/407/403 to a request that carried credentials is a
//! wrong password, whatever the User-Agent said.
//!
//! A phone with a wrong password fails once per attempt and waits its retry
//! interval (seconds to minutes) before the next; a tool fails many times a
//! second. So the detector bans on a burst of failures (no phone does that),
//! on one user failing for too long (a slow guesser at phone pace), and on many
//! users failing from one address (credential stuffing).

use super::{short, Distinct, Finding, Reason, Window};
use palisade_model::Detect;
use std::time::Instant;

/// Users remembered per source (the oldest is forgotten first).
const MAX_USERS: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct Guessing {
    burst: Window,
    users: Vec<(Box<str>, Window)>,
    failing_users: Distinct,
}

/// How one user is doing from one source, for the operator's notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserFailures {
    /// Failures of this user within the slow window.
    pub count: usize,
}

impl Guessing {
    /// Records a failed authentication of `user`. `factor` (≥ 1) loosens every
    /// threshold for a source with a live registration (an office NAT address).
    pub fn failure(
        &mut self,
        cfg: &Detect,
        user: &str,
        now: Instant,
        factor: u32,
    ) -> (Option<Finding>, UserFailures) {
        let burst_limit = (cfg.burst_failures * factor) as usize;
        let burst = self.burst.hit(now, cfg.burst_window, burst_limit);

        let slow_limit = (cfg.slow_failures * factor) as usize;
        let window = match self.users.iter().position(|(u, _)| &**u == user) {
            Some(i) => &mut self.users[i].1,
            None => {
                if self.users.len() >= MAX_USERS {
                    self.users.remove(0);
                }
                self.users.push((user.into(), Window::default()));
                &mut self.users.last_mut().expect("just pushed").1
            }
        };
        let count = window.hit(now, cfg.slow_window, slow_limit);
        let slow_span = window.span();

        let stuffing_limit = (cfg.distinct_failing_users * factor) as usize;
        let distinct = self
            .failing_users
            .hit(user, now, cfg.user_window, stuffing_limit);

        let finding = if burst >= burst_limit {
            Some(Finding {
                reason: Reason::PasswordGuessing,
                detail: format!(
                    "{burst} failed authentications in {} (last user {user}); no phone retries that fast",
                    short(self.burst.span())
                ),
            })
        } else if count >= slow_limit {
            Some(Finding {
                reason: Reason::SlowGuessing,
                detail: format!("user {user} failed {count} times in {}", short(slow_span)),
            })
        } else if distinct >= stuffing_limit {
            Some(Finding {
                reason: Reason::CredentialStuffing,
                detail: format!(
                    "{distinct} different users failed authentication ({})",
                    self.failing_users.sample(8)
                ),
            })
        } else {
            None
        };
        (finding, UserFailures { count })
    }

    /// A successful registration of `user`: a fixed phone starts afresh.
    pub fn success(&mut self, user: &str) {
        self.users.retain(|(u, _)| &**u != user);
        self.failing_users.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_tool_is_caught_at_the_third_fast_failure() {
        let cfg = Detect::default();
        let mut g = Guessing::default();
        let t0 = Instant::now();
        assert!(g.failure(&cfg, "300", at(t0, 0.0), 1).0.is_none());
        assert!(g.failure(&cfg, "300", at(t0, 0.006), 1).0.is_none());
        let f = g.failure(&cfg, "300", at(t0, 0.012), 1).0.unwrap();
        assert_eq!(f.reason, Reason::PasswordGuessing);
        assert!(f.detail.contains("3 failed"), "{}", f.detail);
    }

    #[test]
    fn a_phone_retrying_every_ten_seconds_for_three_minutes_is_tolerated() {
        let cfg = Detect::default();
        let mut g = Guessing::default();
        let t0 = Instant::now();
        for i in 0..18 {
            // Some phones try twice per attempt (a second REGISTER after the 401).
            for extra in [0.0, 0.3] {
                let (finding, _) = g.failure(&cfg, "300", at(t0, i as f64 * 10.0 + extra), 1);
                assert!(finding.is_none(), "banned at attempt {i}: {finding:?}");
            }
        }
        g.success("300");
        assert!(g.failure(&cfg, "300", at(t0, 200.0), 1).0.is_none());
    }

    #[test]
    fn a_slow_guesser_at_phone_pace_is_banned_before_sixty_failures() {
        let cfg = Detect::default();
        let mut g = Guessing::default();
        let t0 = Instant::now();
        let banned_at = (0..60)
            .find(|i| {
                g.failure(&cfg, "300", at(t0, *i as f64 * 10.0), 1)
                    .0
                    .is_some()
            })
            .expect("never banned");
        assert!(banned_at < 60);
        assert_eq!(banned_at + 1, cfg.slow_failures as usize);
    }

    #[test]
    fn many_users_failing_is_credential_stuffing() {
        let cfg = Detect::default();
        let mut g = Guessing::default();
        let t0 = Instant::now();
        let mut found = None;
        for (i, user) in ["100", "101", "102", "103", "104"].iter().enumerate() {
            found = g.failure(&cfg, user, at(t0, i as f64 * 20.0), 1).0;
        }
        assert_eq!(found.unwrap().reason, Reason::CredentialStuffing);
    }

    #[test]
    fn a_known_good_address_gets_more_room() {
        let cfg = Detect::default();
        let mut g = Guessing::default();
        let t0 = Instant::now();
        for i in 0..(cfg.burst_failures * 5 - 1) {
            assert!(g
                .failure(&cfg, "300", at(t0, i as f64 * 0.1), 5)
                .0
                .is_none());
        }
    }
}
