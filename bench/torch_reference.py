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
import math
import os
import re
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # the module still compiles and --help works without torch
    torch = None
    nn = None
    F = None

PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16
GIB = 1024.0 ** 3

# ---------------------------------------------------------------------------
# Config: a tiny text-format reader for the fields this script reads.
# ---------------------------------------------------------------------------

# Every field read here with configs/scalemoe.proto's default.
DEFAULTS = {
    "name": "",
    "model.num_layers": 4,
    "model.hidden_size": 128,
    "model.num_heads": 4,
    "model.num_kv_heads": 0,
    "model.ffn_hidden_size": 384,
    "model.vocab_size": 4096,
    "model.seq_length": 128,
    "model.tied_embeddings": True,
    "model.rope_theta": 10000.0,
    "model.norm_eps": 1e-6,
    "model.qk_norm": False,
    "model.init_std": 0.02,
    "moe.num_experts": 8,
    "moe.top_k": 2,
    "moe.expert_ffn_hidden_size": 128,
    "moe.num_shared_experts": 0,
    "moe.shared_expert_ffn_hidden_size": 0,
    "moe.first_dense_layers": 0,
    "moe.moe_layer_frequency": 1,
    "moe.score_function": "SOFTMAX",
    "moe.normalize_topk": True,
    "moe.aux_loss_coeff": 0.01,
    "moe.z_loss_coeff": 0.001,
    "moe.capacity_factor": 0.0,
    "moe.expert_bias": False,
    "moe.expert_bias_update_rate": 0.001,
    "scale_vectors.mode": "SHARED",
    "scale_vectors.hg_attention": True,
    "scale_vectors.hg_ffn": True,
    "scale_vectors.hg_router": True,
    "scale_vectors.hg_experts": True,
    "scale_vectors.hg_shared_experts": True,
    "scale_vectors.placement": "INPUT_ONLY",
    "scale_vectors.dual_projections": [],
    "scale_vectors.dnp_normalize_v": False,
    "scale_vectors.reparam": "PLAIN",
    "scale_vectors.decay_policy": "IWD",
    "scale_vectors.fold_into_weights": True,
    "optimizer.type": "ADAMW",
    "optimizer.lr": 3e-3,
    "optimizer.weight_decay": 0.1,
    "optimizer.beta1": 0.9,
    "optimizer.beta2": 0.95,
    "optimizer.eps": 1e-8,
    "optimizer.grad_clip": 1.0,
    "train.seed": 1234,
    "train.micro_batch_size": 8,
    "train.global_batch_size": 0,
    "train.device": "CPU",
    "train.precision": "FP32",
}

_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"'              # string
    r"|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # number
    r"|[A-Za-z_]\w*"                  # identifier / enum / bool
    r"|[{}:\[\],;]")


def _strip_comments(text):
    out = []
    for line in text.splitlines():
        quoted = False
        for i, ch in enumerate(line):
            if ch == '"' and (i == 0 or line[i - 1] != "\\"):
                quoted = not quoted
            elif ch == "#" and not quoted:
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def _scalar(token):
    return token[1:-1] if token.startswith('"') else token


def parse_textproto(text):
    """{"model.num_layers": "12", ...}: dotted paths to raw values; a repeated
    field (a [..] list or the field given again) becomes a list."""
    tokens = _TOKEN.findall(_strip_comments(text))
    out, stack, i = {}, [], 0

    def put(path, value):
        if path in out:
            old = out[path]
            out[path] = (old if isinstance(old, list) else [old]) + (
                value if isinstance(value, list) else [value])
        else:
            out[path] = value

    while i < len(tokens):
        tok = tokens[i]
        if tok in (",", ";"):
            i += 1
            continue
        if tok == "}":
            if not stack:
                raise ValueError("textproto: unbalanced '}'")
            stack.pop()
            i += 1
            continue
        name = tok
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"textproto: field {name} has no value")
        if tokens[i] == "{":
            stack.append(name)
            i += 1
            continue
        path = ".".join(stack + [name])
        if tokens[i] == "[":
            values = []
            i += 1
            while i < len(tokens) and tokens[i] != "]":
                if tokens[i] != ",":
                    values.append(_scalar(tokens[i]))
                i += 1
            i += 1
            put(path, values)
            continue
        put(path, _scalar(tokens[i]))
        i += 1
    if stack:
        raise ValueError(f"textproto: unclosed block {'.'.join(stack)}")
    return out


