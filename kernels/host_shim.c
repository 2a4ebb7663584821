/*
 * host_shim.c: the CUDA backend's step, compiled for the host (build.rs, `cc`, flags
 * -O2 -ffp-contract=off -std=c11). It includes the very headers the kernels use, with `HD` empty and
 * one "thread" per block, so a scenario step is plain loops over symbols in the spec's order
 * (kernels/scenario.cuh). Each export takes a pointer to a kernel's own argument struct
 * (kernels/abi.cuh) and calls that kernel's entry point for every block / row, exactly as the GPU
 * launch does; tests/host_parity.rs builds the structs with the CUDA backend's constructors
 * (src/env/abi.rs) and drives them against the Rust CPU backend.
 *
 * Only the test binaries reference these symbols; nothing in the library calls them.
 */
#include <stddef.h>
#include <stdlib.h>

#include "abi.cuh"

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
    PUT(offsetof(RewardParams, bar_vol));
    PUT(offsetof(RewardParams, master_w));
    PUT(offsetof(RewardParams, master_gamma));
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
    PUT(sizeof(EnvResetArgs));
    PUT(offsetof(EnvResetArgs, p));
    PUT(offsetof(EnvResetArgs, dm));
    PUT(offsetof(EnvResetArgs, seed));
    PUT(offsetof(EnvResetArgs, scen));
    PUT(offsetof(EnvResetArgs, q));
    PUT(offsetof(EnvResetArgs, entry));
    PUT(offsetof(EnvResetArgs, peak_px));
    PUT(offsetof(EnvResetArgs, dsr_a));
    PUT(offsetof(EnvResetArgs, dsr_b));
    PUT(offsetof(EnvResetArgs, entry_k));
    PUT(offsetof(EnvResetArgs, comp_sum));
    PUT(offsetof(EnvResetArgs, comp_sumsq));
    PUT(offsetof(EnvResetArgs, comp_count));
    PUT(offsetof(EnvResetArgs, rec_count));
    PUT(sizeof(EnvStepArgs));
    PUT(offsetof(EnvStepArgs, p));
    PUT(offsetof(EnvStepArgs, dm));
    PUT(offsetof(EnvStepArgs, seed));
    PUT(offsetof(EnvStepArgs, open));
    PUT(offsetof(EnvStepArgs, close));
    PUT(offsetof(EnvStepArgs, volume));
    PUT(offsetof(EnvStepArgs, actions));
    PUT(offsetof(EnvStepArgs, master));
    PUT(offsetof(EnvStepArgs, scen));
    PUT(offsetof(EnvStepArgs, q));
    PUT(offsetof(EnvStepArgs, entry));
    PUT(offsetof(EnvStepArgs, peak_px));
    PUT(offsetof(EnvStepArgs, dsr_a));
    PUT(offsetof(EnvStepArgs, dsr_b));
    PUT(offsetof(EnvStepArgs, entry_k));
    PUT(offsetof(EnvStepArgs, comp_sum));
    PUT(offsetof(EnvStepArgs, comp_sumsq));
    PUT(offsetof(EnvStepArgs, comp_count));
    PUT(offsetof(EnvStepArgs, reward));
    PUT(offsetof(EnvStepArgs, comps));
    PUT(offsetof(EnvStepArgs, master_reward));
    PUT(offsetof(EnvStepArgs, turnover));
    PUT(offsetof(EnvStepArgs, terminated));
    PUT(offsetof(EnvStepArgs, truncated));
    PUT(offsetof(EnvStepArgs, recs));
    PUT(offsetof(EnvStepArgs, rec_count));
    PUT(offsetof(EnvStepArgs, scratch));
    PUT(offsetof(EnvStepArgs, opener));
    PUT(offsetof(EnvStepArgs, debug));
    PUT(offsetof(EnvStepArgs, carry_in_smem));
    PUT(offsetof(EnvStepArgs, _pad));
    PUT(sizeof(ObsArgs));
    PUT(offsetof(ObsArgs, p));
    PUT(offsetof(ObsArgs, dm));
    PUT(offsetof(ObsArgs, close));
    PUT(offsetof(ObsArgs, sentiment));
    PUT(offsetof(ObsArgs, macro_series));
    PUT(offsetof(ObsArgs, regime));
    PUT(offsetof(ObsArgs, tech));
    PUT(offsetof(ObsArgs, sl));
    PUT(offsetof(ObsArgs, scen));
    PUT(offsetof(ObsArgs, q));
    PUT(offsetof(ObsArgs, entry));
    PUT(offsetof(ObsArgs, peak_px));
    PUT(offsetof(ObsArgs, entry_k));
    PUT(offsetof(ObsArgs, out));
    PUT(sizeof(MaskArgs));
    PUT(offsetof(MaskArgs, p));
    PUT(offsetof(MaskArgs, dm));
    PUT(offsetof(MaskArgs, close));
    PUT(offsetof(MaskArgs, scen));
    PUT(offsetof(MaskArgs, q));
    PUT(offsetof(MaskArgs, entry));
    PUT(offsetof(MaskArgs, out));
    PUT(sizeof(SampleArgs));
    PUT(offsetof(SampleArgs, p));
    PUT(offsetof(SampleArgs, dm));
    PUT(offsetof(SampleArgs, seed));
    PUT(offsetof(SampleArgs, it));
    PUT(offsetof(SampleArgs, close));
    PUT(offsetof(SampleArgs, scen));
    PUT(offsetof(SampleArgs, q));
    PUT(offsetof(SampleArgs, entry));
    PUT(offsetof(SampleArgs, actions));
    PUT(offsetof(SampleArgs, master));
    PUT(offsetof(SampleArgs, fixed_master));
    PUT(offsetof(SampleArgs, _pad));
    PUT(sizeof(PolicySampleArgs));
    PUT(offsetof(PolicySampleArgs, log_probs));
    PUT(offsetof(PolicySampleArgs, actions));
    PUT(offsetof(PolicySampleArgs, logp));
    PUT(offsetof(PolicySampleArgs, env_actions));
    PUT(offsetof(PolicySampleArgs, seed));
    PUT(offsetof(PolicySampleArgs, draws));
    PUT(offsetof(PolicySampleArgs, rows));
    PUT(offsetof(PolicySampleArgs, na));
    return i;
}

