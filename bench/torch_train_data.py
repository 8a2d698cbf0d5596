"""The token windows of bench/torch_train.py, standard library only: a
prepared dataset (data/prepare.h's manifest.json and data/shard_format.h's
shards) read and drawn exactly as data/token_loader.cc draws them, so the
PyTorch reference trains and evaluates on the trainer's windows.

Windows: a split's shards form one stream of N tokens; window w is tokens
[w*T, w*T + T + 1), W = (N - 1) // T windows. Epoch e serves them in a
Fisher-Yates permutation driven by Philox4x32-10 (core/philox.h) under
(data.shuffle_seed, FNV-1a("scalemoe/token_loader/<split>") ^ e * stride).
Global micro-batch i is the next B windows of that order (one rank:
dp_size 1), epochs of W // B micro-batches; training step s, micro-step m
reads micro-batch s * A + m (A = global / micro batch), evaluation reads
val micro-batches 0 .. eval_batches * A - 1, every time.
"""
import array
import json
import math
import os
import struct
import sys

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
EPOCH_STRIDE = 0x9E3779B97F4A7C15  # data/token_loader.cc kEpochStride
SHARD_MAGIC = b"SMTOKSHD"
SHARD_HEADER = struct.Struct("<8sIIQQI28s")  # data/shard_format.h, 64 bytes
DTYPES = {1: ("H", 2), 2: ("I", 4)}  # uint16, uint32


# -- core/philox.h ----------------------------------------------------------

def hash_name(name):
    """64-bit FNV-1a of `name` (core/philox.h HashName)."""
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def philox_words(seed, stream, index):
    """Philox4x32-10 on counter (index, stream) with key seed."""
    c0, c1 = index & MASK32, (index >> 32) & MASK32
    c2, c3 = stream & MASK32, (stream >> 32) & MASK32
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32)
        k0 = (k0 + 0x9E3779B9) & MASK32
        k1 = (k1 + 0xBB67AE85) & MASK32
    return c0, c1, c2, c3


def philox_uniform(seed, stream, index):
    """Uniform in (0, 1) from 53 bits (core/philox.h PhiloxUniform)."""
    hi, lo, _, _ = philox_words(seed, stream, index)
    bits = ((hi << 21) ^ (lo >> 11)) & ((1 << 53) - 1)
    return (bits + 0.5) * (1.0 / 9007199254740992.0)


# -- shards and manifest ----------------------------------------------------

def _crc32c_table():
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    crc = MASK32
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ MASK32


def read_shard(path, vocab_size=0, check_crc=False):
    """A shard's tokens as an array ('H' or 'I'); exits naming the file and
    the fix on a bad header, size or (check_crc) checksum."""
    with open(path, "rb") as f:
        raw = f.read()
    fix = "; re-run `scalemoe prepare` to rebuild the dataset"
    if len(raw) < SHARD_HEADER.size:
        sys.exit(f"token shard {path}: {len(raw)} bytes, shorter than the 64-byte header{fix}")
    magic, version, dtype, count, vocab, crc, _ = SHARD_HEADER.unpack_from(raw)
    if magic != SHARD_MAGIC or version != 1 or dtype not in DTYPES:
        sys.exit(f"token shard {path}: not a version-1 scalemoe shard (magic {magic!r}, "
                 f"version {version}, dtype {dtype}){fix}")
    if vocab_size and vocab != vocab_size:
        sys.exit(f"token shard {path}: vocab size {vocab}, the manifest says {vocab_size}{fix}")
    code, width = DTYPES[dtype]
    payload = raw[SHARD_HEADER.size:]
    if len(payload) != count * width:
        sys.exit(f"token shard {path}: header says {count} tokens, payload holds "
                 f"{len(payload)} bytes{fix}")
    if check_crc and crc32c(payload) != crc:
        sys.exit(f"token shard {path}: payload checksum mismatch{fix}")
    tokens = array.array(code)
    tokens.frombytes(payload)
    if sys.byteorder != "little":
        tokens.byteswap()
    return tokens


def write_shard(path, tokens, vocab_size):
    """A shard in our format (for the smoke run's generated dataset)."""
    code, width = ("H", 2) if vocab_size <= 65536 else ("I", 4)
    payload = array.array(code, tokens).tobytes()
    header = SHARD_HEADER.pack(SHARD_MAGIC, 1, 1 if width == 2 else 2, len(tokens), vocab_size,
                               crc32c(payload), bytes(28))
    with open(path, "wb") as f:
        f.write(header + payload)
    return {"file": os.path.basename(path), "tokens": len(tokens), "crc32c": crc32c(payload)}


