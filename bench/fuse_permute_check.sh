#!/usr/bin/env bash
# moe.fuse_permute in one device call: builds the grouped GEMMs' parity
# test, the model test, bench/cuda_gemm_bench and bench/train_step_bench in
# BUILD_DIR (default build-gpu, an already configured CUDA tree), runs the
# grouped GEMMs' registrations (the gathered ops must give the bits of the
# gathered copy's products; under the default kernels in the kernel's
# loads) and the presets' bit-for-bit model test (they must pass, not
# skip), times the experts' up projections plain and gathered (gfwd
# against gxfwd, gwgrad against gxwgrad), then each preset's step for
# VARIANTS (default: the shared-γ baseline and the unified strategy) with
# the permuted copy and with the fused permutation, and prints the medians
# and peak memory side by side, with each run's "expert GEMM" and
# "permutation" rows.
# usage: bench/fuse_permute_check.sh      (JOBS, default 16; STEPS, default 20)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test fuse_permute '^core_cuda_grouped_gemm(_mma)?_test$' core_cuda_grouped_gemm_test \
  model_cuda_model_test cuda_gemm_bench train_step_bench
grep -h "gathered ops:" "$build"/Testing/Temporary/LastTest.log | sort | uniq -c
SCALEMOE_REQUIRE_GPU=1 timeout 300 "$build/tests/model/model_cuda_model_test" \
  --gtest_filter='*FusedPermute*' > "$build/fuse_permute_model_test.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED) |Failure" "$build/fuse_permute_model_test.log"
timeout 240 "$build/bench/cuda_gemm_bench" experts_up > "$build/fuse_permute_gemm.tsv" || status=1
# Rows: case dtype form batch m n k ms tflops.
awk -F'\t' '$3 ~ /^g/ { ms[$1, $3] = $8; tf[$1, $3] = $9; cases[$1] = 1 }
  END {
    printf "%-18s %-8s %9s %9s %8s %8s\n", "case", "form", "plain_ms", "gathered", "TFLOP/s", "gx"
    for (c in cases) for (f = 0; f < 2; ++f) {
      p = f ? "gwgrad" : "gfwd"; g = f ? "gxwgrad" : "gxfwd"
      printf "%-18s %-8s %9.4f %9.4f %8.1f %8.1f\n", c, p, ms[c, p], ms[c, g], tf[c, p], tf[c, g]
    }
  }' "$build/fuse_permute_gemm.tsv"
baseline=(--set scale_vectors.mode=SHARED --set scale_vectors.placement=INPUT_ONLY
  --set scale_vectors.reparam=PLAIN --set scale_vectors.decay_policy=NONE_1D)
rows=()
for p in gpu_moe_125m gpu_finegrained_64e; do
  for v in ${VARIANTS:-baseline unified}; do
    sets=(--set train.micro_batch_size=8 --set train.global_batch_size=64
      --set train.cuda_graphs=true)
    [ "$v" = baseline ] && sets+=("${baseline[@]}")
    for fuse in false true; do
      log="$build/fuse_permute_${p}_${v}_$fuse.log"
      timeout 150 "$build/bench/train_step_bench" --config "configs/$p.textproto" "${sets[@]}" \
        --set moe.fuse_permute=$fuse --steps "${STEPS:-20}" --warmup 3 --profile-steps 1 \
        --label "$p/$v/$fuse" > "$log" 2>&1 || { status=1; echo "failed: $(tail -3 "$log")"; }
      grep -E "^\| (expert GEMM|permutation) " "$log" | sed "s#^#  $p/$v fuse_permute=$fuse #"
      rows+=("$log")
    done
  done
done
python3 - "${rows[@]}" <<'PY'
import json, sys
runs = {}
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        if line.startswith("BENCH_JSON "):
            r = json.loads(line[len("BENCH_JSON "):])
            runs[r["label"]] = r
print(f"\n{'preset/variant':30s} {'copy ms':>9s} {'fused ms':>9s} {'fused/copy':>10s} "
      f"{'copy GiB':>9s} {'fused GiB':>9s}")
for label in sorted({l.rsplit("/", 1)[0] for l in runs}):
    a, b = runs.get(label + "/false"), runs.get(label + "/true")
    if not a or not b:
        print(f"{label:30s} (a run failed)")
        continue
    print(f"{label:30s} {a['step_ms_median']:9.2f} {b['step_ms_median']:9.2f} "
          f"{b['step_ms_median'] / a['step_ms_median']:10.3f} {a['peak_gib']:9.2f} "
          f"{b['peak_gib']:9.2f}")
PY
exit $status
