//! The detectors. Each judges the events of one source and says whether they
//! prove an attack; none of them bans by itself (that is [`crate::judge`]'s
//! job, which also knows who is exempt and who is known-good).
//!
//! Every detector keeps its per-source memory small and capped, because a
//! flood of spoofed sources must not grow the agent.

pub mod enumeration;
pub mod flood;
pub mod guessing;
pub mod scanner;
pub mod tollfraud;

use std::fmt;
use std::time::{Duration, Instant};

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A known attack tool's User-Agent or From user.
    Scanner,
    /// Authentication failures faster than any phone retries.
    PasswordGuessing,
    /// One user failing for longer than a misconfigured phone is tolerated.
    SlowGuessing,
    /// Many users failing authentication from one address.
    CredentialStuffing,
    /// Many users answered "not found": extension enumeration.
    Enumeration,
    /// REGISTERs for many users that never follow up with credentials.
    RegisterSweep,
    /// More messages than the rate tiers let a source send, seen by the agent.
    Flood,
    /// The kernel's rate tier banned the source by itself.
    TierFlood,
    /// Too many messages that are not SIP.
    Garbage,
    /// Calls to costly numbers without credentials or with refused ones, or a
    /// sweep over many destinations.
    TollFraud,
    /// Banned by an operator.
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Scanner => "scanner",
            Reason::PasswordGuessing => "password-guessing",
            Reason::SlowGuessing => "slow-guessing",
            Reason::CredentialStuffing => "credential-stuffing",
            Reason::Enumeration => "enumeration",
            Reason::RegisterSweep => "register-sweep",
            Reason::Flood => "flood",
            Reason::TierFlood => "tier-flood",
            Reason::Garbage => "garbage",
            Reason::TollFraud => "toll-fraud",
            Reason::Manual => "manual",
        }
    }

    pub const ALL: [Reason; 11] = [
        Reason::Scanner,
        Reason::PasswordGuessing,
        Reason::SlowGuessing,
        Reason::CredentialStuffing,
        Reason::Enumeration,
        Reason::RegisterSweep,
        Reason::Flood,
        Reason::TierFlood,
        Reason::Garbage,
        Reason::TollFraud,
        Reason::Manual,
    ];

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A detector's conclusion: the reason and a sentence with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub reason: Reason,
    pub detail: String,
}

/// Timestamps within a sliding window, capped at `cap` entries (enough to reach
/// any threshold; older ones carry no information once the cap is reached).
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    times: std::collections::VecDeque<Instant>,
}

impl Window {
    /// Records `now` and returns how many entries fall within `window`.
    pub fn hit(&mut self, now: Instant, window: Duration, cap: usize) -> usize {
        self.expire(now, window);
        if self.times.len() >= cap.max(1) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len()
    }

    pub fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(first) = self.times.front() {
            if now.saturating_duration_since(*first) > window {
                self.times.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn span(&self) -> Duration {
        match (self.times.front(), self.times.back()) {
            (Some(a), Some(b)) => b.saturating_duration_since(*a),
            _ => Duration::ZERO,
        }
    }
}

/// Distinct names seen within a window, capped.
#[derive(Debug, Clone, Default)]
pub(crate) struct Distinct {
    names: Vec<(Box<str>, Instant)>,
}

impl Distinct {
    /// Records `name` at `now`; returns the number of distinct names within `window`.
    pub fn hit(&mut self, name: &str, now: Instant, window: Duration, cap: usize) -> usize {
        self.names
            .retain(|(_, at)| now.saturating_duration_since(*at) <= window);
        if let Some(entry) = self.names.iter_mut().find(|(n, _)| &**n == name) {
            entry.1 = now;
        } else {
            if self.names.len() >= cap.max(1) {
                self.names.remove(0);
            }
            self.names.push((name.into(), now));
        }
        self.names.len()
    }

    pub fn remove(&mut self, name: &str) {
        self.names.retain(|(n, _)| &**n != name);
    }

    /// Names first seen at least `age` ago and still present.
    pub fn older_than(&self, now: Instant, age: Duration) -> usize {
        self.names
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) >= age)
            .count()
    }

    pub fn sample(&self, n: usize) -> String {
        self.names
            .iter()
            .take(n)
            .map(|(name, _)| &**name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Shortens a duration for messages: `350ms`, `4.2s`, `3m10s`.
pub(crate) fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}
