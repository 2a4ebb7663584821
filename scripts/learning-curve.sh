#!/usr/bin/env bash
# Learning curve of held-out performance for one training run: train K iterations at a time
# (`--resume` continues bit-identically) and, after each chunk, evaluate the run's latest
# checkpoint on the test period (`marl-trade eval --period test`, greedy actions), appending
#   iteration  sharpe  total_return  decision_ic  decision_ic_z
# to OUT/curve.tsv (the full reports are OUT/eval-iter-NNNNNN.json).
#
#   scripts/learning-curve.sh BIN CONFIG OUT K N [--set section.field=value ...]
#
# BIN: the marl-trade binary (a release build); N: the run's iterations (ppo.total_timesteps /
# batch). Extra arguments are passed to `train` (the same each time, so the resume sees the same
# configuration). A fresh OUT is replaced (`--force`) on the first chunk.
set -euo pipefail
bin=$1 cfg=$2 out=$3 k=$4 n=$5
shift 5
mkdir -p "$out"
printf 'iteration\tsharpe\ttotal_return\tdecision_ic\tdecision_ic_z\n' > "$out/curve.tsv"
done_it=0
while [ "$done_it" -lt "$n" ]; do
  if [ "$done_it" -eq 0 ]; then mode=--force; else mode=--resume; fi
  "$bin" train --config "$cfg" "$@" --out "$out" $mode --iterations "$k" --save-every "$k" --quiet \
    > "$out/train-$done_it.log" 2>&1
  done_it=$((done_it + k)); [ "$done_it" -gt "$n" ] && done_it=$n
  j=$(printf '%s/eval-iter-%06d.json' "$out" "$done_it")
  "$bin" eval --checkpoint "$out" --period test --json "$j" > "$j.txt" 2>&1
  python3 - "$j" "$done_it" >> "$out/curve.tsv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = next(x for x in r["metrics"] if x["policy"] == "ppo")
ic = r["decision_ic"]
print(f"{sys.argv[2]}\t{m['sharpe']:.4f}\t{m['total_return']:.5f}\t{ic['corr']:.4f}\t{ic['z']:.2f}")
PY
done
