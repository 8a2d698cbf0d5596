#!/usr/bin/env bash
# The f32 products with a side of at most 64 (the router's backward, f32:
# d_W = d_logitsᵀ·x and d_x = d_logits·W) on core/cuda/skinny_gemm.cu's
# kernels (SCALEMOE_SKINNY_GEMM=1, opt-in) against cuBLASLt, in one device
# call: builds the GEMM parity test and bench/cuda_gemm_bench in BUILD_DIR
# (default build-gpu, an already configured CUDA tree), runs the test both
# ways (core_cuda_gemm_test and core_cuda_gemm_skinny_test; they must pass,
# not skip), then the bench both ways, and prints the router rows' f32
# dgrad and wgrad side by side.
# usage: bench/skinny_gemm_check.sh      (JOBS, default 16)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test skinny_gemm '^core_cuda_gemm(_skinny)?_test$' core_cuda_gemm_test cuda_gemm_bench
for path in cublaslt skinny; do
  flag=0
  [ $path = skinny ] && flag=1
  SCALEMOE_SKINNY_GEMM=$flag timeout 240 "$build/bench/cuda_gemm_bench" router \
    > "$build/skinny_gemm_${path}_bench.tsv" || status=1
done
# Rows: case dtype form batch m n k ms tflops.
awk -F'\t' 'FNR == 1 { file++; next } $1 ~ /^router/ && $2 == "fp32" && $3 ~ /grad$/ {
    key = $1 " " $3; ms[key, file] = $8
    if (!(key in seen)) { seen[key] = 1; order[n++] = key } }
  END {
    printf "%-20s %12s %10s %8s\n", "case form", "cublaslt_ms", "skinny_ms", "speedup"
    for (i = 0; i < n; ++i) {
      k = order[i]
      printf "%-20s %12.4f %10.4f %7.2fx\n", k, ms[k, 1], ms[k, 2],
             (ms[k, 2] > 0 ? ms[k, 1] / ms[k, 2] : 0)
    }
  }' "$build/skinny_gemm_cublaslt_bench.tsv" "$build/skinny_gemm_skinny_bench.tsv"
exit $status
