#!/usr/bin/env python3
"""Fails when code outside the backends touches tensor elements or allocates.

Issue 12's rule (shared/DESIGN.md, "Built for the GPU"): layers, the
optimizer, the parallel layers and the trainer never read or write tensor
elements on the host and never allocate step tensors outside the
ExecContext: math goes through ops (core/ops.h), allocation through
ctx.Empty, device->host reads through ctx.ToHost. Raw access lives in the
backends (core/cpu, core/cuda), the tensor implementation (core/), file I/O
(data/, checkpoint/) and the host communication backends listed in EXEMPT.

ALLOWED holds the counts still to be removed: a file may only go down.
Usage: check_raw_access.py [ROOT]   (exit 1 listing every excess)
"""
import os
import re
import sys

PATTERN = re.compile(
    r"\.data<|->data<|raw_data\(\)|\.At\(|ToVector\(\)|\.Fill\(|CopyFrom\(|\.Clone\(\)"
    r"|Tensor::Empty\(|Tensor::Zeros\(|Tensor::FromBlob\(|Tensor::FromVector\(")
SCANNED = ["model", "moe", "norm", "parallel", "optim", "launch"]
# Host backends and I/O: their job is host memory.
EXEMPT = {
    "parallel/mpi_communicator.cc": "MPI backend: host buffers",
    "parallel/fake_communicator_collectives.cc": "in-process fake backend",
    "parallel/fake_communicator_rendezvous.cc": "in-process fake backend",
    "parallel/local_communicator.cc": "group of one: host copies",
    "parallel/nccl_communicator.cc": "NCCL backend: device buffers and host collectives",
    "parallel/nccl_process_groups.cc": "NCCL bootstrap: unique id and GPU identity over MPI",
    "parallel/communicator.cc": "staging of device tensors through host memory",
    "parallel/broadcast_string.cc": "host collective of a string",
    "launch/export_command.cc": "writes the reference batch of an export",
}
# Host inputs, not device data: the model checks the token ids a caller
# passes in host memory (CheckBatch); the trainer wraps the loader's host
# batches and host-collective values. A file may only go down.
ALLOWED = {
    "model/model.cc": 1,
    "launch/trainer.cc": 3,
}


def count(path):
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            code = line.split("//", 1)[0]
            n += len(PATTERN.findall(code))
    return n


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    bad = []
    for d in SCANNED:
        for name in sorted(os.listdir(os.path.join(root, d))):
            if not name.endswith((".cc", ".h")):
                continue
            rel = f"{d}/{name}"
            if rel in EXEMPT:
                continue
            n = count(os.path.join(root, rel))
            if n > ALLOWED.get(rel, 0):
                bad.append(f"{rel}: {n} raw element accesses or non-context allocations "
                           f"(allowed {ALLOWED.get(rel, 0)})")
    if bad:
        print("raw tensor access outside the backends (move the math into an op in "
              "core/ops.h, allocate with ctx.Empty, read with ctx.ToHost):")
        print("\n".join("  " + b for b in bad))
        return 1
    print(f"raw access check: {len(SCANNED)} folders clean apart from {len(ALLOWED)} "
          f"allow-listed files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
