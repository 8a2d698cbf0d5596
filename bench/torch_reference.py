#!/usr/bin/env python3
"""The PyTorch reference of scalemoe's presets: the same MoE transformer as a
strong PyTorch user writes it, timed like bench/train_step_bench.

Model (shapes, batch, sequence length, experts, top-k and routing from the
same preset textproto and --set overrides): tied embeddings, pre-norm
blocks with RMSNorm, RoPE, F.scaled_dot_product_attention(is_causal=True)
(GQA), SwiGLU; MoE layers with a softmax or sigmoid top-k router (fp32,
optional expert bias for selection, top-k renormalisation, Switch aux loss
and router z-loss), tokens sorted by expert and the expert FFNs as
torch._grouped_mm (PyTorch >= 2.8; each expert's rows padded to --align for
its kernels; a per-expert loop when it is missing or fails a start-up
probe), optional shared experts and leading dense layers. bf16 autocast
(train.precision BF16), fused AdamW, gradient clipping, gradient
accumulation over global_batch / micro_batch micro-batches, torch.compile
per block (--compile block, the torchtitan way; or model, or none).

Scale vectors (shared/SCALE_VECTORS.md): the shared-γ baseline applies one γ
per norm per token (F.rms_norm's weight). Per-branch γ (HG), output-side u
(DP) and β·α (OR) act on weights only, so, as the note's PyTorch version,
they are folded into the weights once per step (W_eff = diag(u)·W·diag(γ),
formed under autograd, then used by every micro-batch as a detached leaf
whose accumulated gradient flows back through the fold once); DNP's per-head
RMSNorm with scale on q and k (and v) is per-token work. The same memory and
FLOP shape as the trainer's fold.

FLOPs as Megatron counts them (launch/megatron_flops.h, the same formula):
  6 * active matmul parameters (LM head included) + 12 * L * T * h per token;
MFU against 989 TFLOP/s dense bf16 (an fp32 run is still compared with it).

usage:
  torch_reference.py --config configs/gpu_moe_125m.textproto [--set a.b=v]...
                     [--steps 20] [--warmup 3] [--compile block|model|none]
                     [--label NAME] [--align 8] [--fold-dtype fp32|bf16]
  torch_reference.py --config ... --ops     per-op timings at the preset's shapes
  torch_reference.py --smoke                tiny shapes, CPU, fp32, no compile
Prints one result line and one line starting BENCH_JSON (--ops: BENCH_OPS_JSON
lines).
"""
import argparse
import json
import os
import re
import sys
import time

from torch_ref_config import is_moe_layer, load_config, megatron_flops, Strategy

try:
    import torch
    import torch.nn.functional as F
    import torch_ref_model as M
except ImportError:  # --help and the config side work without torch
    torch = None
    F = None
    M = None

PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16
GIB = 1024.0 ** 3

# ---------------------------------------------------------------------------
# Training-step benchmark
# ---------------------------------------------------------------------------

def quantile(sorted_values, q):
    i = int(q * (len(sorted_values) - 1) + 0.5)
    return sorted_values[min(i, len(sorted_values) - 1)]


def setup_torch(device):
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    major, minor = (int(v) for v in re.findall(r"\d+", torch.__version__)[:2])
    M.SDPA_GQA["native"] = (major, minor) >= (2, 5)
    try:
        import torch._dynamo as dynamo
        # One compiled graph serves every block of a class; allow re-compiles
        # for the few guards that differ (older releases key on the module).
        for name, floor in (("cache_size_limit", 64), ("recompile_limit", 64),
                            ("accumulated_cache_size_limit", 512),
                            ("accumulated_recompile_limit", 512)):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name,
                        max(getattr(dynamo.config, name), floor))
    except Exception:  # noqa: BLE001 - compile then simply recompiles less
        pass


def apply_compile(model, how):
    if how == "none":
        model.block_fns = list(model.blocks)
        model.head_fn = M.head_loss
    elif how == "block":
        model.block_fns = [torch.compile(b) for b in model.blocks]
        model.head_fn = torch.compile(M.head_loss)
    else:  # model: one graph over the whole forward
        model.block_fns = list(model.blocks)
        model.head_fn = M.head_loss
        model.forward = torch.compile(model.forward)


