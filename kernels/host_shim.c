/*
 * host_shim.c: the CUDA backend's step, compiled for the host (build.rs, `cc`, flags
 * -O2 -ffp-contract=off -std=c11). It includes the very headers the kernels use, with `HD` empty and
 * one "thread" per scenario, so a scenario step is plain loops over symbols in the spec's order
 * (kernels/scenario.cuh). tests/host_parity.rs drives it against the Rust CPU backend.
 *
 * Only the test binaries reference these symbols; nothing in the library calls them.
 */
#include <stddef.h>
#include <stdlib.h>

#include "scenario.cuh"
#include "obs.cuh"

/* Exported names: `marl_<name>`, or `marl_mutant_<name>` in the deliberately wrong build (build.rs
 * compiles this file twice; the mutant defines MARL_PARITY_MUTANT, see env_logic.cuh). */
#ifdef MARL_PARITY_MUTANT
#define EXPORT(name) marl_mutant_##name
#else
#define EXPORT(name) marl_##name
#endif

/* ---- ABI checks: sizes and offsets of every struct a kernel receives ---- */

#define PUT(x) \
    do {       \
        if (i < cap) out[i] = (u64)(x); \
        ++i;   \
    } while (0)

/* Writes the layout list documented in tests/host_parity.rs (`abi_layout_matches`) and returns its
 * length. */
u32 EXPORT(abi_layout)(u64* out, u32 cap) {
    u32 i = 0;
    PUT(sizeof(CostParams));
    PUT(offsetof(CostParams, commission));
    PUT(offsetof(CostParams, half_spread));
    PUT(offsetof(CostParams, impact_coef));
    PUT(offsetof(CostParams, max_slippage));
    PUT(offsetof(CostParams, borrow_per_bar));
    PUT(sizeof(RewardParams));
    PUT(offsetof(RewardParams, w));
    PUT(offsetof(RewardParams, dsr_eta));
    PUT(offsetof(RewardParams, dsr_clip));
    PUT(offsetof(RewardParams, trade_dd_threshold));
    PUT(offsetof(RewardParams, util_target));
    PUT(offsetof(RewardParams, master_w));
    PUT(sizeof(StepParams));
    PUT(offsetof(StepParams, costs));
    PUT(offsetof(StepParams, reward));
    PUT(offsetof(StepParams, initial_capital));
    PUT(offsetof(StepParams, leverage_cap));
    PUT(offsetof(StepParams, kill_drawdown));
    PUT(offsetof(StepParams, buy_size));
    PUT(offsetof(StepParams, sell_partial));
    PUT(offsetof(StepParams, risk_multipliers));
    PUT(offsetof(StepParams, position_caps));
    PUT(offsetof(StepParams, max_open));
    PUT(offsetof(StepParams, n_symbols));
    PUT(offsetof(StepParams, episode_len));
    PUT(offsetof(StepParams, default_action));
    PUT(sizeof(ScenarioState));
    PUT(offsetof(ScenarioState, cash));
    PUT(offsetof(ScenarioState, equity));
    PUT(offsetof(ScenarioState, peak));
    PUT(offsetof(ScenarioState, gross));
    PUT(offsetof(ScenarioState, dsr_a));
    PUT(offsetof(ScenarioState, dsr_b));
    PUT(offsetof(ScenarioState, path));
    PUT(offsetof(ScenarioState, t0));
    PUT(offsetof(ScenarioState, k));
    PUT(offsetof(ScenarioState, episode));
    PUT(offsetof(ScenarioState, directive));
    PUT(offsetof(ScenarioState, open_count));
    PUT(offsetof(ScenarioState, invalid_actions));
    PUT(offsetof(ScenarioState, limited_orders));
    PUT(sizeof(EnvDims));
    PUT(offsetof(EnvDims, n_scenarios));
    PUT(offsetof(EnvDims, n_symbols));
    PUT(offsetof(EnvDims, paths));
    PUT(offsetof(EnvDims, bars));
    PUT(offsetof(EnvDims, lo));
    PUT(offsetof(EnvDims, hi));
    PUT(offsetof(EnvDims, start_a));
    PUT(offsetof(EnvDims, start_b));
    PUT(offsetof(EnvDims, episode_len));
    PUT(offsetof(EnvDims, record_cap));
    PUT(sizeof(EpisodeRecordC));
    PUT(offsetof(EpisodeRecordC, scenario));
    PUT(offsetof(EpisodeRecordC, path));
    PUT(offsetof(EpisodeRecordC, start));
    PUT(offsetof(EpisodeRecordC, length));
    PUT(offsetof(EpisodeRecordC, total_return));
    PUT(offsetof(EpisodeRecordC, killed));
    PUT(offsetof(EpisodeRecordC, invalid_actions));
    PUT(offsetof(EpisodeRecordC, limited_orders));
    PUT(offsetof(EpisodeRecordC, sum));
    PUT(offsetof(EpisodeRecordC, sum_sq));
    PUT(offsetof(EpisodeRecordC, count));
    return i;
}

