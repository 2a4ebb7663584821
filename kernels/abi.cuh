/*
 * abi.cuh: the kernel ABI, written once for the GPU and the host.
 *
 * Every kernel takes ONE argument struct by value (below); Rust mirrors each struct field for field
 * in src/env/abi.rs (`#[repr(C)]`, device pointers as u64 addresses) and builds it with one
 * constructor for both the CUDA backend (device addresses) and tests/host_parity.rs (host addresses).
 * Sizes and offsets of every field are compared with the C compiler's by `abi_layout_matches`
 * (tests/host_parity.rs, `marl_abi_layout` in kernels/host_shim.c).
 *
 * The body of each kernel is a `__host__ __device__` entry point taking a pointer to that struct and
 * the unit of work it handles (a block = a scenario for reset and step, a row = (scenario, symbol)
 * for the others). The `__global__` kernels (env_step.cu, obs.cu, sampler.cu) call it with their
 * block / thread index; the host shim (host_shim.c) calls it in a loop over every unit. Host parity
 * therefore executes the very entry point the GPU launches, fed by the very struct Rust builds.
 *
 *   kernel          args           entry point                         unit
 *   env_reset       EnvResetArgs   marl_env_reset_block(a, n)          block n = scenario n
 *   env_step        EnvStepArgs    marl_env_step_block(a, n, smem)     block n = scenario n
 *   gather_obs      ObsArgs        marl_gather_obs_row(a, row, l, nl)  row, lane l of nl
 *   dyn_obs         ObsArgs        marl_dyn_obs_thread(a, row)         row = n * S + s
 *   action_mask     MaskArgs       marl_action_mask_thread(a, row)     row = n * S + s
 *   sample_actions  SampleArgs     marl_sample_actions_thread(a, row)  row = n * S + s
 *   sample_policy   PolicySampleArgs marl_sample_policy_thread(a, row)  row = n * S + s
 */
#ifndef MARL_ABI_CUH
#define MARL_ABI_CUH

#include "scenario.cuh"
#include "obs.cuh"
#include "policy.cuh"

/* ---- argument structs (mirrors: src/env/abi.rs) ---- */

/* env_reset: spec §1-2 for every scenario, episode 0. */
typedef struct {
    StepParams p;
    EnvDims dm;
    u64 seed;
    ScenarioState* scen;   /* [N] */
    double* q;             /* [N, S] */
    double* entry;         /* [N, S] */
    double* peak_px;       /* [N, S] */
    double* dsr_a;         /* [N, S] */
    double* dsr_b;         /* [N, S] */
    u32* entry_k;          /* [N, S] */
    double* comp_sum;      /* [N, 7] */
    double* comp_sumsq;    /* [N, 7] */
    u64* comp_count;       /* [N] */
    u32* rec_count;        /* [N] */
} EnvResetArgs;

/* env_step: spec §4 (+ §4.13 same-step auto-reset) for every scenario. */
typedef struct {
    StepParams p;
    EnvDims dm;
    u64 seed;
    const float* open;     /* [P, T, S + 1] */
    const float* close;    /* [P, T, S + 1] */
    const float* volume;   /* [P, T, S + 1] */
    const u8* actions;     /* [N, S] */
    const u8* master;      /* [N] */
    ScenarioState* scen;   /* [N] */
    double* q;             /* [N, S] */
    double* entry;         /* [N, S] */
    double* peak_px;       /* [N, S] */
    double* dsr_a;         /* [N, S] */
    double* dsr_b;         /* [N, S] */
    u32* entry_k;          /* [N, S] */
    double* comp_sum;      /* [N, 7] */
    double* comp_sumsq;    /* [N, 7] */
    u64* comp_count;       /* [N] */
    float* reward;         /* [N, S] */
    float* comps;          /* [N, S, 7] */
    float* master_reward;  /* [N] */
    float* turnover;       /* [N] */
    u8* terminated;        /* [N] */
    u8* truncated;         /* [N] */
    EpisodeRecordC* recs;  /* [N, record_cap] */
    u32* rec_count;        /* [N] */
    double* scratch;       /* [5, N, S] when carry_in_smem is 0, else unused */
    u32* opener;           /* [N, S] when carry_in_smem is 0, else unused */
    double* debug;         /* NULL, or [N, MARL_DEBUG_LEN] scalars of the step (host tests) */
    u32 carry_in_smem;     /* 1: the per-symbol carry of the phases lives in `smem` */
    u32 _pad;
} EnvStepArgs;

