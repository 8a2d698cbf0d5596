# Sourced by the one-call kernel checks (bench/attention_mma_check.sh,
# bench/grouped_gemm_check.sh, bench/skinny_gemm_check.sh): the build of
# their targets and the run of their GPU parity tests, which must pass, not
# skip. Sets `status` (0 or 1)
# and exits on a build error. Needs `build` (an already configured CUDA tree).

# build_and_test NAME TEST_REGEX TARGET...: logs in $build/NAME_{build,ctest}.log.
build_and_test() {
  local name=$1 regex=$2
  shift 2
  cmake --build "$build" -j"${JOBS:-16}" --target "$@" > "$build/${name}_build.log" 2>&1 ||
    { grep -E -A6 "error" "$build/${name}_build.log" | head -60; exit 1; }
  status=0
  SCALEMOE_REQUIRE_GPU=1 timeout 400 ctest --test-dir "$build" --output-on-failure -R "$regex" \
    > "$build/${name}_ctest.log" 2>&1 || status=1
  grep -E "tests passed|\(Failed\)|\(Skipped\)|\(Timeout\)" "$build/${name}_ctest.log"
  [ $status -eq 0 ] || grep -E -B2 -A10 "Failure|SM_CHECK|Aborted" "$build/${name}_ctest.log" |
    head -80
}
