#!/usr/bin/env bash
# Builds, on a machine with the Rust toolchain (no GPU or CUDA toolkit needed), everything
# scripts/gpu-check.sh runs on a GPU machine, into target/gpu/ of this checkout (git-ignored; the one
# folder to carry, e.g. `carry: ["target/gpu"]` with the device tool, 64 MiB limit):
#
#   bash scripts/gpu-build.sh
#
# target/gpu/marl-trade      the release CLI with the cuda and nvtx features (`bench env --backend
#                            cuda`, `bench suite`, NVTX ranges for scripts/nsys-bench.sh)
# target/gpu/cuda_parity     the GPU-only tests (`--ignored`), release profile
# target/gpu/nvrtc_compile   the NVRTC compile check, run there with that machine's NVRTC
# All stripped. They need glibc >= 2.34, the NVIDIA driver (libcuda.so.1) and NVRTC at run time.
#
# With MARL_GPU_FEATURE=1 (needs a CUDA toolkit: `source /opt/cuda-pypi/env.sh` after
# ../shared/cuda/setup-cuda-13.0-from-pypi.sh; about 15 min cold, in its own target directory
# $HOME/.cache/marl-trade/target-gpu), also the `gpu` feature's (candle on CUDA), gzipped:
# target/gpu/gpu-feature/marl-trade.gz   the release CLI (`train --device cuda`, `bench train --device cuda`)
# target/gpu/gpu-feature/gpu_train.gz    tests/gpu_train.rs (CUDA vs CPU forward and training iteration)
# These link the driver, cuBLAS and cuRAND (CUDA 13) at load time; gpu-check.sh finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marl-trade/target}"
out=target/gpu
mkdir -p "$out"

cargo build --release --features cuda,nvtx --bin marl-trade
strip -o "$out/marl-trade" "$CARGO_TARGET_DIR/release/marl-trade"

# The test executables' paths come from cargo's JSON messages (their names carry a hash):
# `test_exes` reads them on stdin and prints "NAME PATH" per test executable.
test_exes() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
'
}
cargo test --release --features cuda --no-run --test cuda_parity --test nvrtc_compile \
  --message-format=json-render-diagnostics | test_exes | while read -r name exe; do
  strip -o "$out/$name" "$exe"
done

for f in marl-trade cuda_parity nvrtc_compile; do
  test -x "$out/$f" || { echo "gpu-build: $out/$f missing" >&2; exit 1; }
done

if [[ "${MARL_GPU_FEATURE:-0}" == 1 ]]; then
  command -v nvcc >/dev/null || { echo "gpu-build: MARL_GPU_FEATURE=1 needs nvcc (source the CUDA env)" >&2; exit 1; }
  gdir="$out/gpu-feature"
  mkdir -p "$gdir"
  gtarget="$HOME/.cache/marl-trade/target-gpu"
  CARGO_TARGET_DIR="$gtarget" cargo build --release --features gpu --bin marl-trade
  strip -o "$gdir/marl-trade" "$gtarget/release/marl-trade"
  CARGO_TARGET_DIR="$gtarget" cargo test --release --features gpu --no-run --test gpu_train \
    --message-format=json-render-diagnostics | test_exes | while read -r name exe; do
    strip -o "$gdir/$name" "$exe"
  done
  gzip -9f "$gdir/marl-trade" "$gdir/gpu_train"
fi
du -ch "$out"/* "$out"/gpu-feature/* 2>/dev/null | sed 's/^/gpu-build: /'
total=$(du -sb "$out" | cut -f1)
if ((total > 64 * 1024 * 1024)); then
  echo "gpu-build: WARNING: $out is $((total / 1048576)) MiB, above the device tool's 64 MiB carry limit" >&2
fi
