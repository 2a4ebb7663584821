//! Build script: compiles the CUDA backend's kernel code for the host (see docs/gpu.md) into three
//! small static libraries:
//! - `marl_host_shim`: the kernels' exact logic, exported as `marl_host_*` (each taking a pointer
//!   to the kernel's own argument struct of `kernels/abi.cuh` and running its per-block entry point);
//! - `marl_host_shim_mutant`: the same with one formula deliberately perturbed
//!   (`MARL_PARITY_MUTANT`, exported as `marl_mutant_host_*`), which the parity test must reject.
//!
//! - `marl_host_emu` (`kernels/host_emu.c`): the block kernels with every CUDA thread of a block an
//!   OS thread (`kernels/block_emu.h`), exported as `marl_emu_env_reset` / `marl_emu_env_step`.
//!
//! - `marl_master_obs_shim` (`kernels/master_obs_shim.c`): the master-observation kernel
//!   (`kernels/master_obs.cuh`), exported as `marl_host_master_obs` (tests/master_obs.rs).
//!
//! Only `tests/host_parity.rs` and `tests/master_obs.rs` reference their symbols, so nothing from
//! them reaches the library or binaries. Needs a C compiler, no CUDA.

fn main() {
    // `cuda_env`: the CUDA env backend is compiled, by the `cuda` feature (cudarc of its own, CUDA
    // 12.8 API, loaded at run time) or by `gpu` (candle's cudarc, bound to the toolkit at build time).
    println!("cargo::rustc-check-cfg=cfg(cuda_env)");
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let gpu = std::env::var_os("CARGO_FEATURE_GPU").is_some();
    if cuda && gpu {
        panic!(
            "the `cuda` and `gpu` features exclude each other: `gpu` already builds the CUDA env \
             backend, on candle's cudarc (bound to the CUDA toolkit's version), while `cuda` pins \
             cudarc to the CUDA 12.8 API; build with one of them"
        );
    }
    if cuda || gpu {
        println!("cargo::rustc-cfg=cuda_env");
    }
    for f in [
        "kernels/host_shim.c",
        "kernels/host_emu.c",
        "kernels/block_emu.h",
        "kernels/abi.cuh",
        "kernels/common.cuh",
        "kernels/env_logic.cuh",
        "kernels/scenario.cuh",
        "kernels/obs.cuh",
        "kernels/master_obs.cuh",
        "kernels/policy.cuh",
        "kernels/master_obs_shim.c",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    for (lib, mutant) in [("marl_host_shim", false), ("marl_host_shim_mutant", true)] {
        let mut b = cc::Build::new();
        b.file("kernels/host_shim.c")
            .include("kernels")
            // No contraction into FMA: the host must round like the Rust CPU backend and like the
            // GPU (NVRTC runs with --fmad=false).
            .flag("-ffp-contract=off")
            .flag("-std=c11")
            .opt_level(2);
        if mutant {
            b.define("MARL_PARITY_MUTANT", None);
        }
        b.compile(lib);
    }
    cc::Build::new()
        .file("kernels/host_emu.c")
        .include("kernels")
        .flag("-ffp-contract=off")
        .flag("-std=c11")
        .flag("-pthread")
        .opt_level(2)
        .compile("marl_host_emu");
    cc::Build::new()
        .file("kernels/master_obs_shim.c")
        .include("kernels")
        .flag("-ffp-contract=off")
        .flag("-std=c11")
        .opt_level(2)
        .compile("marl_master_obs_shim");
}