def run_train(cfg, args, device):
    bf16 = cfg["train.precision"] == "BF16"
    setup_torch(device)
    torch.manual_seed(cfg["train.seed"])
    st = Strategy(cfg)
    grouped = M.probe_grouped_mm(device, args.align) if bf16 else "fp32: per-expert loop"
    align = args.align if M.GROUPED["use"] else 1
    model = M.Model(cfg, st, align).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(M.param_groups(model, cfg), lr=cfg["optimizer.lr"],
                            betas=(cfg["optimizer.beta1"], cfg["optimizer.beta2"]),
                            eps=cfg["optimizer.eps"], **({"fused": True} if fused else {}))
    micro, global_batch = cfg["train.micro_batch_size"], cfg["train.global_batch_size"]
    accum = global_batch // micro
    t, vocab = cfg["model.seq_length"], cfg["model.vocab_size"]
    gen = torch.Generator(device=device).manual_seed(1234)
    # Two steps of random token windows on the device, reused in turn.
    data = torch.randint(0, vocab, (2 * accum, micro, t + 1), device=device, generator=gen)
    params = [p for p in model.parameters()]
    fold_dtype = torch.bfloat16 if args.fold_dtype == "bf16" else torch.float32
    compile_mode = args.compile if not args.smoke else "none"
    apply_compile(model, compile_mode)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(i):
        opt.zero_grad(set_to_none=True)
        eff, ws = M.fold_leaves(model, fold_dtype)
        step_counts = None
        for m in range(accum):
            batch = data[(i * accum + m) % data.shape[0]]
            with autocast:
                loss, counts = model(batch[:, :-1], batch[:, 1:], ws)
            (loss / accum).backward()
            step_counts = counts if step_counts is None else [
                a + b for a, b in zip(step_counts, counts)]
        M.finish_step(model, opt, params, cfg["optimizer.grad_clip"], fused, eff, ws, step_counts)
        return loss

    compile_note = compile_mode
    cuda = device.type == "cuda"
    total = args.warmup + args.steps
    marks = []
    try:
        for i in range(args.warmup):
            step(i)
    except Exception as e:  # noqa: BLE001 - a compile failure: say so, run eager
        if compile_mode == "none":
            raise
        compile_note = f"failed ({type(e).__name__}: {str(e)[:200]}); eager"
        print(f"torch_reference: torch.compile failed, timing eager: {e}", file=sys.stderr)
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
        apply_compile(model, "none")
        if hasattr(model, "forward") and "forward" in model.__dict__:
            del model.__dict__["forward"]
        for i in range(args.warmup):
            step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup, total + 1):
        if cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks.append(ev)
        else:
            marks.append(time.perf_counter())
        if i < total:
            loss = step(i)
    if cuda:
        torch.cuda.synchronize()
        ms = [marks[j].elapsed_time(marks[j + 1]) for j in range(args.steps)]
    else:
        ms = [(marks[j + 1] - marks[j]) * 1e3 for j in range(args.steps)]
    final_loss = float(loss.detach())
    s = sorted(ms)
    median, p10, p90 = quantile(s, 0.5), quantile(s, 0.1), quantile(s, 0.9)
    active, flops_per_token = megatron_flops(cfg)
    tokens = global_batch * t
    tps = tokens / (median * 1e-3)
    tflops = flops_per_token * tps * 1e-12
    peak_alloc = torch.cuda.max_memory_allocated() / GIB if cuda else 0.0
    peak_reserved = torch.cuda.max_memory_reserved() / GIB if cuda else 0.0
    dev_name = torch.cuda.get_device_name() if cuda else "CPU"
    label = args.label or cfg["name"]
    precision = "BF16" if bf16 else "FP32"
    print(f"{label} | torch {torch.__version__} {dev_name} {precision} | micro {micro} x global "
          f"{global_batch} x seq {t} | step {median:.2f} ms (p10 {p10:.2f}, p90 {p90:.2f}; "
          f"{args.steps} steps) | {tps:.0f} tokens/s | {tflops:.1f} TFLOP/s | MFU "
          f"{100 * tflops / PEAK_TFLOPS:.1f}% of {PEAK_TFLOPS:.0f} bf16"
          f"{'' if bf16 else ' (vs the bf16 peak: fp32 run)'} | peak {peak_reserved:.2f} GiB "
          f"reserved, {peak_alloc:.2f} GiB allocated | experts: {grouped} | compile: "
          f"{compile_note} | loss {final_loss:.4f}")
    record = {
        "impl": "torch", "label": label, "preset": cfg["name"], "device": dev_name,
        "torch": torch.__version__, "precision": precision, "micro_batch": micro,
        "global_batch": global_batch, "seq_length": t, "warmup": args.warmup,
        "steps": args.steps, "step_ms_median": median, "step_ms_p10": p10, "step_ms_p90": p90,
        "tokens_per_s": tps, "tflops": tflops, "mfu": tflops / PEAK_TFLOPS,
        "mfu_peak_tflops": PEAK_TFLOPS, "flops_per_token": flops_per_token,
        "active_params": active, "peak_gib": peak_reserved, "peak_allocated_gib": peak_alloc,
        "experts": grouped, "compile": compile_note, "align": align,
        "fold": "per step" if model.folds else "none", "loss": final_loss,
    }
    print("BENCH_JSON " + json.dumps(record))


