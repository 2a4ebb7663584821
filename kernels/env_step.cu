/*
 * env_step.cu: reset and the fused step of the CUDA backend (spec §1-5).
 *
 * Launch: grid = N blocks (blockIdx.x = scenario), blockDim.x threads walk the symbols
 * (s = threadIdx.x, threadIdx.x + blockDim.x, ...; any S works, the host picks
 * blockDim = min(round_up(S, 32), 1024)). Dynamic shared memory, see `marl_step_smem_bytes` in
 * src/env/cuda.rs: the fold rows, broadcast slots, opener flags, scan scratch, and (when it fits)
 * the per-symbol carry of the phases; otherwise the carry lives in the global `scratch` buffer.
 */
#include "scenario.cuh"

/* Spec §1-2 for every scenario, episode 0. */
extern "C" __global__ void env_reset(StepParams p, EnvDims dm, u64 seed, ScenarioState* scen, double* q,
                                     double* entry, double* peak_px, double* dsr_a, double* dsr_b,
                                     u32* entry_k, double* comp_sum, double* comp_sumsq, u64* comp_count,
                                     u32* rec_count) {
    const u32 n = blockIdx.x;
    if (n >= dm.n_scenarios) return;
    const u64 off = (u64)n * dm.n_symbols;
    MarlSymState sy;
    sy.q = q + off;
    sy.entry = entry + off;
    sy.peak_px = peak_px + off;
    sy.dsr_a = dsr_a + off;
    sy.dsr_b = dsr_b + off;
    sy.entry_k = entry_k + off;
    MarlAccum ac;
    ac.sum = comp_sum + (u64)n * MARL_N_COMPONENTS;
    ac.sum_sq = comp_sumsq + (u64)n * MARL_N_COMPONENTS;
    ac.count = comp_count + n;
    marl_reset_scenario(&p, &dm, seed, n, 0u, scen + n, sy, ac);
    if (threadIdx.x == 0) rec_count[n] = 0u;
}

/* Spec §4 (+ §4.13 same-step autoreset) for every scenario. `scratch` is [5, N, S] doubles and
 * `opener` [N, S], used only when `carry_in_smem` is 0. */
extern "C" __global__ void env_step(StepParams p, EnvDims dm, u64 seed, const float* open, const float* close,
                                    const float* volume, const u8* actions, const u8* master, ScenarioState* scen,
                                    double* q, double* entry, double* peak_px, double* dsr_a, double* dsr_b,
                                    u32* entry_k, double* comp_sum, double* comp_sumsq, u64* comp_count,
                                    float* reward, float* comps, float* master_reward, u8* terminated,
                                    u8* truncated, EpisodeRecordC* recs, u32* rec_count, double* scratch,
                                    u32* opener, u32 carry_in_smem) {
    extern __shared__ double marl_smem[];
    const u32 n = blockIdx.x;
    if (n >= dm.n_scenarios) return;
    const u32 S = dm.n_symbols;
    const u32 nscan = blockDim.x > 33u ? blockDim.x : 33u;

    MarlWork w;
    w.rows = marl_smem;
    w.acc = w.rows + (u64)MARL_FOLD_ROWS * S;
    double* dtail = w.acc + MARL_ACC_SLOTS;
    MarlSymScratch sc;
    const u64 off = (u64)n * S;
    if (carry_in_smem) {
        sc.q0 = dtail;
        sc.qb = dtail + S;
        sc.qs = dtail + 2u * S;
        sc.slip = dtail + 3u * S;
        sc.liq = dtail + 4u * S;
        dtail += 5u * S;
    } else {
        const u64 plane = (u64)dm.n_scenarios * S;
        sc.q0 = scratch + off;
        sc.qb = scratch + plane + off;
        sc.qs = scratch + 2u * plane + off;
        sc.slip = scratch + 3u * plane + off;
        sc.liq = scratch + 4u * plane + off;
    }
    w.flags = (u32*)dtail;
    w.scan = w.flags + S;
    sc.opener = carry_in_smem ? w.scan + nscan : opener + off;

    MarlMarket mk;
    mk.open = open;
    mk.close = close;
    mk.volume = volume;
    MarlSymState sy;
    sy.q = q + off;
    sy.entry = entry + off;
    sy.peak_px = peak_px + off;
    sy.dsr_a = dsr_a + off;
    sy.dsr_b = dsr_b + off;
    sy.entry_k = entry_k + off;
    MarlAccum ac;
    ac.sum = comp_sum + (u64)n * MARL_N_COMPONENTS;
    ac.sum_sq = comp_sumsq + (u64)n * MARL_N_COMPONENTS;
    ac.count = comp_count + n;
    MarlStepOut out;
    out.reward = reward + off;
    out.comps = comps + off * MARL_N_COMPONENTS;
    out.master = master_reward + n;
    out.terminated = terminated + n;
    out.truncated = truncated + n;
    out.recs = recs + (u64)n * dm.record_cap;
    out.rec_count = rec_count + n;
    out.debug = 0;
    marl_step_scenario(&p, &dm, seed, n, mk, actions + off, (u32)master[n], scen + n, sy, ac, out, sc, w);
}
