#!/usr/bin/env bash
# Issue 15: the trainer and the PyTorch reference (bench/torch_train.py)
# trained from the SAME initial weights, per step, on the GPU: for each
# variant (default: baseline and unified) of configs/ablation/moe_adamw.textproto
# (seed 1234, its 500 steps, bf16), ours trains with checkpoint.save_initial
# (step_0 = the weights before any update) and logs every step; step_0 is
# exported unfolded; torch trains from it (--init-from) on the same windows.
# Prints scripts/curve_compare.py per variant (worst per-step |diff|, final
# train and val loss), the per-step loss difference at a few steps, and the
# final val losses with the unified − baseline gap of each implementation,
# and the scale vectors whose final figures (metrics "sv": rms, β) differ most.
# ~4 minutes on one H200 (each of our runs ~30 s, torch's ~25 s + compile).
# usage: bench/same_init_compare.sh OUT [VARIANT ...]
#   OUT           flat results: <variant>-{ours,torch}.metrics.jsonl and .log,
#                 summary.txt (files at most one folder below OUT, as the
#                 device tool returns them)
#   SCALEMOE_BIN  the scalemoe to run (default build-gpu/scalemoe, prebuilt:
#                 cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release &&
#                 cmake --build build-gpu -j --target scalemoe); ABSL_PREFIX
#                 as for scripts/gpu_check.sh
#   WORK          run directories and the exported weights (default
#                 /tmp/same_init; ~150 MB per variant, not copied to OUT)
#   SEED=1234  STEPS (default: the config's 500)  PYTHON=python3
#   TORCH_COMPILE=block|none (torch_train.py --compile)
#   SETS          more --set overrides for both, e.g. "train.precision=FP32"
#   SUMMARY_ONLY=1  no training: print the summary of the runs already in OUT
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,28p "$0"; exit 2; }
out=$1
shift
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(baseline unified)
config=configs/ablation/moe_adamw.textproto
work=${WORK:-/tmp/same_init}
python=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0
if [ -n "${ABSL_PREFIX:-}" ]; then
  prefix=$(realpath "$ABSL_PREFIX")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
bin=${SCALEMOE_BIN:-build-gpu/scalemoe}
[ -x "$bin" ] || { echo "same_init_compare: no $bin; build it (see --help) or set SCALEMOE_BIN" >&2; exit 2; }
"$bin" export --help 2>&1 | grep -q -- --unfolded ||
  { echo "same_init_compare: $bin predates export --unfolded and checkpoint.save_initial; rebuild it" >&2; exit 2; }
[ -f datasets/default/manifest.json ] ||
  { echo "same_init_compare: no datasets/default (bash scripts/run_default.sh prepares it)" >&2; exit 2; }
"$bin" --help | grep '^devices:' || true
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p "$out" "$work"

common=(--set "train.seed=${SEED:-1234}" --set logging.log_interval=1)
[ -n "${STEPS:-}" ] && common+=(--set "train.train_steps=$STEPS")
for s in ${SETS:-}; do common+=(--set "$s"); done

for v in "${variants[@]}"; do
  [ -n "${SUMMARY_ONLY:-}" ] && break
  read -r -a vsets <<<"$("$python" scripts/ablation_variants.py "$v")"  # --set a.b=v ...
  run=$work/$v-ours init=$work/$v-init
  rm -rf "$run" "$init" "$work/$v-torch"
  echo "== $v: ours (step_0 saved), $(date -u +%T)"
  start=$SECONDS
  "$bin" train --config "$config" "${vsets[@]}" "${common[@]}" \
    --set checkpoint.save_initial=true --set checkpoint.interval=0 \
    --set checkpoint.save_at_end=false --run-dir "$run" >"$out/$v-ours.log" 2>&1 ||
    { tail -5 "$out/$v-ours.log"; exit 1; }
  echo "   ours: $((SECONDS - start)) s; $(grep 'val loss' "$out/$v-ours.log" | tail -1)"
  cp "$run/metrics.jsonl" "$out/$v-ours.metrics.jsonl"
  "$bin" export --unfolded --checkpoint "$run/checkpoints/step_0" --out "$init" >/dev/null
  echo "== $v: torch from ours' step_0, $(date -u +%T)"
  start=$SECONDS
  "$python" bench/torch_train.py --config "$config" "${vsets[@]}" "${common[@]}" \
    --init-from "$init" --compile "${TORCH_COMPILE:-block}" --label "$v-same-init" \
    --out "$work/$v-torch" >"$out/$v-torch.log" 2>&1 || { tail -5 "$out/$v-torch.log"; exit 1; }
  echo "   torch: $((SECONDS - start)) s; $(grep 'val loss' "$out/$v-torch.log" | tail -1)"
  cp "$work/$v-torch/metrics.jsonl" "$out/$v-torch.metrics.jsonl"
