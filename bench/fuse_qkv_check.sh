#!/usr/bin/env bash
# model.fuse_qkv in one device call: builds the token-strided ops' GPU
# tests, the model test and bench/train_step_bench in BUILD_DIR (default
# build-gpu, an already configured CUDA tree), runs the tests (they must
# pass, not skip), then times each preset's step, shared-γ baseline and
# unified, with q, k and v as three GEMMs and as one, and prints the
# medians side by side with their "GEMM" and "norms+elementwise" rows.
# usage: bench/fuse_qkv_check.sh      (JOBS, default 16; STEPS, default 20)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test fuse_qkv '^(core_cuda_norm_rope|core_cuda_copy_heads|core_head_rows)_test$' \
  core_cuda_norm_rope_test core_cuda_copy_heads_test core_head_rows_test model_cuda_model_test \
  train_step_bench
SCALEMOE_REQUIRE_GPU=1 timeout 300 "$build/tests/model/model_cuda_model_test" \
  --gtest_filter='*FusedQkv*' > "$build/fuse_qkv_model_test.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED) |cosine" "$build/fuse_qkv_model_test.log"
baseline=(--set scale_vectors.mode=SHARED --set scale_vectors.placement=INPUT_ONLY
  --set scale_vectors.reparam=PLAIN --set scale_vectors.decay_policy=NONE_1D)
printf "%-32s %10s %10s %8s\n" "preset/variant" "three ms" "one ms" "one/three"
for p in gpu_moe_125m gpu_finegrained_64e; do
  for v in baseline unified; do
    sets=(--set train.micro_batch_size=8 --set train.global_batch_size=64
      --set train.cuda_graphs=true)
    [ "$v" = baseline ] && sets+=("${baseline[@]}")
    ms=()
    for fuse in false true; do
      log="$build/fuse_qkv_${p}_${v}_$fuse.log"
      timeout 150 "$build/bench/train_step_bench" --config "configs/$p.textproto" "${sets[@]}" \
        --set model.fuse_qkv=$fuse --steps "${STEPS:-20}" --warmup 3 --profile-steps 1 \
        --label "$p/$v" > "$log" 2>&1 || { status=1; echo "failed: $(tail -3 "$log")"; }
      ms+=("$(grep -h '^BENCH_JSON ' "$log" | cut -c12- |
        python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["step_ms_median"])' \
        2>/dev/null || echo nan)")
      grep -E "^\| (GEMM|norms\+elementwise) " "$log" | sed "s/^/  fuse_qkv=$fuse /"
    done
    python3 -c "import sys; a, b = map(float, sys.argv[1:]); \
print(f'{sys.argv[3]:32s} {a:10.2f} {b:10.2f} {b / a:8.3f}')" "${ms[0]}" "${ms[1]}" "$p/$v" ||
      echo "$p/$v: ${ms[*]}"
  done
done
exit $status
