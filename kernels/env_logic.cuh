/*
 * env_logic.cuh: the per-element step logic of docs/env-spec.md, as plain functions compiled for
 * both the GPU (NVRTC) and the host (kernels/host_shim.c, see build.rs).
 *
 * Every function mirrors one of the Rust CPU backend, operation for operation, so that both sides
 * round identically:
 *   marl_directive      <-> env::logic::directive        (spec §3)
 *   marl_mask_bits      <-> env::logic::mask_bits        (spec §4.2)
 *   marl_size_order     <-> env::logic::size_order       (spec §4.3)
 *   marl_slippage       <-> costs::slippage              (spec §4.5)
 *   marl_borrow_fee     <-> costs::borrow_fee            (spec §4.9)
 *   marl_dsr            <-> reward::dsr                  (spec §5, sharpe)
 *   marl_components     <-> reward::SymbolTerms::components (spec §5)
 *   marl_master_reward  <-> reward::master_reward        (spec §5, master)
 *   marl_episode_start  <-> env::EnvLayout::episode_start (spec §1)
 * Structs passed to kernels mirror the `#[repr(C)]` Rust structs field for field; tests check
 * sizes and offsets (tests/host_parity.rs, `abi_layout_matches`).
 *
 * Money and quantities are double, market data float (converted to double exactly), as the spec.
 */
#ifndef MARL_ENV_LOGIC_CUH
#define MARL_ENV_LOGIC_CUH

#include "common.cuh"

/* ---- parameters (mirrors of costs::CostParams, reward::RewardParams, env::logic::StepParams) ---- */

#define MARL_N_ACTIONS 7
#define MARL_N_COMPONENTS 7
#define MARL_MASTER_ACTIONS 48

#define MARL_HOLD 0u
#define MARL_BUY_SMALL 1u
#define MARL_BUY_MEDIUM 2u
#define MARL_BUY_LARGE 3u
#define MARL_SELL_PARTIAL 4u
#define MARL_SELL_ALL 5u
#define MARL_ADD_TO_WINNER 6u

typedef struct {
    double commission;     /* per side, fraction of fill notional */
    double half_spread;    /* fraction */
    double impact_coef;
    double max_slippage;   /* fraction */
    double borrow_per_bar; /* rate per bar on negative cash */
} CostParams;

typedef struct {
    double w[MARL_N_COMPONENTS]; /* pnl, cost, timing, sharpe, drawdown, util, divers */
    double dsr_eta;
    double dsr_clip;
    double trade_dd_threshold;
    double util_target;
    double bar_vol;              /* ref_vol / sqrt(bars_per_year) */
    double master_w[5];          /* sharpe, divers, excess, drawdown, utility */
    double master_gamma;         /* risk aversion of the utility term */
} RewardParams;

typedef struct {
    CostParams costs;
    RewardParams reward;
    double initial_capital;
    double leverage_cap;
    double kill_drawdown;
    double buy_size[4];          /* BUY_SMALL, BUY_MEDIUM, BUY_LARGE, ADD_TO_WINNER */
    double sell_partial;
    double risk_multipliers[4];
    double position_caps[4];
    u32 max_open[3];             /* already clamped to S */
    u32 n_symbols;
    u32 episode_len;
    u32 default_action;
} StepParams;

/* Mirror of env::ScenarioState (spec §2). */
typedef struct {
    double cash;
    double equity;
    double peak;
    double gross;
    double dsr_a;
    double dsr_b;
    u32 path;
    u32 t0;
    u32 k;
    u32 episode;
    u32 directive;
    u32 open_count;
    u32 invalid_actions;
    u32 limited_orders;
} ScenarioState;

/* Sizes and the bar range of an environment (mirror of env::abi::EnvDims, built from EnvLayout). */
typedef struct {
    u32 n_scenarios;
    u32 n_symbols;
    u32 paths;
    u32 bars;
    u32 lo;
    u32 hi;
    u32 start_a;
    u32 start_b;
    u32 episode_len;
    u32 record_cap; /* episode-record slots per scenario between two drains */
} EnvDims;

/* One finished episode (spec §7; mirror of env::abi::EpisodeRecordC). */
typedef struct {
    u32 scenario;
    u32 path;
    u32 start;
    u32 length;
    double total_return;
    u32 killed;
    u32 invalid_actions;
    u32 limited_orders;
    u32 _pad;
    double sum[MARL_N_COMPONENTS];
    double sum_sq[MARL_N_COMPONENTS];
    u64 count;
} EpisodeRecordC;

/* ---- spec §1: episode starts ---- */

