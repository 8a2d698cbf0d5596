#!/usr/bin/env bash
# On a GPU machine (CUDA toolkit, PyTorch, transformers; e.g. the device of
# the tool library): builds with the CUDA backend, runs every test that needs
# no network, no Slurm and no network namespaces (the gpu-labelled ones
# included: they must pass, not skip; so
# must the python-labelled export_hf_transformers_test, which loads an export
# of every kind with transformers), then trains a tiny model on a generated
# corpus (on one rank, and on two with tensor, sequence and expert-tensor
# parallelism), exports each checkpoint and loads it with transformers
# (scripts/hf_load_check.py; and numpy) against the trainer's loss. Ends
# with a short table: tests passed, gpu-labelled ones passed, each layout
# group on the one GPU, the whole-model check, the 300-step
# GPU-vs-CPU curve figures (the tests' toy model, and tiny_cpu on the default
# corpus when datasets/default is there, with its bf16 against fp32 as the
# means over several seeds), and the exports' distance to transformers.
# usage: scripts/gpu_check.sh [ABSL_PREFIX]
#   ABSL_PREFIX: Debian's libabsl-dev unpacked (dpkg -x) when the machine has
#   no Abseil, e.g. .device/absl/usr
set -euo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# A gpu test that finds no device fails here instead of skipping.
export SCALEMOE_REQUIRE_GPU=1
extra=()
if [ -n "${1:-}" ]; then
  prefix=$(realpath "$1")
  extra+=(-Dabsl_DIR="$prefix/lib/x86_64-linux-gnu/cmake/absl")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
build=${BUILD_DIR:-build-gpu}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" 2>&1 | grep -E "warning|error" || true
status=0
work=$(mktemp -d)
# tiny_cpu's two 300-step GPU runs and, unless given (TINY_CPU_REF,
# TINY_CPU_REF_2RANKS below), its two CPU reference runs (one rank, two
# ranks) train while the tests run: their minutes would otherwise come
# after the tests and push the call past a device call's 10 minutes.
tiny_runs= cpu_ref_runs= seed_runs=
if [ -f datasets/default/manifest.json ]; then
  (set +e  # a failed run is recorded, not the end of the subshell
   for p in FP32 BF16; do
     "$build/scalemoe" train --config configs/tiny_cpu.textproto --quiet --run-dir "$work/tiny_$p" \
       --set train.device=CUDA --set train.precision=$p >/dev/null 2>"$work/tiny_$p.err"
     echo $? >"$work/tiny_$p.rc"
   done) &
  tiny_runs=$!
  # The same in both precisions with other seeds (BF16_SEEDS, default "7 11
  # 13"; empty: none), one chain per precision: one run's final loss
  # scatters by ~2 % with the seed, so bf16's final loss is checked against
  # fp32's as the means over every seed (scripts/seed_compare.py, 1 %).
  for p in FP32 BF16; do
    (set +e
     for seed in ${BF16_SEEDS-7 11 13}; do
       "$build/scalemoe" train --config configs/tiny_cpu.textproto --quiet \
         --run-dir "$work/tiny_${p}_seed$seed" --set train.device=CUDA --set train.precision=$p \
         --set train.seed="$seed" >/dev/null 2>"$work/tiny_${p}_seed$seed.err"
     done) &
    seed_runs+=" $!"
  done
  # Two BLAS threads in all (as on a 2-core CI machine), so that the CPU
  # tests beside them keep their cores.
  (set +e
   if [ -z "${TINY_CPU_REF:-}" ]; then
     OPENBLAS_NUM_THREADS=2 "$build/scalemoe" train --config configs/tiny_cpu.textproto --quiet \
       --run-dir "$work/tiny_cpu" >/dev/null 2>"$work/tiny_cpu.err" &
   fi
   if [ -z "${TINY_CPU_REF_2RANKS:-}" ]; then
     mpirun -np 2 --oversubscribe -x OPENBLAS_NUM_THREADS=1 "$build/scalemoe" train \
       --config configs/tiny_cpu.textproto --quiet --run-dir "$work/tiny_cpu_2" \
       >/dev/null 2>"$work/tiny_cpu_2.err" &
   fi
   wait) &
  cpu_ref_runs=$!
fi
ctest --test-dir "$build" -LE "network|multinode|slurm" --output-on-failure -j8 > "$build/ctest.log" 2>&1 || status=1
# Every test's whole output (passing ones too), before another ctest call
# overwrites it: the summary reads the figures the tests print.
cp "$build/Testing/Temporary/LastTest.log" "$build/ctest_all_output.log"
grep -E "tests passed|\(Failed\)|\(Skipped\)|Not Run" "$build/ctest.log" || true
if grep -q "export_hf_transformers_test.*Skipped" "$build/ctest.log"; then
  echo "export_hf_transformers_test skipped: no python3 with torch and transformers here" >&2
  status=1
