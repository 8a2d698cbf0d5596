#!/usr/bin/env python3
"""Trains bench/torch_reference.py's PyTorch model on a prepared dataset the
way `scalemoe train` does, so the two implementations' losses compare
(issue 15: the ablation's baseline and unified strategy in both).

Same as the trainer (from the preset textproto and --set overrides):
- data: data.dataset_dir's shards, the trainer's windows exactly
  (torch_train_data.py: training step s, micro-step m reads micro-batch
  s*A + m of the data.shuffle_seed order; evaluation the first
  train.eval_batches*A val micro-batches, every time);
- optimizer: AdamW (lr, betas, eps, weight_decay), global-norm gradient
  clipping at optimizer.grad_clip, schedule.kind with warmup_steps down to
  optimizer.min_lr over train.train_steps (torch_train_rules.py: the rate of
  step s is the curve at s + 1), the decay policy's groups
  (torch_ref_model.param_groups: the trainer's rule on its 1-D vectors);
- model: shapes, init (normal init_std; output and down projections
  init_std/sqrt(2L); scale vectors 1), MoE aux and z losses, scale-vector
  strategy folded once per step, bf16 autocast under train.precision BF16;
- train.seed seeds torch's init (the same distribution, not the same
  draws as the trainer's Philox init), unless --init-from DIR loads the
  trainer's own initial weights (torch_init_from.py: DIR from `scalemoe
  export --unfolded` of a step_0 checkpoint, checkpoint.save_initial=true).
Differs: torch's clip factor is max_norm/(norm + 1e-6) (ours max_norm/norm);
bf16 kernels and reduction orders are torch's.

usage:
  torch_train.py --config configs/ablation/moe_adamw.textproto [--set a.b=v]... --out DIR
                 [--compile block|none] [--align 8] [--label NAME] [--init-from DIR]
                 [--cpu-fp32-reference]
  torch_train.py --smoke [--out DIR]   tiny shapes on a generated dataset, CPU, fp32
Writes DIR/metrics.jsonl ({"step","loss","ce","aux_loss","lr","grad_norm",
"val_loss","tokens","wall_s"} at every logging.log_interval and evaluation:
"loss", "ce", "lr" and "grad_norm" as the trainer's records name them, here
aux_loss = the trainer's aux_loss + z_loss; val_loss null between
evaluations; with --init-from also "sv", the scale vectors' figures under
the trainer's names (launch/scale_vector_stats.h); --set
logging.log_interval=1 logs every step) and prints a
last line TORCH_TRAIN_JSON {...}.
--cpu-fp32-reference: the exact-comparison mode (tests/launch/same_init_test.py):
CPU, FP32 and eager whatever the config says (torch 1.13's CPU build has
neither torch.compile nor SDPA nor F.rms_norm; the model falls back to
explicit ops), so its losses compare with the trainer's CPU fp32 run.
"""
import argparse
import json
import os
import sys
import tempfile
import time

from torch_ref_config import load_config, Strategy
import torch_train_data as data
from torch_train_rules import learning_rate

try:
    import torch
    import torch_ref_model as M
    import torch_reference as timing
    from torch_init_from import load_trainer_weights, scale_vector_stats
except ImportError:  # --help works without torch
    torch = None

SMOKE_SETS = [
    "model.num_layers=2", "model.hidden_size=32", "model.num_heads=2", "model.num_kv_heads=2",
    "model.vocab_size=64", "model.seq_length=16", "moe.num_experts=4",
    "moe.expert_ffn_hidden_size=16", "train.micro_batch_size=2", "train.global_batch_size=4",
    "train.train_steps=6", "schedule.warmup_steps=2", "train.eval_interval=3",
    "train.eval_batches=1", "logging.log_interval=2", "train.device=CPU",
    "train.precision=FP32",
]


def smoke_dataset(directory, vocab):
    """A learnable generated dataset: counting sequences modulo the vocabulary."""
    train = [[(i * 7 + j) % vocab for j in range(400)] for i in range(3)]
    val = [[(i * 5 + j) % vocab for j in range(200)] for i in range(1)]
    data.write_dataset(directory, {"train": train, "val": val}, vocab)


class Windows:
    """A split's stream on the device and micro-batches 0 .. count-1 as
    [B, T + 1] tensors (their window ids copied to the device once, so a
    step never waits on a host copy)."""

    def __init__(self, split, count, device):
        self.t = split.t
        stream = torch.frombuffer(bytearray(split.stream.tobytes()), dtype=torch.int32)
        self.stream = stream.to(device)
        ids = [split.window_ids(i) for i in range(count)]
        self.starts = (torch.tensor(ids, dtype=torch.int64) * split.t).to(device)
        self.offsets = torch.arange(split.t + 1, device=device)
        self.device = device

    def batch(self, index):
        return self.stream[self.starts[index][:, None] + self.offsets].long()


