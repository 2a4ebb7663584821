//! A rollout that never leaves the GPU: the CUDA backend samples random actions on the device
//! (`kernels/sampler.cu`), steps every scenario and gathers the observations, with CUDA events
//! around the launches, in each launch mode (sampler and step apart, fused, one CUDA graph). Needs the `cuda` feature and an NVIDIA driver at run time (no toolkit:
//! the kernels are compiled with NVRTC when the backend starts).
//!
//! ```text
//! cargo build --release --features cuda --example cuda_rollout
//! target/release/examples/cuda_rollout 128 143 2048     # scenarios, symbols, steps
//! ```
//! Without a driver it exits with the backend's error (kind `BackendUnavailable`).

use std::sync::Arc;

use marl_trade::data::{self, SyntheticConfig};
use marl_trade::env::cuda::{CudaBackend, RolloutMode};
use marl_trade::env::{Backend, EnvLayout, EnvSetup, Period};
use marl_trade::features::Features;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() -> marl_trade::Result<()> {
    let (n, s, steps) = (arg(1, 128), arg(2, 143), arg(3, 2048));
    let mut setup = EnvSetup::default();
    setup.env.scenarios = n;
    setup.env.episode_len = 512;
    let synth = SyntheticConfig {
        symbols: s,
        bars: 2048,
        ..SyntheticConfig::default()
    };
    let md = Arc::new(data::generate(&synth, "SPY"));
    let features = Arc::new(Features::compute(&md));
    let layout = EnvLayout::new(&setup, &md, Period::Train)?;
    let mut gpu = CudaBackend::new(layout, md, features)?;
    println!("{}", gpu.device_description());
    for mode in [
        RolloutMode::Separate,
        RolloutMode::Fused,
        RolloutMode::Graph,
    ] {
        for with_obs in [false, true] {
            gpu.reset(1)?;
            let t = gpu.random_rollout(steps, 7, None, with_obs, mode, false)?;
            println!(
                "{n} x {s}, {steps} steps, {mode:?}{}: {:.2} ms device time, {:.3e} symbol-steps/s, {} episodes ended",
                if with_obs { " + observations" } else { "" },
                t.device_ms,
                t.scenario_steps_per_s * s as f64,
                t.episodes_finished
            );
        }
    }
    Ok(())
}
