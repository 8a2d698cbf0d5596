#!/usr/bin/env bash
# The README's first command: sets up a fresh machine and runs the main job on
# the built-in default: assemble the default corpus from Debian packages,
# train a byte-level BPE tokenizer and write token shards (once; later runs
# reuse them), then train the tiny MoE preset, printing progress.
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
build/scalemoe check-config --config "$config" --world 1 | head -1
echo "== train: $config"
build/scalemoe train --config "$config" "$@"
