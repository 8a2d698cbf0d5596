#!/usr/bin/python3
"""Plots a sweep (`scalemoe sweep`) and prints its Markdown tables.

usage: scripts/plot_sweep.py SWEEP_DIR [--x AXIS] [--series AXIS] [--out DIR]

Reads SWEEP_DIR/results.csv and each point's SWEEP_DIR/<point>/metrics.jsonl
and writes to --out (default SWEEP_DIR):
  val_loss_vs_<x>.png     final validation loss against the x axis, one line
                          per series value (other axes, e.g. seeds, averaged;
                          bars span their min..max)
  loss_curves.png         training loss (lines) and validation loss (dots)
                          per point against the step
  throughput_vs_<x>.png   tokens/s against the x axis, one line per series
  expert_gamma_vs_<x>.png the routed experts' own γ (HG: gamma_gate and
                          gamma_up of every expert) at the end of training:
                          their RMS averaged over experts, layers and both
                          branches, and their spread across experts (std /
                          mean of the RMS); for points that have them
and prints Markdown tables to stdout: every point, validation loss per x and
series with each series' difference from the first series (the baseline
when it comes first, as in configs/sweeps/), and the experts' γ statistics.
A point's metrics are SWEEP_DIR/<point>/metrics.jsonl or, as
bench/study_gpu.sh's COPY_TO leaves them, SWEEP_DIR/<point>.metrics.jsonl.
--x defaults to the axis named experts or num_experts, else the first axis
whose values are all numbers; --series to the first other axis whose values
are not all numbers (a bundle axis such as strategy), else none.
Needs python3-matplotlib (scripts/setup.sh installs it).
"""
import argparse
import csv
import json
import math
import os
import re
import sys
from collections import OrderedDict, defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The columns results.csv has after the axes (launch/sweep_results.h).
FIXED_COLUMNS = ["status", "steps", "train_loss", "train_ce", "val_loss", "tokens", "wall_s",
                 "tokens_per_s", "tflops", "mfu", "params_total", "params_active",
                 "load_max_over_mean", "load_cv"]


def number(text):
    """The cell as a float, None when empty or not a number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_results(sweep_dir):
    path = os.path.join(sweep_dir, "results.csv")
    if not os.path.exists(path):
        sys.exit(f"{path} not found: run `scalemoe sweep --spec FILE` first "
                 f"(or `--collect` to write it from the points' directories)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    if not header or header[0] != "point" or "status" not in header:
        sys.exit(f"{path}: not a sweep's results.csv (its header should start with point and "
                 f"hold status)")
    axes = header[1:header.index("status")]
    return axes, rows


def metrics_path(run_dir):
    """A point's metrics.jsonl: in its run directory, or copied flat beside it."""
    inside = os.path.join(run_dir, "metrics.jsonl")
    return inside if os.path.exists(inside) else run_dir.rstrip("/") + ".metrics.jsonl"


def read_records(run_dir):
    path = metrics_path(run_dir)
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a stopped run's last line, cut short


def read_curves(run_dir):
    """(train [(step, loss)], val [(step, val_loss)]) of a run; empty if absent."""
    train, val = [], []
    for record in read_records(run_dir):
        if record.get("loss") is not None:
            train.append((record["step"], record["loss"]))
        if record.get("val_loss") is not None:
            val.append((record["step"], record["val_loss"]))
    return train, val


EXPERT_GAMMA = re.compile(r"^layers\.\d+\.moe\.experts\.gamma_(gate|up)$")


def expert_gamma(run_dir):
    """(mean RMS, spread) of the routed experts' own γ in the run's last
    scale-vector statistics (metrics "sv", per layer and branch a summary
    over experts: rms {mean, std, ...}), averaged over layers and branches;
    spread = std / mean of the RMS across experts. None without them."""
    last = None
    for record in read_records(run_dir):
        if isinstance(record.get("sv"), dict):
            last = record["sv"]
    if not last:
        return None
    means, spreads = [], []
    for name, stats in last.items():
        rms = stats.get("rms") if EXPERT_GAMMA.match(name) and isinstance(stats, dict) else None
        if isinstance(rms, dict) and rms.get("mean"):
            means.append(rms["mean"])
            spreads.append(rms.get("std", 0.0) / rms["mean"])
    if not means:
        return None
    return sum(means) / len(means), sum(spreads) / len(spreads)


def numeric_axis(rows, axis):
    return all(number(r[axis]) is not None for r in rows)


def pick_axes(axes, rows, x, series):
    if x is None:
        named = [a for a in axes if a in ("experts", "num_experts")]
        numeric = [a for a in axes if numeric_axis(rows, a)]
        x = (named or numeric or axes or [None])[0]
    if series is None:
        others = [a for a in axes if a != x and not numeric_axis(rows, a)]
        series = others[0] if others else None
    for name, value in (("--x", x), ("--series", series)):
        if value is not None and value not in axes:
            sys.exit(f"{name} {value}: not an axis of this sweep (axes: {', '.join(axes)})")
    return x, series


def x_value(row, x):
    value = number(row[x])
    return value if value is not None else row[x]


def grouped(rows, x, series, column):
    """{series value: {x value: [values of column]}} over the rows that have it."""
    out = OrderedDict()
    for r in rows:
        value = number(r.get(column))
        if value is None:
            continue
        key = r[series] if series else "all"
        out.setdefault(key, defaultdict(list))[x_value(r, x)].append(value)
    return out


