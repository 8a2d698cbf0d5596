#!/usr/bin/env python3
"""Checks a `scalemoe export` directory the way transformers reads it, in numpy.

usage: export_check.py OUT [--tolerance 1e-5]

For the architecture config.json names (llama, qwen3, mixtral, qwen3_moe,
glm4_moe), from config.json's Hugging Face keys alone (scalemoe_export.json
is not read):
1. keys: the checkpoint keys that architecture's transformers implementation
   loads (the Hub layout, per-expert weights, which transformers 5 merges into
   its fused experts on load) must be exactly those of model.safetensors: no
   missing or unexpected key, the right shapes and dtypes; config keys this
   check does not implement (biases, RoPE scaling, sliding windows, other
   activations) are refused rather than ignored;
2. loss: re-implements the architecture's forward as its modeling_*.py
   defines it (RMSNorm, rotate-half RoPE over partial_rotary_factor of each
   head, GQA causal attention, per-head q/k RMSNorm before RoPE, SwiGLU,
   dense layers by mlp_only_layers/decoder_sparse_step or
   first_k_dense_replace, the router: softmax -> top-k -> renormalised
   (Mixtral always, Qwen3-MoE iff norm_topk_prob), GLM-4-MoE's sigmoid with
   selection by score + e_score_correction_bias within n_group/topk_group
   groups, weights without the bias, renormalised iff norm_topk_prob, times
   routed_scaling_factor, plus the shared MLP; the tied or untied head) in
   float64 on the token batch of OUT/scalemoe_reference.json, and compares
   the mean cross-entropy with the trainer's;
3. tokenizer: tokenizer.json, vocab.json/merges.txt and the GPT-2 files
   agree, and the special-token ids match config.json.
Prints one JSON line {"ok", "architecture", "loss", "trainer_loss",
"abs_diff", "tensors"}; exit 1 with the problem on stderr otherwise.
Standard library + numpy only.
"""
import json
import os
import struct
import sys

import numpy as np


