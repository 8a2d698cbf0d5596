#!/usr/bin/env python3
"""bench/torch_reference.py's config side (bench/torch_ref_config.py), which
runs without PyTorch: its text-format reader reads the presets as scalemoe
does, --set overrides them, and its Megatron FLOP count equals
launch/megatron_flops.cc's on the presets' hand counts
(tests/launch/megatron_flops_test.cc checks the C++ side)."""
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import torch_ref_config as ref  # noqa: E402


def preset(name, sets=()):
    return ref.load_config(os.path.join(ROOT, "configs", name + ".textproto"), list(sets))


class TorchReferenceConfigTest(unittest.TestCase):
    def test_reads_the_125m_preset(self):
        cfg = preset("gpu_moe_125m")
        self.assertEqual(cfg["name"], "gpu_moe_125m")
        self.assertEqual(cfg["model.num_layers"], 12)
        self.assertEqual(cfg["model.num_kv_heads"], 12)
        self.assertEqual(cfg["moe.num_experts"], 16)
        self.assertEqual(cfg["scale_vectors.mode"], "PER_BRANCH")
        self.assertEqual(cfg["optimizer.lr"], 1e-3)
        self.assertEqual(cfg["train.precision"], "BF16")
        self.assertEqual(cfg["train.global_batch_size"], 256)
        self.assertTrue(cfg["moe.normalize_topk"])  # the proto default

    def test_flops_match_the_hand_counts(self):
        active, per_token = ref.megatron_flops(preset("gpu_moe_125m"))
        self.assertEqual(active, 124_403_712)
        self.assertEqual(per_token, 6.0 * 124_403_712 + 12.0 * 12 * 1024 * 768)
        active, per_token = ref.megatron_flops(preset("gpu_finegrained_64e"))
        self.assertEqual(active, 114_180_096)
        self.assertEqual(per_token, 6.0 * 114_180_096 + 12.0 * 12 * 1024 * 768)

    def test_totals_match_the_hand_counts(self):
        self.assertEqual(ref.matmul_params(preset("gpu_moe_125m"))[1],
                         25_165_824 + 12 * (2_371_584 + 16 * 2_949_120))
        self.assertEqual(ref.matmul_params(preset("gpu_finegrained_64e"))[1],
                         25_165_824 + 6_291_456 + 11 * 40_550_400)

    def test_overrides_apply_in_order(self):
        cfg = preset("gpu_moe_125m", ["scale_vectors.mode=SHARED", "train.micro_batch_size=4",
                                      "train.micro_batch_size=16",
                                      "scale_vectors.dual_projections=[Q, K]"])
        self.assertEqual(cfg["scale_vectors.mode"], "SHARED")
        self.assertEqual(cfg["train.micro_batch_size"], 16)
        self.assertEqual(cfg["scale_vectors.dual_projections"], ["Q", "K"])

    def test_parser_handles_comments_strings_and_repeats(self):
        raw = ref.parse_textproto('a { b: "x # not a comment" # a comment\n c: -1.5e-3 }\n'
                                  'r: Q r: K\nl: [1, 2]\n')
        self.assertEqual(raw["a.b"], "x # not a comment")
        self.assertEqual(float(raw["a.c"]), -1.5e-3)
        self.assertEqual(raw["r"], ["Q", "K"])
        self.assertEqual(raw["l"], ["1", "2"])
        with self.assertRaises(ValueError):
            ref.parse_textproto("a { b: 1")

    def test_bad_values_name_the_field(self):
        with self.assertRaises(SystemExit) as e:
            preset("gpu_moe_125m", ["model.num_layers=twelve"])
        self.assertIn("model.num_layers", str(e.exception))
        with self.assertRaises(SystemExit) as e:
            preset("gpu_moe_125m", ["train.global_batch_size=12", "train.micro_batch_size=8"])
        self.assertIn("train.global_batch_size", str(e.exception))


if __name__ == "__main__":
    unittest.main()