/* Layout constants the headers assume: N_ACTIONS, N_COMPONENTS, MASTER_ACTIONS, N_TECH, WINDOW,
 * N_REGIME, MACRO, TECH_WINDOW_LEN, DYN_OBS, OBS_DIM, the dynamic slice starts, and the step
 * kernel's FOLD_ROWS, ACC_SLOTS, DEBUG_LEN. */
u32 EXPORT(host_constants)(u64* out, u32 cap) {
    u32 i = 0;
    PUT(MARL_N_ACTIONS);
    PUT(MARL_N_COMPONENTS);
    PUT(MARL_MASTER_ACTIONS);
    PUT(MARL_N_TECH);
    PUT(MARL_WINDOW);
    PUT(MARL_N_REGIME);
    PUT(MARL_MACRO);
    PUT(MARL_TECH_WINDOW_LEN);
    PUT(MARL_DYN_OBS);
    PUT(MARL_OBS_DIM);
    PUT(MARL_OBS_SENT_MACRO);
    PUT(MARL_OBS_SL_PROBS);
    PUT(MARL_OBS_POSITION);
    PUT(MARL_OBS_PORTFOLIO);
    PUT(MARL_OBS_REGIME);
    PUT(MARL_OBS_MASTER);
    PUT(MARL_FOLD_ROWS);
    PUT(MARL_ACC_SLOTS);
    PUT(MARL_DEBUG_LEN);
    return i;
}

#undef PUT

u64 EXPORT(host_hash2)(u64 key, u64 counter) { return marl_hash2(key, counter); }
u64 EXPORT(host_mix64)(u64 z) { return marl_mix64(z); }

/* ---- whole-environment entry points, same arguments as the kernels of env_step.cu / obs.cu ---- */

static MarlSymState sym_state(u64 off, double* q, double* entry, double* peak_px, double* dsr_a, double* dsr_b,
                              u32* entry_k) {
    MarlSymState sy;
    sy.q = q + off;
    sy.entry = entry + off;
    sy.peak_px = peak_px + off;
    sy.dsr_a = dsr_a + off;
    sy.dsr_b = dsr_b + off;
    sy.entry_k = entry_k + off;
    return sy;
}

static MarlAccum accum(u32 n, double* comp_sum, double* comp_sumsq, u64* comp_count) {
    MarlAccum ac;
    ac.sum = comp_sum + (u64)n * MARL_N_COMPONENTS;
    ac.sum_sq = comp_sumsq + (u64)n * MARL_N_COMPONENTS;
    ac.count = comp_count + n;
    return ac;
}

void EXPORT(host_reset)(const StepParams* p, const EnvDims* dm, u64 seed, ScenarioState* scen, double* q,
                     double* entry, double* peak_px, double* dsr_a, double* dsr_b, u32* entry_k, double* comp_sum,
                     double* comp_sumsq, u64* comp_count, u32* rec_count) {
    for (u32 n = 0; n < dm->n_scenarios; ++n) {
        const u64 off = (u64)n * dm->n_symbols;
        marl_reset_scenario(p, dm, seed, n, 0u, scen + n, sym_state(off, q, entry, peak_px, dsr_a, dsr_b, entry_k),
                            accum(n, comp_sum, comp_sumsq, comp_count));
        rec_count[n] = 0u;
    }
}

