/*
 * scenario.cuh: one scenario's reset (spec §1-2) and step (spec §4-5, §4.13 auto-reset), written once
 * for both sides with the block primitives of common.cuh:
 *   - GPU (kernels/env_step.cu): one thread block per scenario, threads walk the symbols;
 *   - host (kernels/host_shim.c): the same code with one "thread" and no barriers, i.e. plain loops
 *     over symbols in the spec's order. tests/host_parity.rs runs it against the Rust CPU backend
 *     (src/env/cpu.rs), so the orchestration the GPU runs is itself checked without a GPU.
 *
 * Phases follow spec §4, one function each, with the names and order of the CPU backend's helpers
 * of `step_lane` (src/env/cpu.rs), whose summation order they reproduce:
 *   A  marl_step_orders          §4.1-4.3, 4.5-4.6  directive, mask, order sizing, slippage, sells
 *   B  marl_step_open_limit      §4.4   opener ranks in rotated symbol order, open-position limit
 *   C  marl_step_budget          §4.7   sell proceeds, buy budget G1, R, lambda
 *   D  marl_step_buys            §4.8, 4.9, 4.10  buys, entry prices, mark to market; borrow fee
 *   F  marl_step_mark_to_market  §4.10  E1 and the peak from the gross value folded in D
 *   G  marl_step_kill_switch     §4.11  kill switch
 *   H  marl_step_rewards         §4.12, §5  the 7 components, rewards, HHI, episode accumulators
 *   I  marl_step_advance         §4.13, §7  master reward, advance, done, episode record, auto-reset
 * Sums that do not depend on each other are folded together, each still in symbol order (so the
 * results are the CPU backend's bits): the sell proceeds (A) with G1 and R (C), once B has limited
 * the buys; buy cash, open gross and close gross in D (the close gross needs only q1). A step has
 * three fold phases (C, D, H; four when the kill switch fires), i.e. three chains of S dependent adds.
 * Block-uniform scalars (E0, cash, lambda, fee, E1, ...) are computed by every thread from the
 * same broadcast values; only thread 0 writes the scenario state.
 */
#ifndef MARL_SCENARIO_CUH
#define MARL_SCENARIO_CUH

#include "env_logic.cuh"

/* Rows of the fold buffer: 7 weighted components + 7 squares + the HHI term in phase H. Each row
 * is marl_fold_stride(S) f64 long. */
#define MARL_FOLD_ROWS 15u
/* Broadcast slots, one per fold result of a step (each written once per step: no reuse races). */
#define MARL_ACC_SLOTS 24u
#define MARL_ACC_SELL 0u
#define MARL_ACC_G1 1u
#define MARL_ACC_REQ 2u
#define MARL_ACC_BUY 3u
#define MARL_ACC_GOPEN 4u
#define MARL_ACC_GROSS 5u
#define MARL_ACC_TRADED 6u
#define MARL_ACC_PROCEEDS 7u
#define MARL_ACC_COMP 8u /* 7 sums, then 7 sums of squares, then hhi: slots 8..22 */

/* Block scratch: shared memory on the GPU, heap on the host. */
typedef struct {
    double* rows;  /* MARL_FOLD_ROWS * marl_fold_stride(S) */
    double* acc;   /* MARL_ACC_SLOTS */
    u32* flags;    /* S: opener flags by rotated position, then their exclusive scan */
    u32* scan;     /* max(threads, 33) */
} MarlWork;

/* Market data, [P, T, S + 1] (column S is the benchmark). */
typedef struct {
    const float* open;
    const float* close;
    const float* volume;
} MarlMarket;

/* One scenario's per-symbol state (spec §2), pointers already offset to the scenario. */
typedef struct {
    double* q;
    double* entry;
    double* peak_px;
    double* dsr_a;
    double* dsr_b;
    u32* entry_k;
} MarlSymState;

/* Episode accumulators of one scenario (reward::ComponentSums). */
typedef struct {
    double* sum;   /* [7] */
    double* sum_sq; /* [7] */
    u64* count;
} MarlAccum;

/* Per-symbol values carried between the phases of one step (thread-private entries). */
typedef struct {
    double* q0;
    double* qb;
    double* qs;
    double* slip;
    double* liq;
    u32* opener;
} MarlSymScratch;

