/*
 * common.cuh: helpers shared by every kernel of the CUDA backend and by the host shim.
 *
 * - `HD` marks a function that is compiled for both sides: `__host__ __device__` under NVRTC / nvcc,
 *   `static inline` in plain C (kernels/host_shim.c, built by build.rs for the host parity test).
 * - Integer types without host headers (NVRTC sees no system headers).
 * - `mix64` / `hash2`: bit-identical to src/rng.rs (tests/host_parity.rs checks known values).
 * - Block primitives (ordered folds, integer sums and scans) shared by the device and the host.
 *
 * Floating point: money is double; the only libm function used is sqrt, which is correctly
 * rounded on both sides (IEEE 754), and contraction into FMA is disabled on both sides
 * (NVRTC `--fmad=false`, host `-ffp-contract=off`), so host and device compute the same bits.
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

/* ---- block-level primitives, written once for both sides ----
 *
 * A scenario is stepped by one thread block on the GPU (threadIdx.x walks the symbols) and by one
 * plain loop on the host (MARL_NT = 1, MARL_TID = 0, no barriers). The same source then runs on both
 * sides: `for (u32 s = MARL_TID; s < S; s += MARL_NT)` visits every symbol on either side.
 *
 * Floating-point sums over symbols are folds in symbol order (`((init + x_0) + x_1) + ...`, exactly
 * the CPU backend's `for s in 0..S { acc += x[s] }`), so the device reproduces the CPU bit for bit:
 * every thread writes its symbols' terms into a row of a shared buffer, then thread j folds row j.
 * Independent sums of one phase are folded by different threads at once. For S <= 1024 a fold is a
 * few hundred dependent adds from shared memory.
 */
#if MARL_DEVICE
#define MARL_BLOCKFN __device__ __forceinline__
#define MARL_TID ((u32)threadIdx.x)
#define MARL_NT ((u32)blockDim.x)
#define MARL_SYNC() __syncthreads()
#else
#define MARL_BLOCKFN static inline
#define MARL_TID 0u
#define MARL_NT 1u
#define MARL_SYNC() \
    do {            \
    } while (0)
#endif

/* Fold rows[j * stride + 0 .. n) into out[j] for j < nrows (out[j] holds the initial value and
 * receives the result, visible to every thread on return). The caller's writes to rows and out
 * must precede the call. Contains barriers: call from every thread. */
MARL_BLOCKFN void marl_fold_rows(const double* rows, u32 stride, u32 n, u32 nrows, double* out) {
    MARL_SYNC();
    for (u32 j = MARL_TID; j < nrows; j += MARL_NT) {
        const double* r = rows + (u64)j * stride;
        double acc = out[j];
        for (u32 i = 0; i < n; ++i) acc += r[i];
        out[j] = acc;
    }
    MARL_SYNC();
}

/* Sum of one u32 per thread over the block (exact). `scratch` holds >= 33 u32. Contains barriers. */
MARL_BLOCKFN u32 marl_block_sum_u32(u32 v, u32* scratch) {
#if MARL_DEVICE
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 nwarps = (blockDim.x + 31u) >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        u32 x = lane < nwarps ? scratch[lane] : 0u;
        for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
        if (lane == 0) scratch[32] = x;
    }
    __syncthreads();
    return scratch[32];
#else
    (void)scratch;
    return v;
#endif
}

/* Exclusive prefix sum of flags[0 .. n) in place (integers, exact). Each thread scans a contiguous
 * chunk; thread 0 scans the chunk totals. `scratch` holds >= MARL_NT u32. Contains barriers. */
MARL_BLOCKFN void marl_exclusive_scan_u32(u32* flags, u32 n, u32* scratch) {
    MARL_SYNC();
    const u32 nt = MARL_NT;
    const u32 chunk = (n + nt - 1u) / nt;
    const u32 lo = MARL_TID * chunk;
    const u32 hi = lo + chunk < n ? lo + chunk : n;
    u32 total = 0;
    for (u32 i = lo; i < hi; ++i) total += flags[i];
    scratch[MARL_TID] = total;
    MARL_SYNC();
    if (MARL_TID == 0u) {
        u32 acc = 0;
        for (u32 i = 0; i < nt; ++i) {
            const u32 t = scratch[i];
            scratch[i] = acc;
            acc += t;
        }
    }
    MARL_SYNC();
    u32 acc = scratch[MARL_TID];
    for (u32 i = lo; i < hi; ++i) {
        const u32 f = flags[i];
        flags[i] = acc;
        acc += f;
    }
    MARL_SYNC();
}

#endif /* MARL_COMMON_CUH */
