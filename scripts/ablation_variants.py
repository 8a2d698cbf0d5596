#!/usr/bin/python3
"""Prints the scale-vector ablation's variants (configs/ablation/variants.txt).

usage: scripts/ablation_variants.py                 # every variant and its overrides
       scripts/ablation_variants.py NAME            # its --set flags, one line (for $(...))
       scripts/ablation_variants.py --json          # {"name": ["a.b=v", ...], ...}
       scripts/ablation_variants.py --commands CONFIG [--seeds 1234,1235] [--variants a,b]
           # one `build/scalemoe train` command per variant and seed, each into
           # runs/ablation/<config>-<variant>-s<seed> (--resume continues one)
       scripts/ablation_variants.py --sweep-spec CONFIG [--seeds ...] [--variants ...]
           # a sweep spec (variants x seeds) for `scalemoe sweep --spec`, which
           # skips finished runs, resumes an interrupted one and writes results.csv

variants.txt is the one definition (its comments map each paper name to the
config fields); this script only reads it. Standard library only.
"""
import json
import os
import shlex
import sys

VARIANTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "ablation",
                        "variants.txt")


def read_variants(path=VARIANTS):
    """{name: [override, ...]} in file order; exits with file:line on a bad line."""
    variants = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            name, overrides = words[0], words[1:]
            if name in variants:
                sys.exit(f"{path}:{number}: variant '{name}' is defined twice")
            bad = [o for o in overrides if "=" not in o]
            if not overrides or bad:
                sys.exit(f"{path}:{number}: '{name}' needs overrides of the form a.b=value"
                         f"{' (got ' + ' '.join(bad) + ')' if bad else ''}")
            variants[name] = overrides
    return variants


def set_flags(overrides):
    return " ".join(f"--set {shlex.quote(o)}" for o in overrides)


def sweep_spec(config, stem, variants, seeds):
    """A configs/sweep.proto text: the variants as one strategy axis of
    bundles (no_gamma labelled no-gamma), crossed with a seed axis, on the
    base config as it is."""
    quote = lambda text: json.dumps(text)  # a textproto string literal
    lines = [f"# The scale-vector ablation on {config}: every variant of",
             "# configs/ablation/variants.txt x train.seed (scripts/ablation_variants.py).",
             f"name: {quote('ablation_' + stem)}", f"base_config: {quote(config)}",
             "axes {", '  name: "strategy"']
    for name, overrides in variants.items():
        # Point names join axes with '_': a bundle's label spells it '-'.
        lines += ["  bundles {", f"    name: {quote(name.replace('_', '-'))}",
                  f"    set: [{', '.join(quote(o) for o in overrides)}]", "  }"]
    lines += ["}", "axes {", '  field: "train.seed"', '  name: "seed"',
              f"  values: [{', '.join(quote(s) for s in seeds)}]", "}",
              "launcher {", "  kind: LOCAL", "  ranks: 1", "}", "peak_tflops_per_rank: 989"]
    return "\n".join(lines)


def main(argv):
    variants = read_variants()
    if not argv:
        for name, overrides in variants.items():
            print(f"{name:10s} {' '.join(overrides)}")
        return 0
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--json":
        print(json.dumps(variants, indent=1))
        return 0
    if argv[0] in ("--commands", "--sweep-spec"):
        if len(argv) < 2:
            sys.exit(f"{argv[0]} needs a base config, e.g. configs/ablation/moe_adamw.textproto")
        config, rest = argv[1], argv[2:]
        seeds, names = ["1234"], list(variants)
        while rest:
            if len(rest) < 2 or rest[0] not in ("--seeds", "--variants"):
                sys.exit(f"unknown or incomplete option {' '.join(rest)}; see --help")
            values = rest[1].split(",")
            if rest[0] == "--seeds":
                seeds = values
            else:
                unknown = [v for v in values if v not in variants]
                if unknown:
                    sys.exit(f"unknown variant(s) {', '.join(unknown)}; known: "
                             f"{', '.join(variants)}")
                names = values
            rest = rest[2:]
        stem = os.path.splitext(os.path.basename(config))[0]
        if argv[0] == "--sweep-spec":
            print(sweep_spec(config, stem, {n: variants[n] for n in names}, seeds))
            return 0
        for name in names:
            for seed in seeds:
                run_dir = f"runs/ablation/{stem}-{name}-s{seed}"
                print(f"build/scalemoe train --config {shlex.quote(config)} "
                      f"{set_flags(variants[name])} --set train.seed={seed} "
                      f"--set name={stem}-{name}-s{seed} --run-dir {run_dir}")
        return 0
    if argv[0] not in variants or len(argv) > 1:
        sys.exit(f"unknown variant or usage '{' '.join(argv)}'; known variants: "
                 f"{', '.join(variants)} (see --help)")
    print(set_flags(variants[argv[0]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
