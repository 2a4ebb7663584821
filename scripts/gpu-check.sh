#!/usr/bin/env bash
# One-shot GPU check (docs/gpu.md): on a machine with an NVIDIA driver and no Rust toolchain, runs
# the binaries that scripts/gpu-build.sh built elsewhere and carried in target/gpu/, and writes
# every result into one file:
#
#   bash scripts/gpu-check.sh [RESULTS_FILE]      (default: gpu-check-results.txt)
#
# Steps, each capped by `timeout`, the whole run by a budget of MARL_GPU_CHECK_BUDGET_S seconds
# (default 450, i.e. under 8 minutes; a step that would start past the budget is recorded as
# skipped), in order of importance:
#   1. the device (nvidia-smi) and the NVRTC compile check with this machine's NVRTC;
#   2. every GPU-only test of tests/cuda_parity.rs (`--ignored`): CPU-vs-CUDA whole-episode parity
#      for the parity cases and every block width S in {1, 31, 32, 143, 256, 300, 1100}, the device
#      sampler replayed on the CPU, `step_device`, the packed copies counted per step
#      (`step_copies_are_packed`), the three rollout modes (separate, fused, CUDA graph) reaching
#      the same state, a second stream ordered by the backend's events, the kernels' resources as
#      the driver reports them, device rollout throughput;
#   3. `marl-trade bench suite --backends cuda` (the fixed N x S x obs matrix, every rollout mode,
#      device time from CUDA events); its JSON is appended to the results file;
#   4. `marl-trade bench env --backend cuda` for N in {128, 1024, 4096} x S in {143, 512} (the
#      host-driven VecEnv loop: packed action upload, step, packed output read, observations);
#   5. compute-sanitizer racecheck, synccheck and memcheck on a short parity test and on the
#      rollout modes (fused kernel, graph), when compute-sanitizer is installed (recorded as
#      absent otherwise);
#   6. scripts/nsys-bench.sh on a small matrix when nsys is installed (reports under
#      gpu-check-nsys/, their kernel / copy / NVTX summaries appended);
#   2b. (run right after 2) when target/gpu/gpu-feature/ holds the `gpu` feature's binaries (gpu-build.sh with
#      MARL_GPU_FEATURE=1): tests/gpu_train.rs (candle on CUDA against the CPU: forward pass, one
#      training iteration) and `bench train --device cuda` on configs/signal.toml and on
#      configs/default.toml (symbol transitions/s, rollout + update); cuBLAS / cuRAND 13 from
#      MARL_CUDA_LIBS or a PyTorch venv's nvidia/cu13/lib.
# The exit status is 0 when every step that ran passed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/gpu"
out="${1:-gpu-check-results.txt}"
budget="${MARL_GPU_CHECK_BUDGET_S:-450}"
start=$(date +%s)
failed=0

: >"$out"
log() { echo "$*" | tee -a "$out"; }

# step NAME CAP_SECONDS COMMAND...: run with the smaller of CAP and the budget left.
step() {
  local name="$1" cap="$2"
  shift 2
  local left=$((budget - ($(date +%s) - start)))
  if ((left < 10)); then
    log "== $name: SKIPPED (time budget of ${budget} s spent)"
    return
  fi
  local t=$((cap < left ? cap : left))
  log "== $name (timeout ${t} s): $*"
  local t0=$(date +%s)
  timeout "$t" "$@" >>"$out" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  if ((rc == 0)); then
    log "== $name: PASS (${dt} s)"
  else
    failed=1
    if ((rc == 124)); then
      log "== $name: TIMEOUT after ${dt} s"
    else
      log "== $name: FAIL (exit $rc, ${dt} s)"
    fi
  fi
}

log "# marl-trade gpu-check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -n)"
for f in marl-trade cuda_parity nvrtc_compile; do
  if [[ ! -x "$bin/$f" ]]; then
    log "missing $bin/$f: build with \`bash scripts/gpu-build.sh\` and carry target/gpu"
    exit 2
  fi
