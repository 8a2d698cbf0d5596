#!/usr/bin/env python3
"""The first step's gradients of the PyTorch reference against the
trainer's, both from the trainer's initial weights, on the CPU in fp32.

The trainer's gradient is read back from its step_1 checkpoint: after one
AdamW update the first moment is m = (1 - beta1) * g_clipped, and g_clipped =
g * min(1, grad_clip / ‖g‖) with ‖g‖ the grad_norm of its step-1 record. The
reference's is computed here with torch_train's windows (step 0's
micro-batches) and backward (fold included), before clipping.

usage: same_init_grads.py --config FILE [--set a.b=v]... --init DIR --run RUN [--rtol R]
  DIR  `scalemoe export --unfolded` of RUN/checkpoints/step_0
  RUN  the trainer's run directory (checkpoint.save_initial=true,
       checkpoint.interval=1, logging.log_interval=1, CPU, FP32)
Prints one line per parameter outside the bound (compare()'s: rtol default
1e-5 relative, or 1e-7 of the whole gradient's norm), then a "GRADS" line;
exits 1 when any is outside.
"""
import argparse
import json
import os
import sys

import torch

import torch_ref_model as M
import torch_train
import torch_train_data as data
from torch_init_from import load_trainer_weights, map_trainer_tensors, read_safetensors
from torch_ref_config import Strategy, load_config


def trainer_gradients(run, cfg):
    """{trainer name: its step-1 gradient before clipping}."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        first = next(json.loads(l) for l in f if '"loss"' in l)
    if first["step"] != 1:
        raise SystemExit(f"same_init_grads: {run} did not log step 1 (logging.log_interval=1)")
    norm, clip = first["grad_norm"], cfg["optimizer.grad_clip"]
    unclip = norm / clip if 0 < clip < norm else 1.0
    state = read_safetensors(os.path.join(run, "checkpoints", "step_1", "rank_00000.safetensors"))
    prefix = "optimizer.adam_m/"
    grads = {k[len(prefix):]: v * (unclip / (1.0 - cfg["optimizer.beta1"]))
             for k, v in state.items() if k.startswith(prefix)}
    if not grads:
        raise SystemExit(f"same_init_grads: {run}/checkpoints/step_1 holds no AdamW moments "
                         "(optimizer.type=ADAMW, one rank, checkpoint.interval=1)")
    return grads, norm


def reference_gradients(cfg, init):
    st = Strategy(cfg)
    model = M.Model(cfg, st, 1)
    load_trainer_weights(model, init, st)
    accum = cfg["train.global_batch_size"] // cfg["train.micro_batch_size"]
    split = data.Split(cfg["data.dataset_dir"], "train", cfg["model.seq_length"],
                       cfg["train.micro_batch_size"], cfg["data.shuffle_seed"])
    windows = torch_train.Windows(split, accum, torch.device("cpu"))
    eff, ws = M.fold_leaves(model, torch.float32)
    for m in range(accum):
        b = windows.batch(m)
        ce, aux, _ = model.losses(b[:, :-1], b[:, 1:], ws)
        ((ce + aux) / accum).backward()
    if model.folds:
        M.fold_backward(eff, ws)
    return model, st


def compare(cfg, init, run, rtol):
    """([(reference name, relative difference)] outside the bound, the worst
    relative difference within rtol and its name, the reference's and the
    trainer's gradient norms). A tensor passes when
    |g_ref - g| <= rtol * |g| + 1e-7 * grad_norm: the floor is fp32 rounding
    on the scale of the whole gradient, for the tensors whose exact gradient
    is ~0 (DNP's q/k norm follows the projection, so the magnitude β of γ_q
    and γ_k is scale-invariant: dβ is rounding noise in both)."""
    torch.manual_seed(0)
    model, st = reference_gradients(cfg, init)
    grads, norm = trainer_gradients(run, cfg)
    params = {id(p) for p in model.parameters()}
    ref_sq, worst, worst_name, failed = 0.0, 0.0, "", []
    for name, dest, ours in map_trainer_tensors(model, grads, st):
        if id(dest) not in params:
            continue  # the expert-bias buffer has no gradient
        g = dest.grad if dest.grad is not None else torch.zeros_like(dest)
        ref_sq += float(g.double().square().sum())
        diff = float((g - ours).norm())
        rel = diff / max(float(ours.norm()), 1e-30)
        if diff > rtol * float(ours.norm()) + 1e-7 * norm:
            failed.append((name, rel))
        elif rel <= rtol and rel > worst:  # the worst of those not passed by the floor
            worst, worst_name = rel, name
    return failed, worst, worst_name, ref_sq ** 0.5, norm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--init", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--rtol", type=float, default=1e-5)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.sets)
    failed, worst, worst_name, ref_norm, norm = compare(cfg, args.init, args.run, args.rtol)
    for name, rel in failed:
        print(f"  {name}: |g_ref - g| / |g| = {rel:.3e}")
    print(f"GRADS {len(failed)} over the bound; worst passing {worst:.3e} at {worst_name}; "
          f"grad_norm {ref_norm:.6f} (reference) vs {norm:.6f} (trainer)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