/* One scenario's step outputs. */
typedef struct {
    float* reward;       /* [S] */
    float* comps;        /* [S, 7], unweighted */
    float* master;       /* [1] */
    float* turnover;     /* [1] order notional at the fill / E0 (spec §4.8) */
    u8* terminated;      /* [1] */
    u8* truncated;       /* [1] */
    EpisodeRecordC* recs; /* [record_cap] */
    u32* rec_count;      /* [1] finished episodes since the last drain */
    double* debug;       /* NULL, or [MARL_DEBUG_LEN] scalars of the step (host tests, debugging) */
} MarlStepOut;

/* Scalars of one scenario's step written to MarlStepOut.debug when it is not NULL. */
#define MARL_DEBUG_LEN 14u
#define MARL_DBG_LAMBDA 0u
#define MARL_DBG_FEE 1u
#define MARL_DBG_G1 2u
#define MARL_DBG_REQ 3u
#define MARL_DBG_AVAIL 4u
#define MARL_DBG_SELL_CASH 5u
#define MARL_DBG_BUY_CASH 6u
#define MARL_DBG_GROSS 7u
#define MARL_DBG_E1 8u
#define MARL_DBG_KILLED 9u
#define MARL_DBG_INVALID 10u
#define MARL_DBG_LIMITED 11u
#define MARL_DBG_G_OPEN 12u
#define MARL_DBG_HHI 13u

/* Spec §1-2: start episode e of scenario n. */
MARL_BLOCKFN void marl_reset_scenario(const StepParams* p, const EnvDims* dm, u64 seed, u32 n, u32 e,
                                      ScenarioState* st, MarlSymState sy, MarlAccum ac) {
    const u32 S = dm->n_symbols;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        sy.q[s] = 0.0;
        sy.entry[s] = 0.0;
        sy.peak_px[s] = 0.0;
        sy.dsr_a[s] = 0.0;
        sy.dsr_b[s] = 0.0;
        sy.entry_k[s] = 0u;
    }
    if (MARL_TID == 0u) {
        ScenarioState z;
        u32 path, t0;
        marl_episode_start(dm, seed, n, e, &path, &t0);
        z.cash = p->initial_capital;
        z.equity = p->initial_capital;
        z.peak = p->initial_capital;
        z.gross = 0.0;
        z.dsr_a = 0.0;
        z.dsr_b = 0.0;
        z.path = path;
        z.t0 = t0;
        z.k = 0u;
        z.episode = e;
        z.directive = p->default_action;
        z.open_count = 0u;
        z.invalid_actions = 0u;
        z.limited_orders = 0u;
        *st = z;
        for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
            ac.sum[i] = 0.0;
            ac.sum_sq[i] = 0.0;
        }
        *ac.count = 0ULL;
    }
}

/* One scenario's step: its inputs, and the block-uniform scalars its phases hand on. Every thread
 * holds its own copy; the phases below take it by pointer (all inlined). */
typedef struct {
    const StepParams* p;
    const EnvDims* dm;
    ScenarioState st; /* the state before the step */
    u32 S;
    u32 fs; /* row stride of the fold buffer, marl_fold_stride(S) */
    const float* close;  /* C[t], [S + 1] (column S is the benchmark) */
    const float* vol;    /* V[t] */
    const float* open1;  /* O[t'] */
    const float* close1; /* C[t'], [S + 1] */
    const float* vol1;   /* V[t'] */
    MarlSymState sy;
    MarlSymScratch sc;
    MarlWork w;
    MarlAccum ac;
    MarlStepOut out;
    Directive d;
    double e0;
    u32 open0;
    double comm;
    /* results of the phases, in order */
    double cash;
    u32 invalid, limited;
    double g1, req, avail, lambda;
    double g_open, fee, traded;
    double gross, e1, peak;
    int killed;
    u32 open_count;
} MarlStep;

/* A: §4.2 mask, §4.3 orders, §4.5 slippage (requested size), §4.6 sell proceeds (row 0 of the
 * fold buffer, folded in C). */