def line_plot(groups, x, ylabel, title, path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_x = set()
    for name, by_x in groups.items():
        xs = sorted(by_x, key=lambda v: (isinstance(v, str), v))
        all_x.update(xs)
        means = [sum(by_x[v]) / len(by_x[v]) for v in xs]
        low = [m - min(by_x[v]) for m, v in zip(means, xs)]
        high = [max(by_x[v]) - m for m, v in zip(means, xs)]
        ax.errorbar(xs, means, yerr=[low, high], marker="o", capsize=3, label=name)
    numeric = all(not isinstance(v, str) for v in all_x)
    if numeric and all_x and min(all_x) > 0 and max(all_x) / min(all_x) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_x))
        ax.set_xticklabels([f"{v:g}" for v in sorted(all_x)])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_plot(sweep_dir, rows, path):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, r in enumerate(rows):
        train, val = read_curves(os.path.join(sweep_dir, r["point"]))
        color = f"C{i % 10}"
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.7, linewidth=1, label=r["point"])
        if val:
            ax.plot(*zip(*val), "o", color=color, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token): train lines, validation dots")
    ax.set_title("loss curves per point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(text, digits=4):
    value = number(text)
    return "" if value is None else f"{value:.{digits}f}"


def count(text):
    """A parameter count with three significant figures: 13.4k, 50.4M."""
    value = number(text)
    if value is None:
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def points_table(axes, rows):
    header = (["point"] + axes + ["status", "val loss", "train loss", "tokens", "tokens/s",
                                  "MFU", "params", "active", "load max/mean"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = ([r["point"]] + [r[a] for a in axes] +
                 [r["status"], fmt(r["val_loss"]), fmt(r["train_loss"]), r["tokens"],
                  fmt(r["tokens_per_s"], 0), fmt(r["mfu"], 3), count(r["params_total"]),
                  count(r["params_active"]), fmt(r["load_max_over_mean"], 2)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_table(groups, x):
    """Mean val loss per x and series, and each series minus the first."""
    names = list(groups)
    xs = sorted({v for by_x in groups.values() for v in by_x},
                key=lambda v: (isinstance(v, str), v))
    header = [x] + names + [f"{n} - {names[0]}" for n in names[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in xs:
        means = [sum(groups[n][v]) / len(groups[n][v]) if groups[n].get(v) else None
                 for n in names]
        cells = [f"{v:g}" if not isinstance(v, str) else v]
        cells += ["" if m is None else f"{m:.4f}" for m in means]
        for m in means[1:]:
            both = m is not None and means[0] is not None
            cells.append(f"{m - means[0]:+.4f}" if both else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gamma_table(rows, axes):
    header = ["point"] + axes + ["experts' γ RMS (mean)", "spread across experts (std/mean)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r.get("gamma_rms") is not None:
            cells = ([r["point"]] + [r[a] for a in axes] +
                     [f"{r['gamma_rms']:.4f}", f"{r['gamma_spread']:.4f}"])
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--x", help="the axis on the x axis of the plots")
    parser.add_argument("--series", help="the axis drawn as one line per value")
    parser.add_argument("--out", help="where the PNGs go (default SWEEP_DIR)")
    args = parser.parse_args(argv)
    axes, rows = read_results(args.sweep_dir)
    if not rows:
        sys.exit(f"{args.sweep_dir}/results.csv lists no point")
    x, series = pick_axes(axes, rows, args.x, args.series)
    out = args.out or args.sweep_dir
    os.makedirs(out, exist_ok=True)
    # Only finished points enter the per-axis plots and means: an interrupted
    # point's last evaluation is from earlier in training (its row in the
    # points table says so).
    done = [r for r in rows if r["status"] == "done"]
    val = grouped(done, x, series, "val_loss")
    written = []
    if x is not None:
        path = os.path.join(out, f"val_loss_vs_{x}.png")
        line_plot(val, x, "final validation loss (nats/token)",
                  f"validation loss vs {x}" + (f" per {series}" if series else ""), path)
        written.append(path)
        path = os.path.join(out, f"throughput_vs_{x}.png")
        line_plot(grouped(done, x, series, "tokens_per_s"), x, "tokens/s",
                  f"throughput vs {x}" + (f" per {series}" if series else ""), path)
        written.append(path)
    path = os.path.join(out, "loss_curves.png")
    curves_plot(args.sweep_dir, rows, path)
    written.append(path)
    for r in rows:
        stats = expert_gamma(os.path.join(args.sweep_dir, r["point"]))
        r["gamma_rms"], r["gamma_spread"] = stats if stats else (None, None)
    with_gamma = [r for r in done if r["gamma_rms"] is not None]
    if x is not None and with_gamma:
        path = os.path.join(out, f"expert_gamma_vs_{x}.png")
        line_plot(grouped(with_gamma, x, series, "gamma_rms"), x, "experts' γ RMS (mean)",
                  f"routed experts' own γ vs {x}", path)
        spread_path = os.path.join(out, f"expert_gamma_spread_vs_{x}.png")
        line_plot(grouped(with_gamma, x, series, "gamma_spread"), x,
                  "spread of γ RMS across experts (std/mean)",
                  f"routed experts' γ spread vs {x}", spread_path)
        written += [path, spread_path]

    print(points_table(axes, rows))
    if x is not None and val:
        print()
        print(f"Validation loss per {x}" + (f" and {series}" if series else "") +
              " (finished points; mean over the other axes):")
        print()
        print(difference_table(val, x))
    if with_gamma:
        print()
        print("The routed experts' own γ at the end of training (finished points that have "
              "them):")
        print()
        print(gamma_table(with_gamma, axes))
    print()
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
