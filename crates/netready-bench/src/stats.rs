//! Exact statistics from raw samples, and the Mann-Whitney U test (latency is not normal, so
//! comparisons use ranks, not means).

/// Summary of a sample set, seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Minimum.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// Nearest-rank percentile `p` (0–100) of ascending samples; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // The epsilon keeps 0.999 * 1000 from rounding up past rank 999.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarizes samples (any order).
pub fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Summary {
        n: s.len(),
        min: s.first().copied().unwrap_or(f64::NAN),
        mean: if s.is_empty() {
            f64::NAN
        } else {
            s.iter().sum::<f64>() / s.len() as f64
        },
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        p999: percentile(&s, 99.9),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

impl Summary {
    /// A quantile by name (`p50`, `p90`, `p99`, `p99.9`, `max`, `mean`).
    pub fn get(&self, q: &str) -> Option<f64> {
        Some(match q {
            "p50" => self.p50,
            "p90" => self.p90,
            "p99" => self.p99,
            "p99.9" => self.p999,
            "max" => self.max,
            "mean" => self.mean,
            _ => return None,
        })
    }
}

/// One-sided Mann-Whitney U test that `new` tends to be larger than `base`: the p-value, by
/// the normal approximation with tie correction (fine from ~10 samples per side).
pub fn mann_whitney_greater(base: &[f64], new: &[f64]) -> f64 {
    let (n1, n2) = (base.len() as f64, new.len() as f64);
    if base.is_empty() || new.is_empty() {
        return 1.0;
    }
    let mut all: Vec<(f64, bool)> = base
        .iter()
        .map(|x| (*x, false))
        .chain(new.iter().map(|x| (*x, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks over ties.
    let n = all.len();
    let mut ranks = vec![0.0; n];
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in ranks.iter_mut().take(j + 1).skip(i) {
            *k = r;
        }
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let r_new: f64 = all
        .iter()
        .zip(&ranks)
        .filter(|((_, is_new), _)| *is_new)
        .map(|(_, r)| r)
        .sum();
    let u_new = r_new - n2 * (n2 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let nn = n1 + n2;
    let var = n1 * n2 / 12.0 * ((nn + 1.0) - tie_term / (nn * (nn - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    // Continuity correction.
    let z = (u_new - mean - 0.5) / var.sqrt();
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().sf(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!(
            (s.p50, s.p90, s.p99, s.p999, s.max),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(s.mean, 500.5);
    }

    #[test]
    fn mann_whitney_tells_shift_from_noise() {
        let base: Vec<f64> = (0..50).map(|i| 10.0 + (i % 7) as f64).collect();
        let same: Vec<f64> = (0..50).map(|i| 10.0 + ((i + 3) % 7) as f64).collect();
        let shifted: Vec<f64> = base.iter().map(|x| x + 3.0).collect();
        assert!(mann_whitney_greater(&base, &same) > 0.05);
        assert!(mann_whitney_greater(&base, &shifted) < 0.001);
        assert!(mann_whitney_greater(&shifted, &base) > 0.99, "one-sided");
    }
}
