//! Compute share by a token bucket on measured kernel time. A tenant with share `s` earns `s`
//! seconds of GPU kernel time per wall-clock second (burst capped); each completed kernel's
//! measured time is spent from the bucket; a launch while the bucket is in debt waits until the
//! debt is repaid. With the GPU contended this bounds the tenant to about `s` of kernel
//! throughput. (Green contexts would partition SMs instead; see README for why not yet.)

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    share: f64,
    burst: f64,
    /// Seconds of kernel time available (negative = debt).
    tokens: f64,
    last: f64,
}

impl TokenBucket {
    /// `share` in (0, 1]; `burst` in seconds; `now` in seconds on any monotonic clock.
    pub fn new(share: f64, burst: f64, now: f64) -> Self {
        let share = share.clamp(1e-3, 1.0);
        Self {
            share,
            burst,
            tokens: burst,
            last: now,
        }
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// True when the bucket never limits (share 1).
    pub fn unlimited(&self) -> bool {
        self.share >= 1.0
    }

    fn refill(&mut self, now: f64) {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.share).min(self.burst);
            self.last = now;
        }
    }

    /// Records `kernel_seconds` of measured GPU time.
    pub fn spend(&mut self, kernel_seconds: f64, now: f64) {
        self.refill(now);
        self.tokens -= kernel_seconds.max(0.0);
    }

    /// How long a launch at `now` must wait.
    pub fn wait_before_launch(&mut self, now: f64) -> Duration {
        self.refill(now);
        if self.unlimited() || self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.share)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a tenant that always has work: each kernel takes `k` seconds of GPU; we only
    /// count GPU time when the bucket allows a launch. The achieved fraction approaches `share`.
    fn simulate(share: f64) -> f64 {
        let k = 0.002;
        let mut b = TokenBucket::new(share, 0.01, 0.0);
        let mut now = 0.0;
        let mut busy = 0.0;
        while now < 10.0 {
            let w = b.wait_before_launch(now).as_secs_f64();
            now += w;
            now += k;
            busy += k;
            b.spend(k, now);
        }
        busy / now
    }

    #[test]
    fn achieved_share_tracks_configured_share() {
        for share in [0.25, 0.5, 0.75] {
            let got = simulate(share);
            assert!((got - share).abs() < 0.02, "share {share}: got {got}");
        }
        assert!((simulate(1.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn idle_time_refills_only_up_to_burst() {
        let mut b = TokenBucket::new(0.5, 0.01, 0.0);
        b.spend(0.02, 0.0);
        assert!(b.wait_before_launch(0.0) > Duration::ZERO);
        // After 100 s idle, only `burst` is available: one long kernel puts it back in debt.
        assert_eq!(b.wait_before_launch(100.0), Duration::ZERO);
        b.spend(0.05, 100.0);
        let w = b.wait_before_launch(100.0).as_secs_f64();
        assert!((w - 0.08).abs() < 1e-9, "{w}");
    }
}