def _convert(path, raw):
    default = DEFAULTS[path]
    try:
        if isinstance(default, bool):
            if str(raw).lower() in ("true", "1"):
                return True
            if str(raw).lower() in ("false", "0"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            if isinstance(raw, list):
                return [str(v) for v in raw]
            raw = str(raw).strip()
            if raw.startswith("["):
                return [v.strip() for v in raw.strip("[]").split(",") if v.strip()]
            return [raw]
        return str(raw)
    except ValueError:
        raise SystemExit(f"torch_reference: {path}={raw!r} is not a valid "
                         f"{type(default).__name__}; fix the preset or the --set")


def load_config(path, overrides):
    """The fields of DEFAULTS from preset `path` and `--set a.b=v` overrides."""
    with open(path) as f:
        raw = parse_textproto(f.read())
    for o in overrides:
        if "=" not in o:
            raise SystemExit(f"torch_reference: --set {o!r}: expected a.b=value")
        key, value = o.split("=", 1)
        key, value = key.strip(), value.strip()
        if key not in DEFAULTS:
            print(f"torch_reference: note: --set {key} is not read by the torch reference "
                  "(no effect on its shapes)", file=sys.stderr)
            continue
        raw[key] = _scalar(value) if not value.startswith("[") else value
    cfg = {k: _convert(k, raw[k]) if k in raw else v for k, v in DEFAULTS.items()}
    if cfg["model.num_kv_heads"] == 0:
        cfg["model.num_kv_heads"] = cfg["model.num_heads"]
    if cfg["moe.shared_expert_ffn_hidden_size"] == 0:
        cfg["moe.shared_expert_ffn_hidden_size"] = cfg["moe.expert_ffn_hidden_size"]
    if cfg["train.global_batch_size"] == 0:
        cfg["train.global_batch_size"] = cfg["train.micro_batch_size"]
    if cfg["train.global_batch_size"] % cfg["train.micro_batch_size"]:
        raise SystemExit(f"torch_reference: train.global_batch_size="
                         f"{cfg['train.global_batch_size']} is not a multiple of "
                         f"train.micro_batch_size={cfg['train.micro_batch_size']}")
    if cfg["moe.capacity_factor"] > 0:
        print("torch_reference: note: moe.capacity_factor > 0 is not modelled: dropless "
              "routing", file=sys.stderr)
    if cfg["optimizer.type"] != "ADAMW":
        print("torch_reference: note: optimizer.type MUON is timed as AdamW", file=sys.stderr)
    return cfg


def is_moe_layer(cfg, layer):
    if cfg["moe.num_experts"] <= 0 or layer < cfg["moe.first_dense_layers"]:
        return False
    return (layer - cfg["moe.first_dense_layers"]) % max(1, cfg["moe.moe_layer_frequency"]) == 0


def megatron_flops(cfg):
    """(active matmul params incl. the LM head, FLOPs per token): the rule of
    launch/megatron_flops.cc."""
    h = cfg["model.hidden_size"]
    hd = h // cfg["model.num_heads"]
    attention = 2 * h * h + 2 * h * cfg["model.num_kv_heads"] * hd
    active = cfg["model.vocab_size"] * h
    for layer in range(cfg["model.num_layers"]):
        active += attention
        if is_moe_layer(cfg, layer):
            active += (h * cfg["moe.num_experts"]
                       + cfg["moe.top_k"] * 3 * h * cfg["moe.expert_ffn_hidden_size"]
                       + cfg["moe.num_shared_experts"] * 3 * h
                       * cfg["moe.shared_expert_ffn_hidden_size"])
        else:
            active += 3 * h * cfg["model.ffn_hidden_size"]
    per_token = 6.0 * active + 12.0 * cfg["model.num_layers"] * cfg["model.seq_length"] * h
    return active, per_token


# ---------------------------------------------------------------------------
# Scale-vector strategy (shared/SCALE_VECTORS.md)
# ---------------------------------------------------------------------------

class Strategy:
    def __init__(self, cfg):
        self.mode = cfg["scale_vectors.mode"]
        self.placement = cfg["scale_vectors.placement"]
        self.reparam = cfg["scale_vectors.reparam"]
        self.decay_policy = cfg["scale_vectors.decay_policy"]
        self.dnp_v = cfg["scale_vectors.dnp_normalize_v"]
        dual = cfg["scale_vectors.dual_projections"] or ["Q", "K", "V"]
        unsupported = [p for p in dual if p not in ("Q", "K", "V")]
        if unsupported:
            print(f"torch_reference: note: dual_projections {unsupported} are not modelled",
                  file=sys.stderr)
        self.dual = [p for p in dual if p in ("Q", "K", "V")]
        per_branch = self.mode == "PER_BRANCH"
        self.own_attention = per_branch and cfg["scale_vectors.hg_attention"]
        ffn_flags = [cfg["scale_vectors." + f] for f in
                     ("hg_ffn", "hg_router", "hg_experts", "hg_shared_experts")]
        # One choice per norm: its branches all own their γ, or none does.
        self.own_ffn = per_branch and any(ffn_flags)
        if per_branch and any(ffn_flags) and not all(ffn_flags):
            print("torch_reference: note: mixed hg_* flags: every branch after the FFN norm "
                  "gets its own γ here", file=sys.stderr)
        self.qk_norm = cfg["model.qk_norm"]

    def norm_gamma(self, owned):
        """Whether the norm applies one γ per token (shared)."""
        return self.mode != "NONE" and not owned

    def normalized(self, proj):
        """DNP's per-head RMSNorm on this projection's output (or a QK-norm)."""
        if self.placement == "DUAL_NORMALIZED":
            return proj in ("Q", "K") or (proj == "V" and self.dnp_v)
        return self.qk_norm and proj in ("Q", "K")

    def output_vector(self, proj):
        return (self.mode != "NONE" and self.placement in ("DUAL", "DUAL_NORMALIZED")
                and proj in self.dual and not self.normalized(proj))


if nn is not None:

    class ScaleVec(nn.Module):
        """A scale vector γ (init 1): stored as is, as β·α (OR), or as
        β·α/‖α‖·√d. `role` is "input" or "output" (the decay rule's)."""

        def __init__(self, shape, reparam, role):
            super().__init__()
            self.reparam, self.role = reparam, role
            if reparam == "PLAIN":
                self.gamma = nn.Parameter(torch.ones(shape))
            else:
                self.alpha = nn.Parameter(torch.ones(shape))
                self.beta = nn.Parameter(torch.ones(tuple(shape[:-1]) + (1,)))

        def forward(self):
            if self.reparam == "PLAIN":
                return self.gamma
            if self.reparam == "MAGNITUDE_DIRECTION":
                return self.beta * self.alpha
            d = self.alpha.shape[-1]
            return self.beta * self.alpha * (math.sqrt(d) / self.alpha.norm(dim=-1, keepdim=True))

    def rms(x, eps, weight=None):
        if weight is not None and weight.dtype != x.dtype:
            weight = weight.to(x.dtype)  # DNP's head norm on bf16 q/k under autocast
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        y = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)
        return y * weight if weight is not None else y

    def normal_(shape, std):
        return nn.Parameter(torch.randn(shape) * std)

    def rope(x, cos, sin):
        """x [B, T, H, D]; rotate the two halves (cos, sin [T, D/2])."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        c = cos[None, :, None, :].to(x.dtype)
        s = sin[None, :, None, :].to(x.dtype)
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    # -- grouped GEMM ---------------------------------------------------------

    GROUPED = {"use": False}  # set by probe_grouped_mm

    def loop_mm(x, w_t, offs):
        """The per-expert loop fallback: x [M, K] rows grouped by `offs`
        (cumulative ends), w_t [E, K, N]. Reads offs on the host."""
        ends = offs.tolist()
        pieces, start = [], 0
        for e, end in enumerate(ends):
            pieces.append(x[start:end] @ w_t[e].to(x.dtype))
            start = end
        if start < x.shape[0]:
            pieces.append(x.new_zeros(x.shape[0] - start, w_t.shape[-1]))
        return torch.cat(pieces)

    def grouped_mm(x, w_t, offs):
        if GROUPED["use"]:
            return torch._grouped_mm(x, w_t, offs=offs)
        return loop_mm(x, w_t, offs)

    def probe_grouped_mm(device, align):
        """Use torch._grouped_mm if it exists here and a small bf16 forward and
        backward with `align`-multiple groups matches the per-expert loop."""
        if device.type != "cuda" or not hasattr(torch, "_grouped_mm"):
            return "absent (per-expert loop)"
        try:
            g = torch.Generator(device=device).manual_seed(0)
            sizes = [2 * align, align, 0, 3 * align]
            m = sum(sizes)
            a = torch.randn(m, 64, device=device, generator=g).bfloat16().requires_grad_()
            b_leaf = torch.randn(4, 32, 64, device=device, generator=g).bfloat16().requires_grad_()
            offs = torch.tensor(sizes, device=device).cumsum(0).to(torch.int32)
            out = torch._grouped_mm(a, b_leaf.transpose(-2, -1), offs=offs)
            out.float().square().sum().backward()
            ref = loop_mm(a.detach().float(), b_leaf.detach().float().transpose(-2, -1), offs)
            err = (out.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
            if not err < 2e-2 or a.grad is None or b_leaf.grad is None:
                return f"mismatch ({err:.3g}): per-expert loop"
            GROUPED["use"] = True
            return "torch._grouped_mm"
        except Exception as e:  # noqa: BLE001 - any failure means: use the loop
            return f"failed ({type(e).__name__}: {str(e)[:120]}): per-expert loop"

    # -- layers -----------------------------------------------------------------

    class Attention(nn.Module):
        def __init__(self, cfg, st, out_std):
            super().__init__()
            d = cfg["model.hidden_size"]
            self.h, self.kv = cfg["model.num_heads"], cfg["model.num_kv_heads"]
            self.hd = d // self.h
            self.eps = cfg["model.norm_eps"]
            self.rows = {"Q": d, "K": self.kv * self.hd, "V": self.kv * self.hd}
            self.w_qkv = normal_((sum(self.rows.values()), d), cfg["model.init_std"])
            self.w_o = normal_((d, d), out_std)
            self.own = st.own_attention
            self.norm_g = ScaleVec((d,), st.reparam, "input") if st.norm_gamma(self.own) else None
            self.g = nn.ModuleDict({p: ScaleVec((d,), st.reparam, "input")
                                    for p in self.rows if self.own})
            self.u = nn.ModuleDict({p: ScaleVec((self.rows[p],), st.reparam, "output")
                                    for p in self.rows if st.output_vector(p)})
            self.normalized = [p for p in self.rows if st.normalized(p)]
            self.head_g = nn.ModuleDict({p: ScaleVec((self.hd,), st.reparam, "output")
                                         for p in self.normalized if st.mode != "NONE"})
            self.folds = self.own or len(self.u) > 0

        def folded(self):
            if not self.folds:
                return {"qkv": self.w_qkv}
            parts = torch.split(self.w_qkv, list(self.rows.values()), dim=0)
            out = []
            for p, w in zip(self.rows, parts):
                if p in self.g:
                    w = w * self.g[p]()[None, :]
                if p in self.u:
                    w = w * self.u[p]()[:, None]
                out.append(w)
            return {"qkv": torch.cat(out, dim=0)}

        def forward(self, x, w, cos, sin):
            b, t, d = x.shape
            n = rms(x, self.eps, self.norm_g() if self.norm_g is not None else None)
            q, k, v = F.linear(n, w["qkv"]).split(list(self.rows.values()), dim=-1)
            q = q.view(b, t, self.h, self.hd)
            k = k.view(b, t, self.kv, self.hd)
            v = v.view(b, t, self.kv, self.hd)
            heads = {"Q": q, "K": k, "V": v}
            for p in self.normalized:
                heads[p] = rms(heads[p], self.eps,
                               self.head_g[p]() if p in self.head_g else None)
            q, k, v = heads["Q"], heads["K"], heads["V"]
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if self.kv != self.h and not SDPA_GQA["native"]:
                k = k.repeat_interleave(self.h // self.kv, dim=1)
                v = v.repeat_interleave(self.h // self.kv, dim=1)
            kwargs = {"enable_gqa": True} if self.kv != self.h and SDPA_GQA["native"] else {}
            o = sdpa(q, k, v, **kwargs)
            return F.linear(o.transpose(1, 2).reshape(b, t, d), self.w_o)

    SDPA_GQA = {"native": False}

    def sdpa(q, k, v, **kwargs):
        """Causal F.scaled_dot_product_attention; the explicit softmax only
        where this torch predates it (1.x: the CPU smoke run)."""
        if hasattr(F, "scaled_dot_product_attention"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        t = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v

    class SwiGlu(nn.Module):
        """gate|up as one [2F, d] weight, down [d, F]; per-branch γ_gate, γ_up
        folded into the gate|up rows' columns when owned."""

        def __init__(self, cfg, st, ffn, out_std, own, role_prefix=""):
            super().__init__()
            d = cfg["model.hidden_size"]
            self.ffn = ffn
            self.w_gu = normal_((2 * ffn, d), cfg["model.init_std"])
            self.w_down = normal_((d, ffn), out_std)
            self.own = own
            self.g = nn.ModuleDict({p: ScaleVec((d,), st.reparam, "input")
                                    for p in ("gate", "up") if own})

        def folded(self):
            if not self.own:
                return self.w_gu
            d = self.w_gu.shape[-1]
            g = torch.stack([self.g["gate"](), self.g["up"]()])  # [2, d]
            return (self.w_gu.view(2, self.ffn, d) * g[:, None, :]).view(2 * self.ffn, d)

        def forward(self, n, w_gu):
            gate, up = F.linear(n, w_gu).chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, self.w_down)

    class DenseFfn(nn.Module):
        def __init__(self, cfg, st, out_std):
            super().__init__()
            d = cfg["model.hidden_size"]
            self.eps = cfg["model.norm_eps"]
            own = st.own_ffn
            self.norm_g = ScaleVec((d,), st.reparam, "input") if st.norm_gamma(own) else None
            self.mlp = SwiGlu(cfg, st, cfg["model.ffn_hidden_size"], out_std, own)
            self.folds = own

        def folded(self):
            return {"gu": self.mlp.folded()}

        def forward(self, x, w):
            n = rms(x, self.eps, self.norm_g() if self.norm_g is not None else None)
            return self.mlp(n, w["gu"]), x.new_zeros((), dtype=torch.float32), None

    class MoeFfn(nn.Module):
        def __init__(self, cfg, st, out_std, align):
            super().__init__()
            d = cfg["model.hidden_size"]
            self.d, self.eps, self.align = d, cfg["model.norm_eps"], align
            self.e, self.k = cfg["moe.num_experts"], cfg["moe.top_k"]
            self.f = cfg["moe.expert_ffn_hidden_size"]
            self.sigmoid = cfg["moe.score_function"] == "SIGMOID"
            self.normalize = cfg["moe.normalize_topk"]
            self.aux_coeff, self.z_coeff = cfg["moe.aux_loss_coeff"], cfg["moe.z_loss_coeff"]
            std = cfg["model.init_std"]
            own = st.own_ffn
            self.own = own
            self.norm_g = ScaleVec((d,), st.reparam, "input") if st.norm_gamma(own) else None
            self.w_router = normal_((self.e, d), std)
            self.w_gu = normal_((self.e, 2 * self.f, d), std)    # gate|up rows per expert
            self.w_down = normal_((self.e, d, self.f), out_std)
            self.g_router = ScaleVec((d,), st.reparam, "input") if own else None
            self.g_experts = nn.ModuleDict({p: ScaleVec((self.e, d), st.reparam, "input")
                                            for p in ("gate", "up") if own})
            self.shared = nn.ModuleList(
                SwiGlu(cfg, st, cfg["moe.shared_expert_ffn_hidden_size"], out_std, own)
                for _ in range(cfg["moe.num_shared_experts"]))
            if cfg["moe.expert_bias"]:
                self.register_buffer("bias", torch.zeros(self.e))
            else:
                self.bias = None
            self.bias_rate = cfg["moe.expert_bias_update_rate"]
            self.folds = own

        def folded(self):
            w = {"router": self.w_router, "gu": self.w_gu}
            if self.own:
                w["router"] = self.w_router * self.g_router()[None, :]
                g = torch.stack([self.g_experts["gate"](), self.g_experts["up"]()], dim=1)
                w["gu"] = (self.w_gu.view(self.e, 2, self.f, self.d)
                           * g[:, :, None, :]).view(self.e, 2 * self.f, self.d)
            for i, s in enumerate(self.shared):
                w[f"shared{i}"] = s.folded()
            return w

        def forward(self, x, w):
            b, t, d = x.shape
            n = rms(x, self.eps, self.norm_g() if self.norm_g is not None else None)
            n2 = n.reshape(b * t, d)
            tokens = n2.shape[0]
            # Router in fp32.
            with torch.autocast(device_type=n2.device.type, enabled=False):
                logits = F.linear(n2.float(), w["router"].float())
            scores = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
            select = scores + self.bias if self.bias is not None else scores
            idx = select.topk(self.k, dim=-1).indices                      # [N, k]
            weights = scores.gather(1, idx)
            if self.normalize:
                weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
            flat_e = idx.reshape(-1)
            counts = torch.zeros(self.e, dtype=torch.int64, device=n2.device).scatter_add_(
                0, flat_e, torch.ones_like(flat_e))
            # Switch aux loss and router z-loss (fp32).
            probs = scores if not self.sigmoid else scores / scores.sum(-1, keepdim=True)
            fractions = counts.to(torch.float32) / (tokens * self.k)
            aux = self.aux_coeff * self.e * (fractions * probs.mean(0)).sum()
            aux = aux + self.z_coeff * torch.logsumexp(logits, dim=-1).square().mean()
            y = self.experts(n2, flat_e, weights.reshape(-1), counts, w["gu"])
            for i, s in enumerate(self.shared):
                y = y + s(n2, w[f"shared{i}"])
            return y.view(b, t, d), aux, counts

        def experts(self, n2, flat_e, slot_weights, counts, w_gu):
            """Sort the N*k (token, expert) slots by expert, pad each expert's
            rows to `align` (static bound), two grouped GEMMs, and sum each
            token's k slots back (no atomics)."""
            slots = flat_e.shape[0]
            order = torch.argsort(flat_e, stable=True)      # sorted position -> slot
            tok = torch.div(order, self.k, rounding_mode="floor")
            cdt = torch.bfloat16 if GROUPED["use"] else n2.dtype
            if self.align > 1:
                a = self.align
                padded = (counts + a - 1) // a * a
                pad_end = padded.cumsum(0)
                start = counts.cumsum(0) - counts
                sorted_e = flat_e[order]
                pos = torch.arange(slots, device=n2.device) - start[sorted_e] + (
                    pad_end - padded)[sorted_e]
                rows = (slots + self.e * (a - 1) + a - 1) // a * a
                x = n2.new_zeros(rows, self.d, dtype=cdt).index_put((pos,), n2[tok].to(cdt))
                offs = pad_end.to(torch.int32)
            else:
                pos = torch.arange(slots, device=n2.device)
                x = n2[tok].to(cdt)
                offs = counts.cumsum(0).to(torch.int32)
            h = grouped_mm(x, w_gu.to(cdt).transpose(-2, -1), offs)   # [rows, 2F]
            gate, up = h.chunk(2, dim=-1)
            y = grouped_mm(F.silu(gate) * up, self.w_down.to(cdt).transpose(-2, -1), offs)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(slots, device=n2.device)
            y_slots = y[pos[inverse]] * slot_weights[:, None].to(y.dtype)  # slot order
            return y_slots.view(-1, self.k, self.d).sum(dim=1)

        @torch.no_grad()
        def update_bias(self, step_counts):
            if self.bias is not None:
                c = step_counts.to(torch.float32)
                self.bias.add_(self.bias_rate * torch.sign(c.mean() - c))

    class Block(nn.Module):
        def __init__(self, cfg, st, layer, align):
            super().__init__()
            out_std = cfg["model.init_std"] / math.sqrt(2 * cfg["model.num_layers"])
            self.attn = Attention(cfg, st, out_std)
            self.ffn = (MoeFfn(cfg, st, out_std, align) if is_moe_layer(cfg, layer)
                        else DenseFfn(cfg, st, out_std))
            self.folds = self.attn.folds or self.ffn.folds

        def folded(self):
            return {"attn": self.attn.folded(), "ffn": self.ffn.folded()}

        def forward(self, x, w, cos, sin):
            x = x + self.attn(x, w["attn"], cos, sin)
            y, aux, counts = self.ffn(x, w["ffn"])
            return x + y, aux, counts

    def head_loss(x, gamma, wte, targets, eps):
        n = rms(x, eps, gamma)
        logits = F.linear(n, wte)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    class Model(nn.Module):
        def __init__(self, cfg, st, align):
            super().__init__()
            d = cfg["model.hidden_size"]
            self.eps = cfg["model.norm_eps"]
            self.wte = normal_((cfg["model.vocab_size"], d), cfg["model.init_std"])
            self.head = None if cfg["model.tied_embeddings"] else normal_(
                (cfg["model.vocab_size"], d), cfg["model.init_std"])
            self.blocks = nn.ModuleList(Block(cfg, st, l, align)
                                        for l in range(cfg["model.num_layers"]))
            self.final_g = ScaleVec((d,), st.reparam, "input") if st.mode != "NONE" else None
            hd = d // cfg["model.num_heads"]
            t = cfg["model.seq_length"]
            inv = 1.0 / (cfg["model.rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
            ang = torch.outer(torch.arange(t).float(), inv)
            self.register_buffer("cos", ang.cos(), persistent=False)
            self.register_buffer("sin", ang.sin(), persistent=False)
            self.folds = any(b.folds for b in self.blocks)
            self.block_fns = list(self.blocks)   # replaced by compiled ones
            self.head_fn = head_loss

        def folded(self):
            return [b.folded() for b in self.blocks]

        def moe_layers(self):
            return [b.ffn for b in self.blocks if isinstance(b.ffn, MoeFfn)]

        def forward(self, tokens, targets, ws):
            x = F.embedding(tokens, self.wte)
            aux = x.new_zeros((), dtype=torch.float32)
            counts = []
            for fn, w in zip(self.block_fns, ws):
                x, a, c = fn(x, w, self.cos, self.sin)
                aux = aux + a
                if c is not None:
                    counts.append(c)
            gamma = self.final_g() if self.final_g is not None else None
            head = self.wte if self.head is None else self.head
            return self.head_fn(x, gamma, head, targets, self.eps) + aux, counts

    def param_groups(model, cfg):
        """AdamW groups by the decay policy: matrices always decay; Input-Norm
        scale vectors under IWD/ALL, Output-Norm ones under ALL/OUTPUT_ONLY."""
        policy = cfg["scale_vectors.decay_policy"]
        decay, no_decay = [], []
        roles = {}
        for m in model.modules():
            if isinstance(m, ScaleVec):
                for p in m.parameters(recurse=False):
                    roles[id(p)] = m.role
        for p in model.parameters():
            role = roles.get(id(p))
            if role is None:
                (decay if p.dim() >= 2 else no_decay).append(p)
            elif (role == "input" and policy in ("IWD", "ALL")) or (
                    role == "output" and policy in ("ALL", "OUTPUT_ONLY")):
                decay.append(p)
            else:
                no_decay.append(p)
        return [{"params": decay, "weight_decay": cfg["optimizer.weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0}]


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
    SDPA_GQA["native"] = (major, minor) >= (2, 5)
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
        model.head_fn = head_loss
    elif how == "block":
        model.block_fns = [torch.compile(b) for b in model.blocks]
        model.head_fn = torch.compile(head_loss)
    else:  # model: one graph over the whole forward
        model.block_fns = list(model.blocks)
        model.head_fn = head_loss
        model.forward = torch.compile(model.forward)


def run_train(cfg, args, device):
    bf16 = cfg["train.precision"] == "BF16"
    setup_torch(device)
    torch.manual_seed(cfg["train.seed"])
    st = Strategy(cfg)
    grouped = probe_grouped_mm(device, args.align) if bf16 else "fp32: per-expert loop"
    align = args.align if GROUPED["use"] else 1
    model = Model(cfg, st, align).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg["optimizer.lr"],
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
        eff = model.folded()
        if model.folds:
            ws = [{part: {k: v.detach().to(fold_dtype).requires_grad_(True)
                          for k, v in d.items()} for part, d in blk.items()} for blk in eff]
        else:
            ws = eff
        step_counts = None
        for m in range(accum):
            batch = data[(i * accum + m) % data.shape[0]]
            with autocast:
                loss, counts = model(batch[:, :-1], batch[:, 1:], ws)
            (loss / accum).backward()
            step_counts = counts if step_counts is None else [
                a + b for a, b in zip(step_counts, counts)]
        if model.folds:  # the fold's backward, once per step
            outs, grads = [], []
            for blk_eff, blk_ws in zip(eff, ws):
                for part in blk_eff:
                    for k, v in blk_eff[part].items():
                        g = blk_ws[part][k].grad
                        if g is not None and v.requires_grad:
                            outs.append(v)
                            grads.append(g.to(v.dtype))
            torch.autograd.backward(outs, grads)
        if cfg["optimizer.grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["optimizer.grad_clip"],
                                           **({"foreach": True} if fused else {}))
        opt.step()
        for layer, c in zip(model.moe_layers(), step_counts or []):
            layer.update_bias(c)
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
    grouped = probe_grouped_mm(device, args.align)
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
    gqa = {"enable_gqa": True} if kv != h and SDPA_GQA["native"] else {}
    if kv != h and not SDPA_GQA["native"]:
        kk = kk.detach().repeat_interleave(h // kv, 1).requires_grad_()
        vv = vv.detach().repeat_interleave(h // kv, 1).requires_grad_()
    fwd_flops = 2.0 * b * h * t * t * hd
    out = sdpa(q, kk, vv, **gqa)
    dout = torch.randn_like(out)
    add("sdpa fwd", f"b{b} h{h} kv{kv} t{t} d{hd}", time_ms(
        lambda: sdpa(q, kk, vv, **gqa)), fwd_flops)
    add("sdpa bwd", f"b{b} h{h} kv{kv} t{t} d{hd}", time_ms(
        lambda: torch.autograd.grad(out, (q, kk, vv), dout, retain_graph=True)),
        2.5 * fwd_flops)

    # Grouped expert GEMMs: N*k rows spread evenly over the experts.
    if e > 0:
        align = args.align if GROUPED["use"] else 1
        per = (n * k // e + align - 1) // align * align
        offs = torch.arange(1, e + 1, device=device, dtype=torch.int32) * per
        m = per * e
        for name, out_f, in_f in (("experts gate_up", 2 * f, d), ("experts down", d, f)):
            x = randn(m, in_f).requires_grad_()
            w_leaf = randn(e, out_f, in_f, std=0.02).requires_grad_()
            w_t = w_leaf.transpose(-2, -1)
            flops = 2.0 * m * out_f * in_f
            shape = f"{m}x{out_f}x{in_f} over {e}"
            add(f"grouped_mm {name} fwd", shape, time_ms(lambda: grouped_mm(x, w_t, offs)), flops)
            y = grouped_mm(x, w_t, offs)
            dy = torch.randn_like(y)
            add(f"grouped_mm {name} bwd", shape, time_ms(
                lambda: torch.autograd.grad(y, (x, w_leaf), dy, retain_graph=True)), 2 * flops)

    # Fused AdamW over the model's parameters (fp32 master weights and state).
    model = Model(cfg, Strategy(cfg), 1).to(device)
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
