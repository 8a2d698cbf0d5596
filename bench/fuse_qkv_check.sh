#!/usr/bin/env bash
# model.fuse_qkv and train.fp32_head_norm_input in one device call: builds
# the GPU tests of what they use (the token-strided ops, the attention on
# head-row slices, SortByExpert's counting sort, the model tests) and
# bench/train_step_bench in BUILD_DIR (default build-gpu, an already
# configured CUDA tree), runs the tests (they must pass, not skip), then
# times each preset's step for VARIANTS (default: the shared-γ baseline,
# the unified strategy, and the unified strategy with the per-head norms
# reading bf16) with q, k and v as three GEMMs and as one, and prints the
# medians and peak memory side by side, with each run's "GEMM",
# "attention", "norms+elementwise" and "permutation" rows.
# usage: bench/fuse_qkv_check.sh      (JOBS, default 16; STEPS, default 20)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
tests='core_cuda_norm_rope|core_cuda_copy_heads|core_head_rows|core_cuda_moe_index'
build_and_test fuse_qkv "^($tests|core_cuda_moe_index_counting)_test\$" \
  core_cuda_norm_rope_test core_cuda_copy_heads_test core_head_rows_test \
  core_cuda_attention_tc_test core_cuda_moe_index_test model_cuda_model_test train_step_bench
# The attention on head-row slices: mma.sync (its strided kernels), with
# the dS scratch in slices of the batch (300000 bytes) and recomputed
# (40000), and WMMA (contiguous copies).
for env in SCALEMOE_ATTENTION=mma SCALEMOE_ATTENTION_DS_BUDGET_BYTES=300000 \
  SCALEMOE_ATTENTION_DS_BUDGET_BYTES=40000 SCALEMOE_ATTENTION=wmma; do
  env "$env" SCALEMOE_REQUIRE_GPU=1 timeout 120 "$build/tests/core/core_cuda_attention_tc_test" \
    --gtest_filter='*TokenStrided*' > "$build/fuse_qkv_attention.log" 2>&1 || status=1
  echo "$env: $(grep -E '^\[  (PASSED|FAILED) ' "$build/fuse_qkv_attention.log" | head -1)"
done
SCALEMOE_REQUIRE_GPU=1 timeout 300 "$build/tests/model/model_cuda_model_test" \
  --gtest_filter='*FusedQkv*:*Bf16Options*' > "$build/fuse_qkv_model_test.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED) |cosine" "$build/fuse_qkv_model_test.log"
baseline=(--set scale_vectors.mode=SHARED --set scale_vectors.placement=INPUT_ONLY
  --set scale_vectors.reparam=PLAIN --set scale_vectors.decay_policy=NONE_1D)
rows=()
for p in gpu_moe_125m gpu_finegrained_64e; do
  for v in ${VARIANTS:-baseline unified unified_bf16in}; do
    sets=()
    [ "$v" = baseline ] && sets+=("${baseline[@]}")
    [ "$v" = unified_bf16in ] && sets+=(--set train.fp32_head_norm_input=false)
    for fuse in false true; do
      log="$build/fuse_qkv_${p}_${v}_$fuse.log"
      time_step "$log" "$p/$v/$fuse" "$p" 'GEMM|attention|norms\+elementwise|permutation' \
        "${sets[@]}" --set model.fuse_qkv=$fuse
      rows+=("$log")
    done
  done
done
python3 - "${rows[@]}" <<'EOF'
import json, sys
runs = {}
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        if line.startswith("BENCH_JSON "):
            r = json.loads(line[len("BENCH_JSON "):])
            runs[r["label"]] = r
print(f"\n{'preset/variant':34s} {'three ms':>9s} {'one ms':>9s} {'one/three':>9s} "
      f"{'three GiB':>9s} {'one GiB':>9s}")
for label in sorted({l.rsplit("/", 1)[0] for l in runs}):
    a, b = runs.get(label + "/false"), runs.get(label + "/true")
    if not a or not b:
        print(f"{label:34s} (a run failed)")
        continue
    print(f"{label:34s} {a['step_ms_median']:9.2f} {b['step_ms_median']:9.2f} "
          f"{b['step_ms_median'] / a['step_ms_median']:9.3f} {a['peak_gib']:9.2f} "
          f"{b['peak_gib']:9.2f}")
EOF
exit $status
