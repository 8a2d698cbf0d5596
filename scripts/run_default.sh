#!/usr/bin/env bash
# The README's first command: sets up a fresh machine and runs the main job on
# the built-in default: assemble the default corpus from Debian packages,
# train a byte-level BPE tokenizer and write token shards (once; later runs
# reuse them), then train the tiny MoE preset on 2 ranks (data parallel with
# the experts split over both ranks and the optimizer state sharded),
# printing progress.
# Extra arguments go to `scalemoe train` (e.g. --set train.train_steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target scalemoe

corpus=datasets/corpus/default.txt
dataset=datasets/default
mkdir -p datasets/corpus
echo "== corpus: $corpus"
bash scripts/corpus.sh "$corpus"
if [ ! -f "$dataset/manifest.json" ]; then
  echo "== prepare: tokenizer + shards in $dataset"
  build/scalemoe prepare --input "$corpus" --train-tokenizer 4096 \
    --tokenizer "$dataset/tokenizer" --out "$dataset"
fi
config=configs/tiny_cpu.textproto
ranks=2
layout=(--set parallel.ep=2 --set parallel.zero_stage=1)
# On a machine with a GPU (and a build with the CUDA backend) the ranks train
# on it (one GPU each where there are two; else they share one, their
# collectives staged through the host). SCALEMOE_DEVICE=CPU keeps the CPU.
device=CPU
gpus=$(build/scalemoe --help | sed -n 's/^devices: CPU, CUDA (\([0-9]*\) visible)$/\1/p')
if [ "${SCALEMOE_DEVICE:-auto}" != CPU ] && [ "${gpus:-0}" -gt 0 ]; then
  device=CUDA
  layout+=(--set train.device=CUDA)
fi
build/scalemoe check-config --config "$config" --world $ranks "${layout[@]}" >/dev/null
echo "== train: $config on $ranks ranks (data parallel 2, experts split over both, ZeRO-1) on $device"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np $ranks --oversubscribe build/scalemoe train --config "$config" "${layout[@]}" "$@"
