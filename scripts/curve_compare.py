#!/usr/bin/python3
"""Compares two training runs' loss curves (their metrics.jsonl): the train
loss at every logged step both runs logged, and the final evaluation.

usage: scripts/curve_compare.py REFERENCE RUN [--max-abs A] [--noise RUN2] [--final-rel R]
                                [--final-window K] [--label NAME]
  REFERENCE, RUN  a run directory or its metrics.jsonl
  --max-abs A     fail unless |RUN - REFERENCE| <= A at every common logged step
  --noise RUN2    the same training with another summation order (e.g. the
                  reference's config on 2 ranks): with --max-abs, a worst
                  |RUN - REFERENCE| above A still passes when it is at most
                  twice the worst |RUN2 - REFERENCE| (an MoE trained with Adam
                  is chaotic: rounding differences flip near-tie top-k picks
                  and grow, so beyond A only the reference's own spread says
                  what "the same curve" means)
  --final-rel R   fail unless the final train loss and the final val loss are
                  each within R relative of the reference's
  --final-window K  the final train loss is the mean over the last K common
                  logged steps (default 1: the last step alone, one batch's
                  loss; a few steps average out that batch's noise)
Prints one line: "curve NAME: N steps, worst |diff| X at step S, final loss
L vs REF (+P%), final val V vs REF (+Q%)" and exits 1 when a bound fails (2
when the runs share no step). Standard library only.
"""
import json
import os
import sys


def read_curve(path):
    """({step: train loss}, (last val step, val loss) or None)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    losses, val = {}, None
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if "loss" in rec:
                losses[rec["step"]] = rec["loss"]
            if rec.get("val_loss") is not None:
                val = (rec["step"], rec["val_loss"])
    return losses, val


def main(argv):
    paths, max_abs, final_rel, label, noise, window = [], None, None, "", None, 1
    i = 0
    while i < len(argv):
        if argv[i] in ("--max-abs", "--final-rel", "--final-window", "--label",
                       "--noise") and i + 1 < len(argv):
            value = argv[i + 1]
            if argv[i] == "--max-abs":
                max_abs = float(value)
            elif argv[i] == "--final-rel":
                final_rel = float(value)
            elif argv[i] == "--final-window":
                window = int(value)
                if window < 1:
                    sys.exit("--final-window must be at least 1")
            elif argv[i] == "--noise":
                noise = value
            else:
                label = value
            i += 2
        elif argv[i].startswith("-"):
            sys.exit(__doc__)
        else:
            paths.append(argv[i])
            i += 1
    if len(paths) != 2:
        sys.exit(__doc__)
    (ref, ref_val), (run, run_val) = read_curve(paths[0]), read_curve(paths[1])
    steps = sorted(set(ref) & set(run))
    if not steps:
        print(f"curve {label}: no common logged step between {paths[0]} and {paths[1]}")
        return 2
    worst_step = max(steps, key=lambda s: abs(run[s] - ref[s]))
    worst = abs(run[worst_step] - ref[worst_step])
    tail = steps[-window:]
    run_final = sum(run[s] for s in tail) / len(tail)
    ref_final = sum(ref[s] for s in tail) / len(tail)
    rel = (run_final - ref_final) / abs(ref_final)
    what = "final loss" if len(tail) == 1 else f"final loss (mean of steps {tail[0]}-{tail[-1]})"
    text = (f"curve {label}: {len(steps)} steps, worst |diff| {worst:.2e} at step {worst_step}, "
            f"{what} {run_final:.4f} vs {ref_final:.4f} ({100 * rel:+.2f}%)")
    val_rel = None
    if ref_val and run_val and ref_val[0] == run_val[0]:
        val_rel = (run_val[1] - ref_val[1]) / abs(ref_val[1])
        text += f", final val {run_val[1]:.4f} vs {ref_val[1]:.4f} ({100 * val_rel:+.2f}%)"
    noise_worst = None
    if noise is not None:
        other, _ = read_curve(noise)
        common = [s for s in steps if s in other]
        noise_worst = max((abs(other[s] - ref[s]) for s in common), default=None)
        text += (f", reference's own spread (--noise) {noise_worst:.2e}" if noise_worst is not None
                 else ", --noise run shares no step")
    failed = []
    if max_abs is not None and worst > max_abs:
        if noise_worst is None or worst > 2 * noise_worst:
            failed.append(f"worst |diff| {worst:.2e} > {max_abs:g}" +
                          (f" and > 2 x the reference's own spread {noise_worst:.2e}"
                           if noise_worst is not None else ""))
    if final_rel is not None:
        if abs(rel) > final_rel:
            failed.append(f"final loss off by {100 * rel:+.2f}% (bound {100 * final_rel:g}%)")
        if val_rel is None:
            failed.append("no common final evaluation")
        elif abs(val_rel) > final_rel:
            failed.append(f"final val off by {100 * val_rel:+.2f}% (bound {100 * final_rel:g}%)")
    print(text + (" -- FAILED: " + "; ".join(failed) if failed else " -- ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
