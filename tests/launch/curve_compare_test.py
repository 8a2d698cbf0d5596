#!/usr/bin/python3
"""scripts/curve_compare.py: its bounds pass and fail where they should."""
import json
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "curve_compare.py")


def write(path, losses, val):
    with open(path, "w") as f:
        for step, loss in losses.items():
            f.write(json.dumps({"step": step, "loss": loss, "lr": 1e-3}) + "\n")
        f.write(json.dumps({"step": 30, "val_loss": val}) + "\n")


def run(*args):
    out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
    return out.returncode, out.stdout


with tempfile.TemporaryDirectory() as d:
    ref, near, far = (os.path.join(d, n) for n in ("ref.jsonl", "near.jsonl", "far.jsonl"))
    write(ref, {10: 5.0, 20: 4.0, 30: 3.0}, 3.5)
    write(near, {10: 5.0004, 20: 4.0, 30: 3.02, 40: 1.0}, 3.52)  # step 40: not in ref
    write(far, {10: 5.0, 20: 4.1, 30: 3.1}, 3.6)
    code, text = run(ref, near, "--max-abs", "0.03", "--final-rel", "0.01", "--label", "near")
    assert code == 0 and "3 steps" in text and "worst |diff| 2.00e-02 at step 30" in text, text
    assert "(+0.67%)" in text and "final val 3.5200 vs 3.5000 (+0.57%)" in text, text
    code, text = run(ref, near, "--max-abs", "0.01")
    assert code == 1 and "FAILED: worst |diff| 2.00e-02 > 0.01" in text, text
    code, text = run(ref, far, "--final-rel", "0.01")
    assert code == 1 and "final loss off by +3.33%" in text and "final val off" in text, text
    code, text = run(ref, far)  # no bound: prints only
    assert code == 0, text
    # --noise: beyond --max-abs, up to twice the reference's own spread passes.
    noisy = os.path.join(d, "noisy.jsonl")
    write(noisy, {10: 5.0, 20: 4.06, 30: 3.0}, 3.5)  # spread 0.06
    code, text = run(ref, far, "--max-abs", "1e-3", "--noise", noisy)  # worst 0.1 <= 0.12
    assert code == 0 and "own spread (--noise) 6.00e-02" in text, text
    write(noisy, {10: 5.0, 20: 4.04, 30: 3.0}, 3.5)  # spread 0.04: 0.1 > 0.08
    code, text = run(ref, far, "--max-abs", "1e-3", "--noise", noisy)
    assert code == 1 and "and > 2 x the reference's own spread 4.00e-02" in text, text
    # --final-window: the mean of the last K common steps, not the last alone.
    spiky = os.path.join(d, "spiky.jsonl")
    write(spiky, {10: 5.0, 20: 3.96, 30: 3.04}, 3.5)  # last step +1.33%, last 2 +0.00%
    code, text = run(ref, spiky, "--final-rel", "0.01")
    assert code == 1 and "final loss off by +1.33%" in text, text
    code, text = run(ref, spiky, "--final-rel", "0.01", "--final-window", "2")
    assert code == 0 and "final loss (mean of steps 20-30) 3.5000 vs 3.5000 (+0.00%)" in text, text
    code, text = run(ref, far, "--final-rel", "0.01", "--final-window", "2")  # +2.86%
    assert code == 1 and "final loss off by +2.86%" in text, text
    write(far, {11: 5.0}, 3.6)
    code, text = run(ref, far)
    assert code == 2 and "no common logged step" in text, text
print("curve_compare_test: ok")