/* (path, t0) of episode e of scenario n after reset(seed): EnvLayout::episode_start. */
HD void marl_episode_start(const EnvDims* dm, u64 seed, u32 n, u32 e, u32* path, u32* t0) {
    const u64 key = 2ULL * (((u64)n << 20) + (u64)e);
    const u64 h1 = marl_hash2(seed, key);
    const u64 h2 = marl_hash2(seed, key + 1ULL);
    *path = (u32)(h1 % (u64)dm->paths);
    *t0 = (u32)((u64)dm->start_a + h2 % (u64)(dm->start_b - dm->start_a + 1u));
}

/* ---- spec §3: master directive ---- */

typedef struct {
    double risk;
    double cap;
    u32 max_open;
    u32 mode; /* 0 defensive, 1 neutral, 2 aggressive */
} Directive;

HD Directive marl_directive(const StepParams* p, u32 m) {
    Directive d;
    const u32 ri = m / 12u, ci = (m / 3u) % 4u, gi = m % 3u;
    d.risk = p->risk_multipliers[ri];
    d.cap = p->position_caps[ci];
    d.max_open = p->max_open[gi];
    d.mode = gi;
    return d;
}

/* ---- spec §4.2: action mask, bit a set = action a allowed ---- */

HD u32 marl_mask_bits(double q0, double v0, double e0, double close, double entry, u32 open0,
                      const Directive* d) {
    const int has = q0 > 0.0;
    const int full = v0 >= d->cap * e0;
    const int buy_ok = !full && (has || open0 < d->max_open);
    u32 bits = 1u << MARL_HOLD;
    if (buy_ok) bits |= (1u << MARL_BUY_SMALL) | (1u << MARL_BUY_MEDIUM) | (1u << MARL_BUY_LARGE);
    if (has) {
        bits |= (1u << MARL_SELL_PARTIAL) | (1u << MARL_SELL_ALL);
        if (close > entry && !full) bits |= 1u << MARL_ADD_TO_WINNER;
    }
    return bits;
}

/* ---- spec §4.3: order sizing at the decision price ---- */

typedef struct {
    double qb;  /* buy quantity */
    double qs;  /* sell quantity */
    u32 opener; /* a buy that opens a new position */
} Order;

HD Order marl_size_order(const StepParams* p, u32 action, double q0, double v0, double e0, double close,
                         double open_next, const Directive* d) {
    Order o;
    o.qb = 0.0;
    o.qs = 0.0;
    o.opener = 0u;
    if (action == MARL_BUY_SMALL || action == MARL_BUY_MEDIUM || action == MARL_BUY_LARGE ||
        action == MARL_ADD_TO_WINNER) {
        const u32 idx = action == MARL_ADD_TO_WINNER ? 3u : action - MARL_BUY_SMALL;
        const double room = d->cap * e0 - v0;
        const double dollars = marl_min(p->buy_size[idx] * d->risk * e0, room);
        if (dollars > 0.0) {
            o.qb = dollars / close;
            o.opener = q0 <= 0.0;
        }
    } else if (action == MARL_SELL_PARTIAL || action == MARL_SELL_ALL) {
        double qs = action == MARL_SELL_ALL ? q0 : p->sell_partial * q0;
        /* no dust: a sell that would leave less than 1e-6 * C0 takes the whole position */
        if ((q0 - qs) * open_next < 1e-6 * p->initial_capital) qs = q0;
        o.qs = qs;
    }
    return o;
}

/* ---- spec §4.5 and §4.9: costs ---- */

/* Slippage fraction of an order of notional x against a bar dollar volume dv. */
HD double marl_slippage(const CostParams* c, double x, double dv) {
    double part = x / marl_max(dv, 1.0);
#ifdef MARL_PARITY_MUTANT
    /* Deliberately wrong by one part in 1e9: only in the test-only "mutant" build of the host shim
     * (build.rs), which tests/host_parity.rs must catch (`parity_detects_a_one_ulp_class_change`). */
    part = part * (1.0 + 1e-9);
#endif
    return marl_min(c->half_spread + c->impact_coef * MARL_SQRT(part), c->max_slippage);
}

/* Borrow fee for one bar: positive when cash is negative. */
HD double marl_borrow_fee(const CostParams* c, double cash) {
    return cash < 0.0 ? -cash * c->borrow_per_bar : 0.0;
}

/* Kill-switch sale of q1 shares at the close c1 (spec §4.11): slippage of §4.5 with X = q1 * c1 and
 * DV = c1 * v1; writes the cash received and the commission + slippage cost. */
