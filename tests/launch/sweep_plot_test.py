#!/usr/bin/env python3
"""scripts/plot_sweep.py on a real sweep: runs a 4-point tiny sweep (experts
{1, 4} x strategy {baseline, unified}) with the built binary, then the
script, and checks its PNGs and that its tables hold the numbers of
results.csv (each point's validation loss; unified minus baseline per
expert count).

usage: sweep_plot_test.py --scalemoe BUILD/scalemoe

The script's Python is the first of $SCALEMOE_PYTHON, this interpreter,
python3 on PATH and /usr/bin/python3 that has matplotlib; with none the test
prints why and exits 77 (CTest: skipped).
"""
import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPEC = """
base_config: "configs/tiny_cpu.textproto"
set: ["model.num_layers=2", "model.hidden_size=16", "model.num_heads=2",
      "model.num_kv_heads=1", "model.vocab_size=320", "model.seq_length=32",
      "moe.top_k=2", "moe.expert_ffn_hidden_size=16", "train.micro_batch_size=2",
      "train.global_batch_size=4", "train.train_steps=6", "train.eval_interval=3",
      "train.eval_batches=2", "schedule.warmup_steps=2", "logging.log_interval=1",
      "checkpoint.interval=3", "data.dataset_dir=DATASET"]
axes { field: "moe.num_experts" name: "experts" values: ["1", "4"] }
axes {
  name: "strategy"
  bundles { name: "baseline" set: ["scale_vectors.mode=SHARED", "scale_vectors.reparam=PLAIN"] }
  bundles { name: "unified" set: ["scale_vectors.mode=PER_BRANCH",
                                  "scale_vectors.placement=DUAL_NORMALIZED",
                                  "scale_vectors.reparam=MAGNITUDE_DIRECTION"] }
}
hold_fixed: SAME_ACTIVE
"""


def python_with_matplotlib():
    candidates = [os.environ.get("SCALEMOE_PYTHON"), sys.executable, shutil.which("python3"),
                  "/usr/bin/python3"]
    for python in candidates:
        if python and subprocess.run([python, "-c", "import matplotlib"],
                                     capture_output=True).returncode == 0:
            return python
    return None


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scalemoe", required=True)
    args = parser.parse_args()
    python = python_with_matplotlib()
    if python is None:
        print("SKIP: no Python with matplotlib (apt-get install python3-matplotlib)")
        return SKIP
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["bash", os.path.join(REPO, "tests/scripts/tiny_dataset.sh"),
                        args.scalemoe, tmp], check=True)
        spec = os.path.join(tmp, "spec.textproto")
        with open(spec, "w") as f:
            f.write(SPEC.replace("DATASET", os.path.join(tmp, "dataset")))
        sweep_dir = os.path.join(tmp, "sweep")
        run = subprocess.run([args.scalemoe, "sweep", "--spec", spec, "--sweep-dir", sweep_dir,
                              "--quiet"], cwd=REPO, capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"the sweep failed:\n{run.stdout}{run.stderr}")
        plot = subprocess.run([python, os.path.join(REPO, "scripts/plot_sweep.py"), sweep_dir],
                              capture_output=True, text=True)
        if plot.returncode != 0:
            fail(f"plot_sweep.py failed:\n{plot.stdout}{plot.stderr}")
        for name in ("val_loss_vs_experts.png", "loss_curves.png", "throughput_vs_experts.png"):
            path = os.path.join(sweep_dir, name)
            if not os.path.exists(path):
                fail(f"{name} was not written")
            with open(path, "rb") as f:
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    fail(f"{name} is not a PNG")
        with open(os.path.join(sweep_dir, "results.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != 4:
            fail(f"results.csv has {len(rows)} rows, not 4")
        lines = plot.stdout.splitlines()
        val = {}
        for r in rows:
            if r["status"] != "done" or not r["val_loss"]:
                fail(f"point {r['point']} is not done with a val loss: {r}")
            val[(r["experts"], r["strategy"])] = float(r["val_loss"])
            row_line = [l for l in lines
                        if l.startswith(f"| {r['point']} |") and l.count("|") > 6]
            if len(row_line) != 1 or f"| {float(r['val_loss']):.4f} |" not in row_line[0]:
                fail(f"the points table lacks {r['point']} with its val loss:\n{plot.stdout}")
        for experts in ("1", "4"):
            base, unified = val[(experts, "baseline")], val[(experts, "unified")]
            want = (f"| {experts} | {base:.4f} | {unified:.4f} | "
                    f"{unified - base:+.4f} |")
            if want not in lines:
                fail(f"the difference table lacks '{want}':\n{plot.stdout}")
        # The unified points' experts have their own γ (HG): a plot and a
        # table row each; the baseline's (shared γ) have none.
        for name in ("expert_gamma_vs_experts.png", "expert_gamma_spread_vs_experts.png"):
            if not os.path.exists(os.path.join(sweep_dir, name)):
                fail(f"{name} was not written")
        gamma_rows = {r["point"]: l for r in rows for l in lines
                      if l.startswith(f"| {r['point']} |") and l.count("|") == 6}
        if sorted(gamma_rows) != sorted(r["point"] for r in rows if r["strategy"] == "unified"):
            fail(f"the experts' γ table should list the unified points only:\n{plot.stdout}")
        # The same from metrics copied flat (bench/study_gpu.sh COPY_TO).
        flat = os.path.join(tmp, "flat")
        os.makedirs(flat)
        shutil.copy(os.path.join(sweep_dir, "results.csv"), flat)
        for r in rows:
            shutil.copy(os.path.join(sweep_dir, r["point"], "metrics.jsonl"),
                        os.path.join(flat, r["point"] + ".metrics.jsonl"))
        again = subprocess.run([python, os.path.join(REPO, "scripts/plot_sweep.py"), flat],
                               capture_output=True, text=True)
        if again.returncode != 0 or [l for l in again.stdout.splitlines()
                                     if l in gamma_rows.values()] != list(gamma_rows.values()):
            fail(f"flat metrics give another γ table:\n{again.stdout}{again.stderr}")
        # A point that did not finish (its last evaluation is from earlier in
        # training) stays in the points table but leaves the means: marked
        # interrupted, 4 experts' unified point drops out of the difference
        # table, whose row then shows the baseline alone.
        with open(os.path.join(flat, "results.csv"), newline="") as f:
            reader = csv.DictReader(f)
            fields, marked = reader.fieldnames, list(reader)
        for r in marked:
            if (r["experts"], r["strategy"]) == ("4", "unified"):
                r["status"] = "interrupted"
        with open(os.path.join(flat, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(marked)
        partial = subprocess.run([python, os.path.join(REPO, "scripts/plot_sweep.py"), flat],
                                 capture_output=True, text=True)
        plines = partial.stdout.splitlines()
        four = [l for l in plines if l.startswith("| 4 |")]
        if (partial.returncode != 0 or len(four) != 1 or
                f"{val[('4', 'unified')]:.4f}" in four[0] or
                f"{val[('4', 'baseline')]:.4f}" not in four[0]):
            fail(f"an interrupted point entered the means:\n{partial.stdout}{partial.stderr}")
        missing = subprocess.run([python, os.path.join(REPO, "scripts/plot_sweep.py"), tmp],
                                 capture_output=True, text=True)
        if missing.returncode == 0 or "results.csv not found" not in missing.stderr:
            fail(f"a directory without results.csv was not refused: {missing.stderr}")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
