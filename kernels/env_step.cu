/*
 * env_step.cu: reset and the fused step of the CUDA backend (spec §1-5).
 *
 * Each kernel takes one argument struct (kernels/abi.cuh, mirrored by src/env/abi.rs) and runs the
 * per-block entry point that tests/host_parity.rs also runs on the host.
 *
 * Launch: grid = N blocks (blockIdx.x = scenario), blockDim.x threads walk the symbols
 * (s = threadIdx.x, threadIdx.x + blockDim.x, ...; any S works, the host picks
 * blockDim = min(round_up(S, 32), MARL_MAX_BLOCK), env::abi::step_block_threads).
 * `__launch_bounds__(MARL_MAX_BLOCK)`: the compiler keeps the registers within what a block of
 * MARL_MAX_BLOCK threads can get, so every block size the host picks can launch (the backend also
 * reads the loaded kernel's limits, src/env/cuda.rs). Dynamic shared memory of env_step: `marl_step_smem_bytes`
 * (kernels/abi.cuh, `step_smem_bytes` in src/env/cuda.rs): the fold rows, broadcast slots, opener
 * flags, scan scratch, and (when it fits) the per-symbol carry of the phases; otherwise the carry
 * lives in the global `scratch` / `opener` buffers of the arguments.
 */
#include "abi.cuh"

/* Spec §1-2 for every scenario, episode 0. */
extern "C" __global__ void __launch_bounds__(MARL_MAX_BLOCK) env_reset(EnvResetArgs a) { marl_env_reset_block(&a, blockIdx.x); }

/* Spec §4 (+ §4.13 same-step autoreset) for every scenario. */
extern "C" __global__ void __launch_bounds__(MARL_MAX_BLOCK) env_step(EnvStepArgs a) {
    extern __shared__ double marl_smem[];
    marl_env_step_block(&a, blockIdx.x, marl_smem);
}
