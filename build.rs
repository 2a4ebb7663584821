//! Build script: compiles `kernels/host_shim.c` (the CUDA backend's kernels compiled for the host,
//! see docs/gpu.md) into a small static library. Only the tests reference its symbols
//! (`tests/host_parity.rs`), so it costs nothing in the binary; it builds without CUDA.

fn main() {
    for f in [
        "kernels/host_shim.c",
        "kernels/common.cuh",
        "kernels/env_logic.cuh",
        "kernels/scenario.cuh",
        "kernels/obs.cuh",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .file("kernels/host_shim.c")
        .include("kernels")
        // No contraction into FMA: the host must round like the Rust CPU backend and like the GPU
        // (NVRTC runs with --fmad=false).
        .flag("-ffp-contract=off")
        .flag("-std=c11")
        .opt_level(2)
        .compile("marl_host_shim");
}
