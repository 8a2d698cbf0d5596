#!/usr/bin/env bash
# On a GPU machine: times ops::Gemm (bench/cuda_gemm_bench, cuBLASLt) and
# torch.matmul (bench/torch_matmul_bench.py) on the same cases in one run and
# prints one table: case, dtype, form, the product, ours and torch's TFLOP/s,
# and ours / torch. fp32 is exact fp32 on both sides (TF32 off).
# usage: bench/gemm_vs_torch.sh [BUILD_DIR]
#   BUILD_DIR (default build-gpu) is configured when it has no CMakeCache.txt;
#   ABSL_PREFIX=DIR in the environment points at an unpacked Abseil (as
#   scripts/gpu_check.sh's argument, e.g. .device/absl/usr). Raw rows are
#   left in BUILD_DIR/gemm_bench/. SKIP_BUILD=1 uses BUILD_DIR's
#   cuda_gemm_bench as it is (e.g. built on another machine).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
extra=()
if [ -n "${ABSL_PREFIX:-}" ]; then
  prefix=$(realpath "$ABSL_PREFIX")
  extra+=(-Dabsl_DIR="$prefix/lib/x86_64-linux-gnu/cmake/absl")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null
  fi
  cmake --build "$build" --target cuda_gemm_bench -j"$(nproc)" 2>&1 | grep -E "error|warning" || true
fi
out="$build/gemm_bench"
mkdir -p "$out"
"$build/bench/cuda_gemm_bench" --list > "$out/cases.tsv"
"$build/bench/cuda_gemm_bench" > "$out/ours.tsv"
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python3 bench/torch_matmul_bench.py "$out/cases.tsv" > "$out/torch.tsv"
else
  echo "gemm_vs_torch: no python3 with CUDA torch here: torch column left empty" >&2
  : > "$out/torch.tsv"
fi
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
python3 - "$out/ours.tsv" "$out/torch.tsv" "$device" <<'PY'
import math, sys

def rows(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    head, body = (lines[0], lines[1:]) if lines else ([], [])
    return {(r[0], r[1], r[2]): dict(zip(head, r)) for r in body}

ours, torch = rows(sys.argv[1]), rows(sys.argv[2])
print(f"GEMM TFLOP/s, ops::Gemm (cuBLASLt) and ops::GroupedGemm (g*) vs torch.matmul and torch._grouped_mm, median of 25 x 4 calls; {sys.argv[3]}")
print(f"{'case':<18} {'dtype':<5} {'form':<6} {'batch x M x N x K':<24} {'ours':>7} {'torch':>7} {'ratio':>6}  note")
ratios = {}
for key, o in ours.items():
    t = torch.get(key)
    shape = f"{o['batch']}x{o['m']}x{o['n']}x{o['k']}"
    ours_tf = float(o["tflops"])
    if t:
        torch_tf = float(t["tflops"])
        ratio = ours_tf / torch_tf if torch_tf > 0 else float("nan")
        ratios.setdefault(key[1] + (" grouped" if key[2].startswith("g") else ""), []).append(ratio)
        print(f"{key[0]:<18} {key[1]:<5} {key[2]:<6} {shape:<24} {ours_tf:7.1f} {torch_tf:7.1f} {ratio:6.2f}  {t.get('note', '')}")
    else:
        print(f"{key[0]:<18} {key[1]:<5} {key[2]:<6} {shape:<24} {ours_tf:7.1f} {'-':>7} {'-':>6}")
for dtype, rs in ratios.items():
    good = [r for r in rs if r > 0 and math.isfinite(r)]
    if good:
        gm = math.exp(sum(math.log(r) for r in good) / len(good))
        print(f"{dtype}: geometric mean ours/torch {gm:.2f} over {len(good)} cases (min {min(good):.2f}, max {max(good):.2f})")
PY
