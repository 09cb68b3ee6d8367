//! The deterministic sampling decision.
//!
//! `h = sha256(salt || 0x00 || sampling_key)`, the first 8 bytes as a big-endian
//! u64; a request is sampled when `h < floor(rate × 2^64)`. Every replica with
//! the same salt decides the same way, a higher rate keeps every key a lower rate
//! sampled (nested samples), and a new salt draws an independent sample.
//!
//! Control pairs: of the sampled requests, those with
//! `sha256(salt || "/control" || 0x00 || request_id) < floor(control_rate × 2^64)`
//! are sent again to the route that was taken (kind `CONTROL`), an independent draw
//! per request, so a judge comparing the two answers measures its own noise.
//!
//! Pure: no I/O, no clock, no randomness.

use sha2::{Digest, Sha256};

use crate::config::{SamplingConfig, SamplingRule};

/// What the sampler decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub sampled: bool,
    /// The probability that applied; the record's weight is `1 / rate`.
    pub rate: f64,
}

#[derive(Debug, Clone)]
pub struct Sampler {
    salt: Vec<u8>,
    control_salt: Vec<u8>,
    default_rate: f64,
    control_rate: f64,
    rules: Vec<SamplingRule>,
}

impl Sampler {
    pub fn new(config: &SamplingConfig) -> Self {
        Self {
            salt: config.salt.as_bytes().to_vec(),
            control_salt: format!("{}/control", config.salt).into_bytes(),
            default_rate: config.default_rate,
            control_rate: config.control_rate,
            rules: config.rules.clone(),
        }
    }

    /// Whether a sampled request becomes a control pair (shadowed to the route taken).
    pub fn is_control(&self, request_id: &str) -> bool {
        below(hash(&self.control_salt, request_id), self.control_rate)
    }

    /// The rate for a slice and route: the first matching rule, else the default.
    pub fn rate_for(&self, slice: &str, route_taken: &str) -> f64 {
        self.rules
            .iter()
            .find(|r| {
                r.slice.as_deref().is_none_or(|s| s == slice) && r.route_taken.as_deref().is_none_or(|t| t == route_taken)
            })
            .map_or(self.default_rate, |r| r.rate)
    }

    pub fn decide(&self, sampling_key: &str, slice: &str, route_taken: &str) -> Decision {
        let rate = self.rate_for(slice, route_taken);
        Decision { sampled: below(hash(&self.salt, sampling_key), rate), rate }
    }
}

/// The first 8 bytes of `sha256(salt || 0x00 || key)`, big-endian.
pub fn hash(salt: &[u8], key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(salt);
    h.update([0u8]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("sha256 is 32 bytes"))
}

/// `floor(rate × 2^64)`, as u128 so that rate 1.0 (2^64) is representable.
pub fn threshold(rate: f64) -> u128 {
    if rate <= 0.0 || rate.is_nan() {
        return 0;
    }
    if rate >= 1.0 {
        return 1u128 << 64;
    }
    // rate × 2^64 is exact in f64 (a power-of-two scale), and below 2^64 here.
    (rate * 18_446_744_073_709_551_616.0).floor() as u128
}

