#!/usr/bin/env python3
"""bench/torch_reference.py's model logic on the CPU (fp32, per-expert loop):
the padded expert dispatch equals the unpadded one and a per-token reference,
and the once-per-step fold (detached leaves whose gradient flows back through
the fold once) gives the gradients of plain autograd. Skips (exit 77) where
PyTorch is not installed."""
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
try:
    import torch
except ImportError:
    print("SKIP: no PyTorch here")
    sys.exit(77)
import torch_ref_config as cfgs  # noqa: E402
import torch_ref_model as M  # noqa: E402
import torch_reference as ref  # noqa: E402

SETS = ref.SMOKE_SETS


def config(extra=()):
    return cfgs.load_config(os.path.join(ROOT, "configs", "gpu_finegrained_64e.textproto"),
                           SETS + list(extra))


class TorchReferenceModelTest(unittest.TestCase):
    def test_padded_dispatch_matches_a_per_token_reference(self):
        torch.manual_seed(0)
        cfg = config()
        st = cfgs.Strategy(cfg)
        outs = []
        for align in (1, 8):
            torch.manual_seed(1)
            moe = M.MoeFfn(cfg, st, 0.02, align)
            n2 = torch.randn(24, cfg["model.hidden_size"])
            w = moe.folded()
            scores = torch.softmax(n2 @ w["router"].t(), -1)
            idx = scores.topk(moe.k, -1).indices
            weights = scores.gather(1, idx)
            flat = idx.reshape(-1)
            counts = torch.zeros(moe.e, dtype=torch.int64).scatter_add_(0, flat, torch.ones_like(flat))
            outs.append(moe.experts(n2, flat, weights.reshape(-1), counts, w["gu"]))
        # Per token: sum over its k experts of weight * SwiGLU_e(x).
        expect = torch.zeros_like(outs[0])
        for i in range(n2.shape[0]):
            for j in range(moe.k):
                e = idx[i, j]
                gate, up = (n2[i] @ w["gu"][e].t()).chunk(2)
                expect[i] += weights[i, j] * (torch.nn.functional.silu(gate) * up) @ moe.w_down[e].t()
        for out in outs:
            torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)

    def test_weights_have_the_counted_shapes(self):
        # Every matmul weight of the torch model (not the scale vectors) adds
        # up to the count the FLOP formula uses: dense, MoE, shared, GQA.
        for extra in ([], ["model.tied_embeddings=false", "moe.first_dense_layers=0"]):
            cfg = config(extra)
            model = M.Model(cfg, cfgs.Strategy(cfg), 1)
            scales = {id(p) for m in model.modules() if isinstance(m, M.ScaleVec)
                      for p in m.parameters()}
            weights = sum(p.numel() for p in model.parameters() if id(p) not in scales)
            self.assertEqual(weights, cfgs.matmul_params(cfg)[1], extra)

    def test_fold_once_per_step_gives_autograds_gradients(self):
        cfg = config()
        torch.manual_seed(2)
        model = M.Model(cfg, cfgs.Strategy(cfg), 1)
        self.assertTrue(model.folds)
        t = cfg["model.seq_length"]
        batches = [torch.randint(0, cfg["model.vocab_size"], (2, t + 1)) for _ in range(2)]

        def plain():
            model.zero_grad(set_to_none=True)
            for b in batches:
                loss, _ = model(b[:, :-1], b[:, 1:], model.folded())
                (loss / 2).backward()
            return {n: p.grad.clone() for n, p in model.named_parameters()}

        def once():
            model.zero_grad(set_to_none=True)
            eff = model.folded()
            ws = [{part: {k: v.detach().requires_grad_(True) for k, v in d.items()}
                   for part, d in blk.items()} for blk in eff]
            for b in batches:
                loss, _ = model(b[:, :-1], b[:, 1:], ws)
                (loss / 2).backward()
            outs, grads = [], []
            for be, bw in zip(eff, ws):
                for part in be:
                    for k, v in be[part].items():
                        outs.append(v)
                        grads.append(bw[part][k].grad)
            torch.autograd.backward(outs, grads)
            return {n: p.grad.clone() for n, p in model.named_parameters()}

        a, b = plain(), once()
        self.assertEqual(a.keys(), b.keys())
        self.assertTrue(any("alpha" in n for n in a))  # OR's α, β are trained
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-7, msg=n)

    def test_smoke_run_prints_a_result(self):
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ref.main(["--smoke", "--steps", "2", "--warmup", "1"])
        line = [l for l in buf.getvalue().splitlines() if l.startswith("BENCH_JSON ")]
        self.assertEqual(len(line), 1)
        import json
        r = json.loads(line[0][len("BENCH_JSON "):])
        self.assertEqual(r["impl"], "torch")
        self.assertEqual(r["steps"], 2)
        self.assertGreater(r["tokens_per_s"], 0)
        self.assertEqual(r["fold"], "per step")
        self.assertTrue(0 < r["loss"] < 10)

    def test_train_smoke_runs_baseline_and_unified(self):
        # bench/torch_train.py --smoke: a generated dataset, every step's
        # windows from torch_train_data, evaluations at steps 3 and 6.
        import contextlib
        import io
        import json
        import tempfile
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import ablation_variants
        import torch_train
        variants = ablation_variants.read_variants()
        for name in ("baseline", "unified"):
            with tempfile.TemporaryDirectory() as out:
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    sets = [a for o in variants[name] for a in ("--set", o)]
                    torch_train.main(["--smoke", "--out", out] + sets)
                line = [l for l in buf.getvalue().splitlines()
                        if l.startswith("TORCH_TRAIN_JSON ")]
                self.assertEqual(len(line), 1, name)
                r = json.loads(line[0][len("TORCH_TRAIN_JSON "):])
                with open(os.path.join(out, "metrics.jsonl")) as f:
                    records = [json.loads(l) for l in f]
            self.assertEqual([x["step"] for x in records], [2, 3, 4, 6], name)
            vals = [x["val_loss"] for x in records if x["val_loss"] is not None]
            self.assertEqual(len(vals), 2, name)
            self.assertEqual(r["final_val_loss"], vals[-1])
            self.assertEqual(r["tokens"], 6 * 4 * 16)
            for v in vals + [r["final_loss"]]:
                self.assertTrue(0 < v < 10, (name, v))
            # NONE_1D: no vector decays (2 layers x 2 norms + the final one, of
            # 32); IWD: only the output side (per layer u_v = β + α of 32, and
            # DNP's q and k head scales, β + α of 16 each).
            expect = 2 * 2 * 32 + 32 if name == "baseline" else 2 * (1 + 32 + 2 * (1 + 16))
            self.assertEqual(r["undecayed_params"], expect, name)

    def test_train_windows_are_the_split_windows(self):
        import tempfile
        import torch_train
        import torch_train_data as data
        with tempfile.TemporaryDirectory() as tmp:
            torch_train.smoke_dataset(tmp, 64)
            split = data.Split(tmp, "train", 16, 2, 5)
            windows = torch_train.Windows(split, split.per_epoch + 4, torch.device("cpu"))
            for i in (0, 1, split.per_epoch + 3):
                self.assertEqual(windows.batch(i).tolist(), split.batch(i))


if __name__ == "__main__":
    unittest.main()
