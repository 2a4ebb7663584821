/*
 * tsan_main.c: drives the threaded block emulation of the kernels (kernels/host_emu.c, included
 * below as one translation unit) for ThreadSanitizer. tests/host_parity.rs
 * (`block_emulation_is_race_free_under_tsan`) compiles it with `-fsanitize=thread`, writes a case
 * file and runs it:
 *
 *   tsan_main CASE_FILE
 *
 * CASE_FILE (native endianness, written by the test): u64 magic "MARLEMU1"; u64 sizeof(StepParams),
 * u64 sizeof(EnvDims); StepParams; EnvDims; u64 seed, steps, threads, carry_in_smem; u64 n (floats
 * per market array); f32 open[n], close[n], volume[n] ([P, T, S + 1]).
 *
 * It resets every scenario (env_reset) and runs `steps` steps (env_step) block-parallel with
 * `threads` OS threads per block; the actions of each step are drawn by the device sampler's code
 * (marl_sample_actions_thread, on this thread) and one in five is then replaced by a uniform
 * action, masked or not, so masked actions are executed as HOLD too. Between launches only this
 * thread touches the buffers (thread creation and join order them). On success it prints one line
 * `steps=.. episodes=.. killed=.. invalid=.. limited=..` and exits 0; ThreadSanitizer makes it exit
 * 66 with a report on stderr when it sees a data race.
 */
#include "host_emu.c"

#include <stdint.h>

#define MAGIC 0x31554D454C52414DULL /* "MARLEMU1" */

static void die(const char* what) {
    fprintf(stderr, "tsan_main: %s\n", what);
    exit(2);
}

static void rd(FILE* f, void* p, size_t n, const char* what) {
    if (fread(p, 1, n, f) != n) die(what);
}

static u64 rd_u64(FILE* f, const char* what) {
    u64 x;
    rd(f, &x, sizeof x, what);
    return x;
}

static void* alloc0(size_t n) {
    void* p = calloc(n ? n : 1, 1);
    if (!p) die("out of memory");
    return p;
}

