//! The one retry backoff of the project: jittered exponential, validated.
//! Used by the agent's uplink, the InfluxDB sink and the external-broker
//! consumer. Pure: it computes delays; callers do the waiting.

use std::time::Duration;

/// Jittered exponential backoff ("full jitter" around the nominal delay).
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    min: Duration,
    /// Largest delay.
    max: Duration,
    /// Next nominal delay.
    next: Duration,
    /// xorshift state for jitter (no global RNG needed).
    rng: u64,
}

/// Invalid backoff bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backoff: min ({min:?}) must be > 0 and <= max ({max:?})")]
pub struct BackoffError {
    /// Given minimum.
    pub min: Duration,
    /// Given maximum.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Result<Self, BackoffError> {
        if min.is_zero() || min > max {
            return Err(BackoffError { min, max });
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Ok(Self {
            min,
            max,
            next: min,
            rng: seed,
        })
    }

    /// The next delay: uniformly in [nominal/2, nominal], nominal doubling.
    pub fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = 0.5 + (self.rng >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        let d = self.next.mul_f64(frac);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        let mut nominal = Duration::from_millis(100);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn rejects_bad_bounds() {
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }
}
