//! HdrHistogram's percentile-distribution text format (`.hgrm`), as written
//! by Java's `Histogram.outputPercentileDistribution(out, 5, 1000.0)` and
//! read by HistogramLogProcessor's plotter: values in milliseconds (our
//! histograms hold microseconds, scaled by 1000), five ticks per half
//! distance, then a footer with mean, standard deviation, max and count.
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!        0.105 0.000000000000          1           1.00
//!        ...
//!       12.345 1.000000000000      10000
//! #[Mean    =        0.150, StdDeviation   =        0.020]
//! #[Max     =       12.345, Total count    =        10000]
//! #[Buckets =           22, SubBuckets     =         2048]
//! ```

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Ticks per half distance (HdrHistogram's default for this output).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Microseconds per output unit (milliseconds).
pub const SCALE: f64 = 1000.0;

/// One row of the distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Latency in milliseconds.
    pub value_ms: f64,
    /// Percentile as a fraction in [0, 1].
    pub percentile: f64,
    pub total_count: u64,
}

/// A parsed `.hgrm` file. The reader checks our writer in tests and reads
/// HdrHistogram's own output; the tool itself only writes.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    pub points: Vec<Point>,
    pub mean_ms: f64,
    pub stddev_ms: f64,
    pub max_ms: f64,
    pub total_count: u64,
}

/// The rows of `h`'s percentile distribution (values in ms).
pub fn points(h: &Histogram<u64>) -> Vec<Point> {
    let mut total = 0u64;
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|v| {
            total += v.count_since_last_iteration();
            Point {
                value_ms: h.highest_equivalent(v.value_iterated_to()) as f64 / SCALE,
                percentile: v.quantile_iterated_to(),
                total_count: total,
            }
        })
        .collect()
}

/// HdrHistogram's bucket count for our bounds (as Java computes it).
fn bucket_counts(h: &Histogram<u64>) -> (u32, u32) {
    let sub_bucket_count = 2u64
        .pow(((2.0 * 10f64.powi(i32::from(h.sigfig()))).log2()).ceil() as u32)
        .max(2);
    let mut smallest_untrackable = sub_bucket_count; // lowest = 1, unit magnitude 0
    let mut buckets = 1;
    while smallest_untrackable <= h.high() {
        if smallest_untrackable > u64::MAX / 2 {
            buckets += 1;
            break;
        }
        smallest_untrackable <<= 1;
        buckets += 1;
    }
    (buckets, sub_bucket_count as u32)
}

/// Render `h` (µs) as `.hgrm` text (ms).
pub fn write(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let digits = usize::from(h.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )
    .expect("write to String");
    for p in points(h) {
        if p.percentile < 1.0 {
            writeln!(
                out,
                "{:>12.digits$} {:>2.12} {:>10} {:>14.2}",
                p.value_ms,
                p.percentile,
                p.total_count,
                1.0 / (1.0 - p.percentile)
            )
        } else {
            writeln!(
                out,
                "{:>12.digits$} {:>2.12} {:>10}",
                p.value_ms, p.percentile, p.total_count
            )
        }
        .expect("write to String");
    }
    let (buckets, sub_buckets) = bucket_counts(h);
    let (mean, stddev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stddev:>12.digits$}]"
    )
    .expect("write to String");
    writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    )
    .expect("write to String");
    writeln!(
        out,
        "#[Buckets = {buckets:>12}, SubBuckets     = {sub_buckets:>12}]"
    )
    .expect("write to String");
    out
}

/// Parse `.hgrm` text (ours or HdrHistogram's).
#[cfg_attr(not(test), allow(dead_code))]
pub fn parse(text: &str) -> Result<Distribution> {
    let mut d = Distribution {
        points: Vec::new(),
        mean_ms: 0.0,
        stddev_ms: 0.0,
        max_ms: 0.0,
        total_count: 0,
    };
    let footer_number = |line: &str, key: &str| -> Option<f64> {
        let at = line.find(key)? + key.len();
        let rest = line[at..].trim_start().strip_prefix('=')?;
        rest.split([',', ']']).next()?.trim().parse().ok()
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Value") {
            continue;
        }
        if line.starts_with("#[") {
            if let Some(v) = footer_number(line, "Mean") {
                d.mean_ms = v;
            }
            if let Some(v) = footer_number(line, "StdDeviation") {
                d.stddev_ms = v;
            }
            if let Some(v) = footer_number(line, "Max") {
                d.max_ms = v;
            }
            if let Some(v) = footer_number(line, "Total count") {
                d.total_count = v as u64;
            }
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 3 {
            bail!("line {}: expected at least 3 columns: {line:?}", n + 1);
        }
        let parse_f = |s: &str| -> Result<f64> {
            s.parse()
                .with_context(|| format!("line {}: bad number {s:?}", n + 1))
        };
        d.points.push(Point {
            value_ms: parse_f(cols[0])?,
            percentile: parse_f(cols[1])?,
            total_count: cols[2]
                .parse()
                .with_context(|| format!("line {}: bad count", n + 1))?,
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::new_histogram;
    use crate::payload::Rng;

    #[test]
    fn round_trip_is_monotonic_and_matches() {
        let mut h = new_histogram();
        let mut rng = Rng::new(9);
        for _ in 0..100_000 {
            // Log-normal-ish: mostly ~200 µs with a long tail.
            let u = rng.next_f64();
            let v = (200.0 * (1.0 / (1.0 - u)).powf(0.7)) as u64;
            h.record(v.max(1)).unwrap();
        }
        let text = write(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        let d = parse(&text).unwrap();
        assert_eq!(d.total_count, 100_000);
        assert!(d.points.len() > 50);
        for w in d.points.windows(2) {
            assert!(w[1].value_ms >= w[0].value_ms, "{w:?}");
            assert!(w[1].percentile >= w[0].percentile, "{w:?}");
            assert!(w[1].total_count >= w[0].total_count, "{w:?}");
        }
        let last = d.points.last().unwrap();
        assert_eq!(last.percentile, 1.0);
        assert_eq!(last.total_count, 100_000);
        assert!((d.max_ms - h.max() as f64 / 1000.0).abs() < 0.001);
        assert!((d.mean_ms - h.mean() / 1000.0).abs() < 0.001);
        // Each row agrees with the histogram at its percentile.
        for row in d.points.iter().filter(|p| p.percentile < 1.0) {
            let v = h.value_at_quantile(row.percentile) as f64 / 1000.0;
            assert!(
                (row.value_ms - v).abs() <= v * 0.01 + 0.001,
                "{row:?} vs {v}"
            );
        }
    }

    #[test]
    fn parses_java_output() {
        // Excerpt of HdrHistogram (Java) output.
        let text = "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
            \x20     0.053 0.000000000000          1           1.00\n\
            \x20     0.071 0.500000000000       5124           2.00\n\
            \x20     8.191 1.000000000000      10000\n\
            #[Mean    =        0.087, StdDeviation   =        0.193]\n\
            #[Max     =        8.184, Total count    =        10000]\n\
            #[Buckets =           22, SubBuckets     =         2048]\n";
        let d = parse(text).unwrap();
        assert_eq!(d.points.len(), 3);
        assert_eq!(d.points[1].total_count, 5124);
        assert_eq!(d.total_count, 10000);
        assert_eq!(d.max_ms, 8.184);
        assert_eq!(d.stddev_ms, 0.193);
    }

    #[test]
    fn empty_histogram_writes_footer_only() {
        let d = parse(&write(&new_histogram())).unwrap();
        assert!(d.points.is_empty());
        assert_eq!(d.total_count, 0);
    }
}
