#!/usr/bin/env bash
# bench/study_gpu.sh carries a study between fresh machines (issue 15): one
# call runs a point of the tiny sweep and keeps the sweep directory without
# checkpoints (COPY_TO/sweep_dir.tgz); a second call in a new sweep
# directory, RESUME_FROM that file (or a kept folder), skips the finished
# point and runs the next. Runs on the CPU in seconds (the scalemoe of BUILD).
#   tests/scripts/study_gpu_resume_test.sh BUILD
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$REPO/build}" && pwd)
source "$REPO/tests/scripts/launch_test_lib.sh"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
bin=$BUILD/scalemoe
bash "$REPO/tests/scripts/tiny_dataset.sh" "$bin" "$T/data"
spec=$REPO/configs/sweeps/experts_tiny.textproto
# The same overrides on every call (the sweep refuses to continue otherwise).
read -r -a flags <<< "$(tiny_run_flags "$T/data/dataset" 4) --set train.device=CPU"
first=experts-1_strategy-baseline second=experts-1_strategy-unified
study() {  # SWEEP_DIR COPY_TO POINTS [RESUME_FROM]
  SCALEMOE_BIN=$bin SWEEP_DIR=$1 COPY_TO=$2 RESUME_FROM=${4:-} \
    bash "$REPO/bench/study_gpu.sh" "$spec" 120 "$3" -- "${flags[@]}" > "$2.log" 2>&1 ||
    fail "study_gpu.sh $3: $(tail -5 "$2.log")"
}
status_of() {  # DIR POINT: the point's status column of DIR/results.csv
  awk -F, -v p="$2" 'NR == 1 { for (i = 1; i <= NF; ++i) if ($i == "status") c = i }
                     $1 == p { print $c }' "$1/results.csv"
}

cd "$REPO"
study "$T/a" "$T/copy1" "$first"
[[ $(status_of "$T/copy1" "$first") == done ]] || fail "$first not done: $(cat "$T/copy1/results.csv")"
[[ -f $T/copy1/$first.metrics.jsonl ]] || fail "no flat metrics for $first in COPY_TO"
tar -tzf "$T/copy1/sweep_dir.tgz" > "$T/listing"
grep -q "$first/sweep_done.json" "$T/listing" || fail "sweep_dir.tgz lacks $first's done marker"
! grep -q "checkpoints/" "$T/listing" || fail "sweep_dir.tgz carries checkpoints"

# A fresh sweep directory from the tarball: the first point is skipped.
study "$T/b" "$T/copy2" "$first,$second" "$T/copy1/sweep_dir.tgz"
grep -q "continued from $T/copy1/sweep_dir.tgz" "$T/copy2.log" || fail "no restore: $(head "$T/copy2.log")"
grep -q "$first: finished, skipped" "$T/copy2.log" || fail "$first ran again: $(cat "$T/copy2.log")"
[[ $(status_of "$T/copy2" "$second") == done ]] || fail "$second not done: $(cat "$T/copy2/results.csv")"
[[ $(status_of "$T/copy2" "$first") == done ]] || fail "$first lost its result"

# From a kept folder (as bench/studies/ holds one): both points skipped.
mkdir -p "$T/kept" && tar -xzf "$T/copy2/sweep_dir.tgz" -C "$T/kept"
study "$T/c" "$T/copy3" "$first,$second" "$T/kept"
for p in "$first" "$second"; do
  grep -q "$p: finished, skipped" "$T/copy3.log" || fail "$p ran again from the kept folder"
done
echo "study_gpu_resume_test: passed"
