#!/usr/bin/python3
"""Writes a deterministic, LLM-shaped BF16 .safetensors file of at least --size bytes from the real
weights of the corpus (../shared/corpus), for the filesystem benchmark.

Shapes follow TinyLlama-1.1B (hidden 2048, MLP 5632, vocab 32000): an embedding, then layers of
four 2048x2048 attention matrices, three 5632x2048 MLP matrices and two norms, until the file
reaches --size. Their contents are the corpus's real tensors, BF16 ones as they are and F16 ones
rounded to BF16, concatenated in a fixed order and repeated as often as needed. Every repetition
after the first flips the lowest mantissa bit of each value with a fixed pseudo-random pattern:
the exponent and sign bytes (what zipnnfs compresses) keep their real statistics, but no two
repetitions are byte-identical, so the store's chunk dedup cannot shrink the file to 70 MB.
"""

import argparse
import glob
import json
import os
import struct
import sys

import numpy as np

VOCAB = 32000


def f16_to_bf16(bits):
    """F16 bit patterns to BF16 bit patterns, rounding to nearest even like torch."""
    return f32_to_bf16(bits.view(np.float16).astype(np.float32).view(np.uint32))


def f32_to_bf16(f32):
    """F32 bit patterns to BF16 bit patterns, rounding to nearest even like torch."""
    nan = np.isnan(f32.view(np.float32))
    rounded = ((f32 + 0x7FFF + ((f32 >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[nan] = 0x7FC0
    return rounded


def load_pool(corpus):
    """Every BF16 and F16 tensor of the corpus as BF16 values, concatenated in a fixed order."""
    parts = []
    files = sorted(glob.glob(os.path.join(corpus, "bf16", "*.safetensors")))
    files += sorted(glob.glob(os.path.join(corpus, "f16", "*.safetensors")))
    for path in files:
        with open(path, "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        data = blob[8 + n :]
        tensors = [(v["data_offsets"], v["dtype"])
                   for k, v in header.items() if k != "__metadata__"]
        for (begin, end), dtype in sorted(tensors):
            if dtype not in ("BF16", "F16") or end - begin < 64:
                continue  # scalars and tiny vectors add nothing but header size
            bits = np.frombuffer(data, dtype="<u2", count=(end - begin) // 2, offset=begin)
            parts.append(bits if dtype == "BF16" else f16_to_bf16(bits))
    if not parts:
        return None
    return np.concatenate(parts)


def synthetic_pool(elements=1 << 22):
    """Gaussian weights whose rows have their own scales, as BF16: the stand-in when no corpus
    is at hand (a clean checkout in CI)."""
    rng = np.random.default_rng(1234)
    rows = rng.lognormal(mean=-4.0, sigma=0.5, size=elements // 1024).astype(np.float32)
    values = rng.standard_normal(elements).astype(np.float32) * np.repeat(rows, 1024)
    return f32_to_bf16(values.view(np.uint32))


def layer_shapes(hidden):
    mlp = hidden * 11 // 4  # TinyLlama: 5632 = 2.75 x 2048
    return [
        ("input_layernorm.weight", [hidden]),
        ("self_attn.q_proj.weight", [hidden, hidden]),
        ("self_attn.k_proj.weight", [hidden, hidden]),
        ("self_attn.v_proj.weight", [hidden, hidden]),
        ("self_attn.o_proj.weight", [hidden, hidden]),
        ("post_attention_layernorm.weight", [hidden]),
        ("mlp.gate_proj.weight", [mlp, hidden]),
        ("mlp.up_proj.weight", [mlp, hidden]),
        ("mlp.down_proj.weight", [hidden, mlp]),
    ]


def layer_bytes(hidden):
    return sum(int(np.prod(shape)) * 2 for _, shape in layer_shapes(hidden))


def tensor_plan(size):
    """(name, shape) in file order until the data reaches size bytes. TinyLlama's dimensions
    (hidden 2048, MLP 5632) from 512 MiB up; smaller files (smoke tests) get narrower layers, at
    least eight of them, and the embedding only when it is at most an eighth of the file."""
    hidden = 2048
    while hidden > 128 and 8 * layer_bytes(hidden) > size:
        hidden //= 2
    plan, total = [], 0
    if VOCAB * hidden * 2 * 8 <= size:
        plan.append(("model.embed_tokens.weight", [VOCAB, hidden]))
        total += VOCAB * hidden * 2
    layer = 0
    while total < size:
        p = f"model.layers.{layer}."
        for name, shape in layer_shapes(hidden):
            plan.append((p + name, shape))
            total += int(np.prod(shape)) * 2
        layer += 1
    return plan


def write_model(corpus, out, size):
    pool = load_pool(corpus)
    source = f"real BF16/F16 tensors of {os.path.basename(corpus)}, repeated"
    if pool is None:
        print(f"make_model: no BF16/F16 tensors under {corpus}; using synthetic weights",
              file=sys.stderr)
        pool = synthetic_pool()
        source = "synthetic Gaussian weights with per-row scales, repeated"
    plan = tensor_plan(size)
    header = {"__metadata__": {"written_by": "tools/fs_bench/make_model.py", "source": source}}
    offset = 0
    for name, shape in plan:
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned, as the safetensors writer does
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        # Stream the pool cyclically into the tensors; repetition r > 0 gets its own bit pattern.
        pos, rep, flips = 0, 0, None
        for _, shape in plan:
            need = int(np.prod(shape))
            while need:
                take = min(need, len(pool) - pos)
                chunk = pool[pos : pos + take]
                if rep:
                    chunk = chunk ^ flips[pos : pos + take]
                f.write(chunk.astype("<u2").tobytes())
                need -= take
                pos += take
                if pos == len(pool):
                    pos, rep = 0, rep + 1
                    rng = np.random.default_rng(rep)
                    flips = rng.integers(0, 2, size=len(pool), dtype=np.uint16)
    os.replace(tmp, out)
    return os.path.getsize(out)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .safetensors path")
    ap.add_argument("--size", type=int, default=1 << 30,
                    help="minimum size in bytes (default 1 GiB)")
    ap.add_argument("--corpus",
                    default=os.path.normpath(os.path.join(here, "../../../shared/corpus")))
    a = ap.parse_args()
    n = write_model(a.corpus, a.out, a.size)
    print(f"{a.out}: {n} bytes")


if __name__ == "__main__":
    main()
