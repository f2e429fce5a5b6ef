//! Pure sampling functions: percentage rolls and delay distributions, driven by a caller's
//! `fastrand::Rng` (seed it for reproducible tests).
//!
//! The distributions are a few lines each (inverse CDF, Box–Muller), so the crate does not pull
//! in `rand`/`rand_distr` next to the `fastrand` the workspace already uses.

use fastrand::Rng;
use std::time::Duration;

/// Largest delay ever injected, whatever the distribution's tail (one hour).
pub const ABSOLUTE_MAX_DELAY: Duration = Duration::from_secs(3600);

/// True with probability `percent / 100` (`percent` in [0, 100]; fractions such as 0.1 work).
pub fn roll(rng: &mut Rng, percent: f64) -> bool {
    // f64() is uniform in [0, 1): percent 100 always hits, percent 0 never does.
    percent > 0.0 && rng.f64() * 100.0 < percent
}

/// A standard normal variate (Box–Muller; one uniform pair per sample, no hidden state).
pub fn standard_normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.f64(); // (0, 1]: ln is finite
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A compiled delay distribution; parameters are in seconds.
#[derive(Clone, Debug, PartialEq)]
pub enum DelayDistribution {
    /// Always the same delay.
    Fixed(f64),
    /// Uniform on `[min, max]`.
    Uniform { min: f64, max: f64 },
    /// Normal; negative samples become 0.
    Normal { mean: f64, stddev: f64 },
    /// `exp(mu + sigma·Z)` seconds: median `exp(mu)`.
    LogNormal { mu: f64, sigma: f64 },
    /// Pareto type I: minimum `scale`, tail index `shape` (`P(X > x) = (scale/x)^shape`).
    Pareto { scale: f64, shape: f64 },
}

impl DelayDistribution {
    /// One raw sample in seconds (may be negative for `Normal`; not capped).
    pub fn sample_secs(&self, rng: &mut Rng) -> f64 {
        match *self {
            DelayDistribution::Fixed(s) => s,
            DelayDistribution::Uniform { min, max } => min + (max - min) * rng.f64(),
            DelayDistribution::Normal { mean, stddev } => mean + stddev * standard_normal(rng),
            DelayDistribution::LogNormal { mu, sigma } => (mu + sigma * standard_normal(rng)).exp(),
            DelayDistribution::Pareto { scale, shape } => {
                let u = 1.0 - rng.f64(); // (0, 1]
                scale * u.powf(-1.0 / shape)
            }
        }
    }

