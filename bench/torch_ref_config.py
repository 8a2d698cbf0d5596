"""The config side of bench/torch_reference.py, without PyTorch: a tiny
text-format reader for the preset fields the reference reads (with
configs/scalemoe.proto's defaults and scalemoe's --set overrides), the
Megatron FLOP count of launch/megatron_flops.cc, and the scale-vector
strategy's choices (shared/SCALE_VECTORS.md)."""
import re
import sys

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
    "optimizer.min_lr": 3e-4,
    "optimizer.weight_decay": 0.1,
    "optimizer.beta1": 0.9,
    "optimizer.beta2": 0.95,
    "optimizer.eps": 1e-8,
    "optimizer.grad_clip": 1.0,
    "schedule.kind": "COSINE",
    "schedule.warmup_steps": 20,
    "schedule.wsd_decay_fraction": 0.2,
    "train.seed": 1234,
    "train.train_steps": 200,
    "train.eval_interval": 50,
    "train.eval_batches": 4,
    "train.micro_batch_size": 8,
    "train.global_batch_size": 0,
    "train.device": "CPU",
    "train.precision": "FP32",
    "data.dataset_dir": "datasets/default",
    "data.shuffle_seed": 42,
    "logging.log_interval": 10,
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


def matmul_params(cfg):
    """(active, total) matmul weights as launch/megatron_flops.cc counts them:
    routed experts top_k of num_experts in `active`; tied embeddings once, as
    the head; an untied embedding in `total` only."""
    h = cfg["model.hidden_size"]
    hd = h // cfg["model.num_heads"]
    attention = 2 * h * h + 2 * h * cfg["model.num_kv_heads"] * hd
    active = cfg["model.vocab_size"] * h
    total = active if cfg["model.tied_embeddings"] else 2 * active
    for layer in range(cfg["model.num_layers"]):
        active += attention
        total += attention
        if is_moe_layer(cfg, layer):
            expert = 3 * h * cfg["moe.expert_ffn_hidden_size"]
            common = (h * cfg["moe.num_experts"] + cfg["moe.num_shared_experts"] * 3 * h
                      * cfg["moe.shared_expert_ffn_hidden_size"])
            active += common + cfg["moe.top_k"] * expert
            total += common + cfg["moe.num_experts"] * expert
        else:
            active += 3 * h * cfg["model.ffn_hidden_size"]
            total += 3 * h * cfg["model.ffn_hidden_size"]
    return active, total


def megatron_flops(cfg):
    """(active matmul params incl. the LM head, FLOPs per token): the rule of
    launch/megatron_flops.cc."""
    active, _ = matmul_params(cfg)
    h = cfg["model.hidden_size"]
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
