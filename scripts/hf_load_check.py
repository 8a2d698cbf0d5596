#!/usr/bin/env python3
"""Loads a `scalemoe export` directory with transformers and checks it is exact.

usage: hf_load_check.py OUT [--tolerance 1e-5] [--scalemoe BUILD/scalemoe]

1. AutoModelForCausalLM.from_pretrained(OUT, output_loading_info=True) in
   float32 (eager attention and experts; TF32 off; on the GPU when there is
   one): the class is config.json's architecture, and every list of the
   loading info (missing, unexpected, mismatched keys, errors) is empty, so
   no weight was left newly initialised; a tied head shares the embedding's
   storage, an untied one does not.
2. Its cross-entropy on the token batch of OUT/scalemoe_reference.json (the
   logits' own, and the model's loss from labels) is within --tolerance
   (absolute) of the trainer's.
3. With --scalemoe (and tokenizer files in OUT): AutoTokenizer.from_pretrained(OUT)
   encodes a varied set of strings (tests/checkpoint/tokenizer_strings.json:
   unicode, whitespace runs, digits, contractions, punctuation) exactly like
   `scalemoe tokenize --tokenizer OUT`,
   adds no token of its own, decodes back to the text, and its eos/bos are
   "<|endoftext|>" with config.json's ids.
Prints one JSON line; exit 1 on a failure, 2 when transformers or torch is
missing.
"""
import json
import os
import subprocess
import sys

try:
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as e:  # the caller decides whether that is a skip
    print(f"hf_load_check: {e}", file=sys.stderr)
    sys.exit(2)

# The strings, and the known differences (reported, not failed), shared with
# scripts/hf_tokenizer_check.js.
STRINGS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "tests", "checkpoint", "tokenizer_strings.json")


def fail(msg):
    print(f"hf_load_check: {msg}", file=sys.stderr)
    sys.exit(1)


def scalemoe_ids(binary, out, text):
    r = subprocess.run([binary, "tokenize", "--tokenizer", out], input=text.encode("utf-8"),
                       capture_output=True, check=True)
    return [int(t) for t in r.stdout.split()]


def load(out, cfg):
    kwargs = {"output_loading_info": True, "attn_implementation": "eager"}
    major = int(transformers.__version__.split(".")[0])
    kwargs["dtype" if major >= 5 else "torch_dtype"] = torch.float32
    if major >= 5 and cfg["model_type"] in ("mixtral", "qwen3_moe", "glm4_moe"):
        kwargs["experts_implementation"] = "eager"  # the reference loop over experts
    return AutoModelForCausalLM.from_pretrained(out, **kwargs)


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        fail(__doc__)
    out = args[0]
    tolerance = float(args[args.index("--tolerance") + 1]) if "--tolerance" in args else 1e-5
    binary = args[args.index("--scalemoe") + 1] if "--scalemoe" in args else None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    cfg = json.load(open(f"{out}/config.json"))
    ref = json.load(open(f"{out}/scalemoe_reference.json"))

    model, info = load(out, cfg)
    if type(model).__name__ != cfg["architectures"][0]:
        fail(f"loaded {type(model).__name__}, config.json says {cfg['architectures'][0]}")
    problems = {k: list(v) for k, v in info.items() if v}
    if problems:
        fail(f"loading info is not empty (weights missing, unexpected or re-initialised): {problems}")
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if (embed.data_ptr() == head.data_ptr()) != cfg["tie_word_embeddings"]:
        fail(f"tie_word_embeddings is {cfg['tie_word_embeddings']} but the loaded head "
             f"{'shares' if embed.data_ptr() == head.data_ptr() else 'does not share'} the embedding")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    tokens = torch.tensor(ref["tokens"], dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(input_ids=tokens[:, :-1]).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()
        label_loss = model(input_ids=tokens, labels=tokens).loss.item()
    want = ref["cross_entropy"]
    result = {"architecture": cfg["architectures"][0], "loss": loss, "label_loss": label_loss,
              "trainer_loss": want, "abs_diff": abs(loss - want), "device": device,
              "transformers": transformers.__version__, "torch": torch.__version__}
    for name, value in (("loss", loss), ("label loss", label_loss)):
        if abs(value - want) > tolerance:
            print(json.dumps(result))
            fail(f"transformers' {name} {value} differs from the trainer's {want} by "
                 f"{abs(value - want)} > {tolerance}")

    if binary is not None:
        tok = AutoTokenizer.from_pretrained(out)
        eot = cfg.get("eos_token_id")
        if tok.eos_token != "<|endoftext|>" or tok.eos_token_id != eot or tok.bos_token_id != cfg.get("bos_token_id"):
            fail(f"tokenizer eos {tok.eos_token!r}/{tok.eos_token_id}, bos {tok.bos_token_id}; "
                 f"config.json eos/bos {eot}/{cfg.get('bos_token_id')}")
        strings = json.load(open(STRINGS_FILE, encoding="utf-8"))
        for text in strings["strings"]:
            ours = scalemoe_ids(binary, out, text)
            theirs = tok(text)["input_ids"]
            plain = tok.encode(text, add_special_tokens=False)
            if not ours == theirs == plain:
                fail(f"{text!r}: scalemoe tokenize {ours}, transformers {theirs} "
                     f"(without special tokens {plain})")
            if tok.decode(ours) != text:
                fail(f"{text!r}: transformers decodes {ours} to {tok.decode(ours)!r}")
        result["tokenizer_strings"] = len(strings["strings"])
        result["tokenizer_known_differences"] = [
            t for t in strings["known_differences"]
            if scalemoe_ids(binary, out, t) != tok.encode(t, add_special_tokens=False)]
        result["tokenizer_class"] = type(tok).__name__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
