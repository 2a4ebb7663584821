#!/usr/bin/env bash
# The bench suite's CUDA cases under Nsight Systems, one report per case (docs/gpu.md "Profiling"):
#
#   bash scripts/nsys-bench.sh [OUT_DIR] [bench suite options...]
#   e.g. bash scripts/nsys-bench.sh nsys-out --envs 128,4096 --symbols 143 --steps 256
#
# `marl-trade bench suite --backends cuda` brackets the timed window of every CUDA case with
# cuProfilerStart / cuProfilerStop; `nsys profile --capture-range=cudaProfilerApi
# --capture-range-end=repeat` records each such window into its own report, so one command gives a
# report per case. The binary must be built with `--features cuda,nvtx` (scripts/gpu-build.sh does)
# for the NVTX ranges (`sample`, `env step`, `observation`, `transfer h2d` / `transfer d2h`) to
# show. After the run, `nsys stats` writes per report the kernel summary, the memory-copy summary
# and the NVTX summary as CSV next to it, and OUT_DIR/suite.json holds the suite's own figures
# (its `capture` field is the case's window number, in the order the reports were written).
#
# MARL_BIN overrides the binary (default target/gpu/marl-trade); NSYS the nsys executable.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${MARL_BIN:-$root/target/gpu/marl-trade}"
out="${1:-nsys-bench}"
shift || true
nsys="${NSYS:-$(command -v nsys || ls -d /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1 || true)}"
if [[ -z "$nsys" || ! -x "$nsys" ]]; then
  echo "nsys-bench: nsys (Nsight Systems) not found; set NSYS=/path/to/nsys" >&2
  exit 3
fi
[[ -x "$bin" ]] || { echo "nsys-bench: $bin missing (bash scripts/gpu-build.sh)" >&2; exit 2; }
mkdir -p "$out"
"$nsys" profile \
  --trace=cuda,nvtx,osrt \
  --sample=none \
  --capture-range=cudaProfilerApi \
  --capture-range-end=repeat \
  --force-overwrite=true \
  --output="$out/case" \
  "$bin" bench suite --backends cuda --json "$out/suite.json" "$@"
shopt -s nullglob
reports=("$out"/case*.nsys-rep)
if ((${#reports[@]} == 0)); then
  echo "nsys-bench: no report written (did a CUDA case run? see $out/suite.json)" >&2
  exit 4
fi
# in the order nsys wrote them: the i-th is the case with "capture": i in suite.json
mapfile -t reports < <(ls -tr "${reports[@]}")
i=0
for r in "${reports[@]}"; do
  i=$((i + 1))
  "$nsys" stats --force-export=true --format csv \
    --report cuda_gpu_kern_sum,cuda_gpu_mem_time_sum,nvtx_sum \
    --output "${r%.nsys-rep}" "$r" >/dev/null
  echo "nsys-bench: capture $i -> $r (+ ${r%.nsys-rep}_*.csv)"
done
