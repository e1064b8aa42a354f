#!/usr/bin/env python3
"""Span attribution: our index against the infini-gram engine (PyPI `infini-gram`) on the same
token ids, byte-level over the Python standard library's .py files (about 128 MB), in one run.

For each corpus size: index build time and peak memory, index bytes per token, count latency
p50/p99 over 10,000 random 3- to 40-grams, and trace latency for 256- and 1,024-token outputs.
Ours as library calls (engine/benches/attribution.rs); infini-gram through its Python engine,
which is how it is called. Sizes past the real corpus are real text scaled up synthetically
(each copy with its own random marker every few hundred bytes, so copies are not identical).

    .venv/bin/python bench/attribution/run.py [--sizes 10,128] [--ours-only-sizes 512,1024]
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "tributary")
WORK = os.environ.get("BENCH_DIR", "/tmp/tributary-bench/attribution")


def stdlib_texts():
    root = sysconfig.get_paths()["stdlib"]
    texts = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(d, name), "rb") as f:
                    raw = f.read()
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if raw:
                    texts.append(raw)
    return texts


def corpus(texts, megabytes):
    """`megabytes` MB of documents: the real ones, then marked copies."""
    want = megabytes * 1_000_000
    out, total, copy = [], 0, 0
    rng = random.Random(megabytes)
    while total < want:
        for t in texts:
            if copy:
                t = re.sub(rb"\n", lambda m: b"\n" if rng.random() > 0.01 else b" #%d\n" % rng.randrange(1 << 30), t)
            out.append(t)
            total += len(t)
            if total >= want:
                break
        copy += 1
    return out


def timed(cmd, **kw):
    """Wall seconds and peak RSS (MB) of a command, by GNU time."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {r.stderr[-2000:]}")
    peak_kb = int(r.stderr.strip().splitlines()[-1])
    return wall, peak_kb / 1024, r.stdout


def queries_and_outputs(stream, texts, n=10_000):
    rng = random.Random(1)
    queries = []
    while len(queries) < n:
        k = rng.randint(3, 40)
        s = rng.randrange(0, len(stream) - k)
        q = stream[s:s + k]
        if b"\xff" not in q:
            queries.append(list(q))
    outputs = []
    for length in (256, 1024):
        pieces = []
        while sum(len(p) for p in pieces) < length:
            doc = rng.choice(texts)
            s = rng.randrange(0, max(1, len(doc) - 80))
            pieces.append(doc[s:s + rng.randint(10, 80)])
            pieces.append(b" zq%dx " % rng.randint(0, 10**6))
        outputs.append(list(b"".join(pieces)[:length]))
    return queries, outputs


def through_rest(work, index_dir, hash_, queries, outputs, min_len, max_count):
    """Count and trace latency through `tributary serve` on loopback, one kept-alive connection."""
    import http.client
    data = os.path.join(work, "server")
    os.makedirs(os.path.join(data, "indexes"))
    os.rename(index_dir, os.path.join(data, "indexes", hash_))
    proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline().strip()
        host, port = line.rsplit("/", 1)[-1].split(":")
        with open(os.path.join(data, "admin-token")) as f:
            token = f.read().strip()
        conn = http.client.HTTPConnection(host, int(port))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def post(path, body):
            conn.request("POST", path, json.dumps(body), headers)
            r = conn.getresponse()
            payload = r.read()
            assert r.status in (200, 201), (r.status, payload[:500])
            return payload

        for q in queries[:200]:
            post(f"/v1/indexes/{hash_}/query", {"ids": q, "limit": 0, "next": False})
        times = []
        for q in queries:
            t = time.perf_counter()
            post(f"/v1/indexes/{hash_}/query", {"ids": q, "limit": 0, "next": False})
            times.append(time.perf_counter() - t)
        times.sort()
        traces = []
        for o in outputs:
            runs = []
            for i in range(6):
                t = time.perf_counter()
                post(f"/v1/indexes/{hash_}/attribute", {"request_id": f"bench-{len(o)}-{i}", "ids": o,
                                                        "min_len": min_len, "max_count": max_count})
                runs.append(time.perf_counter() - t)
            traces.append({"tokens": len(o), "ms": sorted(runs[1:])[2] * 1e3})
        p = lambda x: times[round((len(times) - 1) * x)] * 1e6
        return {"count_p50_us": p(0.5), "count_p99_us": p(0.99), "traces": traces}
    finally:
        proc.kill()
        proc.wait()