/* Layout constants the headers assume: N_ACTIONS, N_COMPONENTS, MASTER_ACTIONS, N_TECH, WINDOW,
 * N_REGIME, MACRO, TECH_WINDOW_LEN, DYN_OBS, OBS_DIM, the dynamic slice starts, and the step
 * kernel's FOLD_ROWS, ACC_SLOTS, DEBUG_LEN, and the block sizes MAX_BLOCK, ROWS_BLOCK. */
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
    PUT(MARL_MAX_BLOCK);
    PUT(MARL_ROWS_BLOCK);
    return i;
}

#undef PUT

u64 EXPORT(host_hash2)(u64 key, u64 counter) { return marl_hash2(key, counter); }
u64 EXPORT(host_mix64)(u64 z) { return marl_mix64(z); }

/* ---- the kernels, run on the host: every block / row of a launch, in order ---- */

u64 EXPORT(host_step_smem_bytes)(u32 S, u32 threads, u32 carry) { return marl_step_smem_bytes(S, threads, carry); }

void EXPORT(host_env_reset)(const EnvResetArgs* a) {
    for (u32 n = 0; n < a->dm.n_scenarios; ++n) marl_env_reset_block(a, n);
}

/* Returns 0, or -1 when the block scratch could not be allocated. */
int EXPORT(host_env_step)(const EnvStepArgs* a) {
    /* the block's "shared memory", reused by every block as on one SM */
    double* smem = (double*)malloc(marl_step_smem_bytes(a->dm.n_symbols, MARL_NT, a->carry_in_smem));
    if (!smem) return -1;
    for (u32 n = 0; n < a->dm.n_scenarios; ++n) marl_env_step_block(a, n, smem);
    free(smem);
    return 0;
}

void EXPORT(host_gather_obs)(const ObsArgs* a) {
    const u64 rows = (u64)a->dm.n_scenarios * a->dm.n_symbols;
    for (u64 row = 0; row < rows; ++row) marl_gather_obs_row(a, row, 0u, 1u);
}

void EXPORT(host_dyn_obs)(const ObsArgs* a) {
    const u64 rows = (u64)a->dm.n_scenarios * a->dm.n_symbols;
    for (u64 row = 0; row < rows; ++row) marl_dyn_obs_thread(a, row);
}

void EXPORT(host_action_mask)(const MaskArgs* a) {
    const u64 rows = (u64)a->dm.n_scenarios * a->dm.n_symbols;
    for (u64 row = 0; row < rows; ++row) marl_action_mask_thread(a, row);
}

void EXPORT(host_sample_actions)(const SampleArgs* a) {
    const u64 rows = (u64)a->dm.n_scenarios * a->dm.n_symbols;
    for (u64 row = 0; row < rows; ++row) marl_sample_actions_thread(a, row);
}

void EXPORT(host_sample_policy)(const PolicySampleArgs* a) {
    for (u64 row = 0; row < a->rows; ++row) marl_sample_policy_thread(a, row);
}