MARL_BLOCKFN void marl_step_orders(MarlStep* c, const u8* actions) {
    const u32 S = c->S;
    const u32 r = c->st.k % S;
    double* rows = c->w.rows;
    u32 invalid = 0;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double cl = (double)c->close[s];
        const double o1 = (double)c->open1[s];
        const double q0 = c->sy.q[s];
        const double v0 = q0 * cl;
        const u32 bits = marl_mask_bits(q0, v0, c->e0, cl, c->sy.entry[s], c->open0, &c->d);
        u32 a = actions[s];
        if (((bits >> a) & 1u) == 0u) {
            invalid += 1u; /* masked: executed as HOLD (§4.2) */
            a = MARL_HOLD;
        }
        const Order ord = marl_size_order(c->p, a, q0, v0, c->e0, cl, o1, &c->d);
        const double qty = ord.qb + ord.qs;
        const double slip = qty > 0.0 ? marl_slippage(&c->p->costs, qty * o1, cl * (double)c->vol[s]) : 0.0;
        rows[s] = ord.qs > 0.0 ? ord.qs * (o1 * (1.0 - slip)) * (1.0 - c->comm) : 0.0;
        c->sc.q0[s] = q0;
        c->sc.qb[s] = ord.qb;
        c->sc.qs[s] = ord.qs;
        c->sc.slip[s] = slip;
        c->sc.opener[s] = ord.opener;
        c->w.flags[(s + S - r) % S] = ord.opener; /* §4.4: position in the order rotated to start at r */
    }
    c->invalid = marl_block_sum_u32(invalid, c->w.scan);
}

/* B: §4.4 open-position limit. Rank of an opener = openers before it in rotated order. */
MARL_BLOCKFN void marl_step_open_limit(MarlStep* c) {
    const u32 S = c->S;
    const u32 r = c->st.k % S;
    marl_exclusive_scan_u32(c->w.flags, S, c->w.scan);
    u32 limited = 0;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        if (c->sc.opener[s]) {
            const u32 rank = c->w.flags[(s + S - r) % S];
            if (c->open0 + rank >= c->d.max_open) {
                c->sc.qb[s] = 0.0;
                limited += 1u;
            }
        }
    }
    c->limited = marl_block_sum_u32(limited, c->w.scan);
}

/* C: §4.6 cash after sells (row 0 from A); §4.7 budget: G1 = sum (q0 - qs) O[t'],
 * R = sum qb (O + lev (Pb - O + c Pb)), lambda. */
MARL_BLOCKFN void marl_step_budget(MarlStep* c) {
    const u32 S = c->S, fs = c->fs;
    double* rows = c->w.rows;
    const double lev = c->p->leverage_cap;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double o1 = (double)c->open1[s];
        rows[fs + s] = (c->sc.q0[s] - c->sc.qs[s]) * o1;
        const double pb = o1 * (1.0 + c->sc.slip[s]);
        rows[2u * fs + s] = c->sc.qb[s] * (o1 + lev * (pb - o1 + c->comm * pb));
    }
    if (MARL_TID == 0u) {
        c->w.acc[MARL_ACC_SELL] = 0.0;
        c->w.acc[MARL_ACC_G1] = 0.0;
        c->w.acc[MARL_ACC_REQ] = 0.0;
    }
    marl_fold_rows(rows, fs, S, 3u, c->w.acc + MARL_ACC_SELL);
    c->cash = c->st.cash + c->w.acc[MARL_ACC_SELL];
    c->g1 = c->w.acc[MARL_ACC_G1];
    c->req = c->w.acc[MARL_ACC_REQ];
    c->avail = marl_max(lev * (c->cash + c->g1) - c->g1, 0.0);
    c->lambda = c->req > 0.0 ? marl_min(c->avail / c->req, 1.0) : 1.0;
}

/* D: §4.8 buys (scaled by lambda), entry price, entry step, peak price; §4.10 the per-symbol part
 * of the mark to market at C[t'] (value q1 C[t'], peak price); §4.9 borrow fee, attributed pro
 * rata to q1 * O[t'] in the rewards. Folds buy cash, open gross, close gross and the order
 * notional (qs + qb) O[t'] of the step's fills. */
