"""Memory read bandwidth of this machine and the decode speed it allows: at batch 1, each new
token reads every weight once (for SmolLM2 the tied embedding matrix too, as the output
projection), so tokens/s <= bandwidth / weight bytes. The KV cache and activations are left
out; at 128 to 512 positions they are small next to the weights.

Bandwidth: numpy ORs together the 64-bit words of a 1 GiB array (larger than any cache), best of
`--repeat`, on one thread and split over `--threads` threads (numpy's reductions release the
GIL). Not a float32 sum: numpy's pairwise float sum runs at about 6 GB/s even on data in cache
here, so it would measure the adder; the OR reduction runs at about 30 GB/s in cache. Weight bytes
come from the GGUF's tensor table (`gguf` package): as stored (Q4_1 layers, Q8_0 embedding),
all Q8_0 (34 bytes per 32 weights) and all float32 (what the PyTorch peer computes with).
`--bytes-per-token` adds a row for any other size. Prints a JSON object.

  .venv/bin/python bench/serving/bandwidth.py [--threads 2] [--bytes-per-token N]
"""

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GGUF = os.path.join(ROOT, ".cache", "bases", "SmolLM2-135M-Instruct.Q4_1.gguf")


def read_bandwidth(size_bytes, threads, repeat):
    """Best-of-`repeat` GB/s (10^9 bytes) for reading an array of `size_bytes` once."""
    a = np.full(size_bytes // 8, 1, dtype=np.uint64)  # written, so every page is really mapped
    chunks = np.array_split(a, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            t = time.perf_counter()
            words = list(pool.map(np.bitwise_or.reduce, chunks))
            best = min(best, time.perf_counter() - t)
    assert all(w == 1 for w in words)
    return a.nbytes / best / 1e9


def weight_bytes(path):
    import gguf

    r = gguf.GGUFReader(path)
    stored = sum(int(t.n_bytes) for t in r.tensors)
    n = sum(int(t.n_elements) for t in r.tensors)
    # The norms stay float32 in any real Q8_0 file; counting them as Q8_0 is off by a few KB.
    return {"stored": stored, "q8_0": n * 34 // 32, "f32": n * 4, "parameters": n}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--gguf", default=GGUF)
    p.add_argument("--bytes-per-token", type=int, help="another model size to give a ceiling for")
    a = p.parse_args()
    size = a.size_mb << 20
    bw = {"1": read_bandwidth(size, 1, a.repeat)}
    if a.threads > 1:
        bw[str(a.threads)] = read_bandwidth(size, a.threads, a.repeat)
    best = max(bw.values())
    sizes = weight_bytes(a.gguf)
    models = {"Q4_1 (as stored)": sizes["stored"], "Q8_0": sizes["q8_0"], "f32": sizes["f32"]}
    if a.bytes_per_token:
        models["given"] = a.bytes_per_token
    out = {
        "read_gb_per_s": {k: round(v, 2) for k, v in bw.items()},
        "parameters": sizes["parameters"],
        "ceilings": {k: {"bytes_per_token": b, "tokens_per_s": round(best * 1e9 / b, 1)}
                     for k, b in models.items()},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