    /// One sample as a delay, clamped to `[0, cap]` (and to [`ABSOLUTE_MAX_DELAY`]).
    pub fn sample(&self, rng: &mut Rng, cap: Option<Duration>) -> Duration {
        let cap = cap.map_or(ABSOLUTE_MAX_DELAY, |c| c.min(ABSOLUTE_MAX_DELAY));
        let s = self.sample_secs(rng);
        if s.is_nan() || s <= 0.0 {
            return Duration::ZERO;
        }
        if s >= cap.as_secs_f64() {
            return cap;
        }
        Duration::from_secs_f64(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
    fn erf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let y = 1.0
            - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736)
                * t
                + 0.254_829_592)
                * t
                * (-x * x).exp();
        if x >= 0.0 { y } else { -y }
    }

    fn phi(z: f64) -> f64 {
        0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
    }

    fn cdf(d: &DelayDistribution, x: f64) -> f64 {
        match *d {
            DelayDistribution::Fixed(s) => f64::from(u8::from(x >= s)),
            DelayDistribution::Uniform { min, max } => ((x - min) / (max - min)).clamp(0.0, 1.0),
            DelayDistribution::Normal { mean, stddev } => phi((x - mean) / stddev),
            DelayDistribution::LogNormal { mu, sigma } => {
                if x <= 0.0 {
                    0.0
                } else {
                    phi((x.ln() - mu) / sigma)
                }
            }
            DelayDistribution::Pareto { scale, shape } => {
                if x < scale {
                    0.0
                } else {
                    1.0 - (scale / x).powf(shape)
                }
            }
        }
    }

    /// Kolmogorov–Smirnov statistic of `n` samples against the distribution's CDF.
    fn ks_statistic(d: &DelayDistribution, seed: u64, n: usize) -> f64 {
        let mut rng = Rng::with_seed(seed);
        let mut xs: Vec<f64> = (0..n).map(|_| d.sample_secs(&mut rng)).collect();
        xs.sort_by(f64::total_cmp);
        let nf = n as f64;
        xs.iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf(d, x);
                (f - i as f64 / nf)
                    .abs()
                    .max(((i + 1) as f64 / nf - f).abs())
            })
            .fold(0.0, f64::max)
    }

    /// Binomial acceptance band: mean ± 4.5 standard deviations.
    fn binomial_band(n: u64, p: f64) -> (f64, f64) {
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        (mean - 4.5 * sd, mean + 4.5 * sd)
    }

    #[test]
    fn percentages_stay_within_binomial_bounds() {
        for (percent, n) in [
            (0.1, 1_000_000u64),
            (1.0, 200_000),
            (5.0, 100_000),
            (50.0, 50_000),
            (99.9, 100_000),
        ] {
            let mut rng = Rng::with_seed(42);
            let hits = (0..n).filter(|_| roll(&mut rng, percent)).count() as f64;
            let (lo, hi) = binomial_band(n, percent / 100.0);
            assert!(
                (lo..=hi).contains(&hits),
                "{percent}%: {hits} hits of {n}, expected {lo:.0}..={hi:.0}"
            );
        }
    }

    #[test]
    fn zero_and_hundred_percent_are_exact() {
        let mut rng = Rng::with_seed(7);
        assert!((0..100_000).all(|_| roll(&mut rng, 100.0)));
        assert!((0..100_000).all(|_| !roll(&mut rng, 0.0)));
    }

    #[test]
    fn distributions_pass_kolmogorov_smirnov() {
        let n = 20_000;
        // Critical value at alpha = 0.001: 1.949 / sqrt(n).
        let critical = 1.949 / (n as f64).sqrt();
        let cases = [
            DelayDistribution::Uniform { min: 0.1, max: 0.3 },
            DelayDistribution::Normal {
                mean: 0.5,
                stddev: 0.05,
            },
            DelayDistribution::LogNormal {
                mu: 0.5f64.ln(),
                sigma: 0.5,
            },
            DelayDistribution::Pareto {
                scale: 0.05,
                shape: 1.5,
            },
        ];
        for (i, d) in cases.iter().enumerate() {
            let stat = ks_statistic(d, 1000 + i as u64, n);
            assert!(stat < critical, "{d:?}: D = {stat:.4} >= {critical:.4}");
        }
    }

    #[test]
    fn ks_rejects_a_wrong_distribution() {
        // Samples from median 500ms, tested against median 600ms: must be rejected.
        let n = 20_000;
        let mut rng = Rng::with_seed(3);
        let sampled = DelayDistribution::LogNormal {
            mu: 0.5f64.ln(),
            sigma: 0.5,
        };
        let claimed = DelayDistribution::LogNormal {
            mu: 0.6f64.ln(),
            sigma: 0.5,
        };
        let mut xs: Vec<f64> = (0..n).map(|_| sampled.sample_secs(&mut rng)).collect();
        xs.sort_by(f64::total_cmp);
        let d = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| (cdf(&claimed, x) - i as f64 / n as f64).abs())
            .fold(0.0, f64::max);
        assert!(d > 1.949 / (n as f64).sqrt());
    }

    #[test]
    fn quantiles_match_parameters() {
        let mut rng = Rng::with_seed(11);
        let n = 50_000;
        let quantile = |d: &DelayDistribution, rng: &mut Rng, q: f64| {
            let mut xs: Vec<f64> = (0..n).map(|_| d.sample_secs(rng)).collect();
            xs.sort_by(f64::total_cmp);
            xs[(q * n as f64) as usize]
        };
        // Log-normal: median = exp(mu); 84th percentile = median * e^sigma.
        let ln = DelayDistribution::LogNormal {
            mu: 0.5f64.ln(),
            sigma: 0.4,
        };
        let median = quantile(&ln, &mut rng, 0.5);
        assert!((median - 0.5).abs() < 0.01, "median {median}");
        let p84 = quantile(&ln, &mut rng, 0.8413);
        assert!((p84 - 0.5 * 0.4f64.exp()).abs() < 0.02, "p84 {p84}");
        // Pareto: median = scale * 2^(1/shape).
        let pa = DelayDistribution::Pareto {
            scale: 0.1,
            shape: 2.0,
        };
        let median = quantile(&pa, &mut rng, 0.5);
        assert!(
            (median - 0.1 * 2f64.sqrt()).abs() < 0.003,
            "pareto median {median}"
        );
        // Normal: mean and standard deviation.
        let no = DelayDistribution::Normal {
            mean: 0.2,
            stddev: 0.03,
        };
        let xs: Vec<f64> = (0..n).map(|_| no.sample_secs(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.2).abs() < 0.001, "mean {mean}");
        assert!((var.sqrt() - 0.03).abs() < 0.001, "sd {}", var.sqrt());
    }

    #[test]
    fn samples_are_clamped() {
        let mut rng = Rng::with_seed(5);
        let wide = DelayDistribution::Normal {
            mean: 0.0,
            stddev: 1.0,
        };
        let cap = Duration::from_millis(500);
        for _ in 0..10_000 {
            let d = wide.sample(&mut rng, Some(cap));
            assert!(d <= cap);
        }
        let heavy = DelayDistribution::Pareto {
            scale: 100.0,
            shape: 0.1,
        };
        for _ in 0..1000 {
            assert!(heavy.sample(&mut rng, None) <= ABSOLUTE_MAX_DELAY);
        }
        assert_eq!(
            DelayDistribution::Fixed(0.25).sample(&mut rng, None),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn same_seed_same_samples() {
        let d = DelayDistribution::LogNormal {
            mu: 0.0,
            sigma: 1.0,
        };
        let a: Vec<f64> = {
            let mut r = Rng::with_seed(9);
            (0..10).map(|_| d.sample_secs(&mut r)).collect()
        };
        let b: Vec<f64> = {
            let mut r = Rng::with_seed(9);
            (0..10).map(|_| d.sample_secs(&mut r)).collect()
        };
        assert_eq!(a, b);
    }

    proptest::proptest! {
        #[test]
        fn samples_stay_within_zero_and_the_cap(
            seed in proptest::prelude::any::<u64>(),
            a in 0.0001f64..100.0,
            b in 0.0001f64..10.0,
            cap_ms in 1u64..100_000,
            which in 0usize..5,
        ) {
            let d = match which {
                0 => DelayDistribution::Fixed(a),
                1 => DelayDistribution::Uniform { min: a, max: a + b },
                2 => DelayDistribution::Normal { mean: a, stddev: b },
                3 => DelayDistribution::LogNormal { mu: a.ln(), sigma: b },
                _ => DelayDistribution::Pareto { scale: a, shape: b },
            };
            let cap = Duration::from_millis(cap_ms);
            let mut rng = Rng::with_seed(seed);
            for _ in 0..50 {
                let s = d.sample(&mut rng, Some(cap));
                proptest::prop_assert!(s <= cap);
            }
        }
    }
}
