#!/usr/bin/env bash
# Runs bench/model_bench once per scale-vector variant, each in its own
# process (so peak_MiB is that variant's), from the repository root.
# usage: [VARIANTS="0 1 ..."] bench/run_model_bench.sh [BUILD_DIR] [extra Google Benchmark flags]
# (VARIANTS: indices into bench/model_bench.cc's list; default all ten)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
for v in ${VARIANTS:-0 1 2 3 4 5 6 7 8 9}; do
  "$build/bench/model_bench" --benchmark_filter="BM_TinyForwardBackward/$v\$" \
    --benchmark_min_time=5 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
    "$@" 2>/dev/null | grep -E "_median|_mean" || true
done
