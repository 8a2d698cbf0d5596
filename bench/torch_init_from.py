"""Loads the trainer's weights into bench/torch_ref_model.py's Model, so that
both implementations start from the same initial weights (issue 15's
ablation check, bench/same_init_compare.sh).

Input: the directory `scalemoe export --unfolded` writes (of the step_0
checkpoint that checkpoint.save_initial=true saves): model.safetensors with
every model tensor under the trainer's global name and shape, scale
vectors unfolded. The map from the trainer's names to the reference's
parameters (layouts: q|k|v rows stacked into w_qkv, gate|up rows into
w_gu, experts stacked on dim 0, per-expert γ's as [E, d] and their β's as
[E, 1]) is written out below, module by module. Every parameter and
expert-bias buffer of the reference must be filled and every trainer tensor
used, each with the right shape; anything else is an error naming the
tensor, so a mapping that silently drops a scale vector cannot pass.
"""
import json
import os
import struct

import torch

import torch_ref_model as M

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path):
    """{name: float32 CPU tensor} of a safetensors file (F32/BF16/F64)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise SystemExit(f"torch_train --init-from: {path} is not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise SystemExit(f"torch_train --init-from: {path}: tensor {name} is "
                             f"{info['dtype']}; export with --dtype fp32")
        begin, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(body[begin:end]), dtype=_DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).float()
    return out


class _Plan:
    """Destination tensor -> how to build it from the trainer's tensors."""

    def __init__(self, source):
        self.source = source
        self.used = set()
        self.items = []  # (torch name, destination, value)
        self.vectors = []  # (ScaleVec, trainer vector name; experts: "...experts.gamma_up")

    def take(self, name):
        if name not in self.source:
            raise SystemExit(f"torch_train --init-from: the trainer's weights lack '{name}' "
                             "(the export is of another model or strategy than --config)")
        self.used.add(name)
        return self.source[name]

    def put(self, torch_name, dest, value):
        if dest is None:
            raise SystemExit(f"torch_train --init-from: the reference has no {torch_name} "
                             "but the trainer's weights need it")
        if tuple(dest.shape) != tuple(value.shape):
            raise SystemExit(f"torch_train --init-from: {torch_name} is {tuple(dest.shape)} "
                             f"in the reference but {tuple(value.shape)} from the trainer")
        self.items.append((torch_name, dest, value))

    def vec(self, torch_name, sv, names):
        """A ScaleVec from one trainer vector (names: one name) or from one
        per expert stacked on dim 0 (names: a list)."""
        many = isinstance(names, list)
        if many:  # the trainer's summary key: the name without the expert index
            self.vectors.append((sv, names[0].replace(".experts.0.", ".experts.")))
        else:
            self.vectors.append((sv, names))
        parts = ["gamma"] if sv.reparam == "PLAIN" else ["beta", "alpha"]
        for part in parts:
            suffix = "" if part == "gamma" else "." + part
            if many:
                value = torch.stack([self.take(n + suffix) for n in names])
            else:
                value = self.take(names + suffix)
            self.put(f"{torch_name}.{part}", getattr(sv, part), value)


def _swiglu(plan, name, mlp, prefix):
    plan.put(f"{name}.w_gu", mlp.w_gu, torch.cat(
        [plan.take(prefix + ".w_gate"), plan.take(prefix + ".w_up")]))
    plan.put(f"{name}.w_down", mlp.w_down, plan.take(prefix + ".w_down"))
    for p in mlp.g:
        plan.vec(f"{name}.g.{p}", mlp.g[p], f"{prefix}.gamma_{p}")


def _attention(plan, name, a, prefix, st):
    plan.put(f"{name}.w_qkv", a.w_qkv, torch.cat(
        [plan.take(f"{prefix}.attn.w_{p}") for p in ("q", "k", "v")]))
    plan.put(f"{name}.w_o", a.w_o, plan.take(f"{prefix}.attn.w_o"))
    if a.norm_g is not None:
        plan.vec(f"{name}.norm_g", a.norm_g, f"{prefix}.attn_norm.scale")
    for p in a.g:
        plan.vec(f"{name}.g.{p}", a.g[p], f"{prefix}.attn.gamma_{p.lower()}")
    for p in a.u:
        plan.vec(f"{name}.u.{p}", a.u[p], f"{prefix}.attn.u_{p.lower()}")
    for p in a.head_g:  # DNP's per-head norm, else a QK-norm
        kind = "dnp_" if st.placement == "DUAL_NORMALIZED" else ""
        suffix = f"{kind}{p.lower()}" if kind else f"{p.lower()}_norm"
        plan.vec(f"{name}.head_g.{p}", a.head_g[p], f"{prefix}.attn.{suffix}.scale")


