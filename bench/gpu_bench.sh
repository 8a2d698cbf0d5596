#!/usr/bin/env bash
# Issue 14's benchmark in one device call (an H100/H200 with the CUDA toolkit
# and PyTorch): builds bench/train_step_bench and the GPU model test, runs
# that test as a short correctness check, then for each preset (default
# gpu_moe_125m and gpu_finegrained_64e) x {shared-γ baseline, the preset's
# unified strategy} times our training step (bench/train_step_bench, with a
# "where the time goes" table from its op timer) and the PyTorch reference
# (bench/torch_reference.py) on the same shapes and batch, and ends with a
# Markdown table: tokens/s ours vs torch and their ratio, MFU (Megatron FLOPs
# vs 989 TFLOP/s bf16), step ms (median), peak GiB, and unified/baseline
# step-time and memory ratios.
#
# usage: bench/gpu_bench.sh [ABSL_PREFIX]     (as scripts/gpu_check.sh)
# environment (defaults sized for <= 9 minutes on an H200, build included):
#   PRESETS="gpu_moe_125m gpu_finegrained_64e"   MICRO_BATCH=16 (the presets')  GLOBAL_BATCH=64
#   (the presets train at 256: GLOBAL_BATCH=256 spreads the per-step work,
#   AdamW over all 620M parameters, over 4x the tokens; about 8 minutes
#   without the build, so SKIP_BUILD=1 after a build in one device call)
#   STEPS=20 (timed, >= 20 for the issue's figures)  WARMUP=3  PROFILE_STEPS=2
#   TORCH_COMPILE=block|model|none  BUILD_DIR=build-gpu
#   RUN_TIMEOUT=150, TORCH_TIMEOUT=240: seconds one run of ours / of torch may take
#   PREWARM=1: compile the torch models once (1 step) while the C++ build runs,
#   so that the timed torch runs find inductor's caches warm.
#   CHECK_FILTER: the gtest filter of the correctness check (default
#   Variants/*: the tiny model's variants, fp32 exact and bf16, in seconds;
#   scripts/gpu_check.sh runs the presets' whole-model cases)
#   TORCH=0: skip the PyTorch reference (ours only)
#   SKIP_BUILD=1: use BUILD_DIR's binaries as they are (e.g. built on
#   another machine with the same CUDA and carried over)
#   CUDA_GRAPHS=1: ours with train.cuda_graphs (each micro-batch's forward
#   and backward replayed as one CUDA graph; launch/micro_batch_graph.h);
#   0: without
#   OURS_SETS="model.fuse_qkv=true ...": more --set flags for ours only
#   (A/B runs of an execution switch; the variants' labels are unchanged)
#   TABLE_ONLY=1: run nothing; print the tables from the logs already in
#   BUILD_DIR/gpu_bench (e.g. of a call cut short before its table, with
#   the logs fetched back)
#   OPS=1: also torch_reference.py --ops per preset (torch.matmul, SDPA,
#   torch._grouped_mm, fused AdamW at the preset's shapes; issue 13's table).
# Raw output: BUILD_DIR/gpu_bench/*.log and results.jsonl (one BENCH_JSON each).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 SCALEMOE_REQUIRE_GPU=1
extra=()
if [ -n "${1:-}" ]; then
  prefix=$(realpath "$1")
  extra+=(-Dabsl_DIR="$prefix/lib/x86_64-linux-gnu/cmake/absl")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