HD void marl_kill_sale(const CostParams* c, double q1, double c1, double v1, double* proceeds,
                       double* cost) {
    const double comm = c->commission;
    const double slip = marl_slippage(c, q1 * c1, c1 * v1);
    const double ps = c1 * (1.0 - slip);
    *proceeds = q1 * ps * (1.0 - comm);
    *cost = comm * q1 * ps + q1 * (c1 - ps);
}

/* ---- spec §5: reward ---- */

/* Differential Sharpe ratio on the P&L scale (reward::dsr): D * sd from the moments (a, b) before the
 * update with the variance floor `floor`; a1, b1 the updated moments. */
HD double marl_dsr(double a, double b, double r, double eta, double clip, double floor, double* a1,
                   double* b1) {
    const double da = r - a;
    const double db = r * r - b;
    const double var = (b - a * a) + floor;
    double d = 0.0;
    if (var > 1e-18) {
        const double sd = MARL_SQRT(var);
        d = marl_clamp((b * da - 0.5 * a * db) / (var * sd), -clip, clip) * sd;
    }
    *a1 = a + eta * da;
    *b1 = b + eta * db;
    return d;
}

/* What one symbol's step produced (reward::SymbolTerms). */
typedef struct {
    double pnl;            /* mid-price P&L, currency */
    double cost;           /* commission + slippage + borrow fee, currency */
    double dir;            /* +1 buy, -1 sell, 0 no trade by the agent */
    double trade_notional; /* traded notional at O[t'] */
    double bar_move;       /* C[t'] / O[t'] - 1 */
    double trade_dd;       /* 1 - C[t'] / peak_px, 0 without a position */
    double value;          /* position value after the step */
} SymbolTerms;

/* Portfolio quantities every symbol's reward reads (reward::PortfolioTerms), with the per-step
 * constants the per-symbol arithmetic multiplies by instead of dividing; built once per
 * scenario-step by marl_portfolio_terms (reward::PortfolioTerms::new). */
typedef struct {
    double initial_capital;
    double equity_before;
    double equity_after;
    double gross;
    double cap;
    double n_symbols;
    double inv_c0;   /* 1 / C0 */
    double inv_full; /* 1 / (cap * E0), 0 when cap * E0 <= 0 */
    double inv_e1;   /* 1 / E1, 0 when E1 <= 0 */
    double inv_thr;  /* 1 / trade_dd_threshold */
    double inv_gross; /* 1 / G, 0 when G = 0 */
    double inv_cap;  /* 1 / cap, 0 when cap <= 0 */
    double inv_s;    /* 1 / S */
    double util_err; /* G / E1 - util_target (G / E1 is 0 when E1 <= 0) */
    double var_floor; /* (cap * bar_vol)^2, the sharpe term's variance floor */
} PortfolioTerms;

HD PortfolioTerms marl_portfolio_terms(const RewardParams* p, double initial_capital, double equity_before,
                                       double equity_after, double gross, double cap, double n_symbols) {
    PortfolioTerms pf;
    const double full = cap * equity_before;
    const double u = equity_after > 0.0 ? gross / equity_after : 0.0;
    const double fv = cap * p->bar_vol;
    pf.initial_capital = initial_capital;
    pf.equity_before = equity_before;
    pf.equity_after = equity_after;
    pf.gross = gross;
    pf.cap = cap;
    pf.n_symbols = n_symbols;
    pf.inv_c0 = 1.0 / initial_capital;
    pf.inv_full = full > 0.0 ? 1.0 / full : 0.0;
    pf.inv_e1 = equity_after > 0.0 ? 1.0 / equity_after : 0.0;
    pf.inv_thr = 1.0 / p->trade_dd_threshold;
    pf.inv_gross = gross > 0.0 ? 1.0 / gross : 0.0;
    pf.inv_cap = cap > 0.0 ? 1.0 / cap : 0.0;
    pf.inv_s = 1.0 / n_symbols;
    pf.util_err = u - p->util_target;
    pf.var_floor = fv * fv;
    return pf;
}

/* The 7 unweighted components (reward::SymbolTerms::components); updates the symbol's DSR moments in
 * place. bar_move is only read when dir != 0. */
