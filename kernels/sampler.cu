/*
 * sampler.cu: random actions on the device, for benchmarking whole rollouts with no host round
 * trip. Counter-based (hash2 of src/rng.rs): the actions of step `it` depend only on
 * (seed, it, scenario, symbol) and the state, never on launch geometry. Symbol actions respect the
 * mask under this step's master action (spec §4.2), so none is executed as HOLD.
 */
#include "obs.cuh"

extern "C" __global__ void sample_actions(StepParams p, EnvDims dm, u64 seed, u64 it, u32 fixed_master,
                                          const float* close, const ScenarioState* scen, const double* q,
                                          const double* entry, u8* actions, u8* master) {
    const u64 row = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (u64)dm.n_scenarios * dm.n_symbols) return;
    const u32 n = (u32)(row / dm.n_symbols), s = (u32)(row % dm.n_symbols);
    const u64 off = (u64)n * dm.n_symbols;
    if (s == 0u) master[n] = (u8)marl_sample_master(&dm, seed, it, n, fixed_master);
    actions[row] = (u8)marl_sample_symbol_action(&p, &dm, seed, it, fixed_master, n, scen + n, close, q + off,
                                                 entry + off, s);
}
