/*!
Checkpoints: a directory with

- `model.safetensors`: the policy's parameters, named as in its `VarMap` (loadable with
  `VarMap::load` or a `VarBuilder`);
- `optimizer.safetensors`: AdamW's moments `m.<param>` and `v.<param>`;
- `env.bin`: the environment's state (`TrainEnv::save_state`);
- `state.json`: [`TrainState`]: the PPO config, the policy config, the iteration and step counters,
  the optimizer step and the positions of the random streams. Written last.

Every file is written atomically: to a temporary file in the same directory, synced, then renamed
over the old one, so a crash leaves either the old or the new file, never a torn one.

Loading checks every tensor against the shapes the current model needs: a mismatch is an
error of kind [`ErrorKind::Shape`](crate::ErrorKind::Shape) that names the tensor, the expected and
the stored shape ([`Error::shape_mismatch`]); a missing or extra tensor is an
[`ErrorKind::Checkpoint`](crate::ErrorKind::Checkpoint) error naming it.
*/

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::config::PpoConfig;
use super::train_env::RngState;
use crate::Result;
use crate::agents::init::named_vars;
use crate::error::Error;

/// The policy's parameters.
pub const MODEL_FILE: &str = "model.safetensors";
/// AdamW's moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The environment's state.
pub const ENV_FILE: &str = "env.bin";
/// Counters, configs and random streams ([`TrainState`]); written last.
pub const STATE_FILE: &str = "state.json";

/// Version of the checkpoint layout (2: `num_envs` is stored beside the PPO config, not in it; the
/// policy config of a symbol agent is an `AgentSpec`).
pub const FORMAT: u32 = 2;

/// Everything besides tensors that a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// [`FORMAT`] of the checkpoint.
    pub format: u32,
    /// The hyperparameters of the run.
    pub ppo: PpoConfig,
    /// Parallel environments of the run (the environment's, not a hyperparameter).
    pub num_envs: usize,
    /// The policy's configuration, as given to the trainer (rebuild the policy from it).
    pub policy: serde_json::Value,
    /// Completed iterations.
    pub iteration: usize,
    /// Environment steps so far.
    pub global_step: u64,
    /// AdamW's step count.
    pub adam_step: u64,
    /// Position of the action-sampling stream.
    pub rng_action: RngState,
    /// Position of the minibatch-shuffling stream.
    pub rng_shuffle: RngState,
    /// The done flags that came with the environment's current observation.
    pub next_done: Vec<bool>,
    /// Reward normalisation state (`ppo.norm_reward`).
    #[serde(default)]
    pub reward_norm: Option<super::reward_norm::RewardNorm>,
}

/// Write named tensors as safetensors to `path` atomically.
pub fn save_tensors_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    crate::atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(&map, tmp).map_err(|e| {
            Error::checkpoint(path, format!("cannot write tensors: {e}")).with_source(e)
        })
    })
}

/// Load a safetensors file and check it holds exactly `expected` (name, shape) tensors.
pub fn load_tensors_checked(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        Error::checkpoint(path, format!("not a valid safetensors file: {e}")).with_source(e)
    })?;
    for (name, shape) in expected {
        match tensors.get(name) {
            None => {
                return Err(Error::checkpoint(
                    path,
                    format!("no tensor `{name}` (the config needs one of shape {shape:?})"),
                ));
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::shape(origin, name, shape, t.dims()));
            }
            Some(_) => {}
        }
    }
    if tensors.len() != expected.len() {
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !expected.iter().any(|(n, _)| n == *k))
            .collect();
        extra.sort();
        return Err(Error::checkpoint(
            path,
            format!("tensor `{}` is not part of the configured model", extra[0]),
        ));
    }
    Ok(tensors)
}

/// The (name, shape) of every variable of `varmap`, sorted by name.
pub fn varmap_shapes(varmap: &VarMap) -> Vec<(String, Vec<usize>)> {
    named_vars(varmap)
        .into_iter()
        .map(|(n, v)| (n, v.dims().to_vec()))
        .collect()
}

/// Save the parameters of `varmap` to `path` (atomically).
pub fn save_params(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = named_vars(varmap)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    save_tensors_atomic(path, &tensors)
}

/// Load parameters into `varmap` after checking every name and shape against it.
pub fn load_params(varmap: &VarMap, path: &Path) -> Result<()> {
    let vars = named_vars(varmap);
    let dev = vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let tensors = load_tensors_checked(path, &varmap_shapes(varmap), &dev)?;
    for (name, var) in vars {
        var.set(&tensors[&name].to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Read `state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let st: TrainState = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, e.to_string()).with_source(e))?;
    if st.format != FORMAT {
        return Err(Error::checkpoint(
            &path,
            format!(
                "checkpoint format {} (this build reads {FORMAT})",
                st.format
            ),
        ));
    }
    Ok(st)
}

/// The policy configuration stored in a checkpoint, to rebuild the policy before resuming.
pub fn read_policy_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let st = read_state(dir)?;
    serde_json::from_value(st.policy)
        .map_err(|e| Error::checkpoint(dir.join(STATE_FILE), format!("policy: {e}")).with_source(e))
}

/// Paths of the files of checkpoint directory `dir`.
pub fn paths(dir: &Path) -> [PathBuf; 4] {
    [
        dir.join(MODEL_FILE),
        dir.join(OPTIMIZER_FILE),
        dir.join(ENV_FILE),
        dir.join(STATE_FILE),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn params_round_trip_and_shape_errors() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let a = VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&a, 1, DType::F32, &dev);
        candle_nn::linear(3, 2, vb.pp("l"))?;
        let path = dir.path().join("m.safetensors");
        save_params(&a, &path)?;
        let b = VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&b, 2, DType::F32, &dev);
        candle_nn::linear(3, 2, vb.pp("l"))?;
        load_params(&b, &path)?;
        let get = |m: &VarMap| {
            m.data().lock().unwrap()["l.weight"]
                .to_vec2::<f32>()
                .unwrap()
        };
        assert_eq!(get(&a), get(&b));
        // Wrong shape: a typed error naming the tensor.
        let c = VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&c, 2, DType::F32, &dev);
        candle_nn::linear(4, 2, vb.pp("l"))?;
        match load_params(&c, &path).map_err(|e| e.shape_mismatch().cloned()) {
            Err(Some(crate::error::ShapeMismatch {
                name,
                expected,
                got,
            })) => {
                assert_eq!(
                    (name.as_str(), expected, got),
                    ("l.weight", vec![2, 4], vec![2, 3])
                );
            }
            other => panic!("expected a shape error, got {other:?}"),
        }
        // Missing tensor and garbage file: errors, not panics.
        let d = VarMap::new();
        let vb = crate::agents::init::seeded_var_builder(&d, 2, DType::F32, &dev);
        candle_nn::linear(3, 2, vb.pp("other"))?;
        assert!(
            load_params(&d, &path)
                .unwrap_err()
                .to_string()
                .contains("other.bias")
        );
        std::fs::write(dir.path().join("bad"), b"not safetensors").unwrap();
        assert!(load_params(&a, &dir.path().join("bad")).is_err());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains(".tmp")),
            "{names:?}"
        );
        Ok(())
    }
}
