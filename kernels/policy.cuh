/*
 * policy.cuh: the policy's action draw, written once for the GPU (kernels/policy.cu, one thread per
 * row) and the host (the trainer's `agents::dist::sample_row` fed by `train::ResumableRng`, checked
 * against this code through kernels/host_shim.c in tests/host_parity.rs).
 *
 * The trainer's action stream is SplitMix64 (src/rng.rs): its d-th draw (0-based) from seed `seed`
 * is mix64(seed + (d + 1) * GOLDEN), a function of d alone. So the rows of one step, which the
 * host draws one after another (row r takes draw `draws + r`), can be drawn by independent threads
 * from the stream's position `draws` at the start of the step, and the host and the device make
 * the same draws. Each row is an inverse-CDF draw in f64 over exp(log-probability) in action order;
 * actions of probability zero (masked: log-probability -inf) are never drawn.
 */
#ifndef MARL_POLICY_CUH
#define MARL_POLICY_CUH

#include "common.cuh"

/* Draw `draws + r` of the SplitMix64 stream `seed`, as a uniform in [0, 1) (rng::to_unit_f64). */
HD double marl_stream_uniform(u64 seed, u64 draws, u64 r) {
    const u64 z = marl_mix64(seed + (draws + r + 1ull) * MARL_GOLDEN);
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* Inverse-CDF draw from one row of `na` log-probabilities with the uniform `u` (agents::dist::
 * sample_row): the first action whose cumulative probability exceeds u * total, skipping actions of
 * probability zero; the last action of positive probability when rounding leaves none (0 if all
 * are zero). */
HD u32 marl_sample_row(const float* lp, u32 na, double u) {
    double total = 0.0;
    for (u32 a = 0; a < na; ++a) total += exp((double)lp[a]);
    const double target = u * total;
    double cum = 0.0;
    u32 last_ok = 0u;
    for (u32 a = 0; a < na; ++a) {
        const double p = exp((double)lp[a]);
        if (p > 0.0) {
            cum += p;
            last_ok = a;
            if (target < cum) return a;
        }
    }
    return last_ok;
}

#endif /* MARL_POLICY_CUH */