/* gather_obs ([N, S, OBS_DIM]) and dyn_obs ([N, S, DYN_OBS], which does not read `tech`). */
typedef struct {
    StepParams p;
    EnvDims dm;
    const float* close;     /* [P, T, S + 1] */
    const float* sentiment; /* [P, T, S] */
    const float* macro_series; /* [P, T, MACRO] */
    const float* regime;    /* [P, T, N_REGIME] */
    const float* tech;      /* [P, S, T, N_TECH]: one symbol's bars contiguous */
    const float* sl;        /* [P, T, S, 3] SL prior cache, or NULL (the SL slice is then 0) */
    const ScenarioState* scen;
    const double* q;
    const double* entry;
    const double* peak_px;
    const u32* entry_k;
    float* out;
} ObsArgs;

/* action_mask: [N, S, 7] u8. */
typedef struct {
    StepParams p;
    EnvDims dm;
    const float* close;
    const ScenarioState* scen;
    const double* q;
    const double* entry;
    u8* out;
} MaskArgs;

/* sample_actions: symbol actions [N, S] and master actions [N] of step `it`. */
typedef struct {
    StepParams p;
    EnvDims dm;
    u64 seed;
    u64 it;
    const float* close;
    const ScenarioState* scen;
    const double* q;
    const double* entry;
    u8* actions;
    u8* master;
    u32 fixed_master; /* a master action, or 0xFFFFFFFF for uniform draws */
    u32 _pad;
} SampleArgs;

/* ---- entry points ---- */

/* Bytes of the step's block scratch (`smem` of marl_env_step_block) for S symbols and `threads`
 * threads per block: fold rows (MARL_FOLD_ROWS x marl_fold_stride(S)) and broadcast slots (f64), the per-symbol carry when `carry`
 * (5 f64 + 1 u32 per symbol), opener flags and scan scratch (u32). Mirrored by
 * env::cuda::step_smem_bytes. */
HD u64 marl_step_smem_bytes(u32 S, u32 threads, u32 carry) {
    const u64 f64s = (u64)MARL_FOLD_ROWS * marl_fold_stride(S) + MARL_ACC_SLOTS + (carry ? 5ull * S : 0ull);
    const u64 u32s = (u64)S + (threads > 33u ? threads : 33u) + (carry ? (u64)S : 0ull);
    return 8ull * f64s + 4ull * u32s;
}

