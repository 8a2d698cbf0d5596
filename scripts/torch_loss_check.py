#!/usr/bin/env python3
"""Recomputes the trainer's loss from a `scalemoe export` with plain PyTorch.

usage: torch_loss_check.py OUT [--tolerance 1e-4]

Loads OUT/model.safetensors and OUT/config.json, runs the exported model as
a plain Llama/Mixtral-style network written here in torch (RMSNorm, RoPE
rotate-half, GQA causal attention with optional per-head q/k/v norms,
SwiGLU experts with top-k routing, optional shared experts and sandwich
norms, final norm, LM head) in float64 on the token batch of
OUT/scalemoe_reference.json, and compares the cross-entropy with the one the
trainer computed on the same batch. Prints JSON; exit 1 on a mismatch.
"""
import json
import struct
import sys

import torch
import torch.nn.functional as F


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    tensors = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = bytearray(data[8 + n + b:8 + n + end])
        if e["dtype"] == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32)
        elif e["dtype"] == "BF16":
            t = torch.frombuffer(raw, dtype=torch.bfloat16)
        else:
            sys.exit(f"{name}: unexpected dtype {e['dtype']}")
        tensors[name] = t.reshape(e["shape"]).to(torch.float64)
    return tensors


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x, theta):  # x [B, H, T, D]
    d, t = x.shape[-1], x.shape[-2]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def swiglu(x, w, prefix):
    gate = F.linear(x, w[prefix + "gate_proj.weight"])
    up = F.linear(x, w[prefix + "up_proj.weight"])
    return F.linear(F.silu(gate) * up, w[prefix + "down_proj.weight"])


def moe(x, w, cfg, prefix):  # x [N, C]
    logits = F.linear(x, w[prefix + "gate.weight"])
    if cfg["scoring_func"] == "SIGMOID":
        scores = torch.sigmoid(logits)
    else:
        scores = torch.softmax(logits, -1)
    k = cfg["num_experts_per_tok"]
    # Ties go to the lower expert index (the trainer's rule): stable sort.
    top = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    weights = scores.gather(-1, top)
    if cfg["norm_topk_prob"]:
        weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(cfg["num_experts"]):
        rows, slot = (top == e).nonzero(as_tuple=True)
        if rows.numel():
            out[rows] += weights[rows, slot, None] * swiglu(x[rows], w, f"{prefix}experts.{e}.")
    for s in range(cfg.get("num_shared_experts", 0)):
        out += swiglu(x, w, f"{prefix}shared_experts.{s}.")
    return out


def cross_entropy(cfg, w, tokens):
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    b, t = inputs.shape
    x = w["model.embed_tokens.weight"][inputs]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        n = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = F.linear(n, w[p + "self_attn.q_proj.weight"]).view(b, t, heads, hd)
        k = F.linear(n, w[p + "self_attn.k_proj.weight"]).view(b, t, kv, hd)
        v = F.linear(n, w[p + "self_attn.v_proj.weight"]).view(b, t, kv, hd)
        if p + "self_attn.q_norm.weight" in w:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
        if p + "self_attn.k_norm.weight" in w:
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        if p + "self_attn.v_norm.weight" in w:
            v = rms_norm(v, w[p + "self_attn.v_norm.weight"], eps)
        q, k = rotate(q.transpose(1, 2), theta), rotate(k.transpose(1, 2), theta)
        v = v.transpose(1, 2)
        k = k.repeat_interleave(heads // kv, dim=1)
        v = v.repeat_interleave(heads // kv, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o = F.linear(attn.transpose(1, 2).reshape(b, t, heads * hd), w[p + "self_attn.o_proj.weight"])
        if p + "post_attention_output_norm.weight" in w:
            o = rms_norm(o, w[p + "post_attention_output_norm.weight"], eps)
        x = x + o
        n = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        if p + "mlp.gate.weight" in w:
            f = moe(n.reshape(b * t, -1), w, cfg, p + "mlp.").view(b, t, -1)
        else:
            f = swiglu(n, w, p + "mlp.")
        if p + "post_feedforward_layernorm.weight" in w:
            f = rms_norm(f, w[p + "post_feedforward_layernorm.weight"], eps)
        x = x + f
    logits = F.linear(rms_norm(x, w["model.norm.weight"], eps), w["lm_head.weight"])
    return F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(-1)).item()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    tolerance = float(sys.argv[sys.argv.index("--tolerance") + 1]) if "--tolerance" in sys.argv else 1e-4
    cfg = json.load(open(f"{out}/config.json"))
    reference = json.load(open(f"{out}/scalemoe_reference.json"))
    weights = load_safetensors(f"{out}/model.safetensors")
    tokens = torch.tensor(reference["tokens"], dtype=torch.long)
    loss = cross_entropy(cfg, weights, tokens)
    want = reference["cross_entropy"]
    ok = abs(loss - want) <= tolerance * max(1.0, abs(want))
    print(json.dumps({"ok": ok, "torch_loss": loss, "trainer_loss": want,
                      "abs_diff": abs(loss - want), "torch": torch.__version__}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