def write_dataset(directory, splits, vocab_size, eot_id=0):
    """A dataset directory: manifest.json and one shard per list of each
    split ({"train": [[ids...], ...], "val": [...]})."""
    os.makedirs(directory, exist_ok=True)
    manifest = {"version": 1, "vocab_size": vocab_size, "eot_id": eot_id, "tokenizer_dir": "",
                "source": "generated", "seed": 0, "val_fraction": 0.0, "splits": {}}
    for split, shards in splits.items():
        entries = [write_shard(os.path.join(directory, f"{split}_{i:06d}.bin"), s, vocab_size)
                   for i, s in enumerate(shards)]
        manifest["splits"][split] = {"documents": len(shards), "shards": entries,
                                     "tokens": sum(e["tokens"] for e in entries)}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


class Split:
    """One split of a prepared dataset: its token stream and window order."""

    def __init__(self, dataset_dir, split, seq_length, micro_batch, seed):
        path = os.path.join(dataset_dir, "manifest.json")
        if not os.path.exists(path):
            sys.exit(f"dataset manifest {path} not found; set data.dataset_dir to a dataset "
                     "written by `scalemoe prepare`")
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("version") != 1 or split not in manifest.get("splits", {}):
            sys.exit(f"dataset manifest {path}: not a version-1 manifest with split '{split}'")
        self.vocab_size = manifest["vocab_size"]
        self.stream = array.array("I")
        for entry in manifest["splits"][split]["shards"]:
            tokens = read_shard(os.path.join(dataset_dir, entry["file"]), self.vocab_size)
            if len(tokens) != entry["tokens"]:
                sys.exit(f"token shard {entry['file']}: {len(tokens)} tokens, the manifest "
                         f"lists {entry['tokens']}; re-run `scalemoe prepare`")
            self.stream.extend(tokens if tokens.typecode == "I" else array.array("I", tokens))
        self.t, self.b, self.seed = seq_length, micro_batch, seed
        self.windows = (len(self.stream) - 1) // seq_length if self.stream else 0
        if self.windows < micro_batch:
            sys.exit(f"split '{split}' of {dataset_dir} has {self.windows} windows of "
                     f"seq_length {seq_length} + 1, fewer than micro_batch_size {micro_batch}")
        self.key = hash_name(f"scalemoe/token_loader/{split}")
        self.per_epoch = self.windows // micro_batch
        self._epoch, self._order = -1, None

    def permutation(self, epoch):
        if epoch != self._epoch:
            stream = self.key ^ ((epoch * EPOCH_STRIDE) & MASK64)
            order = list(range(self.windows))
            for i in range(self.windows - 1, 0, -1):
                u = philox_uniform(self.seed, stream, i)
                j = min(i, int(u * (i + 1)))
                order[i], order[j] = order[j], order[i]
            self._epoch, self._order = epoch, order
        return self._order

    def window_ids(self, index):
        """The windows of global micro-batch `index` (TokenLoader::At)."""
        epoch, k = divmod(index, self.per_epoch)
        start = k * self.b
        return self.permutation(epoch)[start:start + self.b]

    def batch(self, index):
        """[B][T + 1] token lists of micro-batch `index` (inputs = [:-1],
        targets = [1:])."""
        return [self.stream[w * self.t:w * self.t + self.t + 1].tolist()
                for w in self.window_ids(index)]


def unigram_val_loss(train, val, eval_micro_batches):
    """launch/trainer.cc UnigramLoss: add-one unigram frequencies of the
    targets of the first ~2048 train windows, scored on the eval windows."""
    count_batches = min((2048 + train.b - 1) // train.b, train.per_epoch)
    counts = [0.0] * max(train.vocab_size, val.vocab_size)
    for i in range(count_batches):
        for row in train.batch(i):
            for t in row[1:]:
                counts[t] += 1
    total = 0.0
    for i in range(len(counts)):
        counts[i] += 1.0
        total += counts[i]
    loss, n = 0.0, 0
    for i in range(eval_micro_batches):
        for row in val.batch(i):
            for t in row[1:]:
                loss -= math.log(counts[t] / total)
                n += 1
    return loss / n
