/*
 * common.cuh: helpers shared by every kernel of the CUDA backend and by the host shim.
 *
 * - `HD` marks a function that is compiled for both sides: `__host__ __device__` under NVRTC / nvcc,
 *   `static inline` in plain C (kernels/host_shim.c, built by build.rs for the host parity test).
 * - Integer types without host headers (NVRTC sees no system headers).
 * - `mix64` / `hash2`: bit-identical to src/rng.rs (tests/host_parity.rs checks known values).
 * - Block primitives (ordered folds, integer sums and a ballot/popc scan) shared by the device and the host.
 *
 * Floating point: money is double; the only libm function the env uses is sqrt, which is correctly
 * rounded on both sides (IEEE 754), and contraction into FMA is disabled on both sides
 * (NVRTC `--fmad=false`, host `-ffp-contract=off`), so host and device compute the same bits.
 * The one exception is outside the env: the policy draw (policy.cuh) takes exp of log-probabilities,
 * the host's libm `exp` (the same function Rust's `f64::exp` calls, so the host shim and the
 * trainer agree bit for bit) and CUDA's `exp` (documented within 1 ulp), so a draw can differ
 * between host and device only when its uniform falls within a few ulps of a cumulative-probability
 * boundary (about 1e-15 per row).
 */
#ifndef MARL_COMMON_CUH
#define MARL_COMMON_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MARL_DEVICE 1
#define HD __host__ __device__ __forceinline__
#define MARL_SQRT(x) sqrt(x)
#define MARL_FABS(x) fabs(x)
#else
#define MARL_DEVICE 0
#define HD static inline
#define MARL_SQRT(x) __builtin_sqrt(x)
#define MARL_FABS(x) __builtin_fabs(x)
#include <math.h> /* exp, for the policy draw (policy.cuh) */
#endif

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

/* ---- counter-based random numbers (src/rng.rs) ---- */

#define MARL_GOLDEN 0x9E3779B97F4A7C15ULL

/* The SplitMix64 output function (rng::mix64). */
HD u64 marl_mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The `counter`-th output of stream `key` (rng::hash2). Unsigned arithmetic wraps like Rust's
 * wrapping_mul / wrapping_add. */
HD u64 marl_hash2(u64 key, u64 counter) {
    return marl_mix64(marl_mix64(key ^ MARL_GOLDEN) + counter * MARL_GOLDEN);
}

/* Uniform integer in [0, n) for n > 0: Lemire's multiply-shift on a 64-bit hash (the high word of
 * the 128-bit product). */
HD u32 marl_below(u64 h, u32 n) {
#if defined(__CUDA_ARCH__)
    return (u32)__umul64hi(h, (u64)n);
#else
    return (u32)(((unsigned __int128)h * (unsigned __int128)n) >> 64);
#endif
}

/* ---- small float helpers with Rust's semantics for non-NaN inputs ---- */

/* f64::min / f64::max (inputs are never NaN in the step). */
HD double marl_min(double a, double b) { return b < a ? b : a; }
HD double marl_max(double a, double b) { return b > a ? b : a; }
/* f64::clamp */
HD double marl_clamp(double x, double lo, double hi) {
    if (x < lo) x = lo;
    if (x > hi) x = hi;
    return x;
}

/* ---- block-level primitives, written once for every build ----
 *
 * A scenario is stepped by one thread block. The same source is compiled three ways:
 *   - device (NVRTC): threadIdx.x walks the symbols, `__syncthreads`, warp shuffles;
 *   - threaded host emulation (MARL_EMU_THREADS, kernels/host_emu.c, kernels/block_emu.h): every
 *     CUDA thread of a block is an OS thread (thread-local `threadIdx`), `__syncthreads` a barrier
 *     of the block's threads, a warp shuffle an exchange through a per-block array between two
 *     barriers of the warp's 32 threads; the block-parallel code paths run for real on the host,
 *     under ThreadSanitizer in CI (tests/host_parity.rs `block_emulation_*`);
 *   - serial host (kernels/host_shim.c): MARL_NT = 1, MARL_TID = 0, no barriers, i.e. plain loops
 *     over symbols in the spec's order.
 * `for (u32 s = MARL_TID; s < S; s += MARL_NT)` visits every symbol in every build; the block size
 * is at most MARL_MAX_BLOCK (the kernels' `__launch_bounds__`), so a thread owns several symbols
 * when S > MARL_MAX_BLOCK.
 *
 * Floating-point sums over symbols are folds in symbol order (`((init + x_0) + x_1) + ...`, exactly
 * the CPU backend's `for s in 0..S { acc += x[s] }`), so the device reproduces the CPU bit for bit:
 * every thread writes its symbols' terms into a row of a shared buffer, then thread j folds row j.
 * Independent sums of one phase are folded by different threads at once. Rows are `stride` apart,
 * an odd number of f64 (marl_fold_stride), so the threads folding rows at once read different
 * shared-memory banks.
 */

/* Threads per block at most (the `__launch_bounds__` of every block kernel; env::abi::MAX_BLOCK). */
#define MARL_MAX_BLOCK 256u
/* Threads per block of the per-row kernels (gather_obs, dyn_obs, action_mask, sample_actions): their
 * `__launch_bounds__` and the host's block size (env::abi::ROWS_BLOCK). */
#define MARL_ROWS_BLOCK 256u