def run_size(mb, texts_all, with_peer, min_len, max_count):
    work = os.path.join(WORK, f"{mb}mb")
    subprocess.run(["rm", "-rf", work])
    os.makedirs(work)
    texts = corpus(texts_all, mb)
    jsonl = os.path.join(work, "corpus.jsonl")
    with open(jsonl, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t.decode()}) + "\n")
    stream = b"".join(b"\xff" + t for t in texts)
    queries, outputs = queries_and_outputs(stream, texts)
    qpath, opath = os.path.join(work, "queries.txt"), os.path.join(work, "outputs.txt")
    with open(qpath, "w") as f:
        f.writelines(",".join(map(str, q)) + "\n" for q in queries)
    with open(opath, "w") as f:
        f.writelines(",".join(map(str, o)) + "\n" for o in outputs)

    result = {"mb": mb, "tokens": len(stream)}
    wall, peak, out = timed([BIN, "index", "build", "--jsonl", jsonl, "--out", os.path.join(work, "ours")])
    meta = json.loads(out)
    ours_dir = os.path.join(work, "ours", meta["hash"])
    size = sum(os.path.getsize(os.path.join(ours_dir, f)) for f in ("tokens", "sa"))
    lat = json.loads(subprocess.run(
        ["cargo", "bench", "-q", "-p", "tributary", "--bench", "attribution", "--",
         ours_dir, qpath, opath, str(min_len), str(max_count)], cwd=ROOT,
        check=True, capture_output=True, text=True).stdout)
    result["ours"] = {"build_s": wall, "peak_mb": peak, "bytes_per_token": size / len(stream), **lat}
    print(f"  ours: built in {wall:.1f} s, {peak:.0f} MB peak, {size / len(stream):.2f} B/token; "
          f"count p50 {lat['count_p50_us']:.1f} µs p99 {lat['count_p99_us']:.1f} µs; "
          + ", ".join(f"trace {t['tokens']} tokens {t['ms']:.2f} ms" for t in lat["traces"]), flush=True)
    rest = through_rest(work, ours_dir, meta["hash"], queries[:2000], outputs, min_len, max_count)
    result["ours_rest"] = rest
    print(f"  ours through REST: count p50 {rest['count_p50_us']:.1f} µs p99 {rest['count_p99_us']:.1f} µs; "
          + ", ".join(f"trace {t['tokens']} tokens {t['ms']:.2f} ms" for t in rest["traces"]), flush=True)
    subprocess.run(["rm", "-rf", os.path.join(work, "ours")])
    if not with_peer:
        return result

    theirs = os.path.join(work, "theirs")
    os.makedirs(theirs)
    with open(os.path.join(theirs, "tokenized.0"), "wb") as f:
        f.write(stream)
    offsets, at = [], 0
    for t in texts:
        offsets.append(at)
        at += len(t) + 1
    with open(os.path.join(theirs, "offset.0"), "wb") as f:
        f.write(np.array(offsets, dtype=np.uint64).tobytes())
    del stream
    script = (
        "import types; from infini_gram import indexing; "
        f"indexing.build_sa(types.SimpleNamespace(save_dir={theirs!r}, temp_dir={theirs!r}, worker_id=0, "
        f"shards=1, workers=1, cpus={os.cpu_count()}, mem=16, token_width=1))"
    )
    wall, peak, _ = timed([sys.executable, "-c", script])
    size = sum(os.path.getsize(os.path.join(theirs, f)) for f in ("tokenized.0", "table.0"))
    from infini_gram.engine import InfiniGramEngine
    engine = InfiniGramEngine(index_dir=theirs, eos_token_id=0, vocab_size=255, version=4, token_dtype="u8")
    for q in queries:
        engine.count(input_ids=q)
    times = []
    for q in queries:
        t = time.perf_counter()
        engine.count(input_ids=q)
        times.append(time.perf_counter() - t)
    times.sort()
    traces = []
    for o in outputs:
        engine.attribute(input_ids=o, delim_ids=[], min_len=min_len, max_cnt=max_count, enforce_bow=False)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            r = engine.attribute(input_ids=o, delim_ids=[], min_len=min_len, max_cnt=max_count, enforce_bow=False)
            runs.append(time.perf_counter() - t)
        traces.append({"tokens": len(o), "ms": sorted(runs)[1] * 1e3, "spans": len(r["spans"])})
    p = lambda x: times[round((len(times) - 1) * x)] * 1e6
    result["infini_gram"] = {"build_s": wall, "peak_mb": peak, "bytes_per_token": size / result["tokens"],
                             "count_p50_us": p(0.5), "count_p99_us": p(0.99), "traces": traces}
    print(f"  infini-gram: built in {wall:.1f} s, {peak:.0f} MB peak, {size / result['tokens']:.2f} B/token; "
          f"count p50 {p(0.5):.1f} µs p99 {p(0.99):.1f} µs; "
          + ", ".join(f"trace {t['tokens']} tokens {t['ms']:.2f} ms" for t in traces), flush=True)
    o, t = result["ours"], result["infini_gram"]
    print(f"  ratios (infini-gram / ours): build {t['build_s'] / o['build_s']:.2f}x, "
          f"count p50 {t['count_p50_us'] / o['count_p50_us']:.1f}x, p99 {t['count_p99_us'] / o['count_p99_us']:.1f}x, "
          + ", ".join(f"trace {a['tokens']} {a['ms'] / b['ms']:.1f}x" for a, b in zip(t["traces"], o["traces"])),
          flush=True)
    subprocess.run(["rm", "-rf", theirs])
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,128", help="MB, both engines")
    ap.add_argument("--ours-only-sizes", default="", help="MB, ours alone (scaling)")
    ap.add_argument("--min-len", type=int, default=8)
    ap.add_argument("--max-count", type=int, default=100)
    args = ap.parse_args()
    texts = stdlib_texts()
    print(f"{len(texts)} standard-library files, {sum(map(len, texts)) / 1e6:.0f} MB", flush=True)
    results = []
    plan = [(int(s), True) for s in args.sizes.split(",") if s] + \
           [(int(s), False) for s in args.ours_only_sizes.split(",") if s]
    for mb, peer in plan:
        print(f"{mb} MB:", flush=True)
        results.append(run_size(mb, texts, peer, args.min_len, args.max_count))
    os.makedirs(WORK, exist_ok=True)
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
