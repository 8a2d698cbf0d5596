#!/usr/bin/env bash
# Fetches Hugging Face's tokenizers library (its Rust core with node bindings:
# the npm package `tokenizers`, prebuilt for this platform inside the package)
# into DEST/node_modules, for scripts/hf_tokenizer_check.js. Idempotent.
#   usage: scripts/fetch_hf_tokenizers.sh [DEST]   (default: build/hf_tokenizers)
set -euo pipefail

dest="${1:-build/hf_tokenizers}"
version=0.23.2

if [ -f "$dest/node_modules/tokenizers/package.json" ] &&
   grep -q "\"version\": \"$version\"" "$dest/node_modules/tokenizers/package.json"; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "fetch_hf_tokenizers: npm not found; install node and npm (scripts/setup.sh)" >&2
  exit 1
fi
mkdir -p "$dest"
if ! npm install --silent --no-save --no-package-lock --prefix "$dest" "tokenizers@$version" >/dev/null; then
  echo "fetch_hf_tokenizers: 'npm install tokenizers@$version' failed; the npm registry" \
       "must be reachable (this test is labelled network)" >&2
  exit 1
fi
