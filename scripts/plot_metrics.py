#!/usr/bin/python3
"""Plots a run's loss curve from metrics.jsonl to a PNG.

usage: scripts/plot_metrics.py RUN_DIR [OUT.png] [--label NAME RUN_DIR2 ...]

Draws training loss per logged step and validation loss (with the unigram
baseline as a dashed line) for one or more run directories. Needs
python3-matplotlib (scripts/setup.sh installs it).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    train, val, unigram = [], [], None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not JSON ({e})")
            if record.get("loss") is not None:
                train.append((record["step"], record["loss"]))
            if record.get("val_loss") is not None:
                val.append((record["step"], record["val_loss"]))
                unigram = record.get("unigram_val_loss", unigram)
    return train, val, unigram


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    runs = [argv[1]]
    out = os.path.join(argv[1], "loss.png")
    rest = argv[2:]
    if rest and rest[0].endswith(".png"):
        out = rest.pop(0)
    runs += rest
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        train, val, unigram = read_metrics(run)
        name = os.path.basename(os.path.normpath(run))
        if train:
            ax.plot(*zip(*train), label=f"{name} train", alpha=0.7)
        if val:
            ax.plot(*zip(*val), "o-", label=f"{name} val")
        if unigram is not None:
            ax.axhline(unigram, linestyle="--", color="gray", label=f"{name} unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main(sys.argv)
