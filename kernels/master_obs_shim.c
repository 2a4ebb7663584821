/*
 * master_obs_shim.c: the master-observation kernel (kernels/master_obs.cuh) compiled for the host
 * (build.rs, same flags as host_shim.c). Only tests/master_obs.rs references these symbols.
 */
#include <stddef.h>

#include "master_obs.cuh"

#define PUT(x) \
    do {       \
        if (i < cap) out[i] = (u64)(x); \
        ++i;   \
    } while (0)

/* Sizes and offsets of MarlMasterAnchor and MasterObsArgs, then the layout constants; returns the
 * length of the list (tests/master_obs.rs, `master_obs_abi_matches`). */
u32 marl_master_obs_layout(u64* out, u32 cap) {
    u32 i = 0;
    PUT(sizeof(MarlMasterAnchor));
    PUT(offsetof(MarlMasterAnchor, equity));
    PUT(offsetof(MarlMasterAnchor, episode));
    PUT(offsetof(MarlMasterAnchor, valid));
    PUT(sizeof(MasterObsArgs));
    PUT(offsetof(MasterObsArgs, p));
    PUT(offsetof(MasterObsArgs, dm));
    PUT(offsetof(MasterObsArgs, close));
    PUT(offsetof(MasterObsArgs, macro_series));
    PUT(offsetof(MasterObsArgs, regime));
    PUT(offsetof(MasterObsArgs, scen));
    PUT(offsetof(MasterObsArgs, intents));
    PUT(offsetof(MasterObsArgs, anchors));
    PUT(offsetof(MasterObsArgs, out));
    PUT(MARL_MASTER_INTENTS);
    PUT(MARL_MOBS_TELEMETRY);
    PUT(MARL_MOBS_REGIME);
    PUT(MARL_MOBS_DIRECTIVE);
    PUT(MARL_MASTER_OBS);
    PUT(MARL_MOBS_VIX_LOOKBACK);
    return i;
}

#undef PUT

/* The master_obs kernel, every scenario in order. */
void marl_host_master_obs(const MasterObsArgs* a) {
    for (u64 n = 0; n < a->dm.n_scenarios; ++n) marl_master_obs_thread(a, n);
}