int main(int argc, char** argv) {
    if (argc != 2) die("usage: tsan_main CASE_FILE");
    FILE* f = fopen(argv[1], "rb");
    if (!f) die("cannot open the case file");
    if (rd_u64(f, "magic") != MAGIC) die("not a case file (magic)");
    if (rd_u64(f, "sizeof StepParams") != sizeof(StepParams)) die("StepParams size differs from Rust's");
    if (rd_u64(f, "sizeof EnvDims") != sizeof(EnvDims)) die("EnvDims size differs from Rust's");
    StepParams p;
    EnvDims dm;
    rd(f, &p, sizeof p, "StepParams");
    rd(f, &dm, sizeof dm, "EnvDims");
    const u64 seed = rd_u64(f, "seed"), steps = rd_u64(f, "steps");
    const u32 threads = (u32)rd_u64(f, "threads"), carry = (u32)rd_u64(f, "carry");
    const u64 npx = rd_u64(f, "market size");
    if (npx != (u64)dm.paths * dm.bars * (dm.n_symbols + 1u)) die("market size differs from P x T x (S + 1)");
    float* open = (float*)alloc0(npx * 4);
    float* close = (float*)alloc0(npx * 4);
    float* volume = (float*)alloc0(npx * 4);
    rd(f, open, npx * 4, "open");
    rd(f, close, npx * 4, "close");
    rd(f, volume, npx * 4, "volume");
    fclose(f);

    const u32 N = dm.n_scenarios, S = dm.n_symbols;
    const u64 ns = (u64)N * S;
    ScenarioState* scen = (ScenarioState*)alloc0(N * sizeof(ScenarioState));
    double* q = (double*)alloc0(ns * 8);
    double* entry = (double*)alloc0(ns * 8);
    double* peak_px = (double*)alloc0(ns * 8);
    double* dsr_a = (double*)alloc0(ns * 8);
    double* dsr_b = (double*)alloc0(ns * 8);
    u32* entry_k = (u32*)alloc0(ns * 4);
    double* comp_sum = (double*)alloc0((u64)N * MARL_N_COMPONENTS * 8);
    double* comp_sumsq = (double*)alloc0((u64)N * MARL_N_COMPONENTS * 8);
    u64* comp_count = (u64*)alloc0((u64)N * 8);
    u32* rec_count = (u32*)alloc0((u64)N * 4);
    EpisodeRecordC* recs = (EpisodeRecordC*)alloc0((u64)N * dm.record_cap * sizeof(EpisodeRecordC));
    float* reward = (float*)alloc0(ns * 4);
    float* comps = (float*)alloc0(ns * MARL_N_COMPONENTS * 4);
    float* master_reward = (float*)alloc0((u64)N * 4);
    float* turnover = (float*)alloc0((u64)N * 4);
    u8* terminated = (u8*)alloc0(N);
    u8* truncated = (u8*)alloc0(N);
    double* scratch = (double*)alloc0(5 * ns * 8);
    u32* opener = (u32*)alloc0(ns * 4);
    u8* actions = (u8*)alloc0(ns);
    u8* master = (u8*)alloc0(N);

    EnvResetArgs ra;
    memset(&ra, 0, sizeof ra);
    ra.p = p;
    ra.dm = dm;
    ra.seed = seed;
    ra.scen = scen;
    ra.q = q;
    ra.entry = entry;
    ra.peak_px = peak_px;
    ra.dsr_a = dsr_a;
    ra.dsr_b = dsr_b;
    ra.entry_k = entry_k;
    ra.comp_sum = comp_sum;
    ra.comp_sumsq = comp_sumsq;
    ra.comp_count = comp_count;
    ra.rec_count = rec_count;
    if (marl_emu_env_reset(&ra, threads) != 0) die("env_reset emulation failed");

    EnvStepArgs a;
    memset(&a, 0, sizeof a);
    a.p = p;
    a.dm = dm;
    a.seed = seed;
    a.open = open;
    a.close = close;
    a.volume = volume;
    a.actions = actions;
    a.master = master;
    a.scen = scen;
    a.q = q;
    a.entry = entry;
    a.peak_px = peak_px;
    a.dsr_a = dsr_a;
    a.dsr_b = dsr_b;
    a.entry_k = entry_k;
    a.comp_sum = comp_sum;
    a.comp_sumsq = comp_sumsq;
    a.comp_count = comp_count;
    a.reward = reward;
    a.comps = comps;
    a.master_reward = master_reward;
    a.turnover = turnover;
    a.terminated = terminated;
    a.truncated = truncated;
    a.recs = recs;
    a.rec_count = rec_count;
    a.scratch = scratch;
    a.opener = opener;
    a.debug = 0;
    a.carry_in_smem = carry;

    SampleArgs sa;
    memset(&sa, 0, sizeof sa);
    sa.p = p;
    sa.dm = dm;
    sa.seed = seed ^ 0x5a5aULL;
    sa.close = close;
    sa.scen = scen;
    sa.q = q;
    sa.entry = entry;
    sa.actions = actions;
    sa.master = master;
    sa.fixed_master = 0xFFFFFFFFu;

    u64 episodes = 0, killed = 0, invalid = 0, limited = 0;
    for (u64 it = 0; it < steps; ++it) {
        sa.it = it;
        for (u64 row = 0; row < ns; ++row) marl_sample_actions_thread(&sa, row);
        for (u64 row = 0; row < ns; ++row) {
            const u64 h = marl_hash2(seed ^ 0xbadULL, it * ns + row);
            if (h % 5u == 0u) actions[row] = (u8)((h >> 8) % MARL_N_ACTIONS);
        }
        if (marl_emu_env_step(&a, threads) != 0) die("env_step emulation failed");
        for (u32 n = 0; n < N; ++n) {
            killed += terminated[n];
            const u32 c = rec_count[n] < dm.record_cap ? rec_count[n] : dm.record_cap;
            for (u32 i = 0; i < c; ++i) {
                invalid += recs[(u64)n * dm.record_cap + i].invalid_actions;
                limited += recs[(u64)n * dm.record_cap + i].limited_orders;
            }
            episodes += rec_count[n];
            rec_count[n] = 0;
        }
    }
    printf("steps=%llu episodes=%llu killed=%llu invalid=%llu limited=%llu\n", (unsigned long long)steps,
           (unsigned long long)episodes, (unsigned long long)killed, (unsigned long long)invalid,
           (unsigned long long)limited);
    return 0;
}
