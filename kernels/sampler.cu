/*
 * sampler.cu: random actions on the device, for benchmarking whole rollouts with no host round
 * trip. Counter-based (hash2 of src/rng.rs): the actions of step `it` depend only on
 * (seed, it, scenario, symbol) and the state, never on launch geometry. Symbol actions respect the
 * mask under this step's master action (spec §4.2), so none is executed as HOLD. One argument
 * struct (`SampleArgs`, kernels/abi.cuh), one thread per (scenario, symbol).
 * Blocks of MARL_ROWS_BLOCK threads (`__launch_bounds__`, env::abi::ROWS_BLOCK on the host).
 */
#include "abi.cuh"

extern "C" __global__ void __launch_bounds__(MARL_ROWS_BLOCK) sample_actions(SampleArgs a) {
    marl_sample_actions_thread(&a, (u64)blockIdx.x * blockDim.x + threadIdx.x);
}
