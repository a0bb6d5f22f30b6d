//! Extension enumeration and REGISTER sweeps: one address asking about many
//! users without ever proving it knows a password.
//!
//! Enumeration shows in the PBX's answers: "not found" (404), or a refusal
//! (403) to a request without credentials, for many distinct users. A sweep
//! against a PBX that challenges everybody shows as many users challenged
//! (401/407) that never come back with credentials — unlike fifty phones
//! behind one NAT address, which all answer their challenge within moments.

use super::{Distinct, Finding, Reason};
use palisade_model::Detect;
use std::time::{Duration, Instant};

/// A challenge not answered with credentials within this long counts as unanswered.
const FOLLOW_UP: Duration = Duration::from_secs(1);
const MAX_NAMES: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct Enumeration {
    unknown: Distinct,
    challenged: Distinct,
}

impl Enumeration {
    pub fn unknown_user(
        &mut self,
        cfg: &Detect,
        user: &str,
        status: u16,
        now: Instant,
        factor: u32,
    ) -> Option<Finding> {
        let limit = (cfg.distinct_unknown_users * factor) as usize;
        let n = self
            .unknown
            .hit(user, now, cfg.user_window, limit.min(MAX_NAMES));
        (n >= limit).then(|| Finding {
            reason: Reason::Enumeration,
            detail: format!(
                "{n} different users refused without credentials (last {user}, {status}): {}",
                self.unknown.sample(8)
            ),
        })
    }

    pub fn challenged(
        &mut self,
        cfg: &Detect,
        user: &str,
        now: Instant,
        factor: u32,
    ) -> Option<Finding> {
        let limit = (cfg.distinct_unanswered_users * factor) as usize;
        self.challenged
            .hit(user, now, cfg.user_window, limit.min(MAX_NAMES));
        self.sweep(limit, now)
    }

    /// A request: with credentials it answers the user's challenge; either way
    /// it is a moment to look at challenges left unanswered.
    pub fn request(
        &mut self,
        cfg: &Detect,
        user: Option<&str>,
        credentials: bool,
        now: Instant,
        factor: u32,
    ) -> Option<Finding> {
        if let (Some(user), true) = (user, credentials) {
            self.challenged.remove(user);
        }
        self.sweep((cfg.distinct_unanswered_users * factor) as usize, now)
    }

    /// A request with credentials for a call to `destination`: the challenge
    /// to the call's first INVITE was recorded under the number dialled (that
    /// INVITE had no credentials' user to go by), so the credentials answer
    /// that name, not their own user's. Without this, a phone that is not
    /// registered from its address would look like a sweep after ten calls.
    pub fn answered(&mut self, destination: &str) {
        self.challenged.remove(destination);
    }

    fn sweep(&self, limit: usize, now: Instant) -> Option<Finding> {
        let unanswered = self.challenged.older_than(now, FOLLOW_UP);
        (unanswered >= limit).then(|| Finding {
            reason: Reason::RegisterSweep,
            detail: format!(
                "{unanswered} different users challenged and never answered: {}",
                self.challenged.sample(8)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svwar_is_caught_after_a_few_unknown_extensions() {
        let cfg = Detect::default();
        let mut e = Enumeration::default();
        let t0 = Instant::now();
        let mut banned = None;
        for (i, ext) in (100..200).enumerate() {
            let now = t0 + Duration::from_millis(6 * i as u64);
            if let Some(f) = e.unknown_user(&cfg, &ext.to_string(), 404, now, 1) {
                banned = Some((i, f));
                break;
            }
        }
        let (i, f) = banned.expect("never caught");
        assert_eq!(i + 1, cfg.distinct_unknown_users as usize);
        assert_eq!(f.reason, Reason::Enumeration);
        assert!(f.detail.contains("100,101"), "{}", f.detail);
    }

    #[test]
    fn the_same_unknown_user_again_is_not_enumeration() {
        let cfg = Detect::default();
        let mut e = Enumeration::default();
        let t0 = Instant::now();
        for i in 0..50 {
            let now = t0 + Duration::from_secs(i);
            assert!(e.unknown_user(&cfg, "999", 404, now, 1).is_none());
        }
    }

    #[test]
    fn fifty_phones_answering_their_challenges_are_no_sweep() {
        let cfg = Detect::default();
        let mut e = Enumeration::default();
        let t0 = Instant::now();
        for p in 0..50u64 {
            let user = format!("{}", 200 + p);
            let now = t0 + Duration::from_millis(p);
            assert!(e.challenged(&cfg, &user, now, 1).is_none());
            let later = now + Duration::from_millis(30);
            assert!(e.request(&cfg, Some(&user), true, later, 1).is_none());
        }
        assert!(e
            .request(&cfg, None, false, t0 + Duration::from_secs(5), 1)
            .is_none());
    }

    #[test]
    fn users_challenged_and_abandoned_are_a_sweep() {
        let cfg = Detect::default();
        let mut e = Enumeration::default();
        let t0 = Instant::now();
        for p in 0..cfg.distinct_unanswered_users as u64 {
            e.challenged(&cfg, &format!("{p}"), t0 + Duration::from_millis(p), 1);
        }
        let f = e
            .request(&cfg, Some("77"), false, t0 + Duration::from_secs(2), 1)
            .unwrap();
        assert_eq!(f.reason, Reason::RegisterSweep);
    }
}