/* Returns 0, or -1 when scratch memory could not be allocated. `debug` is NULL or [N, MARL_DEBUG_LEN]. */
int EXPORT(host_step)(const StepParams* p, const EnvDims* dm, u64 seed, const float* open, const float* close,
                   const float* volume, const u8* actions, const u8* master, ScenarioState* scen, double* q,
                   double* entry, double* peak_px, double* dsr_a, double* dsr_b, u32* entry_k, double* comp_sum,
                   double* comp_sumsq, u64* comp_count, float* reward, float* comps, float* master_reward,
                   u8* terminated, u8* truncated, EpisodeRecordC* recs, u32* rec_count, double* debug) {
    const u32 S = dm->n_symbols;
    double* dbuf = (double*)malloc(sizeof(double) * ((u64)MARL_FOLD_ROWS * S + MARL_ACC_SLOTS + 5u * (u64)S));
    u32* ubuf = (u32*)malloc(sizeof(u32) * (2u * (u64)S + 33u));
    if (!dbuf || !ubuf) {
        free(dbuf);
        free(ubuf);
        return -1;
    }
    MarlWork w;
    w.rows = dbuf;
    w.acc = dbuf + (u64)MARL_FOLD_ROWS * S;
    MarlSymScratch sc;
    sc.q0 = w.acc + MARL_ACC_SLOTS;
    sc.qb = sc.q0 + S;
    sc.qs = sc.qb + S;
    sc.slip = sc.qs + S;
    sc.liq = sc.slip + S;
    w.flags = ubuf;
    sc.opener = ubuf + S;
    w.scan = ubuf + 2u * S;
    MarlMarket mk;
    mk.open = open;
    mk.close = close;
    mk.volume = volume;
    for (u32 n = 0; n < dm->n_scenarios; ++n) {
        const u64 off = (u64)n * S;
        MarlStepOut out;
        out.reward = reward + off;
        out.comps = comps + off * MARL_N_COMPONENTS;
        out.master = master_reward + n;
        out.terminated = terminated + n;
        out.truncated = truncated + n;
        out.recs = recs + (u64)n * dm->record_cap;
        out.rec_count = rec_count + n;
        out.debug = debug ? debug + (u64)n * MARL_DEBUG_LEN : 0;
        marl_step_scenario(p, dm, seed, n, mk, actions + off, (u32)master[n], scen + n,
                           sym_state(off, q, entry, peak_px, dsr_a, dsr_b, entry_k),
                           accum(n, comp_sum, comp_sumsq, comp_count), out, sc, w);
    }
    free(dbuf);
    free(ubuf);
    return 0;
}

void EXPORT(host_gather_obs)(const StepParams* p, const EnvDims* dm, const float* close, const float* sentiment,
                          const float* macro, const float* regime, const float* tech, const ScenarioState* scen,
                          const double* q, const double* entry, const double* peak_px, const u32* entry_k,
                          float* out, u32 window) {
    MarlObsData od;
    od.close = close;
    od.sentiment = sentiment;
    od.macro = macro;
    od.regime = regime;
    od.tech = tech;
    const u32 width = window ? MARL_OBS_DIM : MARL_DYN_OBS;
    for (u32 n = 0; n < dm->n_scenarios; ++n) {
        const u64 off = (u64)n * dm->n_symbols;
        for (u32 s = 0; s < dm->n_symbols; ++s) {
            float* o = out + (off + s) * width;
            if (window) {
                for (u32 j = 0; j < MARL_TECH_WINDOW_LEN; ++j) o[j] = marl_window_elem(dm, scen + n, tech, s, j);
                o += MARL_TECH_WINDOW_LEN;
            }
            marl_dyn_obs_row(p, dm, scen + n, od, q + off, entry + off, peak_px + off, entry_k + off, s, o);
        }
    }
}

void EXPORT(host_action_mask)(const StepParams* p, const EnvDims* dm, const float* close, const ScenarioState* scen,
                           const double* q, const double* entry, u8* out) {
    for (u32 n = 0; n < dm->n_scenarios; ++n) {
        const u64 off = (u64)n * dm->n_symbols;
        for (u32 s = 0; s < dm->n_symbols; ++s) {
            const u32 bits = marl_stored_mask_bits(p, dm, scen + n, close, q + off, entry + off, s);
            for (u32 a = 0; a < MARL_N_ACTIONS; ++a) out[(off + s) * MARL_N_ACTIONS + a] = (u8)((bits >> a) & 1u);
        }
    }
}

void EXPORT(host_sample)(const StepParams* p, const EnvDims* dm, u64 seed, u64 it, u32 fixed_master, const float* close,
                      const ScenarioState* scen, const double* q, const double* entry, u8* actions, u8* master) {
    for (u32 n = 0; n < dm->n_scenarios; ++n) {
        const u64 off = (u64)n * dm->n_symbols;
        master[n] = (u8)marl_sample_master(dm, seed, it, n, fixed_master);
        for (u32 s = 0; s < dm->n_symbols; ++s)
            actions[off + s] = (u8)marl_sample_symbol_action(p, dm, seed, it, fixed_master, n, scen + n, close,
                                                             q + off, entry + off, s);
    }
}
