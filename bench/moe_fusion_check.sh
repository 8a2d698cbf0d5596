#!/usr/bin/env bash
# moe.fuse_permute and moe.fuse_swiglu in one device call: builds the
# grouped GEMMs' parity test, the model test, bench/cuda_gemm_bench and
# bench/train_step_bench in BUILD_DIR (default build-gpu, an already
# configured CUDA tree), runs the grouped GEMMs' default and mma.sync
# registrations (the gathered ops and the SwiGLU epilogues must give the bits
# of the unfused ops; under the default kernels in the kernel itself) and
# the presets' bit-for-bit model test (they must pass, not skip), times the
# experts' up and down projections plain and fused (gfwd against gxfwd,
# gwgrad against gxwgrad, gglu against gswiglu, gdglu against gdswiglu),
# then each preset's step for
# VARIANTS (default: the shared-γ baseline; "baseline unified" for both) with
# neither option, each, and both, and prints the medians and peak memory
# side by side, with each run's "expert GEMM", "permutation" and
# "norms+elementwise" rows.
# usage: bench/moe_fusion_check.sh      (JOBS, default 16; STEPS, default 20)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test moe_fusion '^core_cuda_grouped_gemm(_mma)?_test$' core_cuda_grouped_gemm_test \
  model_cuda_model_test cuda_gemm_bench train_step_bench
grep -h -E "gathered ops:|gate\|up SwiGLU:" "$build"/Testing/Temporary/LastTest.log | sort | uniq -c
SCALEMOE_REQUIRE_GPU=1 timeout 300 "$build/tests/model/model_cuda_model_test" \
  --gtest_filter='*FusedPermuteAndSwiGlu*' > "$build/moe_fusion_model_test.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED) |Failure" "$build/moe_fusion_model_test.log"
{ timeout 200 "$build/bench/cuda_gemm_bench" experts_up &&
  timeout 200 "$build/bench/cuda_gemm_bench" experts_down | tail -n +2; } \
  > "$build/moe_fusion_gemm.tsv" || status=1
# Rows: case dtype form batch m n k ms tflops.
awk -F'\t' '$3 ~ /^g/ { ms[$1, $3] = $8; tf[$1, $3] = $9; cases[$1] = 1 }
  END {
    printf "%-18s %-8s %-8s %9s %9s %8s %8s\n", "case", "plain", "fused", "plain_ms", "fused_ms",
           "TFLOP/s", "fused"
    split("gfwd gxfwd gwgrad gxwgrad gglu gswiglu gdglu gdswiglu", f, " ")
    for (c in cases) for (i = 1; i < 8; i += 2) if ((c, f[i + 1]) in ms)
      printf "%-18s %-8s %-8s %9.4f %9.4f %8.1f %8.1f\n", c, f[i], f[i + 1], ms[c, f[i]],
             ms[c, f[i + 1]], tf[c, f[i]], tf[c, f[i + 1]]
  }' "$build/moe_fusion_gemm.tsv"
baseline=(--set scale_vectors.mode=SHARED --set scale_vectors.placement=INPUT_ONLY
  --set scale_vectors.reparam=PLAIN --set scale_vectors.decay_policy=NONE_1D)
rows=()
for p in gpu_moe_125m gpu_finegrained_64e; do
  for v in ${VARIANTS:-baseline}; do
    sets=()
    [ "$v" = baseline ] && sets+=("${baseline[@]}")
    for fusion in none permute swiglu both; do
      permute=false swiglu=false
      [ $fusion = permute ] || [ $fusion = both ] && permute=true
      [ $fusion = swiglu ] || [ $fusion = both ] && swiglu=true
      log="$build/moe_fusion_${p}_${v}_$fusion.log"
      time_step "$log" "$p/$v/$fusion" "$p" 'expert GEMM|permutation|norms\+elementwise' \
        "${sets[@]}" --set moe.fuse_permute=$permute --set moe.fuse_swiglu=$swiglu
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
print(f"\n{'preset/variant/fusion':34s} {'ms':>8s} {'/none':>7s} {'peak GiB':>9s} {'MFU':>6s}")
for label in sorted(runs):
    r, none = runs[label], runs.get(label.rsplit("/", 1)[0] + "/none")
    ratio = r["step_ms_median"] / none["step_ms_median"] if none else float("nan")
    print(f"{label:34s} {r['step_ms_median']:8.2f} {ratio:7.3f} {r['peak_gib']:9.2f} "
          f"{100 * r['mfu']:5.1f}%")
PY
exit $status
