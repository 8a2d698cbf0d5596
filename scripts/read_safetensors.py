#!/usr/bin/env python3
"""Independent safetensors reader (standard library + numpy only).

Usage: read_safetensors.py FILE
Prints JSON: {"metadata": {...}, "tensors": [{"name", "dtype", "shape",
"sum", "first"}]} with tensors sorted by name. "sum" is the float64 sum of
the values (an exact Python int for integer dtypes); BF16 is widened to F32
by shifting its bits, so nothing here shares code with the C++ reader.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "BF16": "<u2"}


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{path}: header length {header_len} exceeds the file")
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    body = memoryview(data)[8 + header_len:]
    metadata = header.pop("__metadata__", {})
    tensors = []
    for name in sorted(header):
        info = header[name]
        begin, end = info["data_offsets"]
        shape = info["shape"]
        dtype = info["dtype"]
        values = np.frombuffer(body[begin:end], dtype=DTYPES[dtype])
        if dtype == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        values = values.reshape(shape)
        if dtype in ("I32", "I64"):
            total = int(values.astype(np.int64).sum(dtype=np.int64))
            first = int(values.flat[0]) if values.size else None
        else:
            total = float(values.astype(np.float64).sum())
            first = float(values.flat[0]) if values.size else None
        tensors.append({"name": name, "dtype": dtype, "shape": shape, "sum": total, "first": first})
    return {"metadata": metadata, "tensors": tensors}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: read_safetensors.py FILE")
    print(json.dumps(read(sys.argv[1])))


if __name__ == "__main__":
    main()
