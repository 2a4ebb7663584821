/*
 * host_emu.c: the block kernels (env_reset, env_step) run on the host with every CUDA thread of a
 * block a real OS thread (kernels/block_emu.h): `threadIdx.x` thread-local, `__syncthreads` a
 * barrier, warp shuffles exchanged through a per-block array between warp barriers, a heap buffer
 * per block as its dynamic shared memory (filled with 0xFF bytes, NaN as f64, before the launch,
 * so a read of shared memory nobody wrote shows up). The block functions are the kernels' own
 * (`marl_env_reset_block`, `marl_env_step_block`, kernels/abi.cuh) from the same headers, compiled
 * with MARL_EMU_THREADS, so the block-parallel code the GPU runs (several threads folding rows at
 * once, block sums and scans across warps, several symbols per thread when S > the block size, the
 * global-memory carry) executes for real without a GPU.
 *
 * Built by build.rs (`cc`, -O2 -ffp-contract=off, like the serial shim) for tests/host_parity.rs,
 * which steps it against the CPU backend; compiled again with -fsanitize=thread together with
 * tests/emu/tsan_main.c by the ThreadSanitizer test of the same file.
 *
 * A launch runs `threads` OS threads; each runs its thread of every block of the grid in order
 * (blocks one after another, as one SM running one block at a time). The threads of one block share
 * only what CUDA threads of one block share: the block's shared memory and the global buffers.
 */
#define _GNU_SOURCE 1 /* syscall(2) for the futex of kernels/block_emu.h */
#define MARL_EMU_THREADS 1

#include <string.h>

#include "abi.cuh"

typedef struct {
    int kind; /* 0: env_reset, 1: env_step */
    const void* args;
    MarlEmuBlock* blk;
    u32 tid;
    u32 nt;
    u32 blocks;
    double* smem;     /* blocks x smem_len f64, or NULL */
    u64 smem_len;     /* f64 per block */
} MarlEmuJob;

static void* marl_emu_worker(void* p) {
    const MarlEmuJob* j = (const MarlEmuJob*)p;
    marl_emu_tid = j->tid;
    marl_emu_nt = j->nt;
    marl_emu_blk = j->blk;
    for (u32 n = 0; n < j->blocks; ++n) {
        if (j->kind == 0)
            marl_env_reset_block((const EnvResetArgs*)j->args, n);
        else
            marl_env_step_block((const EnvStepArgs*)j->args, n, j->smem + (u64)n * j->smem_len);
    }
    return NULL;
}

/* Returns 0; -1 when memory or threads are short; -2 for a block size that is not a positive
 * multiple of 32 of at most MARL_MAX_BLOCK (the device could not launch it either). */
static int marl_emu_launch(int kind, const void* args, u32 blocks, u32 threads, u64 smem_bytes) {
    if (threads == 0u || threads % 32u != 0u || threads > MARL_MAX_BLOCK) return -2;
    MarlEmuBlock blk;
    memset(&blk, 0, sizeof blk);
    MarlEmuJob* jobs = (MarlEmuJob*)calloc(threads, sizeof(MarlEmuJob));
    pthread_t* tids = (pthread_t*)calloc(threads, sizeof(pthread_t));
    const u64 smem_len = (smem_bytes + 7u) / 8u;
    double* smem = smem_len ? (double*)malloc(smem_len * 8u * (blocks ? blocks : 1u)) : NULL;
    int rc = 0;
    if (!jobs || !tids || (smem_len && !smem) || marl_emu_block_init(&blk, threads) != 0) rc = -1;
    if (rc == 0 && smem) memset(smem, 0xFF, smem_len * 8u * (blocks ? blocks : 1u));
    u32 started = 0;
    for (u32 t = 0; rc == 0 && t < threads; ++t) {
        jobs[t].kind = kind;
        jobs[t].args = args;
        jobs[t].blk = &blk;
        jobs[t].tid = t;
        jobs[t].nt = threads;
        jobs[t].blocks = blocks;
        jobs[t].smem = smem;
        jobs[t].smem_len = smem_len;
        if (pthread_create(&tids[t], NULL, marl_emu_worker, &jobs[t]) != 0) {
            /* the started threads would wait for this one forever at the first barrier */
            fprintf(stderr, "block emulation: could not start thread %u of %u\n", t, threads);
            abort();
        }
        ++started;
    }
    for (u32 t = 0; t < started; ++t) pthread_join(tids[t], NULL);
    marl_emu_block_free(&blk);
    free(smem);
    free(tids);
    free(jobs);
    return rc;
}

/* env_reset over its whole grid with `threads` threads per block. */
int marl_emu_env_reset(const EnvResetArgs* a, u32 threads) {
    return marl_emu_launch(0, a, a->dm.n_scenarios, threads, 0u);
}

/* env_step over its whole grid with `threads` threads per block, each block with its own
 * marl_step_smem_bytes(S, threads, carry_in_smem) bytes of "shared memory". */
int marl_emu_env_step(const EnvStepArgs* a, u32 threads) {
    return marl_emu_launch(1, a, a->dm.n_scenarios, threads,
                           marl_step_smem_bytes(a->dm.n_symbols, threads, a->carry_in_smem));
}