def fail(msg):
    print(f"export_check: {msg}", file=sys.stderr)
    sys.exit(1)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = data[8 + n + b:8 + n + end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            fail(f"{name}: unexpected dtype {e['dtype']}")
        out[name] = (e["dtype"], a.reshape(e["shape"]).astype(np.float64))
    return out


# ---- what each architecture is made of (transformers' modeling_*.py) ----

MOE_TYPES = ("mixtral", "qwen3_moe", "glm4_moe")
KNOWN_TYPES = ("llama", "qwen3") + MOE_TYPES


def has_qk_norm(cfg):
    t = cfg["model_type"]
    return t in ("qwen3", "qwen3_moe") or (t == "glm4_moe" and cfg["use_qk_norm"])


def is_moe_layer(cfg, layer):
    t = cfg["model_type"]
    if t == "mixtral":
        return True
    if t == "qwen3_moe":  # Qwen3MoeDecoderLayer
        return (layer not in cfg["mlp_only_layers"] and cfg["num_experts"] > 0
                and (layer + 1) % cfg["decoder_sparse_step"] == 0)
    if t == "glm4_moe":  # Glm4MoeDecoderLayer
        return layer >= cfg["first_k_dense_replace"]
    return False


def num_experts(cfg):
    return {"mixtral": "num_local_experts", "qwen3_moe": "num_experts",
            "glm4_moe": "n_routed_experts"}.get(cfg["model_type"])


def expert_hidden(cfg):
    # Mixtral sizes its experts by intermediate_size, the others by moe_intermediate_size.
    return cfg["intermediate_size"] if cfg["model_type"] == "mixtral" else cfg["moe_intermediate_size"]


def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def rope_params(cfg):
    rp = cfg.get("rope_parameters") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta"))
    default_partial = 0.5 if cfg["model_type"] == "glm4_moe" else 1.0  # Glm4MoeConfig's default
    partial = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", default_partial))
    return theta, partial


def refuse_unimplemented(cfg):
    """Config keys that would change transformers' function, which this check does not model."""
    t = cfg["model_type"]
    if t not in KNOWN_TYPES:
        fail(f"model_type {t!r} is none of {KNOWN_TYPES}")
    if cfg.get("hidden_act", "silu") != "silu":
        fail(f"hidden_act {cfg['hidden_act']!r}: only silu is implemented here")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        fail("attention_bias / mlp_bias true: the export writes no biases")
    rp = cfg.get("rope_parameters") or {}
    if rp.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
        fail("RoPE scaling is not implemented here (rope_type must be default)")
    if t in ("qwen3", "qwen3_moe") and cfg.get("use_sliding_window"):
        fail("use_sliding_window true: not implemented here")
    if t == "mixtral" and cfg.get("sliding_window") is not None:
        fail("Mixtral sliding_window set: not implemented here")
    if t == "mixtral" and cfg.get("router_jitter_noise", 0.0) != 0.0:
        fail("router_jitter_noise must be 0")
    if t == "glm4_moe" and cfg["n_routed_experts"] % cfg["n_group"] != 0:
        fail("n_routed_experts must divide into n_group groups")


def expected_keys(cfg):
    """{key: shape} transformers expects in the checkpoint."""
    c, v, hd = cfg["hidden_size"], cfg["vocab_size"], head_dim(cfg)
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    t = cfg["model_type"]
    keys = {"model.embed_tokens.weight": [v, c], "model.norm.weight": [c]}
    if not cfg.get("tie_word_embeddings", True):
        keys["lm_head.weight"] = [v, c]

    def mlp(prefix, hidden, names=("gate_proj", "up_proj", "down_proj")):
        keys[f"{prefix}{names[0]}.weight"] = [hidden, c]
        keys[f"{prefix}{names[1]}.weight"] = [hidden, c]
        keys[f"{prefix}{names[2]}.weight"] = [c, hidden]

    for l in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{l}."
        keys[h + "input_layernorm.weight"] = [c]
        keys[h + "post_attention_layernorm.weight"] = [c]
        keys[h + "self_attn.q_proj.weight"] = [heads * hd, c]
        keys[h + "self_attn.k_proj.weight"] = [kv * hd, c]
        keys[h + "self_attn.v_proj.weight"] = [kv * hd, c]
        keys[h + "self_attn.o_proj.weight"] = [c, heads * hd]
        if has_qk_norm(cfg):
            keys[h + "self_attn.q_norm.weight"] = [hd]
            keys[h + "self_attn.k_norm.weight"] = [hd]
        if not is_moe_layer(cfg, l):
            mlp(h + "mlp.", cfg["intermediate_size"])
            continue
        e, f = cfg[num_experts(cfg)], expert_hidden(cfg)
        if t == "mixtral":
            keys[h + "block_sparse_moe.gate.weight"] = [e, c]
            for x in range(e):
                mlp(f"{h}block_sparse_moe.experts.{x}.", f, ("w1", "w3", "w2"))
            continue
        keys[h + "mlp.gate.weight"] = [e, c]
        for x in range(e):
            mlp(f"{h}mlp.experts.{x}.", f)
        if t == "glm4_moe":
            keys[h + "mlp.gate.e_score_correction_bias"] = [e]
            mlp(h + "mlp.shared_experts.", cfg["moe_intermediate_size"] * cfg["n_shared_experts"])
    return keys


# ---- the forward, as transformers computes it ----

def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, theta, partial):  # x [T, H, D]; rotate-half over the first D·partial dims
    t, _, d = x.shape
    dim = int(d * partial)
    inv = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    ang = np.arange(t)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rot, keep = x[..., :dim], x[..., dim:]
    half = dim // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, keep], axis=-1)


def swiglu(x, p, prefix, names=("gate_proj", "up_proj", "down_proj")):
    g = x @ p[f"{prefix}{names[0]}.weight"].T
    u = x @ p[f"{prefix}{names[1]}.weight"].T
    return (g / (1 + np.exp(-g)) * u) @ p[f"{prefix}{names[2]}.weight"].T


def top_k(choice, k):
    # torch.topk; ties (measure zero for trained weights) to the lower index.
    return np.argsort(-choice, axis=-1, kind="stable")[..., :k]


