//! Pure estimators for the report: each a small function with its formula and
//! reference, checked by simulation (fixed seeds) in the tests below.
//!
//! Owns: intervals, tests and corrections. Must never read input, know about grades or
//! routes, or print: callers pass counts and sums, and get numbers back.
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

use super::model::Interval;

/// Two-sided confidence level of every interval in the report.
pub const CONFIDENCE: f64 = 0.95;

/// Standard normal quantile Φ⁻¹(p).
pub fn normal_quantile(p: f64) -> f64 {
    Normal::new(0.0, 1.0).expect("standard normal").inverse_cdf(p)
}

/// Student t quantile with `df` degrees of freedom; the normal quantile for df ≥ 1000.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if df >= 1000.0 || !df.is_finite() {
        return normal_quantile(p);
    }
    StudentsT::new(0.0, 1.0, df.max(1.0)).expect("t distribution").inverse_cdf(p)
}

/// z for a two-sided interval at `confidence` (1.96 at 0.95).
pub fn z_two_sided(confidence: f64) -> f64 {
    normal_quantile(0.5 + confidence / 2.0)
}

/// Running count, sum and sum of squares of a variable: enough for its mean and
/// sample variance. (Scores live in [-1, 1], so the naive formula loses nothing.)
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// Sample variance s² = (Σx² − n·x̄²)/(n − 1); None below 2 observations.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let mean = self.sum / n;
        Some(((self.sum_sq - n * mean * mean) / (n - 1.0)).max(0.0))
    }
}

/// Mean with its Student t interval: x̄ ± t_{n−1, 1−α/2} · s/√n.
/// None below 2 observations.
pub fn mean_interval(m: &Moments, confidence: f64) -> Option<Interval> {
    let mean = m.mean()?;
    let var = m.variance()?;
    let half = t_quantile(0.5 + confidence / 2.0, (m.n - 1) as f64) * (var / m.n as f64).sqrt();
    Some(Interval { estimate: mean, lower: mean - half, upper: mean + half })
}

/// Wilson score interval for a proportion (Wilson 1927, JASA 22:209; recommended by
/// Brown, Cai & DasGupta 2001, Stat. Sci. 16:101):
/// (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n). The estimate is p̂ itself.
pub fn wilson(successes: u64, n: u64, confidence: f64) -> Option<Interval> {
    if n == 0 {
        return None;
    }
    let z = z_two_sided(confidence);
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    // At 0 or n successes the bound is exactly 0 or 1; rounding must not move it.
    let lower = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let upper = if p == 1.0 { 1.0 } else { (centre + half).min(1.0) };
    Some(Interval { estimate: p, lower, upper })
}

/// p-values of the exact binomial sign test of H0: P(win) = ½ among non-ties
/// (Conover, *Practical Nonparametric Statistics*, §3.4). With W wins of n = wins + losses,
/// X ~ Bin(n, ½):
/// - `greater` = P(X ≥ W) (evidence that wins are more likely),
/// - `less` = P(X ≤ W),
/// - `two_sided` = min(1, 2·min(greater, less)).
///
/// Valid whatever the pairs' sampling weights: under H0 each non-tie is a fair coin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignTestP {
    pub greater: f64,
    pub less: f64,
    pub two_sided: f64,
}

pub fn sign_test(wins: u64, losses: u64) -> SignTestP {
    let n = wins + losses;
    if n == 0 {
        return SignTestP { greater: 1.0, less: 1.0, two_sided: 1.0 };
    }
    let bin = Binomial::new(0.5, n).expect("binomial");
    // P(X ≥ W) = P(X ≤ n − W) by symmetry: a CDF keeps its precision in the far tail
    // where 1 − CDF would round to 0.
    let greater = bin.cdf(n - wins);
    let less = bin.cdf(wins);
    SignTestP { greater, less, two_sided: (2.0 * greater.min(less)).min(1.0) }
}

/// Weighted sums for the Hájek ratio estimator of a mean under unequal sampling
/// probabilities: w = 1/π (inverse sampling probability), s the score.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WeightedSums {
    pub n: u64,
    /// Σw, Σw·s, Σw², Σw²·s, Σw²·s².
    pub w: f64,
    pub ws: f64,
    pub w2: f64,
    pub w2s: f64,
    pub w2s2: f64,
}

impl WeightedSums {
    pub fn add(&mut self, w: f64, s: f64) {
        self.n += 1;
        self.w += w;
        self.ws += w * s;
        self.w2 += w * w;
        self.w2s += w * w * s;
        self.w2s2 += w * w * s * s;
    }
}

