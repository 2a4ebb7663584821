/*
 * obs.cuh: observation and action-mask logic (spec §6, §4.2), per symbol, for both sides.
 *   marl_dyn_obs_row  <-> env::cpu::ObsCtx::dynamic   (the DYN_OBS floats after the window)
 *   marl_window_ptr   <-> features::Features::window (one contiguous run)
 *   marl_mask_row     <-> env::cpu::CpuBackend::action_mask
 * The layout constants mirror src/env/obs.rs and src/features.rs; the Rust side passes its own
 * values as -D defines to NVRTC, and tests/host_parity.rs checks these defaults against them.
 */
#ifndef MARL_OBS_CUH
#define MARL_OBS_CUH

#include "env_logic.cuh"

#ifndef MARL_N_TECH
#define MARL_N_TECH 23u
#endif
#ifndef MARL_WINDOW
#define MARL_WINDOW 24u
#endif
#ifndef MARL_N_REGIME
#define MARL_N_REGIME 4u
#endif
#ifndef MARL_MACRO
#define MARL_MACRO 2u
#endif
#define MARL_TECH_WINDOW_LEN (MARL_WINDOW * MARL_N_TECH)
/* dynamic slices (obs.rs): SENT_MACRO 3, SL_PROBS 3, POSITION 5, PORTFOLIO 5, REGIME, MASTER 6 */
#define MARL_OBS_SENT_MACRO 0u
#define MARL_OBS_SL_PROBS 3u
#define MARL_OBS_POSITION 6u
#define MARL_OBS_PORTFOLIO 11u
#define MARL_OBS_REGIME 16u
#define MARL_OBS_MASTER (16u + MARL_N_REGIME)
#define MARL_DYN_OBS (22u + MARL_N_REGIME)
#define MARL_OBS_DIM (MARL_TECH_WINDOW_LEN + MARL_DYN_OBS)

/* Read-only per-bar inputs of the observation. */
typedef struct {
    const float* close;     /* [P, T, S + 1] */
    const float* sentiment; /* [P, T, S] */
    const float* macro;     /* [P, T, MACRO] */
    const float* regime;    /* [P, T, N_REGIME] */
    const float* tech;      /* [P, S, T, N_TECH]: one symbol's bars contiguous */
    const float* sl;        /* [P, T, S, 3] SL prior cache (src/priors.rs), or NULL: zeros */
} MarlObsData;

/* The dynamic observation of symbol s of a scenario (spec §6) into row[0 .. DYN_OBS).
 * q, entry, peak_px, entry_k point at the scenario's [S] arrays. */
HD void marl_dyn_obs_row(const StepParams* p, const EnvDims* dm, const ScenarioState* st, MarlObsData od,
                         const double* q, const double* entry, const double* peak_px, const u32* entry_k,
                         u32 s, float* row) {
    const u32 S = dm->n_symbols;
    const u64 pt = (u64)st->path * dm->bars + (u64)(st->t0 + st->k);
    const double c = (double)od.close[pt * (S + 1u) + s];
    const double qq = q[s];
    const double e = st->equity;
    const int has = qq > 0.0;
    const u64 mi = pt * MARL_MACRO;
    row[MARL_OBS_SENT_MACRO] = od.sentiment[pt * S + s];
    row[MARL_OBS_SENT_MACRO + 1u] = od.macro[mi];
    row[MARL_OBS_SENT_MACRO + 2u] = od.macro[mi + 1u] / 100.0f;
    if (od.sl) {
        const float* v = od.sl + (pt * S + s) * 3u;
        row[MARL_OBS_SL_PROBS] = v[0];
        row[MARL_OBS_SL_PROBS + 1u] = v[1];
        row[MARL_OBS_SL_PROBS + 2u] = v[2];
    } else {
        row[MARL_OBS_SL_PROBS] = 0.0f;
        row[MARL_OBS_SL_PROBS + 1u] = 0.0f;
        row[MARL_OBS_SL_PROBS + 2u] = 0.0f;
    }
    const u32 pos = MARL_OBS_POSITION;
    row[pos] = has ? 1.0f : 0.0f;
    row[pos + 1u] = has ? (float)(c / entry[s] - 1.0) : 0.0f;
    row[pos + 2u] = has ? (float)(st->k - entry_k[s]) / (float)dm->episode_len : 0.0f;
    row[pos + 3u] = (float)(qq * c / e);
    row[pos + 4u] = has ? (float)(1.0 - c / peak_px[s]) : 0.0f;
    const u32 pf = MARL_OBS_PORTFOLIO;
    const Directive d = marl_directive(p, st->directive);
    const double var = st->dsr_b - st->dsr_a * st->dsr_a;
    row[pf] = (float)(st->cash / e);
    row[pf + 1u] = (float)(1.0 - e / st->peak);
    row[pf + 2u] = var > 1e-18 ? (float)marl_clamp(st->dsr_a / MARL_SQRT(var), -10.0, 10.0) : 0.0f;
    row[pf + 3u] = (float)(st->gross / e);
    row[pf + 4u] = (float)st->open_count / (float)(d.max_open > 1u ? d.max_open : 1u);
    for (u32 i = 0; i < MARL_N_REGIME; ++i) row[MARL_OBS_REGIME + i] = od.regime[pt * MARL_N_REGIME + i];
    const u32 ms = MARL_OBS_MASTER;
    row[ms] = (float)d.risk;
    row[ms + 1u] = (float)d.cap;
    row[ms + 2u] = (float)d.max_open / (float)S;
    for (u32 g = 0; g < 3u; ++g) row[ms + 3u + g] = d.mode == g ? 1.0f : 0.0f;
}

/* Symbol s's technical window ending at the scenario's bar (bars t - WINDOW + 1 ..= t, oldest
 * first): with tech [P, S, T, N_TECH] it is one contiguous run of TECH_WINDOW_LEN floats
 * (Features::window). */
HD const float* marl_window_ptr(const EnvDims* dm, const ScenarioState* st, const float* tech, u32 s) {
    const u64 bar = (u64)(st->t0 + st->k) + 1u - MARL_WINDOW;
    return tech + (((u64)st->path * dm->n_symbols + s) * dm->bars + bar) * MARL_N_TECH;
}

/* Action mask of one symbol with the stored directive (spec §4.2): out[a] = 1 if allowed. */
HD u32 marl_stored_mask_bits(const StepParams* p, const EnvDims* dm, const ScenarioState* st, const float* close,
                             const double* q, const double* entry, u32 s) {
    const u32 S = dm->n_symbols;
    const Directive d = marl_directive(p, st->directive);
    const double c = (double)close[((u64)st->path * dm->bars + (u64)(st->t0 + st->k)) * (S + 1u) + s];
    const double q0 = q[s];
    return marl_mask_bits(q0, q0 * c, st->equity, c, entry[s], st->open_count, &d);
}

/* Random actions for step `it` of scenario n (kernels/sampler.cu): the master action (fixed when
 * < 48), then every symbol's action uniform over what the mask allows under that directive. */
HD u32 marl_sample_symbol_action(const StepParams* p, const EnvDims* dm, u64 seed, u64 it, u32 fixed, u32 n,
                                 const ScenarioState* st, const float* close, const double* q,
                                 const double* entry, u32 s) {
    ScenarioState tmp = *st;
    tmp.directive = marl_sample_master(dm, seed, it, n, fixed);
    const u32 bits = marl_stored_mask_bits(p, dm, &tmp, close, q, entry, s);
    return marl_sample_symbol(dm, seed, it, n, s, bits);
}

#endif /* MARL_OBS_CUH */
