/*
 * scenario.cuh: one scenario's reset (spec §1-2) and step (spec §4-5, §4.13 auto-reset), written once
 * for both sides with the block primitives of common.cuh:
 *   - GPU (kernels/env_step.cu): one thread block per scenario, threads walk the symbols;
 *   - host (kernels/host_shim.c): the same code with one "thread" and no barriers, i.e. plain loops
 *     over symbols in the spec's order. tests/host_parity.rs runs it against the Rust CPU backend
 *     (src/env/cpu.rs), so the orchestration the GPU runs is itself checked without a GPU.
 *
 * Phases follow spec §4 (and the CPU backend's passes, whose summation order they reproduce):
 *   A  §4.1-4.3, 4.5-4.6   directive, mask, order sizing, slippage, sell proceeds
 *   B  §4.4                opener ranks in rotated symbol order, open-position limit
 *   C  §4.7                buy budget G1, R, lambda
 *   D  §4.8, 4.9           buys, entry prices; borrow fee
 *   F  §4.10               mark to market at C[t']
 *   G  §4.11               kill switch
 *   H  §5                  the 7 components, rewards, HHI, episode accumulators
 *   I  §4.13, §7           master reward, advance, done, episode record, auto-reset
 * Block-uniform scalars (E0, cash, lambda, fee, E1, ...) are computed by every thread from the
 * same broadcast values; only thread 0 writes the scenario state.
 */
#ifndef MARL_SCENARIO_CUH
#define MARL_SCENARIO_CUH

#include "env_logic.cuh"

/* Rows of the fold buffer: 7 weighted components + 7 squares + the HHI term in phase H. */
#define MARL_FOLD_ROWS 15u
/* Broadcast slots, one per fold result of a step (each written once per step: no reuse races). */
#define MARL_ACC_SLOTS 24u
#define MARL_ACC_SELL 0u
#define MARL_ACC_G1 1u
#define MARL_ACC_REQ 2u
#define MARL_ACC_BUY 3u
#define MARL_ACC_GOPEN 4u
#define MARL_ACC_GROSS 5u
#define MARL_ACC_PROCEEDS 6u
#define MARL_ACC_COMP 7u /* 7 sums, then 7 sums of squares, then hhi: slots 7..21 */

