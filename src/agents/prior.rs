/*!
The supervised prior as a policy: a fixed map from the observation's SL triplet (docs/env-spec.md
§6: each supervised model's `P(up) - P(down)`, models MLP, LSTM, GRU) to logits over the 7 symbol
actions. The PPO trainer's KL term pulls the policy toward it (`ppo.kl_prior_coef`), and the warm
start fits the actor heads to it (`agent.warm_start_steps`, `train::warm_start`).

The map (docs/training.md, "KL term and warm start"):

```text
z        = (sl[0] + sl[1] + sl[2]) / 3                          the models' mean score, in [-1, 1]
logit[a] = hold_prior * [a == HOLD] + beta * z * TILT[a]
TILT     = HOLD 0, BUY_SMALL 0.5, BUY_MEDIUM 0.75, BUY_LARGE 1, SELL_PARTIAL -0.5, SELL_ALL -1,
           ADD_TO_WINNER 0.5
```

`beta` is `agent.prior_beta`, `hold_prior` the policy's own `agent.hold_prior` (so that with a
zero score the prior is the initial policy's HOLD-leaning distribution). A positive score favours
the larger buys, a negative one the larger sells; the trainer applies the environment's action
mask to the prior as to the policy, so illegal actions have prior probability 0.
*/

use candle_core::{D, DType, Tensor};

use crate::error::Error;

/// Each action's direction and size in the prior's logits (`TILT` in the module doc), in the
/// action order of docs/env-spec.md §4.
pub const ACTION_TILT: [f32; 7] = [0.0, 0.5, 0.75, 1.0, -0.5, -1.0, 0.5];

/// The score part of the prior's logits, `beta * z * TILT[a]` (`[R, 7]`), for `triplet: [R, 3]`
/// (without the HOLD bias: that part the policy's logits already carry).
pub fn score_logits(triplet: &Tensor, beta: f64) -> crate::Result<Tensor> {
    let (_, c) = triplet.dims2()?;
    if c != 3 {
        return Err(Error::new(
            crate::ErrorKind::Shape,
            format!("the SL triplet has {c} columns, expected 3"),
        ));
    }
    let z = (triplet.to_dtype(DType::F32)?.mean_keepdim(D::Minus1)? * beta)?; // [R, 1]
    let tilt = Tensor::from_slice(&ACTION_TILT, (1, ACTION_TILT.len()), triplet.device())?;
    Ok(z.broadcast_mul(&tilt)?)
}

/// The prior's logits `[R, 7]` for `triplet: [R, 3]` (the module doc's map).
pub fn prior_logits(triplet: &Tensor, beta: f64, hold_prior: f64) -> crate::Result<Tensor> {
    let mut bias = [0f32; 7];
    bias[0] = hold_prior as f32;
    let bias = Tensor::from_slice(&bias, (1, 7), triplet.device())?;
    Ok(score_logits(triplet, beta)?.broadcast_add(&bias)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_map_follows_the_documented_formula() -> crate::Result<()> {
        let t = Tensor::new(&[[0.3f32, 0.0, 0.3], [0.0, 0.0, 0.0]], &Device::Cpu)?;
        let l = prior_logits(&t, 5.0, 2.0)?.to_vec2::<f32>()?;
        // z = 0.2, beta z = 1
        let want: Vec<f32> = ACTION_TILT
            .iter()
            .enumerate()
            .map(|(a, &k)| k + if a == 0 { 2.0 } else { 0.0 })
            .collect();
        for (g, w) in l[0].iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{:?} vs {want:?}", l[0]);
        }
        assert_eq!(l[1], [2.0, 0., 0., 0., 0., 0., 0.]);
        assert!(score_logits(&Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?, 1.0).is_err());
        Ok(())
    }
}
