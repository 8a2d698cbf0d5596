#!/usr/bin/env python3
"""The trainer and the PyTorch reference (bench/torch_train.py) from the SAME
initial weights, on the CPU in fp32, for every variant of the scale-vector
ablation (configs/ablation/variants.txt) on a tiny moe_adamw:
- the trainer saves step_0 (checkpoint.save_initial) and exports it
  unfolded; torch_train.py --init-from loads it (every parameter mapped);
- the loss of steps 1..3 (step 1: the forward at init; 2 and 3: after the
  first updates) agrees within 1e-5 relative, and so do the gradient norm
  and every scale-vector figure ("sv": rms, β; experts' mean/min/max/std)
  logged under the trainer's names;
- every first-step gradient agrees (bench/same_init_grads.py: the trainer's
  from its step-1 AdamW moment) within 1e-5 relative (or 1e-7 of the whole
  gradient's norm, for the scale-invariant β's of DNP's γ_q, γ_k);
- a reference of another strategy refuses the weights, naming a tensor.
Skips (exit 77) where PyTorch is not installed.
usage: same_init_test.py --scalemoe BUILD/scalemoe"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
try:
    import torch  # noqa: F401
except ImportError:
    # Debian's python3-torch lives in /usr/bin/python3, which may not be the
    # python3 on PATH (as scripts/plot_sweep.py's test looks for matplotlib).
    for python in (os.environ.get("SCALEMOE_PYTHON"), "/usr/bin/python3"):
        if python and os.path.realpath(python) != os.path.realpath(sys.executable) and \
                subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0:
            os.execv(python, [python] + sys.argv)
    print("SKIP: no Python with PyTorch (apt-get install python3-torch)")
    sys.exit(77)
import ablation_variants  # noqa: E402
import same_init_grads  # noqa: E402
import torch_train  # noqa: E402
from torch_ref_config import load_config  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "ablation", "moe_adamw.textproto")
SCALEMOE = None
STEPS = 3
RTOL = 1e-5


def records(path):
    with open(path) as f:
        return {r["step"]: r for r in map(json.loads, f) if r.get("loss") is not None}


def flatten(tree, prefix=""):
    """{"a/b/c": number} of a nested "sv" record."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def scale_invariant(sets, key):
    """Whether `key` is a figure of γ_q or γ_k that carries the magnitude β
    of γ = β·α under DNP: the per-head norm after the projection makes the
    loss invariant to β, so its exact gradient is 0 and both sides' dβ is
    fp32 rounding noise, which AdamW's first steps scale up to about ±lr (the
    sign and size of noise: with another CPU's BLAS kernels the two sides
    differ by ~2e-5 of β and of γ's rms). The gradients are still compared
    (same_init_grads.compare's floor); these values after an update are not
    comparable."""
    return ("scale_vectors.placement=DUAL_NORMALIZED" in sets and
            "scale_vectors.reparam=MAGNITUDE_DIRECTION" in sets and
            any(f".{g}/" in "." + key for g in ("gamma_q", "gamma_k")))


class SameInitTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dataset = os.path.join(cls.tmp.name, "dataset")
        torch_train.smoke_dataset(cls.dataset, 64)
        cls.variants = ablation_variants.read_variants()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def sets(self, variant):
        return (torch_train.SMOKE_SETS + self.variants[variant] +
                [f"data.dataset_dir={self.dataset}", "logging.log_interval=1",
                 f"train.train_steps={STEPS}", "train.eval_interval=0", "moe.num_experts=8",
                 "model.num_kv_heads=1"])

    def trainer_run(self, variant, name=None):
        """Our run (step_0 .. step_STEPS saved) and its step_0 exported unfolded."""
        out = os.path.join(self.tmp.name, name or variant)
        flags = [a for s in self.sets(variant) + [
            "checkpoint.save_initial=true", "checkpoint.interval=1", "checkpoint.keep_last=0",
            "logging.moe_stats=false"] for a in ("--set", s)]
        subprocess.run([SCALEMOE, "train", "--config", CONFIG, *flags, "--run-dir",
                        os.path.join(out, "ours"), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([SCALEMOE, "export", "--unfolded", "--checkpoint",
                        os.path.join(out, "ours", "checkpoints", "step_0"), "--out",
                        os.path.join(out, "init")], check=True, stdout=subprocess.DEVNULL)
        return out

    def torch_run(self, variant, init, out):
        flags = [a for s in self.sets(variant) for a in ("--set", s)]
        with contextlib.redirect_stdout(io.StringIO()):
            torch_train.main(["--config", CONFIG, *flags, "--init-from", init,
                              "--cpu-fp32-reference", "--out", out])

    def test_every_variant_matches_from_the_same_weights(self):
        for variant in self.variants:
            with self.subTest(variant=variant):
                out = self.trainer_run(variant)
                self.torch_run(variant, os.path.join(out, "init"), os.path.join(out, "torch"))
                ours = records(os.path.join(out, "ours", "metrics.jsonl"))
                ref = records(os.path.join(out, "torch", "metrics.jsonl"))
                self.assertEqual(sorted(ours), list(range(1, STEPS + 1)))
                self.assertEqual(sorted(ref), list(range(1, STEPS + 1)))
                for s in ours:
                    for key in ("loss", "ce", "grad_norm", "lr"):
                        a, b = ours[s][key], ref[s][key]
                        self.assertLessEqual(abs(a - b), RTOL * abs(a),
                                             f"{variant} step {s} {key}: ours {a} torch {b}")
                    self.assertEqual(flatten(ours[s].get("sv", {})).keys(),
                                     flatten(ref[s].get("sv", {})).keys(), variant)
                    for key, a in flatten(ours[s].get("sv", {})).items():
                        if scale_invariant(self.sets(variant), key):
                            continue
                        b = flatten(ref[s]["sv"])[key]
                        self.assertLessEqual(abs(a - b), RTOL * max(abs(a), 1.0),
                                             f"{variant} step {s} sv {key}: ours {a} torch {b}")
                cfg = load_config(CONFIG, self.sets(variant))
                failed, _, _, ref_norm, norm = same_init_grads.compare(
                    cfg, os.path.join(out, "init"), os.path.join(out, "ours"), RTOL)
                self.assertEqual(failed, [], variant)
                self.assertLessEqual(abs(ref_norm - norm), RTOL * norm, variant)

    def test_weights_of_another_strategy_are_refused(self):
        out = self.trainer_run("unified", "refused")
        with self.assertRaises(SystemExit) as e:
            self.torch_run("baseline", os.path.join(out, "init"),
                           os.path.join(out, "torch_baseline"))
        self.assertIn("lack 'final_norm.scale'", str(e.exception))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--scalemoe", required=True)
    args, rest = ap.parse_known_args()
    SCALEMOE = os.path.abspath(args.scalemoe)
    unittest.main(argv=[sys.argv[0]] + rest)
