#!/usr/bin/python3
"""Prints the scale-vector ablation's table from a sweep directory (a spec of
scripts/ablation_variants.py --sweep-spec: axes strategy and seed).

usage: scripts/ablation_table.py SWEEP_DIR [--baseline NAME] [--no-speed]

One row per strategy, in the spec's order: the final validation loss of each
seed, their mean, the mean's difference from the baseline's, the seed range
(max - min), tokens/s (mean) and the step time relative to the baseline's
(from tokens/s; --no-speed leaves these two out, for runs that shared the
GPU with other runs and so timed each other). Only finished points (status done) count; a strategy with
none shows its missing seeds as "-". Standard library only.
"""
import argparse
import csv
import os
import sys
from collections import OrderedDict


def read_rows(sweep_dir):
    path = os.path.join(sweep_dir, "results.csv")
    if not os.path.exists(path):
        sys.exit(f"{path} not found (run `scalemoe sweep` or bench/study_gpu.sh first)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for axis in ("strategy", "seed"):
        if rows and axis not in rows[0]:
            sys.exit(f"{path}: no {axis} column (not an ablation sweep)")
    return rows


def table(rows, baseline, speed=True):
    seeds = list(OrderedDict.fromkeys(r["seed"] for r in rows))
    by_strategy = OrderedDict()
    for r in rows:
        entry = by_strategy.setdefault(r["strategy"], {"val": {}, "tps": []})
        if r["status"] == "done" and r["val_loss"]:
            entry["val"][r["seed"]] = float(r["val_loss"])
            entry["tps"].append(float(r["tokens_per_s"]))
    if baseline not in by_strategy:
        sys.exit(f"no strategy named {baseline} (have {', '.join(by_strategy)})")

    def mean(values):
        return sum(values) / len(values) if values else None

    base_val = mean(list(by_strategy[baseline]["val"].values()))
    base_tps = mean(by_strategy[baseline]["tps"])
    header = (["variant"] + [f"val s{s}" for s in seeds] +
              ["mean", f"vs {baseline}", "seed range"] +
              (["tokens/s", "step time vs baseline"] if speed else []))
    lines = ["| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(header) - 1)]
    for name, entry in by_strategy.items():
        vals = entry["val"]
        m, tps = mean(list(vals.values())), mean(entry["tps"])
        cells = [name] + [f"{vals[s]:.4f}" if s in vals else "-" for s in seeds]
        cells.append(f"{m:.4f}" if m is not None else "-")
        cells.append("—" if name == baseline else
                     (f"{m - base_val:+.4f}" if m is not None and base_val is not None else "-"))
        cells.append(f"{max(vals.values()) - min(vals.values()):.4f}" if len(vals) > 1 else "-")
        if speed:
            cells.append(f"{tps / 1000:.0f}k" if tps else "-")
            cells.append(f"{base_tps / tps:.3f}×" if tps and base_tps else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--baseline", default="baseline")
    parser.add_argument("--no-speed", action="store_true")
    args = parser.parse_args(argv)
    print(table(read_rows(args.sweep_dir), args.baseline, speed=not args.no_speed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