def evaluate(model, val, micro_batches, autocast):
    """Mean cross-entropy over the eval micro-batches, eager (no compile)."""
    fns, head = model.block_fns, model.head_fn
    model.block_fns, model.head_fn = list(model.blocks), M.head_loss
    try:
        with torch.no_grad():
            ws = model.folded()
            total = torch.zeros((), device=val.device, dtype=torch.float64)
            for i in range(micro_batches):
                b = val.batch(i)
                with autocast:
                    ce, _, _ = model.losses(b[:, :-1], b[:, 1:], ws)
                total += ce.double()
        return float(total) / micro_batches
    finally:
        model.block_fns, model.head_fn = fns, head


def train(cfg, args, device):
    if cfg["optimizer.type"] != "ADAMW":
        raise SystemExit(f"torch_train: optimizer.type={cfg['optimizer.type']} is not "
                         "implemented here (AdamW only); use an *_adamw config")
    bf16 = cfg["train.precision"] == "BF16"
    micro, global_batch = cfg["train.micro_batch_size"], cfg["train.global_batch_size"]
    accum, t = global_batch // micro, cfg["model.seq_length"]
    steps = cfg["train.train_steps"]
    eval_n = cfg["train.eval_batches"] * accum
    ds, seed = cfg["data.dataset_dir"], cfg["data.shuffle_seed"]
    train_split = data.Split(ds, "train", t, micro, seed)
    val_split = data.Split(ds, "val", t, micro, seed)
    if train_split.vocab_size > cfg["model.vocab_size"]:
        raise SystemExit(f"torch_train: dataset {ds} has vocab size {train_split.vocab_size} "
                         f"but model.vocab_size={cfg['model.vocab_size']}: raise model.vocab_size")
    if val_split.per_epoch < eval_n:
        raise SystemExit(f"torch_train: the val split of {ds} holds "
                         f"{val_split.per_epoch // accum} global batches but "
                         f"train.eval_batches={cfg['train.eval_batches']}: lower it")

    timing.setup_torch(device)
    torch.manual_seed(cfg["train.seed"])
    grouped = M.probe_grouped_mm(device, args.align) if bf16 else "fp32: per-expert loop"
    strategy = Strategy(cfg)
    model = M.Model(cfg, strategy, args.align if M.GROUPED["use"] else 1)
    init_note = f"torch.manual_seed({cfg['train.seed']})"
    if args.init_from:
        loaded = load_trainer_weights(model, args.init_from, strategy)
        init_note = f"{loaded} reference tensors from {args.init_from}"
    model = model.to(device)
    fused = device.type == "cuda"
    groups = M.param_groups(model, cfg)
    decayed = sum(p.numel() for p in groups[0]["params"])
    undecayed = sum(p.numel() for p in groups[1]["params"])
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg["optimizer.lr"],
                            betas=(cfg["optimizer.beta1"], cfg["optimizer.beta2"]),
                            eps=cfg["optimizer.eps"], **({"fused": True} if fused else {}))
    params = list(model.parameters())
    train_w = Windows(train_split, steps * accum, device)
    val_w = Windows(val_split, eval_n, device)
    compile_note = args.compile
    timing.apply_compile(model, args.compile)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    lr_args = (cfg["schedule.kind"], cfg["optimizer.lr"], cfg["optimizer.min_lr"],
               cfg["schedule.warmup_steps"])

    def step(s):
        lr = learning_rate(*lr_args, s, steps, cfg["schedule.wsd_decay_fraction"])
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        eff, ws = M.fold_leaves(model, torch.float32)
        total = torch.zeros((), device=device)
        ce_total = torch.zeros((), device=device)
        step_counts = None
        for m in range(accum):
            b = train_w.batch(s * accum + m)
            with autocast:
                ce, aux, counts = model.losses(b[:, :-1], b[:, 1:], ws)
                loss = ce + aux
            (loss / accum).backward()
            total += loss.detach().float() / accum
            ce_total += ce.detach().float() / accum
            step_counts = counts if step_counts is None else [
                a + c for a, c in zip(step_counts, counts)]
        norm = M.finish_step(model, opt, params, cfg["optimizer.grad_clip"], fused, eff, ws,
                             step_counts)
        return total, ce_total, norm, lr

    os.makedirs(args.out, exist_ok=True)
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "w")
    log_every = max(1, cfg["logging.log_interval"])
    eval_every = cfg["train.eval_interval"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    eval_s, loss, val_loss, first_step_s = 0.0, None, None, 0.0
    for s in range(steps):
        try:
            loss, ce, norm, lr = step(s)
        except Exception as e:  # noqa: BLE001 - a compile failure: say so, go eager
            if s > 0 or args.compile == "none":
                raise
            compile_note = f"failed ({type(e).__name__}: {str(e)[:200]}); eager"
            print(f"torch_train: torch.compile failed, training eager: {e}", file=sys.stderr)
            torch._dynamo.reset()
            timing.apply_compile(model, "none")
            loss, ce, norm, lr = step(s)
        done = s + 1
        if s == 0:
            sync()
            first_step_s = time.perf_counter() - start  # includes torch.compile
        evaluated = (eval_every > 0 and done % eval_every == 0) or done == steps
        if done % log_every and not evaluated:
            continue
        loss_value = float(loss)
        if evaluated:
            sync()
            t0 = time.perf_counter()
            val_loss = evaluate(model, val_w, eval_n, autocast)
            eval_s += time.perf_counter() - t0
        record = {"step": done, "loss": loss_value, "ce": float(ce),
                  "aux_loss": loss_value - float(ce), "lr": lr,
                  "grad_norm": float(norm) if norm is not None else None,
                  "val_loss": val_loss if evaluated else None,
                  "tokens": done * global_batch * t, "wall_s": time.perf_counter() - start}
        if args.init_from:  # the trainer's names: its "sv" figures compare one to one
            record["sv"] = scale_vector_stats(model)
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        print(f"step {done}/{steps} | loss {loss_value:.4f}"
              + (f" | val loss {val_loss:.4f}" if evaluated else "")
              + f" | {record['wall_s']:.1f} s", flush=True)
    sync()
    wall = time.perf_counter() - start
    metrics.close()
    tokens = steps * global_batch * t
    result = {"impl": "torch", "label": args.label or cfg["name"], "preset": cfg["name"],
              "sets": args.sets, "steps": steps, "final_loss": float(loss),
              "final_val_loss": val_loss, "tokens": tokens, "wall_s": wall,
              "train_s": wall - eval_s,
              # Steady state: the steps after the first (which compiles).
              "tokens_per_s": (steps - 1) * global_batch * t / max(
                  wall - eval_s - first_step_s, 1e-9) if steps > 1 else 0.0,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
              "torch": torch.__version__, "precision": "BF16" if bf16 else "FP32",
              "experts": grouped, "compile": compile_note, "seed": cfg["train.seed"],
              "first_step_s": first_step_s, "init": init_note, "decayed_params": decayed,
              "undecayed_params": undecayed}
    print("TORCH_TRAIN_JSON " + json.dumps(result))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="preset textproto (configs/...)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="A.B=V",
                    help="override a preset field (repeatable), as scalemoe's --set")
    ap.add_argument("--out", default=None, help="directory for metrics.jsonl")
    ap.add_argument("--compile", choices=["block", "none"], default="block",
                    help="torch.compile per block (default) or eager")
    ap.add_argument("--align", type=int, default=8,
                    help="pad each expert's rows to this multiple for torch._grouped_mm")
    ap.add_argument("--label", default="", help="names the run in the output")
    ap.add_argument("--init-from", default=None, metavar="DIR",
                    help="start from the trainer's weights: DIR from `scalemoe export "
                         "--unfolded` (of checkpoints/step_0: checkpoint.save_initial=true)")
    ap.add_argument("--cpu-fp32-reference", action="store_true",
                    help="CPU, FP32, eager whatever the config says: the exact comparison "
                         "with the trainer's CPU fp32 run (works on torch 1.13)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on a generated dataset, CPU, fp32, eager")
    args = ap.parse_args(argv)
    if torch is None:
        raise SystemExit("torch_train: PyTorch is not installed here (pip install torch)")
    if args.align < 1:
        raise SystemExit("torch_train: --align must be >= 1")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            smoke_dataset(os.path.join(tmp, "dataset"), 64)
            config = args.config or os.path.join(root, "configs", "ablation",
                                                 "moe_adamw.textproto")
            sets = SMOKE_SETS + [f"data.dataset_dir={os.path.join(tmp, 'dataset')}"] + args.sets
            args.compile, args.out = "none", args.out or os.path.join(tmp, "out")
        else:
            if not args.config or not args.out:
                raise SystemExit("torch_train: --config and --out are required (or --smoke)")
            config, sets = args.config, args.sets
        cfg = load_config(config, sets)
        if args.smoke or args.cpu_fp32_reference:
            cfg["train.device"], cfg["train.precision"] = "CPU", "FP32"
            args.compile = "none"
        if cfg["train.device"] == "CUDA" and not torch.cuda.is_available():
            raise SystemExit("torch_train: train.device=CUDA but torch sees no CUDA device; "
                             "run on the GPU machine or --set train.device=CPU")
        device = torch.device("cuda" if cfg["train.device"] == "CUDA" else "cpu")
        return train(cfg, args, device)


if __name__ == "__main__":
    main()