fn below(h: u64, rate: f64) -> bool {
    u128::from(h) < threshold(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(rate: f64, salt: &str) -> Sampler {
        Sampler::new(&SamplingConfig { salt: salt.into(), default_rate: rate, control_rate: 0.0, rules: vec![] })
    }

    #[test]
    fn control_is_an_independent_fraction_of_requests() {
        let s = Sampler::new(&SamplingConfig { salt: "s".into(), default_rate: 0.5, control_rate: 0.2, rules: vec![] });
        let n = 20_000;
        let (mut control, mut both) = (0, 0);
        for i in 0..n {
            let key = format!("req-{i}");
            let c = s.is_control(&key);
            control += usize::from(c);
            both += usize::from(c && s.decide(&key, "", "fast").sampled);
        }
        // Binomial(20000, 0.2): sd ≈ 57; independence: P(control and sampled) = 0.1, sd ≈ 42.
        assert!((control as i64 - 4000).abs() < 5 * 57, "control fraction {control}/{n}");
        assert!((both as i64 - 2000).abs() < 5 * 42, "control is not independent of sampling: {both}/{n}");
        let off = Sampler::new(&SamplingConfig { salt: "s".into(), default_rate: 0.5, control_rate: 0.0, rules: vec![] });
        assert!((0..1000).all(|i| !off.is_control(&format!("req-{i}"))), "control_rate 0 never controls");
    }

    #[test]
    fn hash_matches_the_documented_formula() {
        // Test vector from an independent implementation, so other languages can check theirs:
        // python3 -c "import hashlib; print(int.from_bytes(hashlib.sha256(b'untaken\x00req-1').digest()[:8],'big'))"
        assert_eq!(hash(b"untaken", "req-1"), 11_723_802_767_080_275_867);
        assert_ne!(hash(b"untaken", "req-1"), hash(b"untaken", "req-2"));
        // The separator matters: ("ab","c") and ("a","bc") must differ.
        assert_ne!(hash(b"ab", "c"), hash(b"a", "bc"));
    }

    #[test]
    fn threshold_edges() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), 1u128 << 64);
        assert_eq!(threshold(0.5), 1u128 << 63);
        assert!(below(u64::MAX, 1.0));
        assert!(!below(0, 0.0));
        assert!(below(0, 1e-18));
    }

    #[test]
    fn deterministic_across_instances() {
        let a = sampler(0.3, "s");
        let b = sampler(0.3, "s");
        for i in 0..1000 {
            let k = format!("k{i}");
            assert_eq!(a.decide(&k, "", "fast"), b.decide(&k, "", "fast"));
        }
    }

    #[test]
    fn samples_are_nested_as_rate_rises() {
        let rates = [0.01, 0.05, 0.1, 0.3, 0.7, 1.0];
        for i in 0..20_000 {
            let k = format!("user-{i}");
            let mut was = false;
            for r in rates {
                let now = sampler(r, "nest").decide(&k, "", "").sampled;
                assert!(!was || now, "key {k} sampled at a lower rate but not at {r}");
                was = now;
            }
        }
    }

    /// The sampled count is Binomial(n, p): it must fall within 5 standard deviations.
    #[test]
    fn sampled_fraction_within_statistical_bounds() {
        let n = 100_000;
        for p in [0.01, 0.1, 0.5] {
            let s = sampler(p, "fraction");
            let hits = (0..n).filter(|i| s.decide(&format!("req-{i}"), "", "").sampled).count() as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            let dev = (hits - n as f64 * p).abs();
            assert!(dev < 5.0 * sd, "rate {p}: {hits} of {n} sampled, {dev} from expected, sd {sd}");
        }
    }

    /// With independent salts, P(both) = p², so the overlap must be near n·p².
    #[test]
    fn different_salts_are_independent() {
        let n = 100_000;
        let p = 0.2;
        let (a, b) = (sampler(p, "salt-a"), sampler(p, "salt-b"));
        let both = (0..n)
            .filter(|i| {
                let k = format!("req-{i}");
                a.decide(&k, "", "").sampled && b.decide(&k, "", "").sampled
            })
            .count() as f64;
        let q = p * p;
        let sd = (n as f64 * q * (1.0 - q)).sqrt();
        assert!((both - n as f64 * q).abs() < 5.0 * sd, "overlap {both}, expected {}", n as f64 * q);
    }

    #[test]
    fn first_matching_rule_wins() {
        let s = Sampler::new(&SamplingConfig {
            salt: "r".into(),
            default_rate: 0.01,
            control_rate: 0.0,
            rules: vec![
                SamplingRule { slice: Some("ood".into()), route_taken: Some("fast".into()), rate: 0.9 },
                SamplingRule { slice: Some("ood".into()), route_taken: None, rate: 0.5 },
                SamplingRule { slice: None, route_taken: Some("reasoning".into()), rate: 0.2 },
            ],
        });
        assert_eq!(s.rate_for("ood", "fast"), 0.9);
        assert_eq!(s.rate_for("ood", "reasoning"), 0.5);
        assert_eq!(s.rate_for("chat", "reasoning"), 0.2);
        assert_eq!(s.rate_for("chat", "fast"), 0.01);
        assert_eq!(s.decide("k", "ood", "fast").rate, 0.9);
    }
}
