#!/usr/bin/env python3
"""bench/torch_train.py's standard-library side against the built trainer:
- the learning rate of every step (torch_train_rules.learning_rate) equals
  the "lr" `scalemoe train` logs, for COSINE, WSD and CONSTANT;
- the windows (torch_train_data.Split) are the trainer's: its unigram
  baseline (train windows of epoch 0 under data.shuffle_seed with gradient
  accumulation, and the evaluation windows) is reproduced to the last bits;
- shards: the reader's CRC-32C equals the manifest's, and a dataset written
  by write_dataset (the smoke run's) is one the trainer reads;
- the decay rule (torch_train_rules.decays) gives every parameter of
  `scalemoe inspect` its decay, for every ablation variant and policy;
- where PyTorch is installed: the torch model decays as many elements.
usage: torch_train_rules_test.py --scalemoe BUILD/scalemoe"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import ablation_variants  # noqa: E402
import torch_ref_config as cfgs  # noqa: E402
import torch_train_data as data  # noqa: E402
import torch_train_rules as rules  # noqa: E402

try:
    import torch  # noqa: F401
    import torch_ref_model as M
except ImportError:
    torch = None

BIN = None
TMP = None
# A small model on the tiny dataset: 2 micro-batches a step (accumulation).
TINY = ["model.vocab_size=320", "model.num_layers=1", "model.hidden_size=32",
        "model.num_heads=2", "model.num_kv_heads=1", "moe.num_experts=2",
        "moe.expert_ffn_hidden_size=32", "model.seq_length=32", "train.micro_batch_size=4",
        "train.global_batch_size=8", "train.eval_batches=3", "logging.log_interval=1",
        "checkpoint.interval=0", "checkpoint.save_at_end=false", "data.shuffle_seed=7",
        "schedule.warmup_steps=1"]
MOE_ADAMW = os.path.join(ROOT, "configs", "ablation", "moe_adamw.textproto")


def train(name, sets):
    run = os.path.join(TMP, name)
    cmd = [BIN, "train", "--config", os.path.join(ROOT, "configs", "tiny_cpu.textproto"),
           "--run-dir", run]
    for s in [f"data.dataset_dir={os.path.join(TMP, 'tiny', 'dataset')}"] + TINY + sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def inspect_rows(sets):
    cmd = [BIN, "inspect", "--config", MOE_ADAMW, "--set", "model.num_layers=2",
           "--set", "moe.first_dense_layers=1", "--set", "moe.num_shared_experts=1"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    rows = re.findall(r"^(\S+)\s+\[([\d, ]*)\]\s+(\w+)\s+(yes|no)\s+[\d,]+$", out, re.M)
    return [(name, len(shape.split(",")), role, decay == "yes", shape)
            for name, shape, role, decay in rows]


class TorchTrainRulesTest(unittest.TestCase):
    def test_learning_rates_are_the_trainers(self):
        for kind, sets in (("COSINE", []), ("WSD", ["schedule.wsd_decay_fraction=0.25"]),
                           ("CONSTANT", [])):
            steps, warmup = 13, 3
            records = train("lr_" + kind, [f"schedule.kind={kind}", f"train.train_steps={steps}",
                                           f"schedule.warmup_steps={warmup}",
                                           "train.eval_interval=0", "train.eval_batches=1"]
                            + sets)
            lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
            self.assertEqual(sorted(lrs), list(range(1, steps + 1)), kind)
            fraction = 0.25 if kind == "WSD" else 0.2
            for step, lr in lrs.items():
                mine = rules.learning_rate(kind, 3e-3, 3e-4, warmup, step - 1, steps, fraction)
                self.assertAlmostEqual(mine, lr, delta=1e-15 + 1e-12 * lr, msg=(kind, step))

    def test_windows_reproduce_the_trainers_unigram_baseline(self):
        records = train("windows", ["train.train_steps=2", "train.eval_interval=1"])
        theirs = [r["unigram_val_loss"] for r in records if "unigram_val_loss" in r]
        self.assertEqual(len(theirs), 2)
        ds = os.path.join(TMP, "tiny", "dataset")
        train_split = data.Split(ds, "train", 32, 4, 7)
        val = data.Split(ds, "val", 32, 4, 7)
        mine = data.unigram_val_loss(train_split, val, 3 * 2)
        self.assertAlmostEqual(mine, theirs[0], delta=1e-12 * theirs[0])
        # Another shuffle seed draws other windows (the check can fail).
        other = data.unigram_val_loss(data.Split(ds, "train", 32, 4, 8),
                                      data.Split(ds, "val", 32, 4, 8), 6)
        self.assertNotAlmostEqual(other, theirs[0], delta=1e-9)

    def test_later_epochs_draw_another_order(self):
        split = data.Split(os.path.join(TMP, "tiny", "dataset"), "val", 32, 4, 7)
        first = [w for i in range(split.per_epoch) for w in split.window_ids(i)]
        second = [w for i in range(split.per_epoch, 2 * split.per_epoch)
                  for w in split.window_ids(i)]
        self.assertEqual(len(set(first)), len(first))  # a permutation's prefix
        self.assertNotEqual(first, second)

    def test_shards_checksums_and_written_datasets(self):
        ds = os.path.join(TMP, "tiny", "dataset")
        with open(os.path.join(ds, "manifest.json")) as f:
            manifest = json.load(f)
        entry = manifest["splits"]["val"]["shards"][0]
        with open(os.path.join(ds, entry["file"]), "rb") as f:
            self.assertEqual(data.crc32c(f.read()[64:]), entry["crc32c"])
        tokens = data.read_shard(os.path.join(ds, entry["file"]), 320, check_crc=True)
        self.assertEqual(len(tokens), entry["tokens"])
        # A generated dataset (as torch_train.py --smoke writes) trains here.
        gen = os.path.join(TMP, "generated")
        data.write_dataset(gen, {"train": [[(i * 7 + j) % 320 for j in range(700)]
                                           for i in range(3)],
                                 "val": [[(j * 5) % 320 for j in range(300)]]}, 320)
        records = train("generated", ["train.train_steps=1", "train.eval_interval=1",
                                      "train.eval_batches=1", f"data.dataset_dir={gen}"])
        theirs = [r["unigram_val_loss"] for r in records if "unigram_val_loss" in r][0]
        mine = data.unigram_val_loss(data.Split(gen, "train", 32, 4, 7),
                                     data.Split(gen, "val", 32, 4, 7), 2)
        self.assertAlmostEqual(mine, theirs, delta=1e-12 * theirs)

    def test_decay_rule_is_the_trainers(self):
        variants = ablation_variants.read_variants()
        cases = list(variants.values()) + [
            variants["unified"] + ["scale_vectors.decay_policy=" + p] for p in ("ALL",
                                                                               "OUTPUT_ONLY")]
        for sets in cases:
            policy = [s.split("=")[1] for s in sets if s.startswith("scale_vectors.decay_")][-1]
            rows = inspect_rows(sets)
            self.assertGreater(len(rows), 10, sets)
            for name, ndim, role, decayed, _ in rows:
                self.assertEqual(rules.decays(role, ndim, policy), decayed, (sets, name))
            if torch is not None:
                cfg = cfgs.load_config(MOE_ADAMW, ["model.num_layers=2",
                                                   "moe.first_dense_layers=1",
                                                   "moe.num_shared_experts=1"] + sets)
                model = M.Model(cfg, cfgs.Strategy(cfg), 1)
                groups = M.param_groups(model, cfg)
                want = sum(math.prod(int(n) for n in shape.split(","))
                           for _, _, _, d, shape in rows if d)
                self.assertEqual(sum(p.numel() for p in groups[0]["params"]), want, sets)

    def test_config_reads_the_training_fields(self):
        cfg = cfgs.load_config(MOE_ADAMW, ["train.train_steps=40"])
        self.assertEqual((cfg["train.train_steps"], cfg["train.eval_interval"],
                          cfg["train.eval_batches"]), (40, 100, 2))
        self.assertEqual((cfg["optimizer.min_lr"], cfg["schedule.kind"],
                          cfg["schedule.warmup_steps"]), (2e-4, "COSINE", 50))
        self.assertEqual((cfg["data.dataset_dir"], cfg["data.shuffle_seed"]),
                         ("datasets/default", 42))


def main():
    global BIN, TMP
    args = sys.argv[1:]
    if len(args) < 2 or args[0] != "--scalemoe":
        sys.exit(__doc__.rsplit("usage: ", 1)[1])
    BIN = os.path.abspath(args[1])
    with tempfile.TemporaryDirectory() as tmp:
        TMP = tmp
        subprocess.run(["bash", os.path.join(ROOT, "tests", "scripts", "tiny_dataset.sh"), BIN,
                        os.path.join(tmp, "tiny")], check=True)
        unittest.main(argv=[sys.argv[0]] + args[2:])


if __name__ == "__main__":
    main()