done

{
  echo "== same initial weights, seed ${SEED:-1234}: ours (reference) vs torch"
  for v in "${variants[@]}"; do
    "$python" scripts/curve_compare.py "$out/$v-ours.metrics.jsonl" "$out/$v-torch.metrics.jsonl" \
      --label "$v" || true
  done
  "$python" - "$out" "${variants[@]}" <<'PY'
import json, os, sys
out, variants = sys.argv[1], sys.argv[2:]
def curve(path):
    loss, val = {}, {}
    for line in open(path):
        r = json.loads(line)
        if r.get("loss") is not None:
            loss[r["step"]] = r["loss"]
        if r.get("val_loss") is not None:
            val[r["step"]] = r["val_loss"]
    return loss, val
runs = {v: {impl: curve(os.path.join(out, f"{v}-{impl}.metrics.jsonl"))
            for impl in ("ours", "torch")} for v in variants}
for v in variants:
    (lo, vo), (lt, vt) = runs[v]["ours"], runs[v]["torch"]
    steps = sorted(set(lo) & set(lt))
    marks = [s for s in (1, 2, 3, 5, 10, 20, 50, 100, 200, 300, 400, 500) if s in steps]
    first = next((s for s in steps if abs(lt[s] - lo[s]) > 1e-2), None)
    print(f"-- {v}: train loss torch - ours at steps " +
          ", ".join(f"{s}: {lt[s] - lo[s]:+.4f}" for s in marks) +
          f"; first |diff| > 0.01 at step {first}")
    # Mean over 50-step windows: a drift (one side learns faster) vs noise.
    windows = [steps[i:i + 50] for i in range(0, len(steps), 50)]
    print("   mean diff per 50 steps: " + " ".join(
        f"{sum(lt[s] - lo[s] for s in w) / len(w):+.3f}" for w in windows if w))
    print("   val (ours / torch): " + ", ".join(
        f"{s}: {vo[s]:.4f} / {vt[s]:.4f}" for s in sorted(set(vo) & set(vt))))
def last_sv(path):
    sv = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("sv"):
            sv = (r["step"], r["sv"])
    return sv
def flat(tree, prefix=""):
    out = {}
    for k, x in tree.items():
        out.update(flat(x, f"{prefix}{k}/") if isinstance(x, dict) else {prefix + k: x})
    return out
for v in variants:  # what the vectors learned: the largest differences at the end
    so = last_sv(os.path.join(out, f"{v}-ours.metrics.jsonl"))
    st = last_sv(os.path.join(out, f"{v}-torch.metrics.jsonl"))
    if not so or not st or so[0] != st[0]:
        continue
    a, b = flat(so[1]), flat(st[1])
    keys = sorted((k for k in a if k in b and not k.endswith("/n")),
                  key=lambda k: -abs(b[k] - a[k]))
    print(f"-- {v}: scale vectors at step {so[0]}, largest |torch - ours| (ours / torch): " +
          ", ".join(f"{k} {a[k]:.3f}/{b[k]:.3f}" for k in keys[:6]))
finals = {v: {impl: max(runs[v][impl][1].items())[1] if runs[v][impl][1] else float("nan")
              for impl in ("ours", "torch")} for v in variants}
print("| variant | ours final val | torch final val | torch - ours |")
print("|---|---:|---:|---:|")
for v in variants:
    o, t = finals[v]["ours"], finals[v]["torch"]
    print(f"| {v} | {o:.4f} | {t:.4f} | {t - o:+.4f} |")
if "baseline" in finals:
    for v in variants:
        if v != "baseline":
            print(f"{v} - baseline: ours {finals[v]['ours'] - finals['baseline']['ours']:+.4f}, "
                  f"torch {finals[v]['torch'] - finals['baseline']['torch']:+.4f}")
PY
} | tee "$out/summary.txt"
