//! NVRTC compile check of every CUDA kernel (no GPU needed, CI):
//! `cargo test --features cuda --test nvrtc_compile`.
//!
//! Compiles each program in `kernels/` (with the same options the backend uses at run time,
//! `cuda::nvrtc_options`: `--fmad=false`, `-default-device`, the layout constants as defines) to PTX
//! for compute_80 (A100) and compute_90 (H100/H200), and fails on any error **or warning** (a
//! non-empty NVRTC log). Needs libnvrtc: `pip install nvidia-cuda-nvrtc-cu12` and its `lib`
//! directory on `LD_LIBRARY_PATH`, or `MARL_NVRTC_LIB=/path/to/libnvrtc.so.12` (see docs/gpu.md).
//! When NVRTC cannot be loaded the test fails with the list of places searched; it never skips.
#![cfg(feature = "cuda")]

use marl_trade::env::cuda::{PROGRAMS, compile_all, nvrtc::Nvrtc};

#[test]
fn every_kernel_compiles_cleanly() {
    let lib = Nvrtc::get()
        .unwrap_or_else(|e| panic!("NVRTC is required for this test and could not be loaded: {e}"));
    eprintln!("NVRTC {:?} from {}", lib.version(), lib.origin);
    for arch in ["compute_80", "compute_90"] {
        let progs = compile_all(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(progs.len(), PROGRAMS.len());
        for (p, (_, _, kernels)) in progs.iter().zip(PROGRAMS.iter()) {
            assert!(
                p.log.is_empty(),
                "{arch} {}: NVRTC warnings:\n{}",
                p.name,
                p.log
            );
            let target = format!(".target sm_{}", &arch["compute_".len()..]);
            assert!(
                p.ptx.contains(&target),
                "{arch} {}: PTX lacks `{target}`",
                p.name
            );
            for k in kernels.iter() {
                assert!(
                    p.ptx.contains(&format!(".entry {k}(")),
                    "{arch} {}: kernel {k} missing from the PTX",
                    p.name
                );
            }
            // --fmad=false: no fused multiply-add in double precision anywhere (parity with the host)
            assert!(
                !p.ptx.contains("fma.rn.f64"),
                "{arch} {}: PTX contains fma.rn.f64",
                p.name
            );
            eprintln!(
                "{arch} {}: {} bytes of PTX, kernels {kernels:?}",
                p.name,
                p.ptx.len()
            );
        }
    }
}

/// A kernel with an error reports NVRTC's log (with the line) rather than a bare status code.
#[test]
fn compile_errors_carry_the_log() {
    let lib = Nvrtc::get()
        .unwrap_or_else(|e| panic!("NVRTC is required for this test and could not be loaded: {e}"));
    let err = lib
        .compile(
            "broken.cu",
            "extern \"C\" __global__ void k() { undeclared_thing = 1; }",
            &[],
            &["--gpu-architecture=compute_80".into()],
        )
        .expect_err("must not compile");
    assert!(
        err.contains("undeclared_thing") && err.contains("broken.cu"),
        "{err}"
    );
}