/* Block scratch: shared memory on the GPU, heap on the host. */
typedef struct {
    double* rows;  /* MARL_FOLD_ROWS * S */
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

/* Spec §4: one step of scenario n with symbol actions `actions` ([S]) and master action m. */
MARL_BLOCKFN void marl_step_scenario(const StepParams* p, const EnvDims* dm, u64 seed, u32 n, MarlMarket mk,
                                     const u8* actions, u32 m, ScenarioState* stp, MarlSymState sy,
                                     MarlAccum ac, MarlStepOut out, MarlSymScratch sc, MarlWork w) {
    const u32 S = dm->n_symbols;
    const ScenarioState st = *stp;
    const u32 t = st.t0 + st.k;
    const u64 base = ((u64)st.path * dm->bars + t) * (u64)(S + 1u);
    const float* close = mk.close + base;
    const float* vol = mk.volume + base;
    const float* close1 = mk.close + base + S + 1u;
    const float* open1 = mk.open + base + S + 1u;
    const float* vol1 = mk.volume + base + S + 1u;
    double* rows = w.rows;

    /* §4.1 directive */
    const Directive d = marl_directive(p, m);
    const double e0 = st.equity;
    const u32 open0 = st.open_count;
    const double comm = p->costs.commission;
    const u32 r = st.k % S;

    /* A: §4.2 mask, §4.3 orders, §4.5 slippage (requested size), §4.6 sell proceeds */
    u32 invalid = 0;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double c = (double)close[s];
        const double o1 = (double)open1[s];
        const double q0 = sy.q[s];
        const double v0 = q0 * c;
        const u32 bits = marl_mask_bits(q0, v0, e0, c, sy.entry[s], open0, &d);
        u32 a = actions[s];
        if (((bits >> a) & 1u) == 0u) {
            invalid += 1u; /* masked: executed as HOLD (§4.2) */
            a = MARL_HOLD;
        }
        const Order ord = marl_size_order(p, a, q0, v0, e0, c, o1, &d);
        const double qty = ord.qb + ord.qs;
        const double slip = qty > 0.0 ? marl_slippage(&p->costs, qty * o1, c * (double)vol[s]) : 0.0;
        rows[s] = ord.qs > 0.0 ? ord.qs * (o1 * (1.0 - slip)) * (1.0 - comm) : 0.0;
        sc.q0[s] = q0;
        sc.qb[s] = ord.qb;
        sc.qs[s] = ord.qs;
        sc.slip[s] = slip;
        sc.opener[s] = ord.opener;
        w.flags[(s + S - r) % S] = ord.opener; /* §4.4: position in the order rotated to start at r */
    }
    if (MARL_TID == 0u) w.acc[MARL_ACC_SELL] = 0.0;
    marl_fold_rows(rows, S, S, 1u, w.acc + MARL_ACC_SELL);
    double cash = st.cash + w.acc[MARL_ACC_SELL];
    invalid = marl_block_sum_u32(invalid, w.scan);

    /* B: §4.4 open-position limit. Rank of an opener = openers before it in rotated order. */
    marl_exclusive_scan_u32(w.flags, S, w.scan);
    u32 limited = 0;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        if (sc.opener[s]) {
            const u32 rank = w.flags[(s + S - r) % S];
            if (open0 + rank >= d.max_open) {
                sc.qb[s] = 0.0;
                limited += 1u;
            }
        }
    }
    limited = marl_block_sum_u32(limited, w.scan);

    /* C: §4.7 budget: G1 = sum (q0 - qs) O[t'], R = sum qb (O + lev (Pb - O + c Pb)) */
    const double lev = p->leverage_cap;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double o1 = (double)open1[s];
        rows[s] = (sc.q0[s] - sc.qs[s]) * o1;
        const double pb = o1 * (1.0 + sc.slip[s]);
        rows[S + s] = sc.qb[s] * (o1 + lev * (pb - o1 + comm * pb));
    }
    if (MARL_TID == 0u) {
        w.acc[MARL_ACC_G1] = 0.0;
        w.acc[MARL_ACC_REQ] = 0.0;
    }
    marl_fold_rows(rows, S, S, 2u, w.acc + MARL_ACC_G1);
    const double g1 = w.acc[MARL_ACC_G1];
    const double req = w.acc[MARL_ACC_REQ];
    const double avail = marl_max(lev * (cash + g1) - g1, 0.0);
    const double lambda = req > 0.0 ? marl_min(avail / req, 1.0) : 1.0;

    /* D: §4.8 buys (scaled by lambda), entry price, entry step, peak price */
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double o1 = (double)open1[s];
        const double qb = sc.qb[s] * lambda;
        sc.qb[s] = qb;
        const double q_rest = sc.q0[s] - sc.qs[s];
        const double q1 = q_rest + qb;
        double buy = 0.0;
        if (qb > 0.0) {
            const double pb = o1 * (1.0 + sc.slip[s]);
            buy = qb * pb * (1.0 + comm);
            sy.entry[s] = (q_rest * sy.entry[s] + qb * pb) / q1;
            if (q_rest == 0.0) {
                sy.entry_k[s] = st.k + 1u;
                sy.peak_px[s] = pb;
            }
        }
        if (q1 == 0.0) {
            sy.entry[s] = 0.0;
            sy.peak_px[s] = 0.0;
        }
        sy.q[s] = q1;
        rows[s] = buy;
        rows[S + s] = q1 * o1;
    }
    if (MARL_TID == 0u) {
        w.acc[MARL_ACC_BUY] = 0.0;
        w.acc[MARL_ACC_GOPEN] = 0.0;
    }
    marl_fold_rows(rows, S, S, 2u, w.acc + MARL_ACC_BUY);
    cash -= w.acc[MARL_ACC_BUY];
    const double g_open = w.acc[MARL_ACC_GOPEN];

    /* §4.9 borrow fee, attributed pro rata to q1 * O[t'] in phase H */
    const double fee = marl_borrow_fee(&p->costs, cash);
    cash -= fee;

    /* F: §4.10 mark to market at C[t'] */
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double c1 = (double)close1[s];
        const double q1 = sy.q[s];
        rows[s] = q1 * c1;
        if (q1 > 0.0 && c1 > sy.peak_px[s]) sy.peak_px[s] = c1;
    }
    if (MARL_TID == 0u) w.acc[MARL_ACC_GROSS] = 0.0;
    marl_fold_rows(rows, S, S, 1u, w.acc + MARL_ACC_GROSS);
    double gross = w.acc[MARL_ACC_GROSS];
    double e1 = cash + gross;
    double peak = st.peak;
    if (e1 > peak) peak = e1;

    /* G: §4.11 kill switch (block-uniform branch) */
    const int killed = 1.0 - e1 / peak >= p->kill_drawdown;
    if (killed) {
        for (u32 s = MARL_TID; s < S; s += MARL_NT) {
            const double q1 = sy.q[s];
            double proceeds = 0.0, liq = 0.0;
            if (q1 > 0.0) {
                marl_kill_sale(&p->costs, q1, (double)close1[s], (double)vol1[s], &proceeds, &liq);
                sy.q[s] = 0.0;
                sy.entry[s] = 0.0;
                sy.peak_px[s] = 0.0;
            }
            rows[s] = proceeds;
            sc.liq[s] = liq;
        }
        if (MARL_TID == 0u) w.acc[MARL_ACC_PROCEEDS] = 0.0;
        marl_fold_rows(rows, S, S, 1u, w.acc + MARL_ACC_PROCEEDS);
        cash += w.acc[MARL_ACC_PROCEEDS];
        gross = 0.0;
        e1 = cash;
    }

    /* H: §5 rewards with the final E1, v1, G */
    PortfolioTerms pf;
    pf.initial_capital = p->initial_capital;
    pf.equity_before = e0;
    pf.equity_after = e1;
    pf.gross = gross;
    pf.cap = d.cap;
    pf.n_symbols = (double)S;
    u32 open_count = 0;
    for (u32 s = MARL_TID; s < S; s += MARL_NT) {
        const double c = (double)close[s];
        const double c1 = (double)close1[s];
        const double o1 = (double)open1[s];
        const double q0 = sc.q0[s], qb = sc.qb[s], qs = sc.qs[s];
        const double q1 = sy.q[s];
        const double q_held = q0 - qs + qb; /* position before a kill-switch sale */
        const double slip = sc.slip[s];
        const double pb = o1 * (1.0 + slip);
        const double ps = o1 * (1.0 - slip);
        const double fee_s = fee > 0.0 && g_open > 0.0 ? fee * (q_held * o1) / g_open : 0.0;
        SymbolTerms tm;
        tm.pnl = q_held * c1 - q0 * c - (qb - qs) * o1;
        double cost = comm * (qb * pb + qs * ps) + qb * (pb - o1) + qs * (o1 - ps) + fee_s;
        if (killed) cost += sc.liq[s];
        tm.cost = cost;
        tm.dir = qb > 0.0 ? 1.0 : (qs > 0.0 ? -1.0 : 0.0);
        tm.trade_notional = (qb + qs) * o1;
        tm.bar_move = c1 / o1 - 1.0;
        tm.trade_dd = q1 > 0.0 ? 1.0 - c1 / sy.peak_px[s] : 0.0;
        const double v1 = q1 * c1;
        tm.value = v1;
        double comps[MARL_N_COMPONENTS];
        double a = sy.dsr_a[s], b = sy.dsr_b[s];
        marl_components(&tm, &pf, &p->reward, &a, &b, comps);
        sy.dsr_a[s] = a;
        sy.dsr_b[s] = b;
        double total = 0.0;
        for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
            const double wt = p->reward.w[i] * comps[i];
            total += wt;
            out.comps[(u64)s * MARL_N_COMPONENTS + i] = (float)comps[i];
            rows[(u64)i * S + s] = wt;
            rows[(u64)(MARL_N_COMPONENTS + i) * S + s] = wt * wt;
        }
        out.reward[s] = (float)total;
        double hw = 0.0;
        if (gross > 0.0) {
            const double wg = v1 / gross;
            hw = wg * wg;
        }
        rows[(u64)(2u * MARL_N_COMPONENTS) * S + s] = hw;
        open_count += q1 > 0.0 ? 1u : 0u;
    }
    if (MARL_TID == 0u) {
        for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
            w.acc[MARL_ACC_COMP + i] = ac.sum[i];
            w.acc[MARL_ACC_COMP + MARL_N_COMPONENTS + i] = ac.sum_sq[i];
        }
        w.acc[MARL_ACC_COMP + 2u * MARL_N_COMPONENTS] = 0.0;
    }
    marl_fold_rows(rows, S, S, MARL_FOLD_ROWS, w.acc + MARL_ACC_COMP);
    open_count = marl_block_sum_u32(open_count, w.scan);

    /* I: master reward (§5), advance and done (§4.13), episode record (§7), auto-reset */
    const u32 k1 = st.k + 1u;
    const int truncated = !killed && (k1 == dm->episode_len || st.t0 + k1 == dm->hi - 1u);
    const int done = killed || truncated;
    if (MARL_TID == 0u) {
        const double hhi = w.acc[MARL_ACC_COMP + 2u * MARL_N_COMPONENTS];
        const double bench_ret = (double)close1[S] / (double)close[S] - 1.0;
        double pa = st.dsr_a, pbm = st.dsr_b;
        const double mr = marl_master_reward(&pf, &p->reward, hhi, bench_ret, &pa, &pbm);
        *out.master = (float)mr;
        ScenarioState nx = st;
        nx.k = k1;
        nx.cash = cash;
        nx.equity = e1;
        nx.peak = peak;
        nx.gross = gross;
        nx.dsr_a = pa;
        nx.dsr_b = pbm;
        nx.open_count = open_count;
        nx.directive = m;
        nx.invalid_actions = st.invalid_actions + invalid;
        nx.limited_orders = st.limited_orders + limited;
        *stp = nx;
        for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
            ac.sum[i] = w.acc[MARL_ACC_COMP + i];
            ac.sum_sq[i] = w.acc[MARL_ACC_COMP + MARL_N_COMPONENTS + i];
        }
        *ac.count += (u64)S;
        if (out.debug) {
            double* g = out.debug;
            g[MARL_DBG_LAMBDA] = lambda;
            g[MARL_DBG_FEE] = fee;
            g[MARL_DBG_G1] = g1;
            g[MARL_DBG_REQ] = req;
            g[MARL_DBG_AVAIL] = avail;
            g[MARL_DBG_SELL_CASH] = w.acc[MARL_ACC_SELL];
            g[MARL_DBG_BUY_CASH] = w.acc[MARL_ACC_BUY];
            g[MARL_DBG_GROSS] = gross;
            g[MARL_DBG_E1] = e1;
            g[MARL_DBG_KILLED] = killed ? 1.0 : 0.0;
            g[MARL_DBG_INVALID] = (double)invalid;
            g[MARL_DBG_LIMITED] = (double)limited;
            g[MARL_DBG_G_OPEN] = g_open;
            g[MARL_DBG_HHI] = hhi;
        }
        *out.terminated = (u8)(killed ? 1 : 0);
        *out.truncated = (u8)(truncated ? 1 : 0);
        if (done) {
            const u32 slot = *out.rec_count;
            if (slot < dm->record_cap) {
                EpisodeRecordC rec;
                rec.scenario = n;
                rec.path = st.path;
                rec.start = st.t0;
                rec.length = k1;
                rec.total_return = e1 / p->initial_capital - 1.0;
                rec.killed = killed ? 1u : 0u;
                rec.invalid_actions = nx.invalid_actions;
                rec.limited_orders = nx.limited_orders;
                rec._pad = 0u;
                for (u32 i = 0; i < MARL_N_COMPONENTS; ++i) {
                    rec.sum[i] = ac.sum[i];
                    rec.sum_sq[i] = ac.sum_sq[i];
                }
                rec.count = *ac.count;
                out.recs[slot] = rec;
            }
            *out.rec_count = slot + 1u; /* counts past record_cap too: the host reports the loss */
        }
    }
    if (done) {
        /* Gymnasium same-step autoreset: this step's outputs are the finished episode's; the
         * state (and the next observation) is the new episode's. */
        MARL_SYNC();
        marl_reset_scenario(p, dm, seed, n, st.episode + 1u, stp, sy, ac);
    }
}

#endif /* MARL_SCENARIO_CUH */