MARL_BLOCKFN void marl_step_buys(MarlStep* c) {
    const u32 S = c->S, fs = c->fs;
    double* rows = c->w.rows;
    const MarlSymState sy = c->sy;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double o1 = (double)c->open1[s];
        const double qb = c->sc.qb[s] * c->lambda;
        c->sc.qb[s] = qb;
        const double q_rest = c->sc.q0[s] - c->sc.qs[s];
        const double q1 = q_rest + qb;
        double buy = 0.0;
        if (qb > 0.0) {
            const double pb = o1 * (1.0 + c->sc.slip[s]);
            buy = qb * pb * (1.0 + c->comm);
            sy.entry[s] = (q_rest * sy.entry[s] + qb * pb) / q1;
            if (q_rest == 0.0) {
                sy.entry_k[s] = c->st.k + 1u;
                sy.peak_px[s] = pb;
            }
        }
        if (q1 == 0.0) {
            sy.entry[s] = 0.0;
            sy.peak_px[s] = 0.0;
        }
        sy.q[s] = q1;
        rows[s] = buy;
        rows[fs + s] = q1 * o1;
        /* §4.10 */
        const double c1 = (double)c->close1[s];
        rows[2u * fs + s] = q1 * c1;
        rows[3u * fs + s] = (c->sc.qs[s] + qb) * o1;
        if (q1 > 0.0 && c1 > sy.peak_px[s]) sy.peak_px[s] = c1;
    }
    if (MARL_TID == 0u) {
        c->w.acc[MARL_ACC_BUY] = 0.0;
        c->w.acc[MARL_ACC_GOPEN] = 0.0;
        c->w.acc[MARL_ACC_GROSS] = 0.0;
        c->w.acc[MARL_ACC_TRADED] = 0.0;
    }
    marl_fold_rows(rows, fs, S, 4u, c->w.acc + MARL_ACC_BUY);
    c->cash -= c->w.acc[MARL_ACC_BUY];
    c->g_open = c->w.acc[MARL_ACC_GOPEN];
    c->traded = c->w.acc[MARL_ACC_TRADED];
    c->fee = marl_borrow_fee(&c->p->costs, c->cash);
    c->cash -= c->fee;
}

/* F: §4.10 mark to market at C[t']: E1 and the peak (the gross value G was folded in D). */
MARL_BLOCKFN void marl_step_mark_to_market(MarlStep* c) {
    c->gross = c->w.acc[MARL_ACC_GROSS];
    c->e1 = c->cash + c->gross;
    c->peak = c->st.peak;
    if (c->e1 > c->peak) c->peak = c->e1;
}

/* G: §4.11 kill switch (block-uniform branch). */
MARL_BLOCKFN void marl_step_kill_switch(MarlStep* c) {
    c->killed = 1.0 - c->e1 / c->peak >= c->p->kill_drawdown;
    if (!c->killed) return;
    const u32 S = c->S;
    double* rows = c->w.rows;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double q1 = c->sy.q[s];
        double proceeds = 0.0, liq = 0.0;
        if (q1 > 0.0) {
            marl_kill_sale(&c->p->costs, q1, (double)c->close1[s], (double)c->vol1[s], &proceeds, &liq);
            c->sy.q[s] = 0.0;
            c->sy.entry[s] = 0.0;
            c->sy.peak_px[s] = 0.0;
        }
        rows[s] = proceeds;
        c->sc.liq[s] = liq;
    }
    if (MARL_TID == 0u) c->w.acc[MARL_ACC_PROCEEDS] = 0.0;
    marl_fold_rows(rows, c->fs, S, 1u, c->w.acc + MARL_ACC_PROCEEDS);
    c->cash += c->w.acc[MARL_ACC_PROCEEDS];
    c->gross = 0.0;
    c->e1 = c->cash;
}

/* The portfolio terms of §5 with the final E1 and G. */
HD PortfolioTerms marl_step_portfolio(const MarlStep* c) {
    return marl_portfolio_terms(&c->p->reward, c->p->initial_capital, c->e0, c->e1, c->gross, c->d.cap,
                                (double)c->S);
}