#if MARL_DEVICE
#define MARL_BLOCKFN __device__ __forceinline__
#define MARL_SERIAL 0
#define MARL_TID ((u32)threadIdx.x)
#define MARL_NT ((u32)blockDim.x)
#define MARL_SYNC() __syncthreads()
#define MARL_SHFL_DOWN(v, o) __shfl_down_sync(0xffffffffu, (v), (o))
#define MARL_BALLOT(p) __ballot_sync(0xffffffffu, (p))
#define MARL_POPC(x) ((u32)__popc(x))
#elif defined(MARL_EMU_THREADS)
#include "block_emu.h"
#define MARL_BLOCKFN static inline
#define MARL_SERIAL 0
#define MARL_TID marl_emu_tid
#define MARL_NT marl_emu_nt
#define MARL_SYNC() marl_emu_syncthreads()
#define MARL_SHFL_DOWN(v, o) marl_emu_shfl_down((v), (o))
#define MARL_BALLOT(p) marl_emu_ballot((p))
#define MARL_POPC(x) ((u32)__builtin_popcount(x))
#else
#define MARL_BLOCKFN static inline
#define MARL_SERIAL 1
#define MARL_TID 0u
#define MARL_NT 1u
#define MARL_SYNC() \
    do {            \
    } while (0)
/* one thread, lane 0 of its warp */
#define MARL_BALLOT(p) ((p) ? 1u : 0u)
#define MARL_POPC(x) ((u32)__builtin_popcount(x))
#endif

/* Row stride of the fold buffer for S symbols: S rounded up to an odd number, so rows start in
 * different banks of shared memory (4-byte banks, 8-byte values: an even stride in f64 maps every
 * row start to the same few banks). Mirrored by env::abi::fold_stride. */
HD u32 marl_fold_stride(u32 S) { return S | 1u; }

/* Fold rows[j * stride + 0 .. n) into out[j] for j < nrows (out[j] holds the initial value and
 * receives the result, visible to every thread on return). The caller's writes to rows and out
 * must precede the call. Contains barriers: call from every thread. */
MARL_BLOCKFN void marl_fold_rows(const double* rows, u32 stride, u32 n, u32 nrows, double* out) {
#ifndef MARL_MUTANT_NO_FOLD_SYNC /* defined only by the race test's mutant (tests/host_parity.rs) */
    MARL_SYNC();
#endif
    for (u32 j = MARL_TID; j < nrows; j += MARL_NT) {
        const double* r = rows + (u64)j * stride;
        double acc = out[j];
        for (u32 i = 0; i < n; ++i) acc += r[i];
        out[j] = acc;
    }
    MARL_SYNC();
}

/* Sum of one u32 per thread over the block (exact). `scratch` holds >= 33 u32. Contains barriers.
 * The block size is a multiple of 32 (a whole number of warps) on the device and in the threaded
 * emulation. */
MARL_BLOCKFN u32 marl_block_sum_u32(u32 v, u32* scratch) {
#if MARL_SERIAL
    (void)scratch;
    return v;
#else
    const u32 lane = MARL_TID & 31u, warp = MARL_TID >> 5;
    const u32 nwarps = (MARL_NT + 31u) >> 5;
    for (u32 o = 16; o > 0; o >>= 1) v += MARL_SHFL_DOWN(v, o);
    MARL_SYNC();
    if (lane == 0) scratch[warp] = v;
    MARL_SYNC();
    if (warp == 0) {
        u32 x = lane < nwarps ? scratch[lane] : 0u;
        for (u32 o = 16; o > 0; o >>= 1) x += MARL_SHFL_DOWN(x, o);
        if (lane == 0) scratch[32] = x;
    }
    MARL_SYNC();
    return scratch[32];
#endif
}

/* Exclusive prefix sum of flags[0 .. n) in place (integers, exact). Each thread sums a contiguous
 * chunk; the chunk totals are scanned with warp votes, no serial pass: within a warp, bit b of every
 * lane's total is one `ballot`, and a lane's exclusive prefix is the sum over b of
 * popc(ballot_b & lanes below it) << b (the loop stops once no lane of the warp has higher bits; the
 * opener flags are 0/1, so with S <= threads one ballot per bit and one to stop); each warp's total
 * goes to scratch[warp], and a thread adds the totals of the warps before its own (at most 7).
 * `scratch` holds >= 8 u32 (>= MARL_NT / 32). Contains barriers and warp votes: call from every
 * thread of the block (a whole number of warps). */
MARL_BLOCKFN void marl_exclusive_scan_u32(u32* flags, u32 n, u32* scratch) {
    MARL_SYNC();
    const u32 nt = MARL_NT;
    const u32 chunk = (n + nt - 1u) / nt;
    const u32 lo = MARL_TID * chunk < n ? MARL_TID * chunk : n;
    const u32 hi = lo + chunk < n ? lo + chunk : n;
    u32 total = 0;
    for (u32 i = lo; i < hi; ++i) total += flags[i];
    const u32 lane = MARL_TID & 31u, warp = MARL_TID >> 5;
    const u32 below = lane ? 0xffffffffu >> (32u - lane) : 0u;
    u32 prefix = 0, warp_total = 0;
    for (u32 b = 0; b < 32u; ++b) {
        const u32 m = MARL_BALLOT((total >> b) & 1u);
        prefix += MARL_POPC(m & below) << b;
        warp_total += MARL_POPC(m) << b;
        if (b == 31u || MARL_BALLOT((total >> b) > 1u) == 0u) break; /* warp-uniform */
    }
    if (lane == 0u) scratch[warp] = warp_total;
    MARL_SYNC();
    u32 acc = prefix;
    for (u32 w = 0; w < warp; ++w) acc += scratch[w];
    for (u32 i = lo; i < hi; ++i) {
        const u32 f = flags[i];
        flags[i] = acc;
        acc += f;
    }
    MARL_SYNC();
}

#endif /* MARL_COMMON_CUH */
