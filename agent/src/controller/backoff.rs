//! Reconnection delays: exponential with jitter, capped, reset once a
//! connection has worked. The jitter keeps a fleet that lost its controller
//! from reconnecting in lock-step when it comes back.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        Backoff::with_seed(base, cap, seed)
    }

    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The ceiling of the `attempt`-th delay (0-based): base·2^attempt, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap)
    }

    /// The next delay: uniformly between half the ceiling and the ceiling
    /// ("equal jitter": never zero, never over the cap).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
        ceiling / 2 + ceiling.mul_f64(unit / 2.0)
    }

    /// A connection worked: start again from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::with_seed(Duration::from_millis(500), Duration::from_secs(30), 42);
        let ceilings: Vec<u64> = (0..9).map(|i| b.ceiling(i).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.ceiling(1000), Duration::from_secs(30), "no overflow");
        for attempt in 0..40 {
            let d = b.next_delay();
            let c = b.ceiling(attempt);
            assert!(
                d >= c / 2 && d <= c,
                "attempt {attempt}: {d:?} not in [{:?}, {c:?}]",
                c / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn two_agents_do_not_retry_in_lock_step() {
        let mut a = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), 1);
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), 2);
        let same = (0..10).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 2, "{same} equal delays of 10");
    }
}