build=${BUILD_DIR:-build-gpu}
presets=${PRESETS:-gpu_moe_125m gpu_finegrained_64e}
micro=${MICRO_BATCH:-16}
global=${GLOBAL_BATCH:-64}
steps=${STEPS:-20}
warmup=${WARMUP:-3}
profile=${PROFILE_STEPS:-2}
compile=${TORCH_COMPILE:-block}
run_timeout=${RUN_TIMEOUT:-150}
torch_timeout=${TORCH_TIMEOUT:-240}
check_filter=${CHECK_FILTER:-Variants/*}
out="$build/gpu_bench"
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "[gpu_bench +$(($(date +%s) - start))s] $*"; }
check="not run (TABLE_ONLY=1: the table from the logs in $out)"
if [ "${TABLE_ONLY:-0}" != 1 ]; then
  rm -f "$out"/*.log "$out/results.jsonl"

  # The A/B of the preset comments: the shared-γ baseline.
  baseline_sets=(--set scale_vectors.mode=SHARED --set scale_vectors.placement=INPUT_ONLY
    --set scale_vectors.reparam=PLAIN --set scale_vectors.decay_policy=NONE_1D)
  shape_sets=(--set train.micro_batch_size="$micro" --set train.global_batch_size="$global")
  ours_sets=()
  [ "${CUDA_GRAPHS:-1}" = 1 ] && ours_sets+=(--set train.cuda_graphs=true)
  for s in ${OURS_SETS:-}; do ours_sets+=(--set "$s"); done

  have_torch=0
  if [ "${TORCH:-1}" = 0 ]; then
    echo "gpu_bench: TORCH=0: the torch columns stay empty" >&2
  elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    have_torch=1
  else
    echo "gpu_bench: no python3 with CUDA torch here: the torch columns stay empty" >&2
  fi

  torch_run() {  # preset variant steps warmup log
    local preset=$1 variant=$2 sets=("${shape_sets[@]}")
    [ "$variant" = baseline ] && sets+=("${baseline_sets[@]}")
    timeout "$torch_timeout" python3 bench/torch_reference.py --config "configs/$preset.textproto" \
      "${sets[@]}" --steps "$3" --warmup "$4" --compile "$compile" --label "$preset/$variant" \
      > "$5" 2>&1
  }

  prewarm_pid=
  if [ "$have_torch" = 1 ] && [ "$compile" != none ] && [ "${PREWARM:-1}" = 1 ]; then
    (for p in $presets; do for v in baseline unified; do
       torch_run "$p" "$v" 1 1 "$out/prewarm_${p}_$v.log" || true
     done; done) &
    prewarm_pid=$!
    stamp "torch compile pre-warm started in the background"
  fi

  if [ "${SKIP_BUILD:-0}" = 1 ]; then
    stamp "SKIP_BUILD=1: using the binaries in $build"
  else
    stamp "building train_step_bench, scalemoe and model_cuda_model_test in $build"
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null || exit 1
    if ! cmake --build "$build" -j"$(nproc)" --target train_step_bench scalemoe \
        model_cuda_model_test > "$out/build.log" 2>&1; then
      grep -E "error" "$out/build.log" | head -20
      exit 1
    fi
  fi
  [ -n "$prewarm_pid" ] && wait "$prewarm_pid"
  stamp "built"

  check="not run"
  if timeout 180 "$build/tests/model/model_cuda_model_test" --gtest_filter="$check_filter" \
      > "$out/check.log" 2>&1; then
    check="passed"
  else
    check="FAILED (see $out/check.log)"
    tail -20 "$out/check.log"
  fi
  stamp "correctness check (model_cuda_model_test, $check_filter): $check"

  for p in $presets; do
    for v in baseline unified; do
      sets=("${shape_sets[@]}" "${ours_sets[@]}")
      [ "$v" = baseline ] && sets+=("${baseline_sets[@]}")
      log="$out/ours_${p}_$v.log"
      timeout "$run_timeout" "$build/bench/train_step_bench" --config "configs/$p.textproto" \
        "${sets[@]}" --steps "$steps" --warmup "$warmup" --profile-steps "$profile" \
        --label "$p/$v" > "$log" 2>&1 || echo "gpu_bench: ours $p/$v failed: $(tail -3 "$log")" >&2
      stamp "ours  $p/$v: $(grep -v BENCH_ "$log" | grep -m1 ' | ' | cut -c1-400)"
      if [ "$have_torch" = 1 ]; then
        log="$out/torch_${p}_$v.log"
        torch_run "$p" "$v" "$steps" "$warmup" "$log" ||
          echo "gpu_bench: torch $p/$v failed: $(tail -3 "$log")" >&2
        stamp "torch $p/$v: $(grep -v BENCH_ "$log" | grep -m1 ' | ' | cut -c1-400)"
      fi
    done
  done
  if [ "$have_torch" = 1 ] && [ "${OPS:-0}" = 1 ]; then  # issue 13's torch per-op table
    for p in $presets; do
      timeout "$torch_timeout" python3 bench/torch_reference.py --config "configs/$p.textproto" \
        "${shape_sets[@]}" --ops > "$out/torch_ops_$p.log" 2>&1 || echo "gpu_bench: torch --ops $p failed" >&2
      grep -v "^BENCH_OPS_JSON" "$out/torch_ops_$p.log"
    done
  fi
fi  # TABLE_ONLY
grep -h "^BENCH_JSON " "$out"/ours_*.log "$out"/torch_*.log 2>/dev/null | cut -c12- \
  > "$out/results.jsonl" || true

# Where the time goes (ours, op timer on the profiled steps).
for f in "$out"/ours_*.log; do
  [ -f "$f" ] && sed -n '/^where the time goes/,/^top ops/p' "$f" | grep -v "^top ops"
done

device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
torch_version=$(python3 -c "import torch; print(torch.__version__)" 2>/dev/null || echo none)
python3 - "$out/results.jsonl" "$device" "$torch_version" "$check" <<'PY'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["impl"], r["label"]): r for r in rows}
print(f"\n{sys.argv[2]}; torch {sys.argv[3]}; correctness check: {sys.argv[4]}")
if rows:
    r0 = rows[0]
    print(f"micro-batch {r0['micro_batch']}, global batch {r0['global_batch']}, seq "
          f"{r0['seq_length']}; median of {r0['steps']} steps after {r0['warmup']} warm-up; "
          "MFU = Megatron FLOPs / 989 TFLOP/s; peak: ours = device memory used "
          "(cudaMemGetInfo after the timed steps, minus the CUDA context; at least the "
          "caching allocator's peak), torch = max_memory_reserved")

def f(r, key, fmt):
    return format(r[key], fmt) if r and key in r else "-"

print("\n| preset / variant | ours tok/s | torch tok/s | ours/torch | ours MFU | torch MFU "
      "| ours step ms | torch step ms | ours peak GiB | torch peak GiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
labels = sorted({r["label"] for r in rows}, key=lambda l: (l.split("/")[0], l.split("/")[1] != "baseline"))
for label in labels:
    o, t = by.get(("scalemoe", label)), by.get(("torch", label))
    ratio = f"{o['tokens_per_s'] / t['tokens_per_s']:.2f}" if o and t else "-"
    mfu = lambda r: f"{100 * r['mfu']:.1f}%" if r else "-"
    print(f"| {label} | {f(o, 'tokens_per_s', '.0f')} | {f(t, 'tokens_per_s', '.0f')} | {ratio} "
          f"| {mfu(o)} | {mfu(t)} | {f(o, 'step_ms_median', '.1f')} | {f(t, 'step_ms_median', '.1f')} "
          f"| {f(o, 'peak_gib', '.2f')} | {f(t, 'peak_gib', '.2f')} |")

print("\n| preset | impl | unified/baseline step time | unified/baseline peak memory |")
print("|---|---|---:|---:|")
for preset in sorted({l.split("/")[0] for l in labels}):
    for impl in ("scalemoe", "torch"):
        b, u = by.get((impl, preset + "/baseline")), by.get((impl, preset + "/unified"))
        if b and u:
            mem = f"{u['peak_gib'] / b['peak_gib']:.3f}" if b["peak_gib"] > 0 else "-"
            print(f"| {preset} | {impl} | {u['step_ms_median'] / b['step_ms_median']:.3f} | {mem} |")
PY
stamp "done"
