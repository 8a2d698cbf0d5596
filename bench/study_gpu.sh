#!/usr/bin/env bash
# Runs (or continues) a study sweep on a GPU machine within a time budget:
# the points of SPEC in the order given, each a `scalemoe sweep` point
# (finished points are skipped, an interrupted one resumes from its
# checkpoint when the sweep directory still holds it). Prints the sweep's
# results.csv at the end. Used for issue 15's runs on the device tool's
# one-H200 machine, where each call is a fresh machine: the sweep directory
# travels there and back (without checkpoints) so a later call continues.
# usage: bench/study_gpu.sh SPEC BUDGET_S [POINT,POINT,...] [-- --set a.b=v ...]
#   SCALEMOE_BIN  the scalemoe to run (default build-gpu/scalemoe, built here
#                 first when missing; ABSL_PREFIX as for scripts/gpu_check.sh)
#   SWEEP_DIR     output directory (default sweeps/<spec name>)
#   COPY_TO       also copy results.csv and each point's metrics.jsonl there,
#                 flat (<point>.metrics.jsonl: the device tool returns files
#                 at most two folders below its output folder), and the
#                 sweep directory without checkpoints as sweep_dir.tgz
#   RESUME_FROM   a sweep directory kept from an earlier call (a folder such
#                 as bench/studies/experts_gpu_6m, or its sweep_dir.tgz),
#                 copied in first when the sweep directory does not exist:
#                 its finished points are skipped, the others start again
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,14p "$0"; exit 2; }
spec=$1 budget=$2
shift 2
points=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then points=$1; shift; fi
[ "${1:-}" = "--" ] && shift
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -n "${ABSL_PREFIX:-}" ]; then
  prefix=$(realpath "$ABSL_PREFIX")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
bin=${SCALEMOE_BIN:-build-gpu/scalemoe}
if [ ! -x "$bin" ]; then
  extra=()
  [ -n "${ABSL_PREFIX:-}" ] && extra+=(-Dabsl_DIR="$prefix/lib/x86_64-linux-gnu/cmake/absl")
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null
  cmake --build build-gpu -j"$(nproc)" --target scalemoe 2>&1 | grep -E "error" || true
  bin=build-gpu/scalemoe
fi
"$bin" --help | grep '^devices:'
args=(--spec "$spec" "$@")
[ -n "${SWEEP_DIR:-}" ] && args+=(--sweep-dir "$SWEEP_DIR")
dir=${SWEEP_DIR:-sweeps/$(sed -n 's/^name: *"\(.*\)"/\1/p' "$spec")}
if [ -n "${RESUME_FROM:-}" ] && [ ! -e "$dir" ]; then
  mkdir -p "$dir"
  if [ -d "$RESUME_FROM" ]; then
    cp -r "$RESUME_FROM/." "$dir/"
  else  # a sweep_dir.tgz of COPY_TO: the directory's contents at its top
    tar -xzf "$RESUME_FROM" -C "$dir"
  fi
  echo "study_gpu: $dir continued from $RESUME_FROM"
fi
[ -n "$points" ] && args+=(--points "$points")
# SIGINT at the budget: the running point stops and resumes on a later call.
status=0
timeout -s INT -k 20 "$budget" "$bin" sweep "${args[@]}" || status=$?
"$bin" sweep "${args[@]}" --collect --quiet || true
echo "== $dir/results.csv (sweep exit $status; 124 = stopped at the budget)"
cat "$dir/results.csv" 2>/dev/null || echo "(none yet)"
if [ -n "${COPY_TO:-}" ]; then
  mkdir -p "$COPY_TO"
  cp "$dir/results.csv" "$COPY_TO/" 2>/dev/null || true
  for m in "$dir"/*/metrics.jsonl; do
    [ -f "$m" ] && cp "$m" "$COPY_TO/$(basename "$(dirname "$m")").metrics.jsonl"
  done
  tar --exclude=checkpoints -czf "$COPY_TO/sweep_dir.tgz" -C "$dir" .
fi
