#!/usr/bin/env bash
# On a GPU machine (CUDA toolkit, PyTorch; e.g. the device of the tool
# library): builds with the CUDA backend, runs every test that needs no
# network (the gpu-labelled ones included: they must pass, not skip), then
# trains a tiny model on a generated corpus, exports it and checks the
# export's loss with plain PyTorch and with numpy against the trainer's.
# usage: scripts/gpu_check.sh [ABSL_PREFIX]
#   ABSL_PREFIX: Debian's libabsl-dev unpacked (dpkg -x) when the machine has
#   no Abseil, e.g. .device/absl/usr
set -euo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
extra=()
if [ -n "${1:-}" ]; then
  prefix=$(realpath "$1")
  extra+=(-Dabsl_DIR="$prefix/lib/x86_64-linux-gnu/cmake/absl")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
build=${BUILD_DIR:-build-gpu}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" 2>&1 | grep -E "warning|error" || true
status=0
ctest --test-dir "$build" -LE network --output-on-failure -j8 > "$build/ctest.log" 2>&1 || status=1
grep -E "tests passed|\(Failed\)|\(Skipped\)|Not Run" "$build/ctest.log" || true
[ $status -eq 0 ] || grep -B2 -A25 "Failure\|FAILED" "$build/ctest.log" | head -80

work=$(mktemp -d)
python3 - "$work/corpus.txt" <<'PY'
import sys
names = ["Emma", "Harriet", "Jane", "Frank", "Anne"]
places = ["Highbury", "Bath", "London", "Kellynch", "Donwell"]
with open(sys.argv[1], "w") as f:
    for doc in range(150):
        for s in range(12):
            f.write(f"{names[(doc + s) % 5]} went to {places[(doc * 3 + s) % 5]} on day {s}. ")
        f.write("\n\x1e\n")
PY
"$build/scalemoe" prepare --input "$work/corpus.txt" --train-tokenizer 320 \
  --tokenizer "$work/tokenizer" --out "$work/data" --val-fraction 0.1 >/dev/null
"$build/scalemoe" train --config configs/tiny_cpu.textproto --run-dir "$work/run" --quiet \
  --set model.vocab_size=320 --set model.num_layers=2 --set model.seq_length=32 \
  --set train.train_steps=20 --set schedule.warmup_steps=2 --set train.eval_interval=0 \
  --set train.eval_batches=1 --set data.dataset_dir="$work/data" | tail -1
"$build/scalemoe" export --checkpoint "$work/run/checkpoints/step_20" --out "$work/export" \
  --tokenizer "$work/tokenizer"
python3 scripts/torch_loss_check.py "$work/export" || status=1
python3 scripts/export_check.py "$work/export" | cut -c1-120 || status=1
exit $status
