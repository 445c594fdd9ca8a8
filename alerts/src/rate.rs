//! Rate of change of a field over a window, per hour: "water level rising
//! faster than 30 cm/h over the last 30 minutes".
//!
//! A [`RateWindow`] keeps the samples of the last window (at most
//! [`MAX_SAMPLES`]; beyond that every other old one is thinned out) and
//! gives the change from the oldest kept to the newest, scaled to an hour,
//! once they span at least half the window — a couple of noisy readings a
//! minute apart say nothing of a trend.

use std::collections::VecDeque;

use pantau_model::Timestamp;
use serde::{Deserialize, Serialize};

/// Most samples one window keeps.
pub const MAX_SAMPLES: usize = 1024;

const HOUR_MS: f64 = 3_600_000.0;

/// The samples of one (rule, sensor) window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RateWindow {
    samples: VecDeque<(Timestamp, f64)>,
}

impl RateWindow {
    /// The newest sample's time.
    pub fn last_at(&self) -> Option<Timestamp> {
        self.samples.back().map(|&(t, _)| t)
    }

    /// Adds a value observed `at` (in order; an older one is ignored) and
    /// returns the change per hour over `window_ms`, if the samples span
    /// at least half of it.
    pub fn push(&mut self, at: Timestamp, value: f64, window_ms: i64) -> Option<f64> {
        if !value.is_finite() || self.samples.back().is_some_and(|&(t, _)| at < t) {
            return None;
        }
        self.samples.push_back((at, value));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| at.millis() - t.millis() > window_ms)
        {
            self.samples.pop_front();
        }
        if self.samples.len() > MAX_SAMPLES {
            // Thin the older half: keep every other one.
            let half = self.samples.len() / 2;
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i > half || i % 2 == 1
            });
        }
        let &(t0, v0) = self.samples.front()?;
        let span = at.millis() - t0.millis();
        if span <= 0 || span * 2 < window_ms {
            return None;
        }
        Some((value - v0) * HOUR_MS / span as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::at_minute as t;

    const WINDOW: i64 = 30 * 60_000;

    #[test]
    fn the_rise_per_hour_over_the_window() {
        let mut w = RateWindow::default();
        // 1 cm a minute: 60 cm/h, known once 15 minutes are covered.
        let rates: Vec<Option<f64>> = (0..=40)
            .map(|m| w.push(t(m), 100.0 + m as f64, WINDOW))
            .collect();
        assert!(rates[..15].iter().all(Option::is_none));
        for r in &rates[15..] {
            let r = r.expect("a rate");
            assert!((r - 60.0).abs() < 1e-9, "{r}");
        }
        // Falling: negative.
        let r = w.push(t(41), 90.0, WINDOW).expect("a rate");
        assert!(r < 0.0);
        // An older sample is ignored.
        assert_eq!(w.push(t(10), 500.0, WINDOW), None);
    }

    #[test]
    fn many_samples_are_thinned_not_grown() {
        let mut w = RateWindow::default();
        for s in 0..10_000i64 {
            w.push(Timestamp(s * 100), s as f64, 1_500_000);
        }
        assert!(w.samples.len() <= MAX_SAMPLES);
        // Still the rise from the oldest kept sample: 10 per second.
        let r = w
            .push(Timestamp(10_000 * 100), 10_000.0, 1_500_000)
            .expect("a rate");
        assert!((r - 36_000.0).abs() < 1e-6, "{r}");
    }
}
