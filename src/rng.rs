/*!
Small deterministic random numbers, the same on every platform and on the GPU.

[`SplitMix64`] is a sequential generator (Steele, Lea & Flood 2014) used by the synthetic market
generator. [`hash2`] is its stateless, counter-based form: `hash2(key, counter)` gives independent
streams without shared state, which is what the device-side action sampler uses (`kernels/common.cuh`
implements the same function, and a test checks both agree).
*/

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stateless counter-based hash: the `counter`-th output of the stream `key`.
#[inline]
pub fn hash2(key: u64, counter: u64) -> u64 {
    mix64(mix64(key ^ GOLDEN).wrapping_add(counter.wrapping_mul(GOLDEN)))
}

/// A uniform f64 in [0, 1) from the top 53 bits.
#[inline]
pub fn to_unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Draw `draws + r` (counted from 0) of the [`SplitMix64`] stream started from `seed`, as
/// [`SplitMix64::uniform`] gives it: SplitMix64's d-th output is `mix64(seed + (d + 1) * GOLDEN)`,
/// a function of `d` alone, so the draws of a batch of rows can be taken in parallel and on a
/// device (`kernels/policy.cuh` `marl_stream_uniform` is the same function).
pub fn stream_uniform(seed: u64, draws: u64, r: u64) -> f64 {
    let d = draws.wrapping_add(r).wrapping_add(1);
    to_unit_f64(mix64(seed.wrapping_add(d.wrapping_mul(GOLDEN))))
}

/// Sequential SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A stream starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for a sub-stream, independent of the parent's future draws.
    pub fn fork(&self, stream: u64) -> Self {
        Self {
            state: hash2(self.state, stream),
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        to_unit_f64(self.next_u64())
    }

    /// Uniform integer in [0, n) (n > 0), by Lemire's multiply-shift (bias below 2^-32 for small n).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal by Box-Muller (one of the pair; simple and exact enough for simulation).
    #[inline]
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Student-t with `nu` degrees of freedom, scaled to unit variance (nu > 2): fat tails.
    pub fn student_t_unit(&mut self, nu: f64) -> f64 {
        // chi-square with integer-rounded dof as a sum of squared normals keeps this exact and simple.
        let k = nu.round().max(3.0) as usize;
        let chi2: f64 = (0..k).map(|_| self.normal().powi(2)).sum();
        let t = self.normal() / (chi2 / k as f64).sqrt();
        t * ((k as f64 - 2.0) / k as f64).sqrt()
    }

    /// Poisson-ish Bernoulli event with probability p.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_moments() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = SplitMix64::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        let ts: Vec<f64> = (0..n).map(|_| r.student_t_unit(4.0)).collect();
        let tvar = ts.iter().map(|x| x * x).sum::<f64>() / n as f64;
        assert!((tvar - 1.0).abs() < 0.1, "t var {tvar}");
    }

    #[test]
    fn stream_uniform_is_the_sequential_stream() {
        for seed in [0u64, 7, u64::MAX - 3, 0x9E37_79B9_7F4A_7C15] {
            let mut r = SplitMix64::new(seed);
            let seq: Vec<f64> = (0..1000).map(|_| r.uniform()).collect();
            for (d, &u) in seq.iter().enumerate() {
                assert_eq!(stream_uniform(seed, 0, d as u64), u);
            }
            for (draws, row) in [(0u64, 999u64), (400, 599), (999, 0)] {
                assert_eq!(
                    stream_uniform(seed, draws, row),
                    seq[(draws + row) as usize]
                );
            }
        }
    }

    #[test]
    fn hash2_streams_differ() {
        assert_ne!(hash2(1, 0), hash2(1, 1));
        assert_ne!(hash2(1, 0), hash2(2, 0));
        // known value pins the function: kernels/common.cuh must produce the same.
        assert_eq!(hash2(0, 0), mix64(mix64(GOLDEN)));
    }
}