/* H: §4.12 / §5 rewards with the final E1, v1, G: the 7 components, HHI, episode accumulators. */
MARL_BLOCKFN void marl_step_rewards(MarlStep* c) {
    const u32 S = c->S, fs = c->fs;
    double* rows = c->w.rows;
    const MarlSymState sy = c->sy;
    const PortfolioTerms pf = marl_step_portfolio(c);
    /* per-step constants: the borrow fee per unit of open value, 1 / G */
    const double fee_share = c->fee > 0.0 && c->g_open > 0.0 ? c->fee / c->g_open : 0.0;
    const double inv_gross = c->gross > 0.0 ? 1.0 / c->gross : 0.0;
    u32 open_count = 0;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double cl = (double)c->close[s];
        const double c1 = (double)c->close1[s];
        const double o1 = (double)c->open1[s];
        const double q0 = c->sc.q0[s], qb = c->sc.qb[s], qs = c->sc.qs[s];
        const double q1 = sy.q[s];
        const double q_held = q0 - qs + qb; /* position before a kill-switch sale */
        const double slip = c->sc.slip[s];
        const double pb = o1 * (1.0 + slip);
        const double ps = o1 * (1.0 - slip);
        const double fee_s = fee_share > 0.0 ? (q_held * o1) * fee_share : 0.0;
        SymbolTerms tm;
        tm.pnl = q_held * c1 - q0 * cl - (qb - qs) * o1;
        double cost = c->comm * (qb * pb + qs * ps) + qb * (pb - o1) + qs * (o1 - ps) + fee_s;
        if (c->killed) cost += c->sc.liq[s];
        tm.cost = cost;
        tm.dir = qb > 0.0 ? 1.0 : (qs > 0.0 ? -1.0 : 0.0);
        tm.trade_notional = (qb + qs) * o1;
        tm.bar_move = tm.dir != 0.0 ? c1 / o1 - 1.0 : 0.0; /* only read for a trade (timing) */
        tm.trade_dd = q1 > 0.0 ? 1.0 - c1 / sy.peak_px[s] : 0.0;
        const double v1 = q1 * c1;
        tm.value = v1;
        double comps[MARL_N_COMPONENTS];
        double a = sy.dsr_a[s], b = sy.dsr_b[s];
        marl_components(&tm, &pf, &c->p->reward, &a, &b, comps);
        sy.dsr_a[s] = a;
        sy.dsr_b[s] = b;
        double total = 0.0;
        for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
            const double wt = c->p->reward.w[i] * comps[i];
            total += wt;
            c->out.comps[(u64)s * MARL_N_COMPONENTS + i] = (float)comps[i];
            rows[(u64)i * fs + s] = wt;
            rows[(u64)(MARL_N_COMPONENTS + i) * fs + s] = wt * wt;
        }
        c->out.reward[s] = (float)total;
        double hw = 0.0;
        if (c->gross > 0.0) {
            const double wg = v1 * inv_gross;
            hw = wg * wg;
        }
        rows[(u64)(2u * MARL_N_COMPONENTS) * fs + s] = hw;
        open_count += q1 > 0.0 ? 1u : 0u;
    }
    if (MARL_TID == 0u) {
        for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
            c->w.acc[MARL_ACC_COMP + i] = c->ac.sum[i];
            c->w.acc[MARL_ACC_COMP + MARL_N_COMPONENTS + i] = c->ac.sum_sq[i];
        }
        c->w.acc[MARL_ACC_COMP + 2u * MARL_N_COMPONENTS] = 0.0;
    }
    marl_fold_rows(rows, fs, S, MARL_FOLD_ROWS, c->w.acc + MARL_ACC_COMP);
    c->open_count = marl_block_sum_u32(open_count, c->w.scan);
}

/* The step's scalars for MarlStepOut.debug (thread 0). */
HD void marl_step_debug(const MarlStep* c, double hhi, double* g) {
    g[MARL_DBG_LAMBDA] = c->lambda;
    g[MARL_DBG_FEE] = c->fee;
    g[MARL_DBG_G1] = c->g1;
    g[MARL_DBG_REQ] = c->req;
    g[MARL_DBG_AVAIL] = c->avail;
    g[MARL_DBG_SELL_CASH] = c->w.acc[MARL_ACC_SELL];
    g[MARL_DBG_BUY_CASH] = c->w.acc[MARL_ACC_BUY];
    g[MARL_DBG_GROSS] = c->gross;
    g[MARL_DBG_E1] = c->e1;
    g[MARL_DBG_KILLED] = c->killed ? 1.0 : 0.0;
    g[MARL_DBG_INVALID] = (double)c->invalid;
    g[MARL_DBG_LIMITED] = (double)c->limited;
    g[MARL_DBG_G_OPEN] = c->g_open;
    g[MARL_DBG_HHI] = hhi;
}

/* The record of the episode that ends with this step (§7), from the advanced state `nx`. */
HD EpisodeRecordC marl_step_record(const MarlStep* c, u32 n, const ScenarioState* nx) {
    EpisodeRecordC rec;
    rec.scenario = n;
    rec.path = c->st.path;
    rec.start = c->st.t0;
    rec.length = nx->k;
    rec.total_return = c->e1 / c->p->initial_capital - 1.0;
    rec.killed = c->killed ? 1u : 0u;
    rec.invalid_actions = nx->invalid_actions;
    rec.limited_orders = nx->limited_orders;
    rec._pad = 0u;
    for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
        rec.sum[i] = c->ac.sum[i];
        rec.sum_sq[i] = c->ac.sum_sq[i];
    }
    rec.count = *c->ac.count;
    return rec;
}