# ---------------------------------------------------------------------------
# Op-level timings (issue 13's per-op table)
# ---------------------------------------------------------------------------

def time_ms(fn, iters=20, warm=3):
    """Median ms of `fn`: CUDA events, or the host clock on the CPU (--smoke)."""
    for _ in range(warm):
        fn()
    if not torch.cuda.is_available():
        samples = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return sorted(samples)[len(samples) // 2]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return sorted(samples)[len(samples) // 2]


def run_ops(cfg, args, device):
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("torch_reference: --ops needs a CUDA device (or --smoke)")
    setup_torch(device)
    grouped = M.probe_grouped_mm(device, args.align)
    bf = torch.bfloat16 if device.type == "cuda" else torch.float32
    d, h, kv = cfg["model.hidden_size"], cfg["model.num_heads"], cfg["model.num_kv_heads"]
    hd, t, b = d // h, cfg["model.seq_length"], cfg["train.micro_batch_size"]
    n = b * t
    e, k, f = cfg["moe.num_experts"], cfg["moe.top_k"], cfg["moe.expert_ffn_hidden_size"]
    rows = []

    def add(op, shape, ms, flops=None, nbytes=None):
        row = {"preset": cfg["name"], "op": op, "shape": shape, "ms": ms}
        if flops:
            row["tflops"] = flops / (ms * 1e-3) / 1e12
        if nbytes:
            row["gb_per_s"] = nbytes / (ms * 1e-3) / 1e9
        rows.append(row)

    def randn(*shape, dtype=bf, std=1.0):
        return (torch.randn(*shape, device=device) * std).to(dtype)

    # torch.matmul on the linear layers (y = x W^T; dgrad dx = dy W; wgrad dW = dy^T x).
    linears = [("qkv", d + 2 * kv * hd, d), ("o", d, d), ("lm_head", cfg["model.vocab_size"], d)]
    if e > 0:
        linears.append(("router", e, d))
    if any(not is_moe_layer(cfg, l) for l in range(cfg["model.num_layers"])):
        linears += [("dense_gate_up", 2 * cfg["model.ffn_hidden_size"], d),
                    ("dense_down", d, cfg["model.ffn_hidden_size"])]
    if cfg["moe.num_shared_experts"] > 0:
        fs = cfg["moe.shared_expert_ffn_hidden_size"]
        linears += [("shared_gate_up", 2 * fs, d), ("shared_down", d, fs)]
    for name, out_f, in_f in linears:
        x, w, dy = randn(n, in_f), randn(out_f, in_f, std=0.02), randn(n, out_f)
        y, dx, dw = randn(n, out_f), randn(n, in_f), randn(out_f, in_f)
        flops = 2.0 * n * out_f * in_f
        for form, fn in (("fwd", lambda: torch.matmul(x, w.t(), out=y)),
                         ("dgrad", lambda: torch.matmul(dy, w, out=dx)),
                         ("wgrad", lambda: torch.matmul(dy.t(), x, out=dw))):
            add(f"matmul {name} {form}", f"{n}x{out_f}x{in_f}", time_ms(fn), flops)

    # scaled_dot_product_attention, causal (FLOPs: half the scores, bwd 2.5x).
    q = randn(b, h, t, hd).requires_grad_()
    kk = randn(b, kv, t, hd).requires_grad_()
    vv = randn(b, kv, t, hd).requires_grad_()
    gqa = {"enable_gqa": True} if kv != h and M.SDPA_GQA["native"] else {}
    if kv != h and not M.SDPA_GQA["native"]:
        kk = kk.detach().repeat_interleave(h // kv, 1).requires_grad_()
        vv = vv.detach().repeat_interleave(h // kv, 1).requires_grad_()
    fwd_flops = 2.0 * b * h * t * t * hd
    out = M.sdpa(q, kk, vv, **gqa)
    dout = torch.randn_like(out)
    add("sdpa fwd", f"b{b} h{h} kv{kv} t{t} d{hd}", time_ms(
        lambda: M.sdpa(q, kk, vv, **gqa)), fwd_flops)
    add("sdpa bwd", f"b{b} h{h} kv{kv} t{t} d{hd}", time_ms(
        lambda: torch.autograd.grad(out, (q, kk, vv), dout, retain_graph=True)),
        2.5 * fwd_flops)

    # Grouped expert GEMMs: N*k rows spread evenly over the experts.
    if e > 0:
        align = args.align if M.GROUPED["use"] else 1
        per = (n * k // e + align - 1) // align * align
        offs = torch.arange(1, e + 1, device=device, dtype=torch.int32) * per
        m = per * e
        for name, out_f, in_f in (("experts gate_up", 2 * f, d), ("experts down", d, f)):
            x = randn(m, in_f).requires_grad_()
            w_leaf = randn(e, out_f, in_f, std=0.02).requires_grad_()
            w_t = w_leaf.transpose(-2, -1)
            flops = 2.0 * m * out_f * in_f
            shape = f"{m}x{out_f}x{in_f} over {e}"
            add(f"grouped_mm {name} fwd", shape, time_ms(lambda: M.grouped_mm(x, w_t, offs)), flops)
            y = M.grouped_mm(x, w_t, offs)
            dy = torch.randn_like(y)
            add(f"grouped_mm {name} bwd", shape, time_ms(
                lambda: torch.autograd.grad(y, (x, w_leaf), dy, retain_graph=True)), 2 * flops)

    # Fused AdamW over the model's parameters (fp32 master weights and state).
    model = M.Model(cfg, Strategy(cfg), 1).to(device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-4,
                            **({"fused": True} if device.type == "cuda" else {}))
    count = sum(p.numel() for p in params)
    add("fused AdamW step" if device.type == "cuda" else "AdamW step", f"{count / 1e6:.1f}M params", time_ms(opt.step, iters=10),
        nbytes=count * 4 * 7.0)  # read p, g, m, v; write p, m, v
    del opt, model, params

    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    print(f"per-op timings, torch {torch.__version__} on {where}, "
          f"{cfg['name']} shapes (tokens {n}); experts: {grouped}")
    print("| op | shape | ms | TFLOP/s | GB/s |\n|---|---|---:|---:|---:|")
    for r in rows:
        tf = f"{r['tflops']:.1f}" if "tflops" in r else ""
        gb = f"{r['gb_per_s']:.0f}" if "gb_per_s" in r else ""
        print(f"| {r['op']} | {r['shape']} | {r['ms']:.4f} | {tf} | {gb} |")
    for r in rows:
        print("BENCH_OPS_JSON " + json.dumps(r))


# ---------------------------------------------------------------------------

SMOKE_SETS = [
    "model.num_layers=3", "model.hidden_size=64", "model.num_heads=4", "model.num_kv_heads=2",
    "model.ffn_hidden_size=96", "model.vocab_size=512", "model.seq_length=32",
    "moe.num_experts=4", "moe.top_k=2", "moe.expert_ffn_hidden_size=32",
    "moe.first_dense_layers=1", "moe.num_shared_experts=1", "moe.expert_bias=true",
    "train.micro_batch_size=2", "train.global_batch_size=4", "train.precision=FP32",
    "train.device=CPU",
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="preset textproto (configs/...)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="A.B=V",
                    help="override a preset field (repeatable), as scalemoe's --set")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--compile", choices=["block", "model", "none"], default="block",
                    help="torch.compile per block (default), the whole model, or not at all")
    ap.add_argument("--align", type=int, default=8,
                    help="pad each expert's rows to this multiple for torch._grouped_mm")
    ap.add_argument("--fold-dtype", choices=["fp32", "bf16"], default="fp32",
                    help="dtype of the once-per-step folded weights (and their gradients)")
    ap.add_argument("--label", default="", help="names the run in the output")
    ap.add_argument("--ops", action="store_true", help="per-op timings instead of steps")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes (every layer kind), CPU, fp32, no compile")
    args = ap.parse_args(argv)
    if torch is None:
        raise SystemExit("torch_reference: PyTorch is not installed here (pip install torch)")
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("torch_reference: need --steps >= 1 and --warmup >= 0")
    if args.align < 1:
        raise SystemExit("torch_reference: --align must be >= 1")
    if args.smoke:
        config = args.config or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                             "configs", "gpu_finegrained_64e.textproto")
        cfg = load_config(config, SMOKE_SETS + args.sets)
        cfg["train.device"], cfg["train.precision"] = "CPU", "FP32"
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    else:
        if not args.config:
            raise SystemExit("torch_reference: --config is required (or --smoke)")
        cfg = load_config(args.config, args.sets)
    want_cuda = cfg["train.device"] == "CUDA"
    if want_cuda and not torch.cuda.is_available():
        raise SystemExit("torch_reference: train.device=CUDA but torch sees no CUDA device; "
                         "run on the GPU machine or --set train.device=CPU")
    device = torch.device("cuda" if want_cuda else "cpu")
    if args.ops:
        run_ops(cfg, args, device)
    else:
        run_train(cfg, args, device)


if __name__ == "__main__":
    main()
