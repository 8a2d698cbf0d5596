#!/usr/bin/env bash
# Writes a small corpus of templated sentences (learnable structure) and
# prepares it with `scalemoe prepare` into OUT/dataset (BPE of 320 ids, in
# OUT/dataset/tokenizer): the data of the launcher tests, a few seconds.
#   tests/scripts/tiny_dataset.sh SCALEMOE_BIN OUT
set -euo pipefail
bin=$1 out=$2
mkdir -p "$out"
awk 'BEGIN {
  split("Emma,Harriet,Mr. Knightley,Jane,Frank", names, ",");
  split("walked to,wrote to,spoke of,thought of,visited", verbs, ",");
  split("Highbury,Randalls,Hartfield,London,Donwell", places, ",");
  for (doc = 0; doc < 600; ++doc) {
    line = "";
    for (s = 0; s < 12; ++s) {
      i = (doc * 7 + s * 3) % 5; j = (doc + s) % 5; k = (doc * 3 + s) % 5;
      line = line names[i + 1] " " verbs[j + 1] " " places[k + 1] " on day " (s + doc) % 9 ". ";
    }
    printf "%s\n%c\n", line, 30;
  }
}' > "$out/corpus.txt"
"$bin" prepare --input "$out/corpus.txt" --out "$out/dataset" --train-tokenizer 320 \
  --val-fraction 0.2 --threads 1 >/dev/null
