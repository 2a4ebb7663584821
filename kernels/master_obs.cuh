/*
 * master_obs.cuh: the portfolio master's observation (docs/env-spec.md §8), one scenario per
 * thread, for both sides:
 *   marl_master_obs_row    <-> env::master_obs::master_obs_row
 *   marl_master_obs_thread    the entry point of the `master_obs` kernel (kernels/master_obs.cu)
 *                             and of the host shim (kernels/master_obs_shim.c)
 * Layout constants mirror src/env/master_obs.rs; tests/master_obs.rs checks them and the struct
 * layouts against the Rust mirrors, and runs this code on the host against the CPU backend.
 */
#ifndef MARL_MASTER_OBS_CUH
#define MARL_MASTER_OBS_CUH

#include "obs.cuh"

/* slices of the master observation (master_obs.rs) */
#define MARL_MASTER_INTENTS (MARL_N_ACTIONS + 3u)
#define MARL_MOBS_INTENTS 0u
#define MARL_MOBS_TELEMETRY MARL_MASTER_INTENTS
#define MARL_MOBS_N_TELEMETRY 8u
#define MARL_MOBS_REGIME (MARL_MOBS_TELEMETRY + MARL_MOBS_N_TELEMETRY)
#define MARL_MOBS_N_REGIME (MARL_N_REGIME + 3u)
#define MARL_MOBS_DIRECTIVE (MARL_MOBS_REGIME + MARL_MOBS_N_REGIME)
#define MARL_MOBS_N_DIRECTIVE 11u
#define MARL_MASTER_OBS (MARL_MOBS_DIRECTIVE + MARL_MOBS_N_DIRECTIVE)
/* bars over which the VIX change is taken */
#define MARL_MOBS_VIX_LOOKBACK 5u

/* Equity at the master's last observation (mirror of env::master_obs::MasterAnchor). */
typedef struct {
    double equity;
    u32 episode; /* the scenario's episode counter then */
    u32 valid;   /* 0: no observation yet in this reset */
} MarlMasterAnchor;

/* master_obs: the master observation of every scenario (mirror: env::master_obs::MasterObsArgs). */
typedef struct {
    StepParams p;
    EnvDims dm;
    const float* close;        /* [P, T, S + 1] */
    const float* macro_series; /* [P, T, MACRO] */
    const float* regime;       /* [P, T, N_REGIME] */
    const ScenarioState* scen; /* [N] */
    const float* intents;      /* [N, MASTER_INTENTS] */
    MarlMasterAnchor* anchors; /* [N], read then overwritten with this observation's equity */
    float* out;                /* [N, MASTER_OBS] */
} MasterObsArgs;

/* The master observation of one scenario into row[0 .. MASTER_OBS); updates *anchor. */
HD void marl_master_obs_row(const StepParams* p, const EnvDims* dm, const float* close, const float* macro_series,
                            const float* regime, const ScenarioState* st, const float* intents,
                            MarlMasterAnchor* anchor, float* row) {
    const u32 S = dm->n_symbols;
    const u32 t = st->t0 + st->k;
    const u64 pt = (u64)st->path * dm->bars + (u64)t;
    for (u32 i = 0; i < MARL_MASTER_INTENTS; ++i) row[MARL_MOBS_INTENTS + i] = intents[i];
    const double e = st->equity;
    const Directive d = marl_directive(p, st->directive);
    const double var = st->dsr_b - st->dsr_a * st->dsr_a;
    const double bar_vol = p->reward.bar_vol;
    const double base =
        (anchor->valid != 0u && anchor->episode == st->episode) ? anchor->equity : p->initial_capital;
    const u32 tm = MARL_MOBS_TELEMETRY;
    row[tm] = (float)(st->cash / e);
    row[tm + 1u] = (float)(st->gross / e);
    row[tm + 2u] = (float)(1.0 - e / st->peak);
    row[tm + 3u] = var > 1e-18 ? (float)marl_clamp(st->dsr_a / MARL_SQRT(var), -10.0, 10.0) : 0.0f;
    row[tm + 4u] = (var > 1e-18 && bar_vol > 0.0) ? (float)(MARL_SQRT(var) / bar_vol) : 0.0f;
    row[tm + 5u] = (float)st->open_count / (float)(d.max_open > 1u ? d.max_open : 1u);
    row[tm + 6u] = (float)(e / base - 1.0);
    row[tm + 7u] = (float)st->k / (float)dm->episode_len;
    const u32 rg = MARL_MOBS_REGIME;
    for (u32 i = 0; i < MARL_N_REGIME; ++i) row[rg + i] = regime[pt * MARL_N_REGIME + i];
    const float vix = macro_series[pt * MARL_MACRO + 1u];
    const float vix_then = macro_series[(pt - MARL_MOBS_VIX_LOOKBACK) * MARL_MACRO + 1u];
    row[rg + MARL_N_REGIME] = vix / 100.0f;
    row[rg + MARL_N_REGIME + 1u] = (vix - vix_then) / 100.0f;
    const double b1 = (double)close[pt * (S + 1u) + S];
    const double b0 = (double)close[(pt - 1u) * (S + 1u) + S];
    row[rg + MARL_N_REGIME + 2u] = (float)(b1 / b0 - 1.0);
    const u32 dr = MARL_MOBS_DIRECTIVE;
    const u32 m = st->directive;
    const u32 ri = m / 12u, ci = (m / 3u) % 4u, gi = m % 3u;
    for (u32 i = 0; i < 4u; ++i) row[dr + i] = ri == i ? 1.0f : 0.0f;
    for (u32 i = 0; i < 4u; ++i) row[dr + 4u + i] = ci == i ? 1.0f : 0.0f;
    for (u32 i = 0; i < 3u; ++i) row[dr + 8u + i] = gi == i ? 1.0f : 0.0f;
    anchor->equity = e;
    anchor->episode = st->episode;
    anchor->valid = 1u;
}

/* master_obs, one thread per scenario n. */
HD void marl_master_obs_thread(const MasterObsArgs* a, u64 n) {
    if (n >= (u64)a->dm.n_scenarios) return;
    const ScenarioState st = a->scen[n];
    MarlMasterAnchor anchor = a->anchors[n];
    marl_master_obs_row(&a->p, &a->dm, a->close, a->macro_series, a->regime, &st,
                        a->intents + n * MARL_MASTER_INTENTS, &anchor, a->out + n * MARL_MASTER_OBS);
    a->anchors[n] = anchor;
}

#endif /* MARL_MASTER_OBS_CUH */