fi
# (|| true: head closing the pipe early must not end the script under pipefail)
[ $status -eq 0 ] || { grep -B2 -A25 "Failure\|FAILED" "$build/ctest.log" | head -80 || true; }

python3 - "$work/corpus.txt" <<'PY'
import sys
names = ["Emma", "Harriet", "Jane", "Frank", "Anne"]
places = ["Highbury", "Bath", "London", "Kellynch", "Donwell"]
with open(sys.argv[1], "w") as f:
    for doc in range(150):
        for s in range(12):
            f.write(f"{names[(doc + s) % 5]} went to {places[(doc * 3 + s) % 5]} on day {s}. ")
        f.write("\n\x1e\n")
PY
"$build/scalemoe" prepare --input "$work/corpus.txt" --train-tokenizer 320 \
  --tokenizer "$work/tokenizer" --out "$work/data" --val-fraction 0.1 >/dev/null
tiny=(--config configs/tiny_cpu.textproto --quiet
  --set model.vocab_size=320 --set model.num_layers=2 --set model.seq_length=32
  --set train.train_steps=20 --set schedule.warmup_steps=2 --set train.eval_interval=0
  --set train.eval_batches=1 --set data.dataset_dir="$work/data")
"$build/scalemoe" train "${tiny[@]}" --run-dir "$work/run" | tail -1
"$build/scalemoe" export --checkpoint "$work/run/checkpoints/step_20" --out "$work/export" \
  --tokenizer "$work/tokenizer"
python3 scripts/hf_load_check.py "$work/export" --scalemoe "$build/scalemoe" | tee "$work/hf_one_rank.json" ||
  status=1
python3 scripts/export_check.py "$work/export" | cut -c1-120 || status=1
# The same on 2 ranks, TP2 + SP + ETP2: the sharded checkpoint exports to the
# same kind of plain model.
mpirun -np 2 --oversubscribe "$build/scalemoe" train "${tiny[@]}" --run-dir "$work/run_tp" \
  --set parallel.tp=2 --set parallel.sequence_parallel=true --set parallel.etp=2 | tail -1
"$build/scalemoe" export --checkpoint "$work/run_tp/checkpoints/step_20" --out "$work/export_tp" \
  --tokenizer "$work/tokenizer"
python3 scripts/hf_load_check.py "$work/export_tp" | tee "$work/hf_tp.json" || status=1

# 300 steps of tiny_cpu on the default corpus (scripts/run_default.sh
# prepares datasets/default; skipped without it) on the GPU against the CPU:
# fp32 within 1e-3 at every logged step or within twice the CPU's own spread
# (the same run on 2 CPU ranks: another summation order; the MoE's training
# is chaotic, see scripts/curve_compare.py --noise), bf16 final train and val
# loss within 1 % of fp32's, as the means over the seeds (the train loss as
# the mean of the last 5 logged steps: one step's is one batch's, noisy by
# about as much; the config's seed alone against the CPU is reported, not
# checked, see above; the metrics are kept as
# $build/tiny_cpu_{FP32,BF16}.metrics.jsonl; the GPU runs started with the
# tests, above). TINY_CPU_REF and TINY_CPU_REF_2RANKS: CPU runs' directories
# or metrics.jsonl to use instead of training them here.
curve_fp32="not run (no datasets/default)" curve_bf16=$curve_fp32 seeds_bf16=$curve_fp32
if [ -f datasets/default/manifest.json ]; then
  ref=${TINY_CPU_REF:-$work/tiny_cpu} ref2=${TINY_CPU_REF_2RANKS:-$work/tiny_cpu_2}
  wait "$cpu_ref_runs" || true
  wait "$tiny_runs" || true
  for r in tiny_cpu tiny_cpu_2; do
    if [ -f "$work/$r.err" ] && [ ! -s "$work/$r/metrics.jsonl" ]; then
      echo "tiny_cpu's CPU reference ($r) failed: $(tail -3 "$work/$r.err")" >&2
      status=1
    fi
  done
  for p in FP32 BF16; do
    if [ "$(cat "$work/tiny_$p.rc" 2>/dev/null)" != 0 ]; then
      echo "tiny_cpu on the GPU ($p) failed: $(tail -3 "$work/tiny_$p.err")" >&2
      status=1
    fi
  done
  curve_fp32=$(python3 scripts/curve_compare.py "$ref" "$work/tiny_FP32" --max-abs 1e-3 \
    --noise "$ref2" --label fp32) || status=1
  # bf16's 1 % is checked on the means over the seeds (below). The config's
  # own seed alone is reported: one run's final loss scatters by ~2 % with
  # the seed, and seed 1234's bf16 run ends 2.1 % above fp32 on the CPU too
  # (bench/RESULTS.md, "tiny_cpu in bf16 against fp32: four seeds").
  curve_bf16=$(python3 scripts/curve_compare.py "$ref" "$work/tiny_BF16" --final-rel 0.01 \
    --final-window 5 --label bf16) || curve_bf16+=" (one seed: reported, not checked)"
  # shellcheck disable=SC2086  # one pid per word
  wait $seed_runs || true
  shopt -s nullglob
  seeds_bf16=$(python3 scripts/seed_compare.py --label "bf16 vs fp32 on the GPU" --final-window 5 \
    --final-rel 0.01 --ref "$work/tiny_FP32" "$work"/tiny_FP32_seed*/ \
    --run "$work/tiny_BF16" "$work"/tiny_BF16_seed*/ 2>&1) || status=1
  shopt -u nullglob
  echo "$seeds_bf16"
  for p in FP32 BF16; do
    cp "$work/tiny_$p/metrics.jsonl" "$build/tiny_cpu_$p.metrics.jsonl" 2>/dev/null || true
  done
  echo "$curve_fp32"
  echo "$curve_bf16"