done
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$out" 2>&1
else
  log "nvidia-smi not found"
fi

step "nvrtc compile" 60 "$bin/nvrtc_compile" every_kernel_compiles_cleanly --nocapture
step "cuda parity (all GPU-only tests)" 240 "$bin/cuda_parity" --ignored --nocapture --test-threads 1

gdir="$bin/gpu-feature"
if [[ -f "$gdir/marl-trade.gz" && -f "$gdir/gpu_train.gz" ]]; then
  gtmp=$(mktemp -d)
  gunzip -c "$gdir/marl-trade.gz" >"$gtmp/marl-trade" && gunzip -c "$gdir/gpu_train.gz" >"$gtmp/gpu_train"
  chmod +x "$gtmp/marl-trade" "$gtmp/gpu_train"
  libs="${MARL_CUDA_LIBS:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)}"
  log "== gpu feature: CUDA libraries from ${libs:-the system}"
  export LD_LIBRARY_PATH="${libs:+$libs:}${LD_LIBRARY_PATH:-}"
  pushd "$root" >/dev/null
  step "gpu feature: tests/gpu_train.rs" 90 "$gtmp/gpu_train" --ignored --nocapture --test-threads 1
  step "gpu feature: bench train signal.toml --device cuda" 60 "$gtmp/marl-trade" bench train \
    --config configs/signal.toml --iterations 3 --device cuda
  step "gpu feature: bench train default.toml --device cuda" 90 "$gtmp/marl-trade" bench train \
    --config configs/default.toml --iterations 1 --device cuda --set ppo.num_steps=16
  popd >/dev/null
else
  log "== gpu feature: not built (gpu-build.sh with MARL_GPU_FEATURE=1), candle-on-CUDA steps not run"
fi

suite_json="$(dirname "$out")/gpu-check-suite.json"
step "bench suite (cuda)" 200 "$bin/marl-trade" bench suite --backends cuda --json "$suite_json"
[[ -f "$suite_json" ]] && { echo "== bench suite JSON ($suite_json):"; cat "$suite_json"; } >>"$out"

for n in 128 1024 4096; do
  for s in 143 512; do
    step "bench env cuda N=$n S=$s" 30 "$bin/marl-trade" bench env --backend cuda --envs "$n" --symbols "$s" --steps 200
  done
done

san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [[ -n "$san" ]]; then
  for tool in racecheck synccheck memcheck; do
    step "compute-sanitizer $tool" 60 "$san" --tool "$tool" --error-exitcode 9 \
      "$bin/cuda_parity" --ignored --exact device_sampler_replays_on_cpu --test-threads 1
  done
  step "compute-sanitizer memcheck (rollout modes)" 90 "$san" --tool memcheck --error-exitcode 9 \
    "$bin/cuda_parity" --ignored --exact rollout_modes_agree --test-threads 1
else
  log "== compute-sanitizer: ABSENT on this machine (racecheck / synccheck / memcheck not run)"
fi

if command -v nsys >/dev/null || ls -d /opt/nvidia/nsight-systems/*/bin/nsys >/dev/null 2>&1; then
  nsys_dir="$(dirname "$out")/gpu-check-nsys"
  step "nsys bench (small matrix)" 120 env MARL_BIN="$bin/marl-trade" bash "$root/scripts/nsys-bench.sh" \
    "$nsys_dir" --envs 128,4096 --symbols 143 --steps 128
  for f in "$nsys_dir"/*.csv; do
    [[ -f "$f" ]] && { echo "== $f"; cat "$f"; } >>"$out"
  done
else
  log "== nsys: ABSENT on this machine (scripts/nsys-bench.sh not run)"
fi


log "# total $(($(date +%s) - start)) s; $([[ $failed == 0 ]] && echo 'all steps that ran passed' || echo 'SOME STEPS FAILED')"
exit $failed