/* One scenario's per-symbol state, offset to scenario n. */
HD MarlSymState marl_sym_state(u64 off, double* q, double* entry, double* peak_px, double* dsr_a, double* dsr_b,
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

/* Scenario n's episode accumulators. */
HD MarlAccum marl_accum(u32 n, double* comp_sum, double* comp_sumsq, u64* comp_count) {
    MarlAccum ac;
    ac.sum = comp_sum + (u64)n * MARL_N_COMPONENTS;
    ac.sum_sq = comp_sumsq + (u64)n * MARL_N_COMPONENTS;
    ac.count = comp_count + n;
    return ac;
}

/* env_reset, block n (= scenario n). */
MARL_BLOCKFN void marl_env_reset_block(const EnvResetArgs* a, u32 n) {
    if (n >= a->dm.n_scenarios) return;
    const u64 off = (u64)n * a->dm.n_symbols;
    marl_reset_scenario(&a->p, &a->dm, a->seed, n, 0u, a->scen + n,
                        marl_sym_state(off, a->q, a->entry, a->peak_px, a->dsr_a, a->dsr_b, a->entry_k),
                        marl_accum(n, a->comp_sum, a->comp_sumsq, a->comp_count));
    if (MARL_TID == 0u) a->rec_count[n] = 0u;
}

/* env_step, block n, with the carry in shared memory (`carry` = 1) or in the global buffers
 * (`carry` = 0), a compile-time constant at both call sites below. */
MARL_BLOCKFN void marl_env_step_block_carry(const EnvStepArgs* a, u32 n, double* smem, const u32 carry) {
    if (n >= a->dm.n_scenarios) return;
    const u32 S = a->dm.n_symbols;
    const u32 nscan = MARL_NT > 33u ? MARL_NT : 33u;
    const u64 off = (u64)n * S;

    MarlWork w;
    w.rows = smem;
    w.acc = w.rows + (u64)MARL_FOLD_ROWS * marl_fold_stride(S);
    double* dtail = w.acc + MARL_ACC_SLOTS;
    MarlSymScratch sc;
    if (carry) {
        sc.q0 = dtail;
        sc.qb = dtail + S;
        sc.qs = dtail + 2u * S;
        sc.slip = dtail + 3u * S;
        sc.liq = dtail + 4u * S;
        dtail += 5u * S;
    } else {
        const u64 plane = (u64)a->dm.n_scenarios * S;
        sc.q0 = a->scratch + off;
        sc.qb = a->scratch + plane + off;
        sc.qs = a->scratch + 2u * plane + off;
        sc.slip = a->scratch + 3u * plane + off;
        sc.liq = a->scratch + 4u * plane + off;
    }
    w.flags = (u32*)dtail;
    w.scan = w.flags + S;
    sc.opener = carry ? w.scan + nscan : a->opener + off;

    MarlMarket mk;
    mk.open = a->open;
    mk.close = a->close;
    mk.volume = a->volume;
    MarlStepOut out;
    out.reward = a->reward + off;
    out.comps = a->comps + off * MARL_N_COMPONENTS;
    out.master = a->master_reward + n;
    out.turnover = a->turnover + n;
    out.terminated = a->terminated + n;
    out.truncated = a->truncated + n;
    out.recs = a->recs + (u64)n * a->dm.record_cap;
    out.rec_count = a->rec_count + n;
    out.debug = a->debug ? a->debug + (u64)n * MARL_DEBUG_LEN : 0;
    marl_step_scenario(&a->p, &a->dm, a->seed, n, mk, a->actions + off, (u32)a->master[n], a->scen + n,
                       marl_sym_state(off, a->q, a->entry, a->peak_px, a->dsr_a, a->dsr_b, a->entry_k),
                       marl_accum(n, a->comp_sum, a->comp_sumsq, a->comp_count), out, sc, w);
}

/* env_step, block n (= scenario n). `smem` holds marl_step_smem_bytes(S, MARL_NT, carry_in_smem)
 * bytes: the kernel's dynamic shared memory on the GPU, a heap buffer on the host. The carry mode
 * is block-uniform and selects one of two inlined copies of the step, in each of which every carry
 * pointer is known to point to shared or to global memory, so the device code addresses it with
 * `ld.shared` / `ld.global` rather than generic loads (tests/nvrtc_compile.rs counts them). */
MARL_BLOCKFN void marl_env_step_block(const EnvStepArgs* a, u32 n, double* smem) {
    if (a->carry_in_smem)
        marl_env_step_block_carry(a, n, smem, 1u);
    else
        marl_env_step_block_carry(a, n, smem, 0u);
}

/* The observation inputs of ObsArgs; `tech` NULL for the dynamic part alone. */
HD MarlObsData marl_obs_data(const ObsArgs* a, const float* tech) {
    MarlObsData od;
    od.close = a->close;
    od.sentiment = a->sentiment;
    od.macro = a->macro_series;
    od.regime = a->regime;
    od.tech = tech;
    od.sl = a->sl;
    return od;
}

/* gather_obs, row = n * S + s, as lane `lane` of `lanes`: the lanes share the technical window,
 * lane 0 writes the dynamic part. */
HD void marl_gather_obs_row(const ObsArgs* a, u64 row, u32 lane, u32 lanes) {
    const u32 S = a->dm.n_symbols;
    if (row >= (u64)a->dm.n_scenarios * S) return;
    const u32 n = (u32)(row / S), s = (u32)(row % S);
    const ScenarioState st = a->scen[n];
    float* o = a->out + row * MARL_OBS_DIM;
    const float* win = marl_window_ptr(&a->dm, &st, a->tech, s); /* contiguous: coalesced lanes */
    for (u32 j = lane; j < MARL_TECH_WINDOW_LEN; j += lanes) o[j] = win[j];
    if (lane == 0u) {
        const u64 off = (u64)n * S;
        marl_dyn_obs_row(&a->p, &a->dm, &st, marl_obs_data(a, a->tech), a->q + off, a->entry + off,
                         a->peak_px + off, a->entry_k + off, s, o + MARL_TECH_WINDOW_LEN);
    }
}

/* dyn_obs, row = n * S + s. */
HD void marl_dyn_obs_thread(const ObsArgs* a, u64 row) {
    const u32 S = a->dm.n_symbols;
    if (row >= (u64)a->dm.n_scenarios * S) return;
    const u32 n = (u32)(row / S), s = (u32)(row % S);
    const ScenarioState st = a->scen[n];
    const u64 off = (u64)n * S;
    marl_dyn_obs_row(&a->p, &a->dm, &st, marl_obs_data(a, 0), a->q + off, a->entry + off, a->peak_px + off,
                     a->entry_k + off, s, a->out + row * MARL_DYN_OBS);
}

/* action_mask, row = n * S + s. */
HD void marl_action_mask_thread(const MaskArgs* a, u64 row) {
    const u32 S = a->dm.n_symbols;
    if (row >= (u64)a->dm.n_scenarios * S) return;
    const u32 n = (u32)(row / S), s = (u32)(row % S);
    const u64 off = (u64)n * S;
    const u32 bits = marl_stored_mask_bits(&a->p, &a->dm, a->scen + n, a->close, a->q + off, a->entry + off, s);
    for (u32 k = 0; k < MARL_N_ACTIONS; ++k) a->out[row * MARL_N_ACTIONS + k] = (u8)((bits >> k) & 1u);
}

/* sample_actions, row = n * S + s (symbol 0 also draws the master action). */
HD void marl_sample_actions_thread(const SampleArgs* a, u64 row) {
    const u32 S = a->dm.n_symbols;
    if (row >= (u64)a->dm.n_scenarios * S) return;
    const u32 n = (u32)(row / S), s = (u32)(row % S);
    const u64 off = (u64)n * S;
    if (s == 0u) a->master[n] = (u8)marl_sample_master(&a->dm, a->seed, a->it, n, a->fixed_master);
    a->actions[row] = (u8)marl_sample_symbol_action(&a->p, &a->dm, a->seed, a->it, a->fixed_master, n, a->scen + n,
                                                    a->close, a->q + off, a->entry + off, s);
}

/* sample_policy: one action per row drawn from the policy's log-probabilities (policy.cuh). */
typedef struct {
    const float* log_probs; /* [rows, na] */
    u32* actions;           /* [rows] the draws */
    float* logp;            /* [rows] the drawn actions' log-probabilities */
    u8* env_actions;        /* NULL, or [rows] the draws as the env step's symbol actions */
    u64 seed;               /* the action stream's seed */
    u64 draws;              /* its position at the start of the step (row r takes draw draws + r) */
    u32 rows;
    u32 na;
} PolicySampleArgs;

HD void marl_sample_policy_thread(const PolicySampleArgs* a, u64 row) {
    if (row >= (u64)a->rows) return;
    const float* lp = a->log_probs + row * a->na;
    const u32 act = marl_sample_row(lp, a->na, marl_stream_uniform(a->seed, a->draws, row));
    a->actions[row] = act;
    a->logp[row] = lp[act];
    if (a->env_actions) a->env_actions[row] = (u8)act;
}

#endif /* MARL_ABI_CUH */