fi

# The short table: what passed, and the figures the GPU tests printed.
abs_diff() {
  python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["abs_diff"])' \
    "$1" 2>/dev/null || echo "n/a"
}
gpu_tests=$(ctest --test-dir "$build" -N -L gpu | grep -oE "Test +#[0-9]+: [a-z0-9_]+" | awk '{print $NF}' || true)
gpu_passed=0
gpu_total=0
gpu_skipped=
for t in $gpu_tests; do
  gpu_total=$((gpu_total + 1))
  if grep -qE "Test +#[0-9]+: $t \.+ +Passed" "$build/ctest.log"; then gpu_passed=$((gpu_passed + 1)); fi
  if grep -qE "Test +#[0-9]+: $t \.+\*+Skipped" "$build/ctest.log"; then gpu_skipped+=" $t"; fi
done
echo
echo "== gpu_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
printf '%-46s %s\n' "tests (all but network/multinode/slurm)" \
  "$(grep -oE '[0-9]+% tests passed(, [0-9]+ tests failed)? out of [0-9]+' "$build/ctest.log")"
# (the NCCL tests skip on a machine with one GPU: they need one per rank)
printf '%-46s %s\n' "gpu-labelled tests passed" \
  "$gpu_passed of $gpu_total${gpu_skipped:+ (skipped:$gpu_skipped)}"
# Every parallel layout on the one GPU (ranks sharing it, host-staged
# collectives), each against the one-rank GPU run.
layout_row() {  # ctest name, what it covers
  local result
  result=$(grep -oE "Test +#[0-9]+: $1 \.+ *\**[A-Za-z]+" "$build/ctest.log" | awk '{print $NF}' | tr -d '*')
  printf '%-46s %s\n' "$2" "${result:-not run}"
}
layout_row launch_trainer_mpi2_cuda_test "layouts, 2 ranks: DP, ZeRO-1, EP2, PP2, resume"
layout_row launch_trainer_tp_mpi2_cuda_test "layouts, 2 ranks: TP2, TP2+SP, ETP2"
layout_row launch_trainer_tp_mpi4_cuda_test "layouts, 4 ranks: ETP2xEP2, TP2xPP2 (+SP, v2)"
layout_row launch_trainer_tp_mpi8_cuda_test "layouts, 8 ranks: TP2xEP2xPP2"
layout_row model_cuda_model_test "whole model vs CPU (tiny variants + presets)"
printf '%-46s %s\n' "300-step curve (tests' toy model), GPU vs CPU" \
  "$(grep -h -oE 'curve: .*' "$build/ctest_all_output.log" | head -1 | cut -c8-)"
printf '%-46s %s\n' "tiny_cpu 300 steps, GPU fp32 vs CPU" "${curve_fp32#curve fp32: }"
printf '%-46s %s\n' "tiny_cpu 300 steps, GPU bf16 vs CPU fp32" "${curve_bf16#curve bf16: }"
printf '%-46s %s\n' "  GPU bf16 vs GPU fp32, mean over the seeds" \
  "${seeds_bf16#seeds bf16 vs fp32 on the GPU: }"
printf '%-46s %s\n' "export, one rank: |transformers - trainer|" "$(abs_diff "$work/hf_one_rank.json")"
printf '%-46s %s\n' "export, TP2+SP+ETP2: |transformers - trainer|" "$(abs_diff "$work/hf_tp.json")"
exit $status
