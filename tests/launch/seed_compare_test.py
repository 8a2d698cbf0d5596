#!/usr/bin/python3
"""scripts/seed_compare.py: group means, their difference and its standard
error, and the bound, on hand-made runs."""
import json
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "seed_compare.py")


def write(path, final, val):
    # Steps 10..50; the last two average to `final`.
    with open(path, "w") as f:
        for step, loss in ((10, 9.0), (20, 8.0), (30, 7.0), (40, final - 0.1), (50, final + 0.1)):
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        f.write(json.dumps({"step": 50, "val_loss": val}) + "\n")


def run(*args):
    out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
    return out.returncode, out.stdout


with tempfile.TemporaryDirectory() as d:
    p = lambda n: os.path.join(d, n + ".jsonl")
    for name, final, val in (("r1", 4.0, 3.0), ("r2", 4.2, 3.2), ("a1", 4.1, 3.1),
                             ("a2", 4.3, 3.3), ("far", 5.0, 4.0), ("short", 4.0, 3.0)):
        write(p(name), final, val)
    # Means 4.1 and 4.2 (sd 0.1414 each): +2.44 %, se sqrt(0.02/2 + 0.02/2) / 4.1 = 3.45 %.
    code, text = run("--ref", p("r1"), p("r2"), "--run", p("a1"), p("a2"), "--final-window", "2",
                     "--label", "t")
    assert code == 0, text
    assert "seeds t: 2 vs 2 runs" in text, text
    assert "final loss (mean of the last 2 logged steps) 4.2000 (sd 0.1414) vs 4.1000" in text, text
    assert "+2.44% (se 3.45%)" in text, text
    # Paired by seed: +2.50 % and +2.38 %, mean +2.44 %, se 0.06 %.
    assert "+2.44% (se 3.45%), paired by seed +2.44% (se 0.06%)" in text, text
    assert "final val 3.2000 (sd 0.1414) vs 3.1000 (sd 0.1414): +3.23%" in text, text
    code, text = run("--ref", p("r1"), p("r2"), "--run", p("a1"), p("a2"), "--final-window", "2",
                     "--final-rel", "0.01")
    assert code == 1 and "FAILED: final loss off by +2.44% (bound 1%)" in text, text
    assert "final val off by +3.23%" in text, text
    code, text = run("--ref", p("r1"), p("r2"), "--run", p("a1"), p("a2"), "--final-window", "2",
                     "--final-rel", "0.05")
    assert code == 0 and text.endswith("-- ok\n"), text
    code, text = run("--ref", p("r1"), "--run", p("far"), "--final-window", "2")
    assert code == 0 and "+25.00% (se 0.00%)" in text, text  # one run each: no spread
    assert "paired" not in text, text
    code, text = run("--ref", p("r1"), p("r2"), "--run", p("a1"), "--final-window", "2")
    assert code == 0 and "paired" not in text, text  # unequal groups: not paired
    code, text = run("--ref", p("r1"), "--run", p("short"), "--final-window", "6")
    assert code == 2 and "fewer than 6 logged steps" in text, text
    code, text = run("--ref", p("r1"), "--run", os.path.join(d, "missing"))
    assert code == 2 and "has no metrics" in text, text
    code, _ = run("--ref", p("r1"))  # no --run group
    assert code != 0
print("seed_compare_test: ok")
