/*
 * common.cuh: helpers shared by every kernel of the CUDA backend and by the host shim.
 *
 * - `HD` marks a function that is compiled for both sides: `__host__ __device__` under NVRTC / nvcc,
 *   `static inline` in plain C (kernels/host_shim.c, built by build.rs for the host parity test).
 * - Integer types without host headers (NVRTC sees no system headers).
 * - `mix64` / `hash2`: bit-identical to src/rng.rs (tests/host_parity.rs checks known values).
 * - Block reductions over shared memory (device only).
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
#if MARL_DEVICE
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

#if MARL_DEVICE
/* ---- block-level reductions (device only) ----
 *
 * Every step quantity that sums over symbols is reduced in a fixed order so that the device
 * reproduces the CPU backend's sequential loops bit for bit: each thread writes its symbols'
 * terms to a shared buffer, then thread 0 folds them in symbol order starting from `init`
 * (`((init + x_0) + x_1) + ...`, exactly `for s in 0..S { acc += x[s] }`). For S <= 1024 this is a
 * few hundred dependent adds from shared memory per reduction. Define MARL_TREE_SUMS to use a
 * pairwise tree instead (faster for large S, equal up to rounding, no longer bit-identical).
 */

/* Sum of buf[0..n) in symbol order, added to init; the result is broadcast to every thread.
 * Caller has written buf and must not touch it until this returns. Contains __syncthreads(). */
__device__ __forceinline__ double marl_block_fold(double init, double* buf, u32 n, double* slot) {
    __syncthreads();
#ifndef MARL_TREE_SUMS
    if (threadIdx.x == 0) {
        double acc = init;
        for (u32 i = 0; i < n; ++i) acc += buf[i];
        *slot = acc;
    }
#else
    for (u32 width = 1; width < n; width *= 2) {
        for (u32 i = threadIdx.x * 2 * width; i + width < n; i += blockDim.x * 2 * width) {
            buf[i] += buf[i + width];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) *slot = init + (n > 0 ? buf[0] : 0.0);
#endif
    __syncthreads();
    return *slot;
}

/* Integer sum over the block (exact, any order): warp shuffles, then one warp over the partials.
 * `scratch` holds >= 32 u32. Contains __syncthreads(). */
__device__ __forceinline__ u32 marl_block_sum_u32(u32 v, u32* scratch) {
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
}

/* Exclusive prefix sum of flags[0..n) in place (integers, exact). Used for the opener ranks of
 * spec §4.4. Each thread scans a contiguous chunk, one warp scans the chunk totals.
 * `scratch` holds >= 1024 + 32 u32. Contains __syncthreads(). */
__device__ __forceinline__ void marl_block_exclusive_scan_u32(u32* flags, u32 n, u32* scratch) {
    __syncthreads();
    const u32 nt = blockDim.x;
    const u32 chunk = (n + nt - 1) / nt;
    const u32 lo = threadIdx.x * chunk;
    u32 hi = lo + chunk;
    if (hi > n) hi = n;
    u32 total = 0;
    for (u32 i = lo; i < hi; ++i) total += flags[i];
    scratch[threadIdx.x] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 acc = 0;
        for (u32 i = 0; i < nt; ++i) {
            u32 t = scratch[i];
            scratch[i] = acc;
            acc += t;
        }
    }
    __syncthreads();
    u32 acc = scratch[threadIdx.x];
    for (u32 i = lo; i < hi; ++i) {
        u32 f = flags[i];
        flags[i] = acc;
        acc += f;
    }
    __syncthreads();
}
#endif /* MARL_DEVICE */

#endif /* MARL_COMMON_CUH */