/// Hájek estimator R̂ = Σw·s / Σw and its linearisation (sandwich) variance
/// V̂ = n/(n−1) · Σ w²(s − R̂)² / (Σw)² (Särndal, Swensson & Wretman 1992, *Model
/// Assisted Survey Sampling*, §5.6; the with-replacement approximation).
/// Σw²(s − R̂)² is expanded as Σw²s² − 2R̂Σw²s + R̂²Σw² so that it streams.
/// None below 2 observations.
pub fn hajek_variance(sums: &WeightedSums) -> Option<(f64, f64)> {
    if sums.n < 2 || sums.w <= 0.0 {
        return None;
    }
    let r = sums.ws / sums.w;
    let resid = (sums.w2s2 - 2.0 * r * sums.w2s + r * r * sums.w2).max(0.0);
    let n = sums.n as f64;
    Some((r, n / (n - 1.0) * resid / (sums.w * sums.w)))
}

/// The Hájek estimate with its interval R̂ ± t_{n−1} · √V̂ (see [`hajek_variance`]).
pub fn hajek(sums: &WeightedSums, confidence: f64) -> Option<Interval> {
    let (r, var) = hajek_variance(sums)?;
    let half = t_quantile(0.5 + confidence / 2.0, (sums.n - 1) as f64) * var.sqrt();
    Some(Interval { estimate: r, lower: r - half, upper: r + half })
}

/// Prediction-powered mean (Angelopoulos et al. 2023, *Science* 382:669), weighted for
/// unequal sampling: the judge's Hájek mean on all N graded pairs plus the Hájek mean of
/// the rectifier (human − judge) on the n labelled ones, θ̂ = R̂_judge + R̂_Δ, with variance
/// V̂_judge + V̂_Δ and a normal interval. With equal weights this is the paper's
/// θ̂ = Ȳ_judge + Δ̄, variance σ²_judge/N + σ²_Δ/n. None without 2 of each.
pub fn ppi_mean(judge_all: &WeightedSums, human_minus_judge: &WeightedSums, confidence: f64) -> Option<Interval> {
    let (rj, vj) = hajek_variance(judge_all)?;
    let (rd, vd) = hajek_variance(human_minus_judge)?;
    let theta = rj + rd;
    let half = z_two_sided(confidence) * (vj + vd).sqrt();
    Some(Interval { estimate: theta, lower: theta - half, upper: theta + half })
}

/// Benjamini–Hochberg adjusted p-values (Benjamini & Hochberg 1995, JRSS-B 57:289):
/// with p₍₁₎ ≤ … ≤ p₍ₘ₎, q₍ᵢ₎ = min_{j ≥ i} min(1, p₍ⱼ₎ · m / j). Rejecting every
/// hypothesis with q ≤ α controls the false discovery rate at α (under independence or
/// positive dependence). Returns the q-values in the input's order.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m as f64 / (rank + 1) as f64).min(1.0);
        q[i] = running;
    }
    q
}