/* I: §4.13 master reward (§5), advance, done, episode record (§7), same-step auto-reset. */
MARL_BLOCKFN void marl_step_advance(MarlStep* c, u64 seed, u32 n, u32 m, ScenarioState* stp) {
    const ScenarioState st = c->st;
    const u32 k1 = st.k + 1u;
    const int truncated = !c->killed && (k1 == c->dm->episode_len || st.t0 + k1 == c->dm->hi - 1u);
    const int done = c->killed || truncated;
    if (MARL_TID == 0u) {
        const double hhi = c->w.acc[MARL_ACC_COMP + 2u * MARL_N_COMPONENTS];
        const double bench_ret = (double)c->close1[c->S] / (double)c->close[c->S] - 1.0;
        const PortfolioTerms pf = marl_step_portfolio(c);
        double pa = st.dsr_a, pbm = st.dsr_b;
        const double mr =
            marl_master_reward(&pf, &c->p->reward, hhi, bench_ret, c->peak, &pa, &pbm);
        *c->out.master = (float)mr;
        *c->out.turnover = c->e0 > 0.0 ? (float)(c->traded / c->e0) : 0.0f;
        ScenarioState nx = st;
        nx.k = k1;
        nx.cash = c->cash;
        nx.equity = c->e1;
        nx.peak = c->peak;
        nx.gross = c->gross;
        nx.dsr_a = pa;
        nx.dsr_b = pbm;
        nx.open_count = c->open_count;
        nx.directive = m;
        nx.invalid_actions = st.invalid_actions + c->invalid;
        nx.limited_orders = st.limited_orders + c->limited;
        *stp = nx;
        for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
            c->ac.sum[i] = c->w.acc[MARL_ACC_COMP + i];
            c->ac.sum_sq[i] = c->w.acc[MARL_ACC_COMP + MARL_N_COMPONENTS + i];
        }
        *c->ac.count += (u64)c->S;
        if (c->out.debug) marl_step_debug(c, hhi, c->out.debug);
        *c->out.terminated = (u8)(c->killed ? 1 : 0);
        *c->out.truncated = (u8)(truncated ? 1 : 0);
        if (done) {
            const u32 slot = *c->out.rec_count;
            if (slot < c->dm->record_cap) c->out.recs[slot] = marl_step_record(c, n, &nx);
            *c->out.rec_count = slot + 1u; /* counts past record_cap too: the host reports the loss */
        }
    }
    if (done) {
        /* Gymnasium same-step autoreset: this step's outputs are the finished episode's; the
         * state (and the next observation) is the new episode's. */
        MARL_SYNC();
        marl_reset_scenario(c->p, c->dm, seed, n, st.episode + 1u, stp, c->sy, c->ac);
    }
}

/* Spec §4: one step of scenario n with symbol actions `actions` ([S]) and master action m, phase by
 * phase in the spec's order (the CPU backend's `step_lane` calls its helpers of the same names in
 * the same order). */
MARL_BLOCKFN void marl_step_scenario(const StepParams* p, const EnvDims* dm, u64 seed, u32 n, MarlMarket mk,
                                     const u8* actions, u32 m, ScenarioState* stp, MarlSymState sy,
                                     MarlAccum ac, MarlStepOut out, MarlSymScratch sc, MarlWork w) {
    MarlStep c;
    c.p = p;
    c.dm = dm;
    c.st = *stp;
    c.S = dm->n_symbols;
    c.fs = marl_fold_stride(c.S);
    const u64 base = ((u64)c.st.path * dm->bars + (c.st.t0 + c.st.k)) * (u64)(c.S + 1u);
    c.close = mk.close + base;
    c.vol = mk.volume + base;
    c.close1 = mk.close + base + c.S + 1u;
    c.open1 = mk.open + base + c.S + 1u;
    c.vol1 = mk.volume + base + c.S + 1u;
    c.sy = sy;
    c.sc = sc;
    c.w = w;
    c.ac = ac;
    c.out = out;
    c.d = marl_directive(p, m); /* §4.1 */
    c.e0 = c.st.equity;
    c.open0 = c.st.open_count;
    c.comm = p->costs.commission;

    marl_step_orders(&c, actions);      /* §4.2, 4.3, 4.5, 4.6 */
    marl_step_open_limit(&c);           /* §4.4 */
    marl_step_budget(&c);               /* §4.6 cash, §4.7 */
    marl_step_buys(&c);                 /* §4.8, 4.9, 4.10 per symbol */
    marl_step_mark_to_market(&c);       /* §4.10 */
    marl_step_kill_switch(&c);          /* §4.11 */
    marl_step_rewards(&c);              /* §4.12, §5 */
    marl_step_advance(&c, seed, n, m, stp); /* §4.13, §7 */
}

#endif /* MARL_SCENARIO_CUH */
