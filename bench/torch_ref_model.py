"""The model of bench/torch_reference.py in PyTorch: RMSNorm, RoPE, SDPA
attention (GQA), SwiGLU, MoE with a top-k router and grouped expert GEMMs,
and the scale vectors of torch_ref_config.Strategy (folded weights are
formed by each module's folded(); see torch_reference.py's docstring)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_ref_config import is_moe_layer
from torch_train_rules import decays


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
        ce, aux, counts = self.losses(tokens, targets, ws)
        return ce + aux, counts

    def losses(self, tokens, targets, ws):
        """(cross-entropy, aux + z losses of the MoE layers, expert counts)."""
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
        return self.head_fn(x, gamma, head, targets, self.eps), aux, counts

def fold_leaves(model, fold_dtype):
    """The step's folded weights and the detached leaves the micro-batches use."""
    eff = model.folded()
    if not model.folds:
        return eff, eff
    ws = [{part: {k: v.detach().to(fold_dtype).requires_grad_(True) for k, v in d.items()}
           for part, d in blk.items()} for blk in eff]
    return eff, ws


def fold_backward(eff, ws):
    """The fold's backward, once per step: the leaves' accumulated gradients
    flow back through the fold into W, γ and u."""
    outs, grads = [], []
    for blk_eff, blk_ws in zip(eff, ws):
        for part in blk_eff:
            for k, v in blk_eff[part].items():
                g = blk_ws[part][k].grad
                if g is not None and v.requires_grad:
                    outs.append(v)
                    grads.append(g.to(v.dtype))
    torch.autograd.backward(outs, grads)

def finish_step(model, opt, params, grad_clip, fused, eff, ws, step_counts):
    """A step after its micro-batches' backward: the fold's backward (once
    per step), global-norm clipping, the optimizer step, and the expert-bias
    update from the step's token counts. Returns the gradient norm before
    clipping (a 0-d tensor), None without clipping."""
    if model.folds:
        fold_backward(eff, ws)
    norm = None  # the global gradient norm before clipping (the trainer's grad_norm)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip,
                                              **({"foreach": True} if fused else {}))
    opt.step()
    for layer, c in zip(model.moe_layers(), step_counts or []):
        layer.update_bias(c)
    return norm

def param_groups(model, cfg):
    """AdamW groups by the decay policy, with optim/param_groups.cc's rule
    (torch_train_rules.decays): scale vectors are 1-D there (an expert's γ,
    one [E, d] tensor here, is E vectors of [d]; its β [E, 1] is E scalars),
    so they are ranked as 1-D; every other parameter is a weight matrix."""
    policy = cfg["scale_vectors.decay_policy"]
    decay, no_decay = [], []
    roles = {}
    for m in model.modules():
        if isinstance(m, ScaleVec):
            for p in m.parameters(recurse=False):
                roles[id(p)] = m.role + "_norm_scale"
    for p in model.parameters():
        role = roles.get(id(p), "linear")
        (decay if decays(role, 1 if id(p) in roles else p.dim(), policy) else no_decay).append(p)
    return [{"params": decay, "weight_decay": cfg["optimizer.weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0}]