def route(cfg, logits, p, h):
    """(indices [N, K], weights [N, K]) of one MoE layer's router."""
    t, k = cfg["model_type"], cfg["num_experts_per_tok"]
    if t in ("mixtral", "qwen3_moe"):
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        idx = top_k(probs, k)
        w = np.take_along_axis(probs, idx, -1)
        if t == "mixtral" or cfg["norm_topk_prob"]:
            w = w / w.sum(-1, keepdims=True)
        return idx, w
    # glm4_moe: Glm4MoeMoE.route_tokens_to_experts
    scores = 1 / (1 + np.exp(-logits))
    choice = scores + p[h + "mlp.gate.e_score_correction_bias"]
    n, e = choice.shape
    groups, keep = cfg["n_group"], cfg["topk_group"]
    grouped = choice.reshape(n, groups, e // groups)
    group_scores = -np.sort(-grouped, axis=-1)[..., :2].sum(-1)
    chosen = top_k(group_scores, keep)
    mask = np.zeros((n, groups), dtype=bool)
    np.put_along_axis(mask, chosen, True, -1)
    choice = np.where(np.repeat(mask, e // groups, axis=-1), choice, 0.0)
    idx = top_k(choice, k)
    w = np.take_along_axis(scores, idx, -1)
    if cfg["norm_topk_prob"]:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    return idx, w * cfg["routed_scaling_factor"]


def moe_ffn(cfg, p, h, x):
    t = cfg["model_type"]
    base = h + ("block_sparse_moe." if t == "mixtral" else "mlp.")
    names = ("w1", "w3", "w2") if t == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    idx, w = route(cfg, x @ p[base + "gate.weight"].T, p, h)
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for e, we in zip(idx[i], w[i]):
            out[i] += we * swiglu(x[i:i + 1], p, f"{base}experts.{e}.", names)[0]
    if t == "glm4_moe":
        out += swiglu(x, p, h + "mlp.shared_experts.")
    return out


def cross_entropy(cfg, p, tokens):
    eps = cfg["rms_norm_eps"]
    theta, partial = rope_params(cfg)
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    head = p["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", True) else p["lm_head.weight"]
    total, count = 0.0, 0
    for seq in tokens:
        inp, tgt = np.array(seq[:-1]), np.array(seq[1:])
        t = len(inp)
        x = p["model.embed_tokens.weight"][inp]
        for l in range(cfg["num_hidden_layers"]):
            h = f"model.layers.{l}."
            n = rms_norm(x, p[h + "input_layernorm.weight"], eps)
            q = (n @ p[h + "self_attn.q_proj.weight"].T).reshape(t, heads, hd)
            k = (n @ p[h + "self_attn.k_proj.weight"].T).reshape(t, kv, hd)
            v = (n @ p[h + "self_attn.v_proj.weight"].T).reshape(t, kv, hd)
            if has_qk_norm(cfg):
                q = rms_norm(q, p[h + "self_attn.q_norm.weight"], eps)
                k = rms_norm(k, p[h + "self_attn.k_norm.weight"], eps)
            q, k = rope(q, theta, partial), rope(k, theta, partial)
            k, v = np.repeat(k, heads // kv, axis=1), np.repeat(v, heads // kv, axis=1)
            s = np.einsum("thd,shd->hts", q, k) * hd ** -0.5
            s = s + np.triu(np.full((t, t), -np.inf), 1)[None]
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            x = x + np.einsum("hts,shd->thd", a, v).reshape(t, heads * hd) @ p[h + "self_attn.o_proj.weight"].T
            n = rms_norm(x, p[h + "post_attention_layernorm.weight"], eps)
            x = x + (moe_ffn(cfg, p, h, n) if is_moe_layer(cfg, l) else swiglu(n, p, h + "mlp."))
        logits = rms_norm(x, p["model.norm.weight"], eps) @ head.T
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
        total += float(np.sum(lse - logits[np.arange(t), tgt]))
        count += t
    return total / count


# ---- tokenizer files ----

def check_tokenizer(out, cfg):
    if not os.path.exists(f"{out}/tokenizer.json"):
        return False
    tok = json.load(open(f"{out}/tokenizer.json", encoding="utf-8"))
    vocab = json.load(open(f"{out}/vocab.json", encoding="utf-8"))
    merges = [m for m in open(f"{out}/merges.txt", encoding="utf-8").read().split("\n")[1:] if m.strip()]
    if tok["model"]["type"] != "BPE" or tok["model"]["vocab"] != vocab:
        fail("tokenizer.json's BPE vocabulary differs from vocab.json")
    if tok["model"]["merges"] != merges:
        fail("tokenizer.json's merges differ from merges.txt")
    if os.path.exists(f"{out}/encoder.json"):
        if json.load(open(f"{out}/encoder.json", encoding="utf-8")) != vocab:
            fail("vocab.json differs from encoder.json")
        gpt2 = [m for m in open(f"{out}/vocab.bpe", encoding="utf-8").read().split("\n")[1:] if m.strip()]
        if gpt2 != merges:
            fail("merges.txt differs from vocab.bpe")
    pre = tok["pre_tokenizer"]
    if pre["type"] != "ByteLevel" or pre["add_prefix_space"] or not pre["use_regex"]:
        fail(f"pre_tokenizer {pre} is not GPT-2's ByteLevel (regex, no prefix space)")
    eot = vocab.get("<|endoftext|>")
    special = [t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>" and t["special"]]
    if special != [eot] or cfg.get("eos_token_id") != eot or cfg.get("bos_token_id") != eot:
        fail(f"<|endoftext|> is {eot} in vocab.json, {special} in tokenizer.json, "
             f"eos/bos {cfg.get('eos_token_id')}/{cfg.get('bos_token_id')} in config.json")
    tc = json.load(open(f"{out}/tokenizer_config.json", encoding="utf-8"))
    for key in ("bos_token", "eos_token"):
        if tc.get(key) != "<|endoftext|>":
            fail(f"tokenizer_config.json {key} is {tc.get(key)!r}")
    if max(vocab.values()) >= cfg["vocab_size"]:
        fail(f"the tokenizer has ids up to {max(vocab.values())}, the model vocab_size {cfg['vocab_size']}")
    return True


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        fail(__doc__)
    out = args[0]
    tolerance = float(args[args.index("--tolerance") + 1]) if "--tolerance" in args else 1e-5
    cfg = json.load(open(f"{out}/config.json"))
    refuse_unimplemented(cfg)
    if cfg["architectures"] != [{"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                                 "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                                 "glm4_moe": "Glm4MoeForCausalLM"}[cfg["model_type"]]]:
        fail(f"architectures {cfg['architectures']} do not match model_type {cfg['model_type']}")
    st = read_safetensors(f"{out}/model.safetensors")
    want = expected_keys(cfg)
    missing = sorted(set(want) - set(st))
    unexpected = sorted(set(st) - set(want))
    if missing or unexpected:
        fail(f"missing keys {missing[:6]} ({len(missing)}), unexpected keys {unexpected[:6]} ({len(unexpected)})")
    dtype = {"float32": "F32", "bfloat16": "BF16"}[cfg.get("dtype", cfg.get("torch_dtype"))]
    for name, shape in want.items():
        got_dtype, arr = st[name]
        if list(arr.shape) != shape:
            fail(f"{name}: shape {list(arr.shape)}, {cfg['model_type']} expects {shape}")
        expect_dtype = "F32" if name.endswith("e_score_correction_bias") else dtype
        if got_dtype != expect_dtype:
            fail(f"{name}: dtype {got_dtype}, expected {expect_dtype}")
    tokenizer = check_tokenizer(out, cfg)
    p = {k: a for k, (_, a) in st.items()}
    ref = json.load(open(f"{out}/scalemoe_reference.json"))
    loss = cross_entropy(cfg, p, ref["tokens"])
    diff = abs(loss - ref["cross_entropy"])
    ok = diff <= tolerance * max(1.0, abs(ref["cross_entropy"]))
    print(json.dumps({"ok": ok, "architecture": cfg["architectures"][0], "loss": loss,
                      "trainer_loss": ref["cross_entropy"], "abs_diff": diff, "tensors": len(st),
                      "tokenizer_checked": tokenizer}))
    if not ok:
        fail(f"loss {loss} differs from the trainer's {ref['cross_entropy']} by {diff} > {tolerance}")


if __name__ == "__main__":
    main()
