#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite (the README's second
# command; CI runs exactly this). GPU tests skip, with a message, without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@" || status=$?
# Again with every new allocation filled with NaN (core/allocator.h): no code
# may rely on zero-filled memory.
echo "== the suite again with SCALEMOE_POISON_ALLOCATIONS=1"
SCALEMOE_POISON_ALLOCATIONS=1 ctest --test-dir build --output-on-failure -j"$(nproc)" "$@" ||
  status=$?
# A test that skips says why on a "SKIP: ..." line (the multinode and slurm
# tests where namespaces or Slurm cannot start); ctest keeps it in its log.
grep -h "^SKIP: " build/Testing/Temporary/LastTest.log 2>/dev/null | sort -u || true
exit $status
