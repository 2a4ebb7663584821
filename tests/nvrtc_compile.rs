//! NVRTC compile check of every CUDA kernel (no GPU needed, CI):
//! `cargo test --features cuda --test nvrtc_compile`.
//!
//! Compiles each program in `kernels/` (with the same options the backend uses at run time,
//! `cuda::nvrtc_options`: `--fmad=false`, `-default-device`, the layout constants as defines) to PTX
//! for compute_80 (A100) and compute_90 (H100/H200), and fails on any error **or warning** (a
//! non-empty NVRTC log), on a float `add` / `sub` / `mul` without an explicit rounding mode (which
//! ptxas may contract into an FMA), on any `fma` and on approximate float instructions, and on a
//! generic (state-space-less) load or store. One exemption: `fma.rn.f64` in `policy.cu`, the
//! inside of CUDA's `exp` that the policy draw calls (kernels/common.cuh says why that draw agrees
//! with the host only up to exp's 1 ulp, while the env kernels stay exact).
//!
//! `ptxas_sm90_report` assembles the compute_90 PTX for sm_90 with `ptxas -v` (ptxas from PyPI's
//! `nvidia-cuda-nvcc-cu12` wheel, installed by `.ci/test`, found through `$MARL_PTXAS` or the
//! wheel's directory) and fails on any register spill or when a kernel's registers exceed what its
//! `__launch_bounds__` block can get (65536 registers per SM, at most 255 per thread); it prints
//! registers, stack and spills per kernel. Needs libnvrtc: `pip install nvidia-cuda-nvrtc-cu12` and its `lib`
//! directory on `LD_LIBRARY_PATH`, or `MARL_NVRTC_LIB=/path/to/libnvrtc.so.12` (see docs/gpu.md).
//! When NVRTC cannot be loaded the test fails with the list of places searched; it never skips.
#![cfg(cuda_env)]

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
            // --fmad=false: no fused multiply-add anywhere (parity with the host), and every
            // float add / sub / mul carries an explicit rounding mode: PTX lets the assembler
            // (ptxas, or the driver's JIT) contract a bare `mul.f64` + `add.f64` into an FMA,
            // `.rn` forbids it. No approximate division / reciprocal / sqrt either.
            // One exemption: the policy draw (kernels/policy.cuh) calls CUDA's `exp`, whose
            // libdevice implementation is written with explicit `fma.rn.f64` (within 1 ulp, see
            // kernels/common.cuh); the env kernels use no such function and stay exact.
            let bad: Vec<_> = inexact_float_ops(&p.ptx)
                .into_iter()
                .filter(|op| !(p.name == "policy.cu" && op.starts_with("fma.rn.f64")))
                .collect();
            assert!(
                bad.is_empty(),
                "{arch} {}: PTX has float instructions that may be fused or approximated: {bad:?}",
                p.name
            );
            // Every load and store names its state space: the step's carry pointers are known to
            // be shared or global memory in each of its two inlined carry modes (kernels/abi.cuh),
            // so no generic `ld` / `st` (which costs an address-space check) remains.
            let generic = generic_accesses(&p.ptx);
            assert!(
                generic.is_empty(),
                "{arch} {}: generic loads / stores: {generic:?}",
                p.name
            );
            if let Ok(dir) = std::env::var("MARL_PTX_DUMP") {
                std::fs::write(format!("{dir}/{}_{arch}.ptx", p.name), &p.ptx).unwrap();
            }
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

/// The float instructions of `ptx` that are not exactly rounded as written: `add` / `sub` / `mul`
/// on f32 / f64 without a rounding modifier (`.rn`, `.rz`, `.rm`, `.rp`; ptxas may fuse such a
/// pair into an FMA), any `fma`, and anything `.approx` or `div.full`.
fn inexact_float_ops(ptx: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in ptx.lines() {
        let mut t = line.trim();
        if t.starts_with('@') {
            t = t
                .split_once(char::is_whitespace)
                .map_or("", |x| x.1)
                .trim_start();
        }
        let op = t
            .split(|c: char| c.is_whitespace() || c == ';')
            .next()
            .unwrap_or("");
        let parts: Vec<&str> = op.split('.').collect();
        let float = matches!(parts.last(), Some(&"f32") | Some(&"f64"));
        let rounded = parts[1..]
            .iter()
            .any(|m| matches!(*m, "rn" | "rz" | "rm" | "rp"));
        let flagged = match parts[0] {
            "add" | "sub" | "mul" => float && !rounded,
            "fma" | "mad" => float,
            _ => false,
        } || (float && (parts.contains(&"approx") || op.starts_with("div.full")));
        if flagged {
            bad.push(t.to_string());
        }
    }
    bad
}

/// Loads and stores of `ptx` without a state space (`ld.f64`, `st.u32`, ...: generic addressing).
fn generic_accesses(ptx: &str) -> Vec<String> {
    ptx.lines()
        .map(|l| l.trim())
        .filter(|t| {
            let op = t.split(char::is_whitespace).next().unwrap_or("");
            let mut parts = op.split('.');
            matches!(parts.next(), Some("ld") | Some("st"))
                && !matches!(
                    parts.next(),
                    Some("global" | "shared" | "param" | "const" | "local")
                )
        })
        .map(str::to_string)
        .collect()
}

