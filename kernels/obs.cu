/*
 * obs.cu: observations (spec §6) and the action mask (spec §4.2) of the CUDA backend. Each kernel
 * takes one argument struct and runs its entry point of kernels/abi.cuh (also run on the host by
 * tests/host_parity.rs).
 *   gather_obs: [N, S, OBS_DIM] f32, one warp per (scenario, symbol) row: the lanes copy the
 *               technical window, lane 0 writes the dynamic part.
 *   dyn_obs:    [N, S, DYN_OBS] f32, one thread per row.
 *   action_mask:[N, S, 7] u8, one thread per (scenario, symbol).
 * Blocks of MARL_ROWS_BLOCK threads (`__launch_bounds__`, env::abi::ROWS_BLOCK on the host).
 */
#include "abi.cuh"

extern "C" __global__ void __launch_bounds__(MARL_ROWS_BLOCK) gather_obs(ObsArgs a) {
    const u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    marl_gather_obs_row(&a, row, threadIdx.x & 31u, 32u);
}

extern "C" __global__ void __launch_bounds__(MARL_ROWS_BLOCK) dyn_obs(ObsArgs a) {
    marl_dyn_obs_thread(&a, (u64)blockIdx.x * blockDim.x + threadIdx.x);
}

extern "C" __global__ void __launch_bounds__(MARL_ROWS_BLOCK) action_mask(MaskArgs a) {
    marl_action_mask_thread(&a, (u64)blockIdx.x * blockDim.x + threadIdx.x);
}
