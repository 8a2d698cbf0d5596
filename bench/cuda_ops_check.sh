#!/usr/bin/env bash
# On a GPU machine, from a fresh checkout: builds only what the CUDA ops need
# (scalemoe_core, the core tests, cuda_gemm_bench), runs the core tests (the
# gpu-labelled CUDA parity tests must pass, not skip: SCALEMOE_REQUIRE_GPU=1)
# and then bench/gemm_vs_torch.sh, whose table comes last.
# usage: bench/cuda_ops_check.sh [ABSL_PREFIX]
#   ABSL_PREFIX: Debian's libabsl-dev unpacked (dpkg -x) when the machine has
#   no Abseil, e.g. .device/absl/usr. BUILD_DIR (default build-gpu), JOBS
#   (default 16) from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
jobs=${JOBS:-16}
extra=()
if [ -n "${1:-}" ]; then
  export ABSL_PREFIX=$(realpath "$1")
  extra+=(-Dabsl_DIR="$ABSL_PREFIX/lib/x86_64-linux-gnu/cmake/absl")
  export LD_LIBRARY_PATH="$ABSL_PREFIX/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null
grep -q "SCALEMOE_CUDA:BOOL=ON" "$build/CMakeCache.txt" || { echo "CUDA backend is OFF in $build (nvcc not found?)" >&2; exit 1; }
tests=(core_tensor_test core_gemm_test core_scale_rows_cols_test core_context_test core_swiglu_test
       core_bf16_ops_test core_cuda_philox_test core_cuda_gemm_test core_cuda_elementwise_test
       core_cuda_scale_rows_cols_test core_cuda_context_test)
start=$(date +%s)
if ! cmake --build "$build" -j"$jobs" --target "${tests[@]}" cuda_gemm_bench > "$build/cuda_ops_build.log" 2>&1; then
  grep -E -A6 "error|Error" "$build/cuda_ops_build.log" | head -80
  echo "build failed: $build/cuda_ops_build.log" >&2
  exit 1
fi
grep -E "warning" "$build/cuda_ops_build.log" | head -20 || true
echo "build: $(( $(date +%s) - start )) s"
status=0
regex="^($(IFS='|'; echo "${tests[*]}"))\$"
SCALEMOE_REQUIRE_GPU=1 ctest --test-dir "$build" -R "$regex" --output-on-failure -j4 \
  > "$build/cuda_ops_ctest.log" 2>&1 || status=1
grep -E "tests passed|\(Failed\)|\(Skipped\)|\(Timeout\)|Not Run" "$build/cuda_ops_ctest.log" || true
[ $status -eq 0 ] || grep -E -B2 -A12 "Failure|FAILED|SM_CHECK|Aborted" "$build/cuda_ops_ctest.log" | head -80
bash bench/gemm_vs_torch.sh "$build" || status=1
exit $status