/// The PTX check itself flags what it must and passes what it must (it is not vacuous).
#[test]
fn the_ptx_check_flags_unrounded_ops() {
    for bad in [
        "\tadd.f64 \t%fd3, %fd1, %fd2;",
        "\tmul.f32 \t%f3, %f1, %f2;",
        "\t@%p1 sub.f64 \t%fd3, %fd1, %fd2;",
        "\tadd.ftz.f32 \t%f3, %f1, %f2;",
        "\tfma.rn.f64 \t%fd4, %fd1, %fd2, %fd3;",
        "\tdiv.approx.f32 \t%f3, %f1, %f2;",
        "\tdiv.full.f32 \t%f3, %f1, %f2;",
        "\tsqrt.approx.f32 \t%f2, %f1;",
    ] {
        assert_eq!(inexact_float_ops(bad).len(), 1, "{bad}");
    }
    assert_eq!(
        generic_accesses("\tld.f64 \t%fd1, [%rd1];\n\tst.u32 \t[%rd2], %r1;\n").len(),
        2
    );
    assert!(
        generic_accesses("\tld.shared.f64 \t%fd1, [%r1];\n\tst.global.u32 \t[%rd2], %r1;\n")
            .is_empty()
    );
    for good in [
        "\tadd.rn.f64 \t%fd3, %fd1, %fd2;",
        "\tmul.rn.f32 \t%f3, %f1, %f2;",
        "\tadd.s64 \t%rd3, %rd1, %rd2;",
        "\tmul.wide.u32 \t%rd1, %r1, 8;",
        "\tdiv.rn.f64 \t%fd3, %fd1, %fd2;",
        "\tsqrt.rn.f64 \t%fd2, %fd1;",
        "\tcvt.rn.f32.f64 \t%f1, %fd1;",
    ] {
        assert!(inexact_float_ops(good).is_empty(), "{good}");
    }
}

/// ptxas: `$MARL_PTXAS`, else `bin/ptxas` of the `nvidia-cuda-nvcc-cu12` wheel.
fn find_ptxas() -> Result<String, String> {
    if let Ok(p) = std::env::var("MARL_PTXAS") {
        return Ok(p);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import nvidia.cuda_nvcc as m; print(list(m.__path__)[0])",
        ])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = format!("{dir}/bin/ptxas");
    if out.status.success() && std::path::Path::new(&p).is_file() {
        Ok(p)
    } else {
        Err(
            "ptxas not found: `pip install nvidia-cuda-nvcc-cu12` (bash .ci/test does) or set \
             MARL_PTXAS=/path/to/ptxas"
                .into(),
        )
    }
}

/// Per-kernel figures of `ptxas -v`: (kernel, registers, stack bytes, spill store bytes, spill
/// load bytes).
fn parse_ptxas(log: &str) -> Vec<(String, usize, usize, usize, usize)> {
    let num = |s: &str, key: &str| -> Option<usize> {
        let i = s.find(key)?;
        s[..i].split_whitespace().last()?.parse().ok()
    };
    let mut out: Vec<(String, usize, usize, usize, usize)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push((name, usize::MAX, usize::MAX, usize::MAX, usize::MAX));
        } else if let Some(k) = out.last_mut() {
            if let Some(x) = num(line, "bytes stack frame") {
                k.2 = x;
            }
            if let Some(x) = num(line, "bytes spill stores") {
                k.3 = x;
            }
            if let Some(x) = num(line, "bytes spill loads") {
                k.4 = x;
            }
            if let Some(x) = num(line, "registers") {
                k.1 = x;
            }
        }
    }
    out
}

#[test]
fn ptxas_sm90_report() {
    use marl_trade::env::abi::{MAX_BLOCK, ROWS_BLOCK};
    let ptxas = find_ptxas().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let progs = compile_all("compute_90").unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    for (p, (_, _, kernels)) in progs.iter().zip(PROGRAMS.iter()) {
        let src = dir.path().join(format!("{}.ptx", p.name));
        std::fs::write(&src, &p.ptx).unwrap();
        let o = std::process::Command::new(&ptxas)
            .args(["-arch=sm_90", "-v", "--warn-on-spills"])
            .arg(&src)
            .arg("-o")
            .arg(dir.path().join(format!("{}.cubin", p.name)))
            .output()
            .unwrap_or_else(|e| panic!("running {ptxas}: {e}"));
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "ptxas failed on {}:\n{log}", p.name);
        let report = parse_ptxas(&log);
        for k in kernels.iter() {
            let (_, regs, stack, st, ld) = report
                .iter()
                .find(|r| r.0 == *k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} missing from the ptxas report:\n{log}"));
            let bound = if k.starts_with("env_") {
                MAX_BLOCK
            } else {
                ROWS_BLOCK
            };
            eprintln!(
                "sm_90 {k}: {regs} registers, {stack} bytes stack, {st} / {ld} bytes spill \
                 stores / loads; launch bound {bound} threads ({} registers per block)",
                regs * bound
            );
            assert!(
                regs != usize::MAX && st != usize::MAX,
                "{k}: unparsed:\n{log}"
            );
            assert_eq!((st, ld), (0, 0), "{k}: register spills:\n{log}");
            assert!(
                regs <= 255 && regs * bound <= 65536,
                "{k}: {regs} registers do not fit a block of {bound} threads"
            );
            seen.push(*k);
        }
    }
    assert_eq!(
        seen.len(),
        PROGRAMS.iter().map(|p| p.2.len()).sum::<usize>()
    );
}
