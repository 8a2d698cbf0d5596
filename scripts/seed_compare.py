#!/usr/bin/python3
"""Compares two groups of training runs that differ in one setting (e.g.
precision), each group the same config over several seeds: the mean final
train and val loss of each group, their relative difference and its
standard error. One run's final loss scatters with the seed (tiny_cpu's by
about 2 % at 300 steps: bench/RESULTS.md), so a difference between two
single runs says little; the groups' means say more.

usage: scripts/seed_compare.py --ref RUN... --run RUN... [--final-window K]
                               [--final-rel R] [--label NAME]
  RUN             a run directory or its metrics.jsonl
  --final-window K  a run's final train loss is the mean of its last K
                  logged steps (default 5)
  --final-rel R   fail unless both means (train and val) are within R
                  relative of the reference group's
Prints one line: "seeds NAME: N vs M runs, final loss L (sd S) vs REF (sd
T): +P% (se Q%)[, paired by seed +D% (se E%)], final val ..." (paired when
both groups list as many runs, the same seeds in the same order: the mean
of the per-seed relative differences) and exits 1 when the bound on the
groups' means fails (2 when a run has no metrics, fewer than K logged steps
or no val loss). Standard library only.
"""
import math
import sys

from curve_compare import read_curve


def finals(path, window):
    """(mean of the last `window` logged train losses, the last val loss), or
    None when the run has not logged that much (or has no metrics at all)."""
    try:
        losses, val = read_curve(path)
    except OSError:
        return None
    steps = sorted(losses)
    if len(steps) < window or val is None:
        return None
    return sum(losses[s] for s in steps[-window:]) / window, val[1]


def mean_sd(values):
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def main(argv):
    groups, window, final_rel, label, current = {"--ref": [], "--run": []}, 5, None, "", None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in groups:
            current = a
        elif a in ("--final-window", "--final-rel", "--label") and i + 1 < len(argv):
            if a == "--final-window":
                window = int(argv[i + 1])
                if window < 1:
                    sys.exit("--final-window must be at least 1")
            elif a == "--final-rel":
                final_rel = float(argv[i + 1])
            else:
                label = argv[i + 1]
            i += 1
        elif a.startswith("-") or current is None:
            sys.exit(__doc__)
        else:
            groups[current].append(a)
        i += 1
    if not groups["--ref"] or not groups["--run"]:
        sys.exit(__doc__)
    stats, values = {}, {}
    for name, paths in groups.items():
        values[name] = []
        for p in paths:
            f = finals(p, window)
            if f is None:
                print(f"seeds {label}: {p} has no metrics, fewer than {window} logged steps "
                      "or no val loss")
                return 2
            values[name].append(f)
        stats[name] = [mean_sd([v[k] for v in values[name]]) for k in (0, 1)]
    # Groups of the same size are taken as pairs in order (the same seed):
    # the mean of the per-seed differences has the smaller error.
    paired = len(groups["--ref"]) == len(groups["--run"]) > 1
    text = f"seeds {label}: {len(groups['--run'])} vs {len(groups['--ref'])} runs"
    failed = []
    for k, what in ((0, f"final loss (mean of the last {window} logged steps)"), (1, "final val")):
        (run_m, run_sd), (ref_m, ref_sd) = stats["--run"][k], stats["--ref"][k]
        rel = (run_m - ref_m) / abs(ref_m)
        se = math.sqrt(run_sd ** 2 / len(groups["--run"]) +
                       ref_sd ** 2 / len(groups["--ref"])) / abs(ref_m)
        text += (f", {what} {run_m:.4f} (sd {run_sd:.4f}) vs {ref_m:.4f} (sd {ref_sd:.4f}): "
                 f"{100 * rel:+.2f}% (se {100 * se:.2f}%)")
        if paired:
            diffs = [(r[k] - f[k]) / abs(f[k]) for r, f in zip(values["--run"], values["--ref"])]
            d_m, d_sd = mean_sd(diffs)
            d_se = d_sd / math.sqrt(len(diffs))
            text += f", paired by seed {100 * d_m:+.2f}% (se {100 * d_se:.2f}%)"
        if final_rel is not None and abs(rel) > final_rel:
            failed.append(f"{what.split(' (')[0]} off by {100 * rel:+.2f}% "
                          f"(bound {100 * final_rel:g}%)")
    print(text + (" -- FAILED: " + "; ".join(failed) if failed else " -- ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
