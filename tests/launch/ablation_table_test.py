#!/usr/bin/python3
"""scripts/ablation_table.py on a results.csv written here: each strategy's
seeds, mean, difference from the baseline, seed range and step-time ratio;
unfinished points left out; --no-speed drops the speed columns; a sweep
without strategy and seed axes is refused."""
import csv
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts/ablation_table.py")
FIELDS = ["point", "strategy", "seed", "status", "val_loss", "tokens_per_s"]
ROWS = [  # strategy, seed, status, val loss, tokens/s
    ("baseline", "1", "done", "3.50", "400000"),
    ("baseline", "2", "done", "3.60", "400000"),
    ("unified", "1", "done", "3.30", "320000"),
    ("unified", "2", "done", "3.20", "320000"),
    ("hg", "1", "done", "3.52", "380000"),
    ("hg", "2", "interrupted", "4.90", "390000"),  # an earlier eval: left out
    ("or", "1", "new", "", ""),
    ("or", "2", "new", "", ""),
]


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "results.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(FIELDS)
            for s, seed, status, val, tps in ROWS:
                w.writerow([f"strategy-{s}_seed-{seed}", s, seed, status, val, tps])
        out = run(tmp)
        if out.returncode != 0:
            fail(out.stderr)
        lines = out.stdout.splitlines()
        want = [
            "| baseline | 3.5000 | 3.6000 | 3.5500 | — | 0.1000 | 400k | 1.000× |",
            "| unified | 3.3000 | 3.2000 | 3.2500 | -0.3000 | 0.1000 | 320k | 1.250× |",
            "| hg | 3.5200 | - | 3.5200 | -0.0300 | - | 380k | 1.053× |",
            "| or | - | - | - | - | - | - | - |",
        ]
        if lines[2:] != want:
            fail("table:\n" + out.stdout + "\nwanted rows:\n" + "\n".join(want))
        quiet = run(tmp, "--no-speed").stdout.splitlines()
        if quiet[3] != "| unified | 3.3000 | 3.2000 | 3.2500 | -0.3000 | 0.1000 |":
            fail("--no-speed:\n" + "\n".join(quiet))
        if run(tmp, "--baseline", "nope").returncode == 0:
            fail("an unknown baseline was not refused")
        with open(os.path.join(tmp, "results.csv"), "w") as f:
            f.write("point,experts,status,val_loss\nexperts-1,1,done,3.0\n")
        refused = run(tmp)
        if refused.returncode == 0 or "not an ablation sweep" not in refused.stderr:
            fail(f"a sweep without strategy/seed axes was not refused: {refused.stderr}")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
