/*
 * master_obs.cu: the portfolio master's observation (docs/env-spec.md §8), one thread per scenario,
 * running marl_master_obs_thread of kernels/master_obs.cuh (also run on the host by
 * tests/master_obs.rs through kernels/master_obs_shim.c).
 */
#include "master_obs.cuh"

extern "C" __global__ void __launch_bounds__(MARL_ROWS_BLOCK) master_obs(MasterObsArgs a) {
    marl_master_obs_thread(&a, (u64)blockIdx.x * blockDim.x + threadIdx.x);
}
