/*!
Warm start of the symbol agents' actor heads from the supervised prior (`agent.warm_start_steps`).

1. **Rollout from the prior.** Reset the training environment with the given seed and play
   `steps` steps of every scenario, each symbol's action sampled from the prior's distribution
   ([`agents::prior`](crate::agents::prior), under the environment's action mask) with a seeded
   stream; every observation met is kept (so the positions and portfolio states are those the
   prior's own trading produces).
2. **Least squares.** For every row, the actor's output layer reads `x` (the last hidden layer's
   activations, [`SymbolPolicy::actor_output_inputs`]) and the policy's logits are
   `x W + b + hold_prior * [a == HOLD]`. The target is the prior's score part
   `beta * z * TILT[a]` ([`prior::score_logits`]), so `W, b` are fitted to it by ridge-regularised
   least squares (`(A^T A + lambda I) [W; b] = A^T Y` with `A = [x, 1]`, `lambda = 1e-4 * trace(A^T
   A) / cols`, the bias unpenalised; solved by Cholesky in f64): one fit for a shared head, one per
   symbol otherwise. The hidden layers and the encoder keep their seeded initialisation.
3. The fitted `W, b` replace the output layer's variables; the policy's caches are cleared.

The environment is left wherever the rollout ended: the trainer resets it from its own seed
afterwards (`Ppo::new`). The report gives the rows fitted and the fraction of the targets'
variance the fit explains (`r2`; how well a linear read-out of the random hidden features can
carry `z`).
*/

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::trading::TradingEnv;
use super::train_env::TrainEnv;
use crate::agents::dist::{MaskedCategorical, sample_row};
use crate::agents::init::set_values;
use crate::agents::prior;
use crate::agents::{ActorCritic, ObsBatch, SymbolObs, SymbolPolicy};
use crate::error::{Error, Result};
use crate::rng::{SplitMix64, hash2};

/// What [`warm_start`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmStartReport {
    /// Steps of every scenario played with the prior.
    pub steps: usize,
    /// Rows (scenario-steps x symbols) the output layer was fitted on.
    pub rows: usize,
    /// Heads fitted (1 when shared, else one per symbol).
    pub heads: usize,
    /// `1 - SSE / SST` of the fit over all rows and actions (targets centred per action).
    pub r2: f64,
    /// Mean of `|z|`, the models' mean score, over the rows (0: the prior is flat).
    pub mean_abs_score: f64,
}

/// Observations of a rollout of the prior ([`prior_rollout`]).
#[derive(Debug, Clone)]
pub struct PriorRollout {
    /// The observations, all steps concatenated (units step-major, the reset's first).
    pub obs: SymbolObs,
    /// The action mask in force at each of those observations: `[units * S, A]` u8, row-major.
    pub masks: Vec<u8>,
}

/// Play `steps` steps of `env` with actions sampled from `policy`'s prior, seeded by `seed` (the
/// env is reset from it first); returns the observations met and their masks.
pub fn prior_rollout(
    policy: &SymbolPolicy,
    env: &mut TradingEnv,
    steps: usize,
    seed: u64,
) -> Result<PriorRollout> {
    let dev = policy.device().clone();
    let mut rng = SplitMix64::new(hash2(seed, 0x5752_4d53));
    let mut obs = env.reset(hash2(seed, 1))?;
    let (n, s, na) = (env.num_envs(), env.agents_per_env(), env.num_actions());
    let mut all = Vec::with_capacity(steps);
    let mut masks = Vec::with_capacity(steps * n * s * na);
    for _ in 0..steps {
        let logits = policy
            .prior_logits(&obs)?
            .ok_or_else(|| Error::invalid("the policy has no prior"))?;
        let m = env.action_mask().unwrap_or_else(|| vec![1; n * s * na]);
        let mask = Tensor::from_slice(&m, (n * s, na), &dev)?;
        masks.extend_from_slice(&m);
        let lp = MaskedCategorical::new(&logits, Some(&mask))?
            .log_probs()
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let actions: Vec<u32> = lp.iter().map(|r| sample_row(r, rng.uniform())).collect();
        let next = env.step(&actions)?.obs;
        all.push(std::mem::replace(&mut obs, next));
    }
    Ok(PriorRollout {
        obs: SymbolObs::concat(&all)?,
        masks,
    })
}

/// Fit the actor's output layer of `policy` to its prior on observations of a prior rollout of
/// `steps` steps of `env` (module doc). `steps` must be >= 1.
pub fn warm_start(
    policy: &SymbolPolicy,
    env: &mut TradingEnv,
    steps: usize,
    seed: u64,
) -> Result<WarmStartReport> {
    if steps == 0 {
        return Err(Error::invalid("warm start needs at least one step"));
    }
    let roll = prior_rollout(policy, env, steps, seed)?;
    let report = fit_output_layer(policy, &roll.obs)?;
    Ok(WarmStartReport { steps, ..report })
}

