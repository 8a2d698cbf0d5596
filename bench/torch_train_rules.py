"""The optimizer rules of bench/torch_train.py, standard library only: the
learning-rate schedule of optim/schedule.cc and the decay rule of
optim/param_groups.cc (Decays), so the PyTorch reference steps with the
trainer's rates and decays exactly the trainer's parameters."""
import math

ROLES = ("linear", "expert_linear", "router", "embedding", "lm_head", "input_norm_scale",
         "output_norm_scale", "bias", "expert_bias")  # core/params.h ParamRole names


def learning_rate(kind, peak, min_lr, warmup, step, total, wsd_decay_fraction=0.2):
    """The rate of 0-based `step`: the curve at t = step + 1 (optim/schedule.h)."""
    t = float(min(step + 1, total))
    warmup = float(max(0, warmup))
    past_warmup = t >= warmup
    if kind == "COSINE":
        if not past_warmup:
            return peak * t / warmup
        span = total - warmup
        progress = 1.0 if span <= 0 else min(max((t - warmup) / span, 0.0), 1.0)
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "WSD":
        decay = float(math.floor(wsd_decay_fraction * total + 0.5))  # std::round (x >= 0)
        start = total - decay
        if decay > 0 and t > start and past_warmup:
            return peak + (min_lr - peak) * (t - start) / decay
        return peak * t / warmup if not past_warmup else peak
    if kind == "CONSTANT":
        return peak * t / warmup if not past_warmup else peak
    raise SystemExit(f"torch_train: schedule.kind={kind!r} is not COSINE, WSD or CONSTANT")


def decays(role, ndim, policy):
    """Whether a trainable parameter of `role` with `ndim` dimensions (as the
    trainer stores it: every scale vector 1-D) gets weight decay."""
    if role not in ROLES:
        raise ValueError(f"unknown parameter role {role!r}")
    if role == "expert_bias":
        return False  # not trained
    if policy == "IWD":
        return role not in ("output_norm_scale", "bias")
    if policy == "NONE_1D":
        return ndim >= 2
    if policy == "ALL":
        return True
    if policy == "OUTPUT_ONLY":
        return ndim >= 2 or role == "output_norm_scale"
    raise SystemExit(f"torch_train: scale_vectors.decay_policy={policy!r} is not IWD, NONE_1D, "
                     "ALL or OUTPUT_ONLY")
