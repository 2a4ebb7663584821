/*
 * obs.cu: observations (spec §6) and the action mask (spec §4.2) of the CUDA backend.
 *   gather_obs: [N, S, OBS_DIM] f32, one warp per (scenario, symbol) row: the lanes copy the
 *               technical window, lane 0 writes the dynamic part.
 *   dyn_obs:    [N, S, DYN_OBS] f32, one thread per row.
 *   action_mask:[N, S, 7] u8, one thread per (scenario, symbol).
 */
#include "obs.cuh"

extern "C" __global__ void gather_obs(StepParams p, EnvDims dm, const float* close, const float* sentiment,
                                      const float* macro, const float* regime, const float* tech,
                                      const ScenarioState* scen, const double* q, const double* entry,
                                      const double* peak_px, const u32* entry_k, float* out) {
    const u64 rows = (u64)dm.n_scenarios * dm.n_symbols;
    const u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u32 lane = threadIdx.x & 31u;
    if (row >= rows) return;
    const u32 n = (u32)(row / dm.n_symbols), s = (u32)(row % dm.n_symbols);
    const ScenarioState st = scen[n];
    float* o = out + row * MARL_OBS_DIM;
    for (u32 j = lane; j < MARL_TECH_WINDOW_LEN; j += 32u) o[j] = marl_window_elem(&dm, &st, tech, s, j);
    if (lane == 0u) {
        MarlObsData od;
        od.close = close;
        od.sentiment = sentiment;
        od.macro = macro;
        od.regime = regime;
        od.tech = tech;
        const u64 off = (u64)n * dm.n_symbols;
        marl_dyn_obs_row(&p, &dm, &st, od, q + off, entry + off, peak_px + off, entry_k + off, s,
                         o + MARL_TECH_WINDOW_LEN);
    }
}

extern "C" __global__ void dyn_obs(StepParams p, EnvDims dm, const float* close, const float* sentiment,
                                   const float* macro, const float* regime, const ScenarioState* scen,
                                   const double* q, const double* entry, const double* peak_px,
                                   const u32* entry_k, float* out) {
    const u64 row = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (u64)dm.n_scenarios * dm.n_symbols) return;
    const u32 n = (u32)(row / dm.n_symbols), s = (u32)(row % dm.n_symbols);
    const ScenarioState st = scen[n];
    MarlObsData od;
    od.close = close;
    od.sentiment = sentiment;
    od.macro = macro;
    od.regime = regime;
    od.tech = 0;
    const u64 off = (u64)n * dm.n_symbols;
    marl_dyn_obs_row(&p, &dm, &st, od, q + off, entry + off, peak_px + off, entry_k + off, s,
                     out + row * MARL_DYN_OBS);
}

extern "C" __global__ void action_mask(StepParams p, EnvDims dm, const float* close, const ScenarioState* scen,
                                       const double* q, const double* entry, u8* out) {
    const u64 row = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (u64)dm.n_scenarios * dm.n_symbols) return;
    const u32 n = (u32)(row / dm.n_symbols), s = (u32)(row % dm.n_symbols);
    const u64 off = (u64)n * dm.n_symbols;
    const u32 bits = marl_stored_mask_bits(&p, &dm, scen + n, close, q + off, entry + off, s);
    for (u32 a = 0; a < MARL_N_ACTIONS; ++a) out[row * MARL_N_ACTIONS + a] = (u8)((bits >> a) & 1u);
}
