/*
 * rollout.cu: the sampler fused into the step, for benchmark rollouts on the device
 * (`CudaBackend::random_rollout` with `RolloutMode::Fused` / `Graph`). One block per scenario, as
 * env_step: the block's threads first draw the scenario's actions exactly as `sample_actions` does
 * (marl_sample_actions_thread, kernels/abi.cuh: row = n * S + s, strided over the symbols), write
 * them to the step's action buffers, then run the step's per-block entry point. `__syncthreads()`
 * orders the draws (global-memory writes of this block) before the step reads them; the sampler
 * reads the state the step is about to change, and every thread passes the barrier before any
 * step code runs, so the result equals `sample_actions` then `env_step`, one launch instead of two.
 */
#include "abi.cuh"

extern "C" __global__ void __launch_bounds__(MARL_MAX_BLOCK) env_step_sampled(EnvStepArgs a, SampleArgs sa) {
    extern __shared__ double marl_smem[];
    const u32 S = sa.dm.n_symbols;
    for (u32 s = threadIdx.x; s < S; s += blockDim.x) marl_sample_actions_thread(&sa, (u64)blockIdx.x * S + s);
    __syncthreads();
    marl_env_step_block(&a, blockIdx.x, marl_smem);
}
