#!/usr/bin/env bash
# The experts' grouped GEMMs on the persistent warp-specialized wgmma
# kernel (the default on sm_90, core/cuda/grouped_gemm_wgmma_ws.cu, its
# epilogue through shared memory) against the same kernel storing straight
# from the registers (SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct), the
# block-per-tile wgmma kernel
# (SCALEMOE_GROUPED_GEMM=tile, core/cuda/grouped_gemm_wgmma.cu), that one
# also storing from the registers (SCALEMOE_GROUPED_GEMM_EPILOGUE=direct),
# and the mma.sync kernel (SCALEMOE_GROUPED_GEMM=mma), in one device call:
# builds the grouped-GEMM parity test and bench/cuda_gemm_bench in BUILD_DIR
# (default build-gpu, an already configured CUDA tree), runs the test's
# five registrations (they must pass, not skip), then the bench five ways,
# and prints the grouped rows (gfwd, gdgrad, gwgrad: the trainer's three
# products with device offsets) side by side.
# usage: bench/grouped_gemm_check.sh      (JOBS, default 16)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test grouped_gemm \
  '^core_cuda_grouped_gemm(_mma|_tile|_direct|_ws_direct)?_test$' \
  core_cuda_grouped_gemm_test cuda_gemm_bench
paths="mma tile tile_direct ws_direct ws"
for path in $paths; do
  case $path in
    mma) env=(SCALEMOE_GROUPED_GEMM=mma) ;;
    tile) env=(SCALEMOE_GROUPED_GEMM=tile) ;;
    tile_direct) env=(SCALEMOE_GROUPED_GEMM=tile SCALEMOE_GROUPED_GEMM_EPILOGUE=direct) ;;
    ws_direct) env=(SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct) ;;
    ws) env=() ;;  # the default
  esac
  env "${env[@]}" timeout 120 "$build/bench/cuda_gemm_bench" > "$build/grouped_gemm_${path}_bench.tsv" ||
    status=1
done
# Rows: case dtype form batch m n k ms tflops.
awk -F'\t' 'FNR == 1 { file++; next } $3 ~ /^g/ {
    key = $1 " " $3; ms[key, file] = $8; tf[key, file] = $9
    if (!(key in seen)) { seen[key] = 1; order[n++] = key } }
  END {
    printf "%-26s %8s %7s %8s %7s %8s %7s %8s %7s %8s %7s\n", "case form", "mma_ms",
           "TF/s", "tile_ms", "TF/s", "tile_dir", "TF/s", "ws_dir", "TF/s", "ws_ms", "TF/s"
    for (i = 0; i < n; ++i) {
      k = order[i]
      printf "%-26s", k
      for (f = 1; f <= 5; ++f) printf " %8.4f %7.1f", ms[k, f], tf[k, f]
      printf "\n"
    }
  }' "$build/grouped_gemm_mma_bench.tsv" "$build/grouped_gemm_tile_bench.tsv" \
  "$build/grouped_gemm_tile_direct_bench.tsv" "$build/grouped_gemm_ws_direct_bench.tsv" \
  "$build/grouped_gemm_ws_bench.tsv"
exit $status
