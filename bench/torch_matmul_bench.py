#!/usr/bin/env python3
"""TFLOP/s of torch.matmul on the cases of bench/cuda_gemm_bench.cc.

The same cases, forms, dtypes and timing as the C++ bench (CUDA events
around 4 back-to-back calls rotating over 3 input sets, median of 25
samples after 3 warm-up calls), with fp32 in exact fp32 (TF32 off). Forms of
a linear layer y = x @ W.T (x [B?, M, K], W [B?, N, K]):
  fwd    torch.matmul(x, W.transpose(-1, -2), out=y)
  dgrad  torch.matmul(dy, W, out=dx)
  wgrad  dW.addmm_(dy.T, x) / dW.baddbmm_(...)  (accumulates, beta 1)
For bf16, torch's wgrad accumulates into a bf16 dW (torch has no bf16 x bf16
-> fp32 addmm); ours writes an fp32 dW. Same FLOPs; the table notes it.
The expert cases (batch > 1) in bf16 also run row-stacked through
torch._grouped_mm with balanced offsets (forms gfwd, gdgrad, gwgrad; the
weight gradient is written, not accumulated, in bf16), when it exists.

usage: torch_matmul_bench.py CASES   (CASES: `cuda_gemm_bench --list` output)
Prints rows `case dtype form batch m n k ms tflops note`, tab-separated.
"""
import sys

import torch

SETS, WARMUP, INNER, SAMPLES = 3, 3, 4, 25


def exact_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:  # newer releases spell it so
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    except (AttributeError, RuntimeError, ValueError):
        pass


def time_case(batch, tokens, k_in, n_out, dtype, form):
    dev = torch.device("cuda")
    lead = (batch,) if batch > 1 else ()
    gen = torch.Generator(device=dev)
    gen.manual_seed(2024)

    def randn(*shape, std=1.0, dt=dtype):
        return (torch.randn(*lead, *shape, device=dev, generator=gen, dtype=torch.float32) * std).to(dt)

    sets = []
    for _ in range(SETS):
        x = randn(tokens, k_in)
        w = randn(n_out, k_in, std=0.02)
        y = randn(tokens, n_out)
        dx = torch.empty(*lead, tokens, k_in, device=dev, dtype=dtype)
        dw = randn(n_out, k_in)  # bf16 for bf16 inputs: see the module doc
        sets.append((x, w, y, dx, dw))

    def call(i):
        x, w, y, dx, dw = sets[i % SETS]
        if form == "fwd":
            torch.matmul(x, w.transpose(-1, -2), out=y)
        elif form == "dgrad":
            torch.matmul(y, w, out=dx)
        elif batch > 1:
            dw.baddbmm_(y.transpose(-1, -2), x)
        else:
            dw.addmm_(y.t(), x)

    ms = time_calls(call)
    del sets
    return ms


def product_dims(form, tokens, k_in, n_out):
    """The product's M, N, K for a form (g-prefixed: the same, grouped)."""
    form = form.lstrip("g")
    if form == "dgrad":  # [M, N] x [N, K]
        return tokens, k_in, n_out
    if form == "wgrad":  # [N, M] x [M, K]
        return n_out, k_in, tokens
    return tokens, n_out, k_in  # fwd: [M, K] x [K, N]


def time_grouped(batch, tokens, k_in, n_out, form):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev)
    gen.manual_seed(2024)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * std).to(torch.bfloat16)

    offs = torch.arange(1, batch + 1, device=dev, dtype=torch.int32) * tokens
    sets = [(randn(batch * tokens, k_in), randn(batch, n_out, k_in, std=0.02),
             randn(batch * tokens, n_out)) for _ in range(SETS)]

    def call(i):
        x, w, y = sets[i % SETS]
        if form == "gfwd":
            return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
        if form == "gdgrad":
            return torch._grouped_mm(y, w, offs=offs)
        return torch._grouped_mm(y.t(), x, offs=offs)

    call(0)  # raises here if this form is not supported
    return time_calls(call)


def time_calls(call):
    for i in range(WARMUP):
        call(i)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for s in range(SAMPLES):
        start.record()
        for i in range(INNER):
            call(s * INNER + i)
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop))
    samples.sort()
    torch.cuda.empty_cache()
    return samples[SAMPLES // 2] / INNER


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    exact_fp32()
    print("case\tdtype\tform\tbatch\tm\tn\tk\tms\ttflops\tnote")
    with open(sys.argv[1]) as f:
        cases = [line.split() for line in f if line.strip()]
    for name, batch, tokens, k_in, n_out in cases:
        batch, tokens, k_in, n_out = int(batch), int(tokens), int(k_in), int(n_out)
        for dname, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            for form in ("fwd", "dgrad", "wgrad"):
                m, n, k = product_dims(form, tokens, k_in, n_out)
                ms = time_case(batch, tokens, k_in, n_out, dtype, form)
                tflops = 2.0 * batch * m * n * k / (ms * 1e-3) / 1e12
                note = "torch dW bf16" if form == "wgrad" and dname == "bf16" else ""
                print(f"{name}\t{dname}\t{form}\t{batch}\t{m}\t{n}\t{k}\t{ms:.4f}\t{tflops:.1f}\t{note}",
                      flush=True)
        if batch == 1 or not hasattr(torch, "_grouped_mm"):
            continue
        for form in ("gfwd", "gdgrad", "gwgrad"):
            m, n, k = product_dims(form, tokens, k_in, n_out)
            try:
                ms = time_grouped(batch, tokens, k_in, n_out, form)
            except RuntimeError as e:  # a layout this release's kernel refuses
                print(f"torch_matmul_bench: {name} {form}: {str(e).splitlines()[0]}", file=sys.stderr)
                continue
            tflops = 2.0 * batch * m * n * k / (ms * 1e-3) / 1e12
            note = "torch._grouped_mm" + (", dW bf16" if form == "gwgrad" else "")
            print(f"{name}\tbf16\t{form}\t{batch}\t{m}\t{n}\t{k}\t{ms:.4f}\t{tflops:.1f}\t{note}", flush=True)


if __name__ == "__main__":
    main()
