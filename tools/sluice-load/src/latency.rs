//! Latency measurement without coordinated omission.
//!
//! At a fixed rate, message `i` of a producer is *intended* to be sent at
//! `start + i / rate`. If the generator or the broker stalls, messages are
//! created late; measuring from the moment they were actually created would
//! hide the stall (the "coordinated omission" of Gil Tene's talk). So every
//! message carries its intended time, and latencies are recorded twice:
//! corrected (from intended time) and uncorrected (from actual creation).
//! At max rate there is no schedule and the two coincide.
//!
//! Values are recorded in microseconds.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Highest latency a histogram tracks (1 hour in µs); larger values are
/// clamped and counted as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of every histogram (0.1% value resolution).
pub const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS).expect("valid bounds")
}

/// Unix microseconds from a monotonic clock anchored once at start, so
/// wall-clock steps during a run cannot distort latencies.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_unix_us: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let start_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros() as u64;
        Clock {
            start: Instant::now(),
            start_unix_us,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start_unix_us + self.start.elapsed().as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A fixed-rate send schedule: message `i` is intended at
/// `start_us + i * 1e6 / rate` (computed from `i`, not accumulated, so
/// rounding never drifts).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start_us: u64,
    /// Messages per second; 0 = no schedule (max rate).
    pub rate: f64,
    /// Where in its interval this producer's messages fall, a fraction in [0, 1): producer
    /// k of n is offset by k/n, so that together they send at the total rate, evenly. (All
    /// at phase 0, 1,000 producers at 1 msg/s each sent a burst of 1,000 once a second,
    /// and the latency measured was the burst's.)
    pub phase: f64,
}

impl Schedule {
    pub fn intended_us(&self, i: u64) -> Option<u64> {
        (self.rate > 0.0)
            .then(|| self.start_us + ((i as f64 + self.phase) * 1e6 / self.rate) as u64)
    }
}

/// One latency measured both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub corrected_us: u64,
    pub uncorrected_us: u64,
}

/// Latency of a message intended at `intended_us`, created at `created_us`
/// (>= intended), completed at `done_us`.
pub fn sample(intended_us: u64, created_us: u64, done_us: u64) -> Sample {
    assert!(created_us >= intended_us);
    Sample {
        corrected_us: done_us.saturating_sub(intended_us),
        uncorrected_us: done_us.saturating_sub(created_us),
    }
}

/// A corrected/uncorrected histogram pair.
#[derive(Debug, Clone)]
pub struct LatencyPair {
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
}

impl LatencyPair {
    pub fn new() -> LatencyPair {
        LatencyPair {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
        }
    }

    pub fn record(&mut self, s: Sample) {
        self.corrected
            .saturating_record(s.corrected_us.clamp(1, LATENCY_US_MAX));
        self.uncorrected
            .saturating_record(s.uncorrected_us.clamp(1, LATENCY_US_MAX));
    }

    pub fn add(&mut self, other: &LatencyPair) {
        self.corrected.add(&other.corrected).expect("same bounds");
        self.uncorrected
            .add(&other.uncorrected)
            .expect("same bounds");
    }

    pub fn reset(&mut self) {
        self.corrected.reset();
        self.uncorrected.reset();
    }
}

impl Default for LatencyPair {
    fn default() -> Self {
        LatencyPair::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulate a producer at 1000 msgs/s whose sends complete in 100 µs,
    /// except that the system stalls for 1 s at t = 5 s. A generator that
    /// waits for the stall sends the backlog late (then drains it at 10
    /// messages per ms); measuring from creation shows one slow message,
    /// measuring from the intended time shows the ~1100 that were delayed.
    #[test]
    fn stall_is_visible_only_when_corrected() {
        let sched = Schedule {
            start_us: 1_000_000,
            rate: 1000.0,
            phase: 0.0,
        };
        let service_us = 100;
        let stall_from = sched.start_us + 5_000_000;
        let stall_us = 1_000_000;
        let mut lat = LatencyPair::new();
        // Closed-loop generator with one request in flight: it creates the
        // next message when both due and the previous one completed.
        let mut free_at = 0u64;
        for i in 0..10_000u64 {
            let intended = sched.intended_us(i).unwrap();
            let created = intended.max(free_at);
            let mut done = created + service_us;
            if created <= stall_from && done > stall_from {
                done = stall_from + stall_us + service_us;
            }
            lat.record(sample(intended, created, done));
            free_at = done;
        }
        let c = &lat.corrected;
        let u = &lat.uncorrected;
        assert_eq!(c.len(), 10_000);
        // Uncorrected: one message saw the stall, so p99 and even p99.9
        // look like the 100 µs service time.
        assert!(
            u.value_at_quantile(0.99) <= 1_100,
            "{}",
            u.value_at_quantile(0.99)
        );
        assert!(u.value_at_quantile(0.999) <= 1_100);
        assert!(u.max() >= 1_000_000);
        // Corrected: the message intended k ms into the stall completes
        // after 1000 - 0.9 k ms, so ~1108 of 10000 exceed 2 ms.
        let over_2ms = c
            .iter_recorded()
            .filter(|v| v.value_iterated_to() > 2_000)
            .map(|v| v.count_at_value())
            .sum::<u64>();
        assert!((1_000..=1_200).contains(&over_2ms), "{over_2ms}");
        let p95 = c.value_at_quantile(0.95);
        assert!((450_000..650_000).contains(&p95), "{p95}");
        assert!(c.value_at_quantile(0.99) >= 800_000);
        assert!(c.value_at_quantile(0.5) <= 1_100);
    }

    #[test]
    fn schedule_does_not_drift() {
        let s = Schedule {
            start_us: 0,
            rate: 3.0,
            phase: 0.0,
        };
        assert_eq!(s.intended_us(3_000_000), Some(1_000_000_000_000));
        assert_eq!(
            Schedule {
                start_us: 0,
                rate: 0.0,
                phase: 0.0,
            }
            .intended_us(5),
            None
        );
        // Producer 1 of 4 at 10 msgs/s: a quarter of its 100 ms interval later.
        let p = Schedule {
            start_us: 0,
            rate: 10.0,
            phase: 0.25,
        };
        assert_eq!(p.intended_us(0), Some(25_000));
        assert_eq!(p.intended_us(10), Some(1_025_000));
    }

    #[test]
    fn clock_is_monotonic_unix_micros() {
        let c = Clock::new();
        let a = c.now_us();
        let b = c.now_us();
        assert!(b >= a);
        assert!(a > 1_600_000_000_000_000);
    }
}
