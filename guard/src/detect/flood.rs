//! Floods that got past the kernel's tiers (a known-good source, or a burst),
//! and streams of garbage on the SIP ports.

use super::{short, Finding, Reason, Window};
use palisade_model::Detect;
use std::time::{Duration, Instant};

/// Seconds in a row over the rate before it counts as a flood (a burst of
/// re-registrations after a network blip is not one).
const SUSTAINED: u32 = 3;

#[derive(Debug, Clone, Default)]
pub struct Flood {
    second: Option<Instant>,
    count: u32,
    seconds_over: u32,
    garbage: Window,
}

impl Flood {
    /// Counts one message.
    pub fn message(&mut self, cfg: &Detect, now: Instant, factor: u32) -> Option<Finding> {
        let limit = cfg.flood_rate * factor;
        match self.second {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                self.count += 1;
            }
            Some(start) => {
                let gap = now.saturating_duration_since(start).as_secs();
                self.seconds_over = if self.count > limit && gap < 2 {
                    self.seconds_over + 1
                } else {
                    0
                };
                self.second = Some(now);
                self.count = 1;
            }
            None => {
                self.second = Some(now);
                self.count = 1;
            }
        }
        (self.seconds_over + 1 >= SUSTAINED && self.count > limit).then(|| Finding {
            reason: Reason::Flood,
            detail: format!(
                "more than {limit} messages/s for {} s in a row",
                self.seconds_over + 1
            ),
        })
    }

    pub fn garbage(
        &mut self,
        cfg: &Detect,
        error: &str,
        now: Instant,
        factor: u32,
    ) -> Option<Finding> {
        let limit = (cfg.garbage * factor) as usize;
        let n = self.garbage.hit(now, cfg.burst_window, limit);
        (n >= limit).then(|| Finding {
            reason: Reason::Garbage,
            detail: format!(
                "{n} messages that are not SIP in {} (last: {error})",
                short(self.garbage.span())
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sustained_rate_is_a_flood_and_a_burst_is_not() {
        let cfg = Detect::default();
        let t0 = Instant::now();
        let mut burst = Flood::default();
        for i in 0..200u64 {
            let now = t0 + Duration::from_micros(i * 500);
            assert!(burst.message(&cfg, now, 1).is_none(), "burst banned");
        }
        let mut flood = Flood::default();
        let mut caught = None;
        for i in 0..400u64 {
            let now = t0 + Duration::from_millis(i * 10);
            if flood.message(&cfg, now, 1).is_some() {
                caught = Some(i);
                break;
            }
        }
        let i = caught.expect("100/s for 4 s not caught");
        assert!((200..=300).contains(&i), "caught at message {i}");
    }

    #[test]
    fn garbage_bursts_are_caught() {
        let cfg = Detect::default();
        let t0 = Instant::now();
        let mut f = Flood::default();
        let n = (0..100u64)
            .position(|i| {
                f.garbage(&cfg, "bad start line", t0 + Duration::from_millis(i), 1)
                    .is_some()
            })
            .unwrap();
        assert_eq!(n + 1, cfg.garbage as usize);
    }
}