HD void marl_components(const SymbolTerms* t, const PortfolioTerms* pf, const RewardParams* p,
                        double* dsr_a, double* dsr_b, double* out) {
    const double inv_c0 = pf->inv_c0;
    const double bar_vol = p->bar_vol;
    const double pnl = t->pnl * inv_c0;
    const double cost = -(t->cost * inv_c0);
    /* the traded stock's first-bar move, times the order's size as a fraction of a full-cap order */
    const double timing = t->dir != 0.0 ? t->dir * t->bar_move * marl_min(t->trade_notional * pf->inv_full, 1.0) : 0.0;
    double a1, b1;
    const double sharpe =
        marl_dsr(*dsr_a, *dsr_b, (t->pnl - t->cost) * inv_c0, p->dsr_eta, p->dsr_clip, pf->var_floor, &a1, &b1);
    const double w = t->value * pf->inv_e1;
    const double thr = p->trade_dd_threshold;
    /* losses past the intra-trade drawdown threshold count again, times the depth past it */
    const double drawdown = t->trade_dd > thr && pnl < 0.0 ? pnl * ((t->trade_dd - thr) * pf->inv_thr) : 0.0;
    /* the utilisation error split by responsibility: exposure share over, unused room under */
    const double err = pf->util_err;
    double util = 0.0;
    if (err > 0.0) {
        util = -(err * (t->value * pf->inv_gross)) * bar_vol;
    } else if (err < 0.0) {
        util = -((-err) * (marl_max(1.0 - w * pf->inv_cap, 0.0) * pf->inv_s)) * bar_vol;
    }
    /* concentration past the directive's per-position cap, as P&L at stake */
    const double divers = -(marl_max(w - pf->cap, 0.0) * bar_vol);
    out[0] = pnl;
    out[1] = cost;
    out[2] = timing;
    out[3] = sharpe;
    out[4] = drawdown;
    out[5] = util;
    out[6] = divers;
    *dsr_a = a1;
    *dsr_b = b1;
}

/* Master reward (reward::master_reward); hhi_gross = sum_s (v1 / G)^2 (0 when G = 0); peak = the
 * episode's peak equity after the mark to market; updates (A_p, B_p) in place. The portfolio DSR's
 * floor is (util_target * bar_vol)^2; the drawdown term is -(1 - E1 / peak), the utility term
 * r_p - 0.5 * gamma * r_p^2. */
HD double marl_master_reward(const PortfolioTerms* pf, const RewardParams* p, double hhi_gross,
                             double bench_ret, double peak, double* a, double* b) {
    const double rp = pf->equity_after / pf->equity_before - 1.0;
    const double fv = p->util_target * p->bar_vol;
    double a1, b1;
    const double d = marl_dsr(*a, *b, rp, p->dsr_eta, p->dsr_clip, fv * fv, &a1, &b1);
    const double divers = hhi_gross > 0.0 ? 1.0 / (pf->n_symbols * hhi_gross) : 0.0;
    const double excess = rp - bench_ret;
    const double drawdown = peak > 0.0 ? -(1.0 - pf->equity_after / peak) : 0.0;
    *a = a1;
    *b = b1;
    return p->master_w[0] * d + p->master_w[1] * divers + p->master_w[2] * excess +
           p->master_w[3] * drawdown + p->master_w[4] * (rp - 0.5 * p->master_gamma * (rp * rp));
}

/* ---- device-side random actions (kernels/sampler.cu) ----
 *
 * Counter-based: the draw of (step `it`, scenario n, slot j) is hash2(seed, (it * N + n) * (S + 1) + j),
 * j = S for the master action. Symbol actions are uniform over the actions the mask (§4.2, with
 * this step's directive) allows, so a sampled action is never executed as HOLD.
 */
HD u64 marl_sample_counter(const EnvDims* dm, u64 it, u32 n, u32 j) {
    return (it * (u64)dm->n_scenarios + (u64)n) * ((u64)dm->n_symbols + 1ULL) + (u64)j;
}

/* Master action: `fixed` when < 48, else uniform over the 48-way grid. */
HD u32 marl_sample_master(const EnvDims* dm, u64 seed, u64 it, u32 n, u32 fixed) {
    if (fixed < MARL_MASTER_ACTIONS) return fixed;
    return marl_below(marl_hash2(seed, marl_sample_counter(dm, it, n, dm->n_symbols)), MARL_MASTER_ACTIONS);
}

/* The j-th (0-based) set bit of `bits`, j < popcount(bits). */
HD u32 marl_nth_set_bit(u32 bits, u32 j) {
    for (u32 a = 0; a < 32u; ++a) {
        if ((bits >> a) & 1u) {
            if (j == 0u) return a;
            --j;
        }
    }
    return 0u;
}

HD u32 marl_popcount(u32 bits) {
    u32 c = 0;
    while (bits) {
        bits &= bits - 1u;
        ++c;
    }
    return c;
}

HD u32 marl_sample_symbol(const EnvDims* dm, u64 seed, u64 it, u32 n, u32 s, u32 bits) {
    const u32 j = marl_below(marl_hash2(seed, marl_sample_counter(dm, it, n, s)), marl_popcount(bits));
    return marl_nth_set_bit(bits, j);
}

#endif /* MARL_ENV_LOGIC_CUH */
