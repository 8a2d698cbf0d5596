#!/usr/bin/env python3
"""End-to-end export test: trains one tiny model of every kind, exports each
and checks the export the way Hugging Face reads it.

usage: hf_export_test.py --scalemoe BUILD/scalemoe --check numpy|transformers|tokenizers
                         [--tokenizers-dir DIR] [--keep DIR]

Every case trains a few steps on a generated corpus (so scale vectors and
expert biases have moved from init), exports with the tokenizer, and expects
its architecture and tied/untied head:
  mixtral_tied            tiny_cpu_baseline (shared gamma, no q/k norms)
  qwen3_moe_untied        tiny_cpu (HG + DNP + OR), untied, normalize_topk false
  qwen3_moe_dense_layers  tiny_cpu with layers 0 and 2 dense (mlp_only_layers)
  glm4_moe_finegrained    gpu_finegrained_64e made tiny: sigmoid routing,
                          expert bias, a shared expert of 2F, first layer
                          dense, DNP q/k norms, tied
  glm4_moe_two_shared     the same with two shared experts, no q/k norms, untied
  llama_untied            dense, shared gamma
  qwen3_tied              dense, DNP
and a model no architecture computes (sandwich norms) must be refused.
--check numpy: scripts/export_check.py on each (each architecture's forward
and key set re-implemented in numpy; what CI runs). --check transformers:
scripts/hf_load_check.py on each (AutoModelForCausalLM / AutoTokenizer
themselves; on the GPU machine). The check's Python is the first of
$SCALEMOE_PYTHON, this interpreter, python3 on PATH and /usr/bin/python3 that
has the modules; with none the test prints why and exits 77 (CTest: skipped).
--check tokenizers: the first case's tokenizer.json under Hugging Face's
tokenizers library itself (npm package, fetched into --tokenizers-dir by
scripts/fetch_hf_tokenizers.sh; needs node and the npm registry, and fails
without them) against `scalemoe tokenize` (scripts/hf_tokenizer_check.js).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = ["model.vocab_size=320", "model.seq_length=16", "model.hidden_size=32", "model.num_heads=4",
        "model.num_kv_heads=2", "model.ffn_hidden_size=48", "moe.num_experts=4", "moe.top_k=2",
        "moe.expert_ffn_hidden_size=16", "train.train_steps=6", "train.micro_batch_size=2",
        "train.global_batch_size=4", "train.eval_interval=0", "train.eval_batches=1",
        "train.device=CPU",
        "train.precision=FP32", "schedule.warmup_steps=1", "optimizer.lr=0.01",
        "logging.log_interval=1", "checkpoint.interval=0", "checkpoint.keep_last=0"]
# 16 experts: the per-expert keys transformers 5 merges include two-digit indices.
FINEGRAINED = ["model.num_layers=3", "moe.num_experts=16", "moe.top_k=4",
               "moe.shared_expert_ffn_hidden_size=32", "moe.expert_bias_update_rate=0.1"]

# name, preset, overrides, architecture, tied
CASES = [
    ("mixtral_tied", "tiny_cpu_baseline", ["model.num_layers=2"], "MixtralForCausalLM", True),
    ("qwen3_moe_untied", "tiny_cpu", ["model.num_layers=2", "model.tied_embeddings=false",
                                      "moe.normalize_topk=false"], "Qwen3MoeForCausalLM", False),
    ("qwen3_moe_dense_layers", "tiny_cpu", ["model.num_layers=4", "moe.first_dense_layers=1",
                                            "moe.moe_layer_frequency=2"], "Qwen3MoeForCausalLM", True),
    ("glm4_moe_finegrained", "gpu_finegrained_64e", FINEGRAINED, "Glm4MoeForCausalLM", True),
    ("glm4_moe_two_shared", "gpu_finegrained_64e",
     FINEGRAINED + ["moe.num_shared_experts=2", "moe.shared_expert_ffn_hidden_size=16",
                    "scale_vectors.placement=INPUT_ONLY", "model.tied_embeddings=false"],
     "Glm4MoeForCausalLM", False),
    ("llama_untied", "tiny_cpu_baseline", ["model.num_layers=2", "moe.num_experts=0",
                                           "model.tied_embeddings=false"], "LlamaForCausalLM", False),
    ("qwen3_tied", "tiny_cpu", ["model.num_layers=2", "moe.num_experts=0"], "Qwen3ForCausalLM", True),
]
REFUSED = ("sandwich_refused", "tiny_cpu", ["model.num_layers=2", "model.sandwich_norm=true"],
           "model.sandwich_norm")

CHECKS = {
    "numpy": ("import numpy", "numpy", "scripts/export_check.py"),
    "transformers": ("import torch, transformers", "torch and transformers", "scripts/hf_load_check.py"),
    "tokenizers": (None, None, "scripts/hf_tokenizer_check.js"),
}


def find_python(probe):
    seen = []
    for py in (os.environ.get("SCALEMOE_PYTHON"), sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not py or py in seen or not os.path.exists(py):
            continue
        seen.append(py)
        if subprocess.run([py, "-c", probe], capture_output=True).returncode == 0:
            return py, seen
    return None, seen


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def make_dataset(binary, work):
    names = ["Emma", "Harriet", "Jane", "Frank", "Anne"]
    places = ["Highbury", "Bath", "London", "Kellynch", "Donwell"]
    with open(f"{work}/corpus.txt", "w") as f:
        for doc in range(80):
            for s in range(12):
                f.write(f"{names[(doc + s) % 5]} went to {places[(doc * 3 + s) % 5]} on day {s}. ")
            f.write("\n\x1e\n")
    r = run([binary, "prepare", "--input", f"{work}/corpus.txt", "--train-tokenizer", "320",
             "--tokenizer", f"{work}/tokenizer", "--out", f"{work}/data", "--val-fraction", "0.1"])
    if r.returncode != 0:
        sys.exit(f"prepare failed:\n{r.stdout}{r.stderr}")


def train_and_export(binary, work, name, preset, overrides):
    """(returncode, output) of the export of a freshly trained `name`."""
    sets = []
    for o in TINY + overrides + [f"data.dataset_dir={work}/data"]:
        sets += ["--set", o]
    r = run([binary, "train", "--config", f"configs/{preset}.textproto", "--quiet",
             "--run-dir", f"{work}/{name}"] + sets, cwd=ROOT)
    if r.returncode != 0:
        return r.returncode, f"train failed:\n{r.stdout}{r.stderr}"
    r = run([binary, "export", "--checkpoint", f"{work}/{name}/checkpoints/step_6", "--out",
             f"{work}/{name}/export", "--tokenizer", f"{work}/tokenizer"])
    return r.returncode, r.stdout + r.stderr


def check_refusal(binary, work, passed, failed):
    name, preset, overrides, field = REFUSED
    code, text = train_and_export(binary, work, name, preset, overrides)
    if code == 1 and "no Hugging Face architecture" in text and field in text and \
            not os.path.exists(f"{work}/{name}/export"):
        print(f"{name}: refused as expected")
        return passed + 1, failed
    return passed, failed + [f"{name}: expected a refusal naming {field}, got exit {code}:\n{text}"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scalemoe", required=True)
    ap.add_argument("--check", choices=sorted(CHECKS), required=True)
    ap.add_argument("--tokenizers-dir", default="build/hf_tokenizers")
    ap.add_argument("--keep", help="work in this directory and keep it")
    a = ap.parse_args()
    probe, modules, script = CHECKS[a.check]
    python, tried = find_python(probe) if probe else (None, [])
    if a.check == "tokenizers":
        node = shutil.which("node")
        fetch = run(["bash", f"{ROOT}/scripts/fetch_hf_tokenizers.sh", a.tokenizers_dir])
        if node is None or fetch.returncode != 0:
            print(f"FAILED: the tokenizers check needs node and npm: {fetch.stdout}{fetch.stderr}")
            return 1
    elif python is None:
        print(f"SKIPPED: no Python with {modules} (tried {', '.join(tried)}; set SCALEMOE_PYTHON); "
              f"the {a.check} check of the exports did not run")
        return SKIP
    binary = os.path.abspath(a.scalemoe)
    work = a.keep or tempfile.mkdtemp(prefix="scalemoe_hf_export_")
    os.makedirs(work, exist_ok=True)
    passed, failed = 0, []
    try:
        make_dataset(binary, work)
        # The tokenizer is the same for every case: the tokenizers check takes one.
        cases = CASES[:1] if a.check == "tokenizers" else CASES
        for i, (name, preset, overrides, arch, tied) in enumerate(cases):
            code, text = train_and_export(binary, work, name, preset, overrides)
            out = f"{work}/{name}/export"
            if code != 0 or f"as {arch} ({'tied' if tied else 'untied'} embeddings)" not in text:
                failed.append(f"{name}: expected an export as {arch}, tied={tied}:\n{text}")
                continue
            cmd = [python, f"{ROOT}/{script}", out]
            if a.check == "tokenizers":
                cmd = [node, f"{ROOT}/{script}", os.path.abspath(a.tokenizers_dir), out, binary]
            if a.check == "transformers" and i == 0:
                cmd += ["--scalemoe", binary]  # the tokenizer is the same for every case
            r = run(cmd)
            print(f"{name}: {r.stdout.strip()}")
            if r.returncode != 0:
                failed.append(f"{name}: {script} failed:\n{r.stdout}{r.stderr}")
            else:
                passed += 1
        if a.check != "tokenizers":
            passed, failed = check_refusal(binary, work, passed, failed)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    for f in failed:
        print(f"FAILED {f}")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
