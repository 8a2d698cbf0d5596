#!/usr/bin/env python3
"""Checks a `scalemoe export` directory and recomputes a forward loss in numpy.

usage: export_check.py OUT [--tokens N]
Checks: config.json keys, every expected tensor name, shape and dtype, input
norms all ones. Then runs the exported plain model (RMSNorm, RoPE rotate-half,
GQA causal attention with optional per-head q/k norms, SwiGLU, top-k routing
with the config's score function and normalisation) on a fixed token batch
and prints {"ok": true, "loss": ..., "tensors": N} as JSON. Exit 1 with the
problem on stderr otherwise. Standard library + numpy only.
"""
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = data[base + b:base + end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{name}: unexpected dtype {e['dtype']}")
        out[name] = (e["dtype"], a.reshape(e["shape"]).astype(np.float64))
    return out


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, theta):  # x [T, H, D], rotate-half convention
    t, _, d = x.shape
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    half = d // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def swiglu(x, p, pre):
    g = x @ p[pre + "gate_proj.weight"].T
    u = x @ p[pre + "up_proj.weight"].T
    return (g / (1 + np.exp(-g)) * u) @ p[pre + "down_proj.weight"].T


def forward_loss(cfg, p, tokens):
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    total, count = 0.0, 0
    for seq in tokens:
        inp, tgt = seq[:-1], seq[1:]
        t = len(inp)
        x = p["model.embed_tokens.weight"][inp]
        for l in range(cfg["num_hidden_layers"]):
            h = f"model.layers.{l}."
            n = rms_norm(x, p[h + "input_layernorm.weight"], eps)
            q = (n @ p[h + "self_attn.q_proj.weight"].T).reshape(t, nh, hd)
            k = (n @ p[h + "self_attn.k_proj.weight"].T).reshape(t, nkv, hd)
            v = (n @ p[h + "self_attn.v_proj.weight"].T).reshape(t, nkv, hd)
            for name, arr in (("q", q), ("k", k), ("v", v)):
                if h + f"self_attn.{name}_norm.weight" in p:
                    arr[...] = rms_norm(arr, p[h + f"self_attn.{name}_norm.weight"], eps)
            q, k = rope(q, theta), rope(k, theta)
            rep = nh // nkv
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
            s = s + np.triu(np.full((t, t), -np.inf), 1)[None]
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", a, v).reshape(t, nh * hd) @ p[h + "self_attn.o_proj.weight"].T
            if h + "post_attention_output_norm.weight" in p:
                o = rms_norm(o, p[h + "post_attention_output_norm.weight"], eps)
            x = x + o
            n = rms_norm(x, p[h + "post_attention_layernorm.weight"], eps)
            if h + "mlp.gate.weight" in p:
                logits = n @ p[h + "mlp.gate.weight"].T
                if cfg["scoring_func"] == "SIGMOID":
                    scores = 1 / (1 + np.exp(-logits))
                else:
                    scores = np.exp(logits - logits.max(-1, keepdims=True))
                    scores /= scores.sum(-1, keepdims=True)
                top = np.argsort(-scores, axis=-1, kind="stable")[:, :cfg["num_experts_per_tok"]]
                f = np.zeros_like(x)
                for i in range(t):
                    w = scores[i, top[i]]
                    if cfg["norm_topk_prob"]:
                        w = w / w.sum()
                    for e, we in zip(top[i], w):
                        f[i] += we * swiglu(n[i:i + 1], p, h + f"mlp.experts.{e}.")[0]
                for s_ in range(cfg.get("num_shared_experts", 0)):
                    f += swiglu(n, p, h + f"mlp.shared_experts.{s_}.")
            else:
                f = swiglu(n, p, h + "mlp.")
            if h + "post_feedforward_layernorm.weight" in p:
                f = rms_norm(f, p[h + "post_feedforward_layernorm.weight"], eps)
            x = x + f
        logits = rms_norm(x, p["model.norm.weight"], eps) @ p["lm_head.weight"].T
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
        total += float(np.sum(lse - logits[np.arange(t), tgt]))
        count += t
    return total / count


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    out = sys.argv[1]
    cfg = json.load(open(f"{out}/config.json"))
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok",
                "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "scalemoe"):
        if key not in cfg:
            fail(f"config.json lacks '{key}'")
    st = read_safetensors(f"{out}/model.safetensors")
    want_dtype = "F32" if cfg.get("torch_dtype") == "float32" else "BF16"
    c, v, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    expect = {"model.embed_tokens.weight": [v, c], "lm_head.weight": [v, c], "model.norm.weight": [c]}
    for l in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{l}."
        expect[h + "self_attn.q_proj.weight"] = [cfg["num_attention_heads"] * hd, c]
        expect[h + "self_attn.k_proj.weight"] = [cfg["num_key_value_heads"] * hd, c]
        expect[h + "self_attn.v_proj.weight"] = [cfg["num_key_value_heads"] * hd, c]
        expect[h + "self_attn.o_proj.weight"] = [c, cfg["num_attention_heads"] * hd]
        expect[h + "input_layernorm.weight"] = [c]
        expect[h + "post_attention_layernorm.weight"] = [c]
        if h + "mlp.gate.weight" in st:
            expect[h + "mlp.gate.weight"] = [cfg["num_experts"], c]
            f = cfg["moe_intermediate_size"]
            for e in range(cfg["num_experts"]):
                pre = h + f"mlp.experts.{e}."
                expect.update({pre + "gate_proj.weight": [f, c], pre + "up_proj.weight": [f, c],
                               pre + "down_proj.weight": [c, f]})
    for name in cfg["scalemoe"]["extra_tensors"]:
        expect[name] = list(st[name][1].shape) if name in st else None
    for name, shape in expect.items():
        if name not in st:
            fail(f"missing tensor {name}")
        dtype, arr = st[name]
        if shape is not None and list(arr.shape) != shape:
            fail(f"{name}: shape {list(arr.shape)}, expected {shape}")
        if dtype != want_dtype:
            fail(f"{name}: dtype {dtype}, expected {want_dtype}")
        if name.endswith("layernorm.weight") and "post_feedforward" not in name or name == "model.norm.weight":
            if not np.all(arr == 1.0):
                fail(f"{name}: an input norm must be all ones after folding")
    extra = sorted(set(st) - set(expect))
    if extra:
        fail(f"unexpected tensors: {extra[:5]}")
    p = {k: a for k, (_, a) in st.items()}
    rng = np.random.default_rng(1234)
    n_tok = min(int(sys.argv[3]) if len(sys.argv) > 3 else 16, cfg["max_position_embeddings"] + 1)
    tokens = rng.integers(0, v, size=(2, n_tok))
    print(json.dumps({"ok": True, "loss": forward_loss(cfg, p, tokens), "tensors": len(st),
                      "tokens": tokens.tolist()}))


if __name__ == "__main__":
    main()