/// Minimum detectable effect of a two-sided test at level α with the given power, for a
/// mean of n observations with standard deviation sd: (z_{1−α/2} + z_{power}) · sd/√n
/// (e.g. Bloom 1995, Evaluation Review 19:547). At α = 0.05 and 80% power the factor is 2.80.
pub fn minimum_detectable_effect(n: u64, sd: f64, alpha: f64, power: f64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    Some((normal_quantile(1.0 - alpha / 2.0) + normal_quantile(power)) * sd / (n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const DATA_SETS: usize = 1000;

    fn assert_coverage(covered: usize, what: &str) {
        let rate = covered as f64 / DATA_SETS as f64;
        assert!((0.93..=0.97).contains(&rate), "{what}: 95% interval covered the truth in {rate:.3} of {DATA_SETS} data sets");
    }

    #[test]
    fn quantiles_match_tables() {
        assert!((z_two_sided(0.95) - 1.959964).abs() < 1e-5);
        assert!((t_quantile(0.975, 10.0) - 2.228139).abs() < 1e-5);
        assert!((normal_quantile(0.8) - 0.841621).abs() < 1e-5);
    }

    #[test]
    fn wilson_matches_a_worked_example() {
        // Brown, Cai & DasGupta: x = 0 of n = 10 gives [0, 0.2775] at 95%.
        let i = wilson(0, 10, 0.95).unwrap();
        assert_eq!(i.lower, 0.0);
        assert!((i.upper - 0.2775).abs() < 1e-3, "{i:?}");
        let i = wilson(81, 263, 0.95).unwrap();
        assert!((i.lower - 0.2553).abs() < 1e-3 && (i.upper - 0.3662).abs() < 1e-3, "{i:?}");
        assert!(wilson(0, 0, 0.95).is_none());
    }

    #[test]
    fn sign_test_matches_binomial_tails() {
        // 9 wins of 10: P(X ≥ 9) = 11/1024.
        let p = sign_test(9, 1);
        assert!((p.greater - 11.0 / 1024.0).abs() < 1e-12);
        assert!((p.less - 1.0 + 1.0 / 1024.0).abs() < 1e-12);
        assert!((p.two_sided - 22.0 / 1024.0).abs() < 1e-12);
        // The far tail keeps its precision.
        assert!(sign_test(200, 0).greater > 0.0);
        assert_eq!(sign_test(0, 0).two_sided, 1.0);
    }

    #[test]
    fn benjamini_hochberg_matches_the_step_up_rule() {
        let q = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.20]);
        // sorted: 0.01·4/1 = .04, 0.03·4/2 = .06, 0.04·4/3 = .0533 → .0533 (monotone), 0.2·4/4 = .2
        let want = [0.04, 0.053333, 0.053333, 0.2];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{q:?}");
        }
        assert!(benjamini_hochberg(&[]).is_empty());
    }

    #[test]
    fn mde_is_2_8_standard_errors() {
        let mde = minimum_detectable_effect(100, 1.0, 0.05, 0.8).unwrap();
        assert!((mde - 0.2802).abs() < 1e-3, "{mde}");
        assert!(minimum_detectable_effect(0, 1.0, 0.05, 0.8).is_none());
    }

    #[test]
    fn wilson_covers_in_95_percent_of_simulated_data_sets() {
        let mut rng = StdRng::seed_from_u64(11);
        let (n, truth) = (150, 0.12);
        let covered = (0..DATA_SETS)
            .filter(|_| {
                let x = (0..n).filter(|_| rng.random_bool(truth)).count() as u64;
                wilson(x, n, CONFIDENCE).unwrap().contains(truth)
            })
            .count();
        assert_coverage(covered, "wilson");
    }

    /// A pairwise judge's score: mean of two verdicts, so in {-1, -½, 0, ½, 1}.
    fn pairwise_score(rng: &mut StdRng, p_win: f64, p_loss: f64) -> f64 {
        let verdict = |rng: &mut StdRng| {
            let u: f64 = rng.random();
            if u < p_win {
                1.0
            } else if u < p_win + p_loss {
                -1.0
            } else {
                0.0
            }
        };
        (verdict(rng) + verdict(rng)) / 2.0
    }

    #[test]
    fn mean_interval_covers_in_95_percent_of_simulated_data_sets() {
        let mut rng = StdRng::seed_from_u64(12);
        let (p_win, p_loss) = (0.35, 0.2);
        let truth = p_win - p_loss;
        let covered = (0..DATA_SETS)
            .filter(|_| {
                let mut m = Moments::default();
                for _ in 0..80 {
                    m.add(pairwise_score(&mut rng, p_win, p_loss));
                }
                mean_interval(&m, CONFIDENCE).unwrap().contains(truth)
            })
            .count();
        assert_coverage(covered, "mean");
    }

    /// A population of 20,000 requests in three strata of different size and mean,
    /// Poisson-sampled at very different rates per stratum (the rare one oversampled).
    struct Population {
        strata: Vec<(usize, f64, f64)>, // (size, p_win, p_loss)
    }

    impl Population {
        fn scenario() -> Self {
            Population { strata: vec![(15_000, 0.10, 0.10), (4_000, 0.15, 0.10), (1_000, 0.40, 0.05)] }
        }
        fn truth(&self) -> f64 {
            let total: usize = self.strata.iter().map(|s| s.0).sum();
            self.strata.iter().map(|&(n, w, l)| n as f64 * (w - l)).sum::<f64>() / total as f64
        }
        /// (Hájek sums, unweighted moments) of one sample.
        fn sample(&self, rng: &mut StdRng, rates: &[f64]) -> (WeightedSums, Moments) {
            let (mut ws, mut m) = (WeightedSums::default(), Moments::default());
            for (&(size, p_win, p_loss), &rate) in self.strata.iter().zip(rates) {
                for _ in 0..size {
                    if rng.random_bool(rate) {
                        let u: f64 = rng.random();
                        let s = if u < p_win { 1.0 } else if u < p_win + p_loss { -1.0 } else { 0.0 };
                        ws.add(1.0 / rate, s);
                        m.add(s);
                    }
                }
            }
            (ws, m)
        }
    }

    #[test]
    fn hajek_is_unbiased_and_covers_under_per_slice_oversampling() {
        let population = Population::scenario();
        let truth = population.truth();
        let rates = [0.02, 0.05, 0.40];
        let mut rng = StdRng::seed_from_u64(13);
        let (mut covered, mut hajek_sum, mut hajek_sq, mut plain_sum) = (0, 0.0, 0.0, 0.0);
        for _ in 0..DATA_SETS {
            let (ws, m) = population.sample(&mut rng, &rates);
            let i = hajek(&ws, CONFIDENCE).unwrap();
            covered += i.contains(truth) as usize;
            hajek_sum += i.estimate;
            hajek_sq += i.estimate * i.estimate;
            plain_sum += m.mean().unwrap();
        }
        assert_coverage(covered, "hajek");
        let k = DATA_SETS as f64;
        let mean = hajek_sum / k;
        let mc_se = ((hajek_sq / k - mean * mean) / k).sqrt();
        assert!((mean - truth).abs() < 3.0 * mc_se, "hajek mean {mean:.4} vs truth {truth:.4} (Monte Carlo se {mc_se:.4})");
        // The unweighted mean is pulled towards the oversampled stratum: the weighting matters.
        let plain = plain_sum / k;
        assert!(plain - truth > 10.0 * mc_se, "unweighted mean {plain:.4} should be biased upwards from {truth:.4}");
    }

    #[test]
    fn ppi_covers_and_removes_the_judge_bias_under_oversampling() {
        // Two strata sampled at 5% and 50%; the judge over-scores the counterfactual (it
        // agrees with the human 85% of the time, else says 0, and adds +0.1); humans label
        // 10% of the graded pairs.
        let mut rng = StdRng::seed_from_u64(14);
        let strata = [(8_000usize, 0.0f64, 0.05f64), (2_000, 0.4, 0.5)]; // (size, true mean, rate)
        let truth = (8_000.0 * 0.0 + 2_000.0 * 0.4) / 10_000.0;
        let (mut covered, mut judge_only_covered) = (0, 0);
        for _ in 0..DATA_SETS {
            let (mut judge, mut diff) = (WeightedSums::default(), WeightedSums::default());
            for &(size, mean, rate) in &strata {
                for _ in 0..size {
                    if !rng.random_bool(rate) {
                        continue;
                    }
                    let human = if rng.random_bool(0.5 + mean / 2.0) { 1.0 } else { -1.0 };
                    let agrees = if rng.random_bool(0.85) { human } else { 0.0 };
                    let judge_score = agrees + 0.1 + if rng.random_bool(0.5) { 0.05 } else { -0.05 };
                    judge.add(1.0 / rate, judge_score);
                    if rng.random_bool(0.1) {
                        diff.add(1.0 / rate, human - judge_score);
                    }
                }
            }
            covered += ppi_mean(&judge, &diff, CONFIDENCE).unwrap().contains(truth) as usize;
            judge_only_covered += hajek(&judge, CONFIDENCE).unwrap().contains(truth) as usize;
        }
        assert_coverage(covered, "ppi");
        assert!(judge_only_covered < DATA_SETS / 2, "the judge alone covered {judge_only_covered}: the bias should show");
    }

    #[test]
    fn sign_test_false_positive_rate_is_at_most_alpha_on_null_data() {
        let mut rng = StdRng::seed_from_u64(15);
        let rejected = (0..DATA_SETS)
            .filter(|_| {
                let (mut w, mut l) = (0, 0);
                for _ in 0..120 {
                    match rng.random_range(0..3) {
                        0 => w += 1,
                        1 => l += 1,
                        _ => {}
                    }
                }
                sign_test(w, l).greater <= 0.05
            })
            .count();
        assert!(rejected as f64 / DATA_SETS as f64 <= 0.05, "{rejected} of {DATA_SETS} null data sets rejected at 0.05");
        assert!(rejected > 10, "{rejected}: the test should not be wildly conservative");
    }

    #[test]
    fn benjamini_hochberg_false_flag_rate_on_null_families_is_at_most_q() {
        // 40 groups per data set, all null: BH at q = 0.05 flags anything in ≤ 5% of data sets.
        let mut rng = StdRng::seed_from_u64(16);
        let flagged = (0..DATA_SETS)
            .filter(|_| {
                let p: Vec<f64> = (0..40).map(|_| rng.random::<f64>()).collect();
                benjamini_hochberg(&p).iter().any(|&q| q <= 0.05)
            })
            .count();
        assert!(flagged as f64 / DATA_SETS as f64 <= 0.05 + 0.015, "{flagged} of {DATA_SETS}");
    }
}
