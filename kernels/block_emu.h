/*
 * block_emu.h: a CUDA thread block emulated with OS threads, for the threaded host build of the
 * kernels (kernels/host_emu.c; included by common.cuh when MARL_EMU_THREADS is defined, never by
 * NVRTC).
 *
 * - every CUDA thread of a block is a POSIX thread; `threadIdx.x` and `blockDim.x` are thread-local
 *   (`marl_emu_tid`, `marl_emu_nt`);
 * - `__syncthreads()` is a barrier of the block's threads (`marl_emu_syncthreads`);
 * - `__ballot_sync(0xffffffff, p)` is an exchange between two barriers of the warp's 32 threads,
 *   like the shuffle below (`marl_emu_ballot`): every lane posts p and reads all 32 predicates;
 * - `__shfl_down_sync(0xffffffff, v, o)` is an exchange through a per-block array between two
 *   barriers of the warp's 32 threads (`marl_emu_shfl_down`): lane l reads lane l + o's value, or
 *   keeps its own when l + o >= 32, as on the device;
 * - `__shared__` memory is a heap buffer per block, handed to the block function as on the device.
 *
 * The barriers are C11 atomics with acquire/release order (ThreadSanitizer sees their
 * happens-before edges, so a missing `__syncthreads` between a write and a read of another thread
 * is reported as a data race). A thread that waits on a barrier for MARL_EMU_TIMEOUT_S seconds means the threads
 * of a block reached different numbers of barriers (a barrier in divergent code, undefined on the
 * device): the emulation reports it and aborts instead of hanging. Linux only (futex(2)).
 */
#ifndef MARL_BLOCK_EMU_H
#define MARL_BLOCK_EMU_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MARL_EMU_TIMEOUT_S
#define MARL_EMU_TIMEOUT_S 60
#endif

/* A reusable barrier of `count` threads: arrivals count up with an atomic add; the last arrival
 * resets the count and publishes the next generation (release) and wakes the waiters (futex); the
 * others sleep on the generation word until it changes and read it with acquire order. The
 * acquire/release pairs are the happens-before edges ThreadSanitizer sees: everything a thread
 * wrote before the barrier is visible to every thread after it, nothing else is ordered. */
typedef struct {
    unsigned count;
    _Atomic unsigned arrived;
    _Atomic unsigned generation;
} MarlEmuBarrier;

/* One emulated block: its barrier, one barrier per warp, the shuffle exchange array. */
typedef struct {
    unsigned nt;
    MarlEmuBarrier block;
    MarlEmuBarrier* warps; /* [nt / 32] */
    unsigned* xchg;        /* [nt] */
} MarlEmuBlock;

static _Thread_local unsigned marl_emu_tid;
static _Thread_local unsigned marl_emu_nt = 1u;
static _Thread_local MarlEmuBlock* marl_emu_blk;

static void marl_emu_barrier_init(MarlEmuBarrier* b, unsigned count) {
    b->count = count;
    atomic_init(&b->arrived, 0u);
    atomic_init(&b->generation, 0u);
}

static void marl_emu_barrier_wait(MarlEmuBarrier* b, const char* what) {
    const unsigned gen = atomic_load_explicit(&b->generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1u, memory_order_acq_rel) + 1u == b->count) {
        atomic_store_explicit(&b->arrived, 0u, memory_order_relaxed);
        atomic_store_explicit(&b->generation, gen + 1u, memory_order_release);
        syscall(SYS_futex, (unsigned*)&b->generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        return;
    }
    const struct timespec tick = {1, 0};
    for (int waited = 0; atomic_load_explicit(&b->generation, memory_order_acquire) == gen;) {
        /* returns at once when the generation already moved on (EAGAIN), else when woken or after
         * a second */
        if (syscall(SYS_futex, (unsigned*)&b->generation, FUTEX_WAIT_PRIVATE, gen, &tick, NULL, 0) != 0 &&
            errno == ETIMEDOUT && ++waited > MARL_EMU_TIMEOUT_S) {
            fprintf(stderr,
                    "block emulation: thread %u waited %d s at a %s barrier (%u of %u arrived): the "
                    "threads reached different barriers (a barrier in divergent code)\n",
                    marl_emu_tid, MARL_EMU_TIMEOUT_S, what, atomic_load(&b->arrived), b->count);
            abort();
        }
    }
}

/* __syncthreads() */
static inline void marl_emu_syncthreads(void) { marl_emu_barrier_wait(&marl_emu_blk->block, "__syncthreads"); }

/* __shfl_down_sync(0xffffffff, v, o) for a full warp. */
static inline unsigned marl_emu_shfl_down(unsigned v, unsigned o) {
    MarlEmuBlock* b = marl_emu_blk;
    const unsigned t = marl_emu_tid, lane = t & 31u;
    MarlEmuBarrier* w = &b->warps[t >> 5];
    b->xchg[t] = v;
    marl_emu_barrier_wait(w, "warp shuffle");
    const unsigned r = lane + o < 32u ? b->xchg[t + o] : v;
    marl_emu_barrier_wait(w, "warp shuffle");
    return r;
}

/* __ballot_sync(0xffffffff, pred) for a full warp: every lane posts its predicate, a barrier of the
 * warp's 32 threads, every lane reads all 32, a second barrier (so the slots can be reused). */
static inline unsigned marl_emu_ballot(unsigned pred) {
    MarlEmuBlock* b = marl_emu_blk;
    const unsigned t = marl_emu_tid, base = t & ~31u;
    MarlEmuBarrier* w = &b->warps[t >> 5];
    b->xchg[t] = pred != 0u;
    marl_emu_barrier_wait(w, "warp ballot");
    unsigned m = 0;
    for (unsigned l = 0; l < 32u; ++l) m |= (b->xchg[base + l] ? 1u : 0u) << l;
    marl_emu_barrier_wait(w, "warp ballot");
    return m;
}

/* A block of `nt` threads (a positive multiple of 32). Returns 0, or -1 when out of memory. */
static int marl_emu_block_init(MarlEmuBlock* b, unsigned nt) {
    b->nt = nt;
    b->warps = (MarlEmuBarrier*)calloc(nt / 32u, sizeof(MarlEmuBarrier));
    b->xchg = (unsigned*)calloc(nt, sizeof(unsigned));
    if (!b->warps || !b->xchg) return -1;
    marl_emu_barrier_init(&b->block, nt);
    for (unsigned w = 0; w < nt / 32u; ++w) marl_emu_barrier_init(&b->warps[w], 32u);
    return 0;
}

static void marl_emu_block_free(MarlEmuBlock* b) {
    free(b->warps);
    free(b->xchg);
}

#endif /* MARL_BLOCK_EMU_H */