/// The least-squares fit of step 2 of the module doc on `obs` (`steps` is left 0).
pub fn fit_output_layer(policy: &SymbolPolicy, obs: &SymbolObs) -> Result<WarmStartReport> {
    let agent = policy.agent();
    let beta = agent.config().prior_beta;
    let x = policy.actor_output_inputs(obs)?.to_dtype(DType::F64)?; // [S, B, K]
    let (s, b, k) = x.dims3()?;
    let sl = crate::env::obs::SL_PROBS;
    let triplet = obs
        .dyn_obs
        .narrow(2, sl.start, sl.len())?
        .reshape((b * s, sl.len()))?;
    let y = prior::score_logits(&triplet, beta)?; // [B*S, A], rows scenario-major
    let na = y.dim(1)?;
    let y = y
        .reshape((b, s, na))?
        .transpose(0, 1)?
        .to_dtype(DType::F64)?
        .contiguous()?; // [S, B, A]
    let x = x.to_vec3::<f64>()?;
    let y = y.to_vec3::<f64>()?;
    let mean_abs_score = y
        .iter()
        .flatten()
        .map(|r| (r[3] / beta.max(1e-12)).abs())
        .sum::<f64>()
        / (s * b) as f64;

    let (w, bias) = agent.actor().output_layer();
    let heads = w.dim(0)?;
    if w.dims() != [heads, k, na] {
        return Err(Error::new(
            crate::ErrorKind::Shape,
            format!(
                "the actor's output layer is {:?}, expected [_, {k}, {na}]",
                w.dims()
            ),
        ));
    }
    let mut w_new = vec![0f32; heads * k * na];
    let mut b_new = vec![0f32; heads * na];
    let (mut sse, mut sst) = (0.0, 0.0);
    for h in 0..heads {
        let syms: Vec<usize> = if heads == 1 {
            (0..s).collect()
        } else {
            vec![h]
        };
        let (xr, yr) = (&x, &y);
        let rows: Vec<(&[f64], &[f64])> = syms
            .iter()
            .flat_map(|&sy| (0..b).map(move |r| (&xr[sy][r][..], &yr[sy][r][..])))
            .collect();
        let sol = ridge(&rows, k, na)?; // [(k + 1) x na], bias last
        for i in 0..k {
            for a in 0..na {
                w_new[(h * k + i) * na + a] = sol[i * na + a] as f32;
            }
        }
        for a in 0..na {
            b_new[h * na + a] = sol[k * na + a] as f32;
        }
        // Goodness of fit.
        let mut mean = vec![0.0; na];
        for (_, yr) in &rows {
            for a in 0..na {
                mean[a] += yr[a] / rows.len() as f64;
            }
        }
        for (xr, yr) in &rows {
            for a in 0..na {
                let pred = sol[k * na + a] + (0..k).map(|i| xr[i] * sol[i * na + a]).sum::<f64>();
                sse += (yr[a] - pred).powi(2);
                sst += (yr[a] - mean[a]).powi(2);
            }
        }
    }
    set_values(w, w_new)?;
    set_values(bias, b_new)?;
    policy.parameters_changed(true);
    Ok(WarmStartReport {
        steps: 0,
        rows: s * b,
        heads,
        r2: if sst > 0.0 { 1.0 - sse / sst } else { 0.0 },
        mean_abs_score,
    })
}

/// Ridge least squares of `y [R, na]` on `[x, 1]` (`x [R, k]`): `(k + 1) x na` coefficients,
/// the bias row last and unpenalised.
fn ridge(rows: &[(&[f64], &[f64])], k: usize, na: usize) -> Result<Vec<f64>> {
    let c = k + 1;
    let mut ata = vec![0.0; c * c];
    let mut aty = vec![0.0; c * na];
    let mut a = vec![0.0; c];
    for (xr, yr) in rows {
        a[..k].copy_from_slice(xr);
        a[k] = 1.0;
        for i in 0..c {
            for j in 0..c {
                ata[i * c + j] += a[i] * a[j];
            }
            for t in 0..na {
                aty[i * na + t] += a[i] * yr[t];
            }
        }
    }
    let trace: f64 = (0..k).map(|i| ata[i * c + i]).sum();
    let lambda = 1e-4 * trace / k.max(1) as f64 + 1e-9;
    for i in 0..k {
        ata[i * c + i] += lambda;
    }
    ata[k * c + k] += 1e-9;
    // Cholesky: ata = L L^T.
    let mut l = vec![0.0; c * c];
    for i in 0..c {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|m| l[i * c + m] * l[j * c + m]).sum();
            if i == j {
                let d = ata[i * c + i] - sum;
                if !(d > 0.0 && d.is_finite()) {
                    return Err(Error::invalid(
                        "warm start: the least-squares system is singular (no rows?)",
                    ));
                }
                l[i * c + i] = d.sqrt();
            } else {
                l[i * c + j] = (ata[i * c + j] - sum) / l[j * c + j];
            }
        }
    }
    let mut sol = vec![0.0; c * na];
    for t in 0..na {
        // L z = b, then L^T x = z.
        let mut z = vec![0.0; c];
        for i in 0..c {
            let sum: f64 = (0..i).map(|m| l[i * c + m] * z[m]).sum();
            z[i] = (aty[i * na + t] - sum) / l[i * c + i];
        }
        for i in (0..c).rev() {
            let sum: f64 = (i + 1..c).map(|m| l[m * c + i] * sol[m * na + t]).sum();
            sol[i * na + t] = (z[i] - sum) / l[i * c + i];
        }
    }
    Ok(sol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_an_exact_linear_map() {
        // y = 2 x0 - x1 + 0.5, and y2 = -y
        let xs: Vec<[f64; 2]> = (0..50)
            .map(|i| [(i as f64 * 0.37).sin(), (i as f64 * 0.91).cos()])
            .collect();
        let ys: Vec<[f64; 2]> = xs
            .iter()
            .map(|x| {
                let v = 2.0 * x[0] - x[1] + 0.5;
                [v, -v]
            })
            .collect();
        let rows: Vec<(&[f64], &[f64])> =
            xs.iter().zip(&ys).map(|(x, y)| (&x[..], &y[..])).collect();
        let sol = ridge(&rows, 2, 2).unwrap();
        let want = [2.0, -2.0, -1.0, 1.0, 0.5, -0.5];
        for (g, w) in sol.iter().zip(want) {
            assert!((g - w).abs() < 1e-3, "{sol:?}");
        }
    }
}