def _moe(plan, name, f, prefix):
    plan.put(f"{name}.w_router", f.w_router, plan.take(f"{prefix}.moe.router.weight"))
    experts = [f"{prefix}.moe.experts.{e}" for e in range(f.e)]
    plan.put(f"{name}.w_gu", f.w_gu, torch.stack(
        [torch.cat([plan.take(x + ".w_gate"), plan.take(x + ".w_up")]) for x in experts]))
    plan.put(f"{name}.w_down", f.w_down, torch.stack([plan.take(x + ".w_down") for x in experts]))
    if f.g_router is not None:
        plan.vec(f"{name}.g_router", f.g_router, f"{prefix}.moe.router.gamma")
    for p in f.g_experts:
        plan.vec(f"{name}.g_experts.{p}", f.g_experts[p], [f"{x}.gamma_{p}" for x in experts])
    for i, s in enumerate(f.shared):
        _swiglu(plan, f"{name}.shared.{i}", s, f"{prefix}.moe.shared_experts.{i}")
    if f.bias is not None:
        plan.put(f"{name}.bias", f.bias, plan.take(f"{prefix}.moe.router.expert_bias"))


def load_trainer_weights(model, directory, st):
    """Fills `model` (a torch_ref_model.Model of strategy `st`) from
    `directory`/model.safetensors; returns how many trainer tensors were
    loaded. Exits naming the tensor on any missing, extra or mis-shaped one."""
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        raise SystemExit(f"torch_train --init-from: no {path}; write it with "
                         "`scalemoe export --unfolded --checkpoint RUN/checkpoints/step_0 "
                         f"--out {directory}`")
    plan = _map(model, read_safetensors(path), st)
    with torch.no_grad():
        for _, dest, value in plan.items:
            dest.copy_(value.to(dest.dtype))
    model.trainer_vectors = plan.vectors  # for scale_vector_stats
    return len(plan.items)


def scale_vector_stats(model):
    """The trainer's metrics "sv" record (launch/scale_vector_stats.h) of a
    model loaded by load_trainer_weights: per effective vector its rms
    (‖v‖/√d) and, under OR, β; routed experts' vectors summarised over the
    experts (n, mean, min, max, std)."""
    def summary(values):
        t = values.double()
        return {"max": float(t.max()), "mean": float(t.mean()), "min": float(t.min()),
                "std": float(t.std(unbiased=False))}
    out = {}
    with torch.no_grad():
        for sv, name in getattr(model, "trainer_vectors", []):
            v = sv().float()
            rms = v.norm(dim=-1) / v.shape[-1] ** 0.5
            beta = sv.beta.float().reshape(rms.shape) if sv.reparam != "PLAIN" else None
            if v.dim() == 1:
                out[name] = {"rms": float(rms)}
                if beta is not None:
                    out[name]["beta"] = float(beta)
            else:
                out[name] = {"n": v.shape[0], "rms": summary(rms)}
                if beta is not None:
                    out[name]["beta"] = summary(beta)
    return out


def map_trainer_tensors(model, source, st):
    """[(reference name, reference tensor, value)] for every parameter (and
    expert-bias buffer) of `model`, the values assembled from `source`
    ({trainer name: tensor}, e.g. weights or per-parameter gradients)."""
    return _map(model, source, st).items


def _map(model, source, st):
    plan = _Plan(source)
    plan.put("wte", model.wte, plan.take("embedding.weight"))
    if model.head is not None:
        plan.put("head", model.head, plan.take("lm_head.weight"))
    if model.final_g is not None:
        plan.vec("final_g", model.final_g, "final_norm.scale")
    for layer, blk in enumerate(model.blocks):
        prefix, name = f"layers.{layer}", f"blocks.{layer}"
        _attention(plan, f"{name}.attn", blk.attn, prefix, st)
        f = blk.ffn
        if f.norm_g is not None:
            plan.vec(f"{name}.ffn.norm_g", f.norm_g, f"{prefix}.ffn_norm.scale")
        if isinstance(f, M.MoeFfn):
            _moe(plan, f"{name}.ffn", f, prefix)
        else:
            _swiglu(plan, f"{name}.ffn.mlp", f.mlp, f"{prefix}.mlp")
    extra = sorted(set(plan.source) - plan.used)
    if extra:
        raise SystemExit(f"torch_train --init-from: {len(extra)} trainer tensor(s) have no place "
                         f"in the reference: {', '.join(extra[:8])}")
    filled = {id(dest) for _, dest, _ in plan.items}
    missing = [n for n, p in model.named_parameters() if id(p) not in filled]
    if missing:
        raise SystemExit(f"torch_train --init-from: reference parameter(s) not in the trainer's "
                         f"weights: {', '.join(missing[:8])}")
    if len(filled) != len(plan.items):
        raise SystemExit("torch_train --init-from: a reference tensor was filled twice")
    return plan
