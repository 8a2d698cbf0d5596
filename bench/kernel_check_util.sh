# Sourced by the one-call kernel checks (bench/*_check.sh): the build of
# their targets and the run of their GPU parity tests, which must pass, not
# skip (build_and_test), and one timed training step of a preset (time_step).
# Sets `status` (0 or 1) and exits on a build error. Needs `build` (an
# already configured CUDA tree).

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

# time_step LOG LABEL PRESET ROWS [ARG]...: one bench/train_step_bench run of
# configs/PRESET.textproto at micro-batch 8, global batch 64, CUDA graphs,
# STEPS (default 20) timed steps after 3 and one op-timed step, with more
# flags ARG (--set a.b=v ...), into LOG. Prints the op timer's rows whose
# category matches the regex ROWS, prefixed with LABEL; sets `status` to 1
# when the run fails.
time_step() {
  local log=$1 label=$2 preset=$3 rows=$4
  shift 4
  timeout 150 "$build/bench/train_step_bench" --config "configs/$preset.textproto" \
    --set train.micro_batch_size=8 --set train.global_batch_size=64 \
    --set train.cuda_graphs=true "$@" --steps "${STEPS:-20}" --warmup 3 --profile-steps 1 \
    --label "$label" > "$log" 2>&1 || { status=1; echo "failed: $(tail -3 "$log")"; }
  grep -E "^\| ($rows) " "$log" | sed "s#^#  $label #"
}
