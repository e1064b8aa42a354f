"""Generation speed on CPU, ours against llama.cpp and PyTorch, in one run: SmolLM2-135M-Instruct
(the Q4_1 GGUF that `./dev` fetches), greedy, EOS ignored, exactly `--tokens` new tokens per
sequence, at batch 1 (the first prompt of peers.PROMPTS) and batch 16 (all sixteen, distinct).

- llama.cpp and PyTorch run as one fresh process per measurement (bench/serving/peers.py says
  what each does and times); runs are interleaved peer by peer, and the table has the medians.
- Ours is the release server (`tributary --threads N serve`), one per thread count, warmed up
  with one request, then called over HTTP, OpenAI-style: POST /v1/completions. Batch 16 is 16
  concurrent requests. Its decode speed comes from the response's `timings` (prefill_s and
  decode_s, the same windows as the peers': decode_s runs from the first token to the last);
  the end-to-end speed from the wall clock around the requests.
- decode tok/s = batch * (tokens - 1) / decode window (the slowest request's for ours);
  end-to-end tok/s = batch * tokens / (prefill + decode), for ours the wall time from sending
  the requests to the last response.
- The ceiling is bandwidth.py's, at batch 1: read bandwidth / weight bytes of the Q4_1 file.

Extra modes, each on our server only:
- `--adapters 1,10,50`: writes 50 random PEFT LoRA adapters (rank 8, q_proj and v_proj of all
  30 layers), registers them (POST /v1/adapters), and for each K sends 16 concurrent requests
  spread round-robin over K of them (shifted by 16 each run, so that over the runs all K are
  used); aggregate tokens/s per K and the ratio to K = 1.
- `--attribution`: a Datanet of about 4 MB of standard-library sources (signed, published, a
  byte-level span index built), a LoRA adapter over SmolLM2 trained one step on it, and the
  same 256-token batch-1 request to `base:adapter` with "attribution": true and false; the
  added latency, and the trace's own time from `timings.attribution_s`.

Needs the release binary (`cargo build --release -p tributary --bin tributary`), the `.venv` of
`./dev test` for PyTorch and the bandwidth numbers, and `.venv-bench` for llama.cpp:

  python3 -m venv .venv-bench
  CMAKE_BUILD_PARALLEL_LEVEL=1 .venv-bench/bin/pip install -r bench/serving/requirements.txt
  .venv/bin/python bench/serving/run.py [--threads 1,2] [--runs 3] [--tokens 128] [--peers-only]
      [--adapters 1,10,50] [--attribution]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from peers import PROMPTS  # noqa: E402  (the same prompts on every side)

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.environ.get("TRIBUTARY_BIN", os.path.join(TARGET, "release", "tributary"))
BASES = os.path.join(ROOT, ".cache", "bases")
MODEL = "SmolLM2-135M-Instruct.Q4_1"
WORK = os.environ.get("BENCH_DIR", "/tmp/tributary-bench/serving")
PYTHONS = {
    "llamacpp": os.environ.get("LLAMACPP_PYTHON", os.path.join(ROOT, ".venv-bench", "bin", "python")),
    "torch": os.environ.get("TORCH_PYTHON", os.path.join(ROOT, ".venv", "bin", "python")),
}
NAMES = {"llamacpp": "llama.cpp", "torch": "PyTorch", "ours": "ours"}

# SmolLM2-135M: 30 layers, hidden 576, 9 query heads and 3 KV heads of 64.
LAYERS, HIDDEN, KV_OUT = 30, 576, 192


# ---------------------------------------------------------------- peers

def run_peer(peer, threads, batch, tokens):
    cmd = [PYTHONS[peer], os.path.join(HERE, "peers.py"), peer, "--threads", str(threads),
           "--batch", str(batch), "--tokens", str(tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["e2e_tokens_per_s"] = batch * tokens / (r["prefill_s"] + r["decode_s"])
    return r


def bandwidth(threads):
    cmd = [PYTHONS["torch"], os.path.join(HERE, "bandwidth.py"), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- ours

def http(method, url, body=None, token=None, timeout=900):
    """(status, parsed JSON or text); HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class Server:
    """Our release server on a free loopback port, with a fresh data directory."""

    def __init__(self, threads):
        self.threads = threads
        self.dir = os.path.join(WORK, f"ours-{threads}")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(WORK, f"ours-{threads}.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "--threads", str(threads), "serve", "--data-dir", self.dir,
             "--listen", f"127.0.0.1:{self.port}", "--bases-dir", BASES],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.token = self._wait_ready(120)

    def _wait_ready(self, limit):
        # The admin token file appears once the server is up; /v1/models answering 200 with it
        # says requests are being served.
        path = os.path.join(self.dir, "admin-token")
        deadline = time.time() + limit
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.flush()
                sys.exit(f"our server exited with {self.proc.returncode}; see {self.log.name}")
            if os.path.exists(path):
                with open(path) as f:
                    token = f.read().strip()
                try:
                    if token and http("GET", self.url + "/v1/models", token=token, timeout=5)[0] == 200:
                        return token
                except OSError:
                    pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"our server was not ready within {limit} s; see {self.log.name}")

    def peak_rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def complete(self, prompt, tokens, model=MODEL, attribution=False):
        body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
                "ignore_eos": True, "attribution": attribution}
        t = time.perf_counter()
        status, r = http("POST", self.url + "/v1/completions", body, self.token)
        wall = time.perf_counter() - t
        if status != 200:
            sys.exit(f"POST /v1/completions ({model}) answered {status}: {str(r)[:2000]}")
        return r, t, wall

    def concurrent(self, prompts, tokens, models=None):
        """All requests at once; returns the measurement over the batch."""
        models = models or [MODEL] * len(prompts)
        barrier = threading.Barrier(len(prompts))

        def one(i):
            barrier.wait()
            return self.complete(prompts[i], tokens, models[i])

        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(one, range(len(prompts))))
        start = min(t for _, t, _ in results)
        end = max(t + w for _, t, w in results)
        completion = [r["usage"]["completion_tokens"] for r, _, _ in results]
        if any(c != tokens for c in completion):
            sys.exit(f"asked for {tokens} tokens per request, got {completion}")
        out = {"batch": len(prompts), "tokens": tokens, "wall_s": end - start,
               "e2e_tokens_per_s": sum(completion) / (end - start)}
        timings = [r.get("timings") for r, _, _ in results]
        if all(timings):
            decode = max(t["decode_s"] for t in timings)
            out.update(prefill_s=max(t["prefill_s"] for t in timings), decode_s=decode,
                       decode_tokens_per_s=sum(c - 1 for c in completion) / decode)
        else:
            out.update(prefill_s=None, decode_s=None, decode_tokens_per_s=None)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def write_adapter(folder, seed):
    """A PEFT LoRA adapter (rank 8, alpha 16, q_proj and v_proj of every layer) in float32,
    written as safetensors by hand so that any venv with numpy can run this."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(LAYERS):
        for proj, out in (("q_proj", HIDDEN), ("v_proj", KV_OUT)):
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, HIDDEN ** -0.5, (8, HIDDEN))
            # B nonzero (PEFT starts it at zero), so the adapter really changes the outputs.
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.01, (out, 8))
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        blob = tensors[name].astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the header is padded to 8 bytes, as safetensors does
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
                   "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0,
                   "bias": "none"}, f)


# ---------------------------------------------------------------- modes

def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def compare(a, threads_list, peers, ceilings):
    rows = []
    for threads in threads_list:
        server = None if a.peers_only else Server(threads)
        try:
            if server:
                server.complete(PROMPTS[0], 8)  # loads the base and warms it up
            for batch in a.batches:
                runs = {p: [] for p in peers + ([] if a.peers_only else ["ours"])}
                for run in range(a.runs):
                    for p in runs:
                        if p == "ours":
                            r = server.concurrent(PROMPTS[:batch], a.tokens)
                        else:
                            r = run_peer(p, threads, batch, a.tokens)
                        runs[p].append(r)
                        dec = r["decode_tokens_per_s"]
                        print(f"threads={threads} batch={batch} run {run + 1}: {NAMES[p]} "
                              f"decode {dec and round(dec, 1)} tokens/s, end-to-end "
                              f"{r['e2e_tokens_per_s']:.1f}", flush=True)
                row = {"threads": threads, "batch": batch, "tokens": a.tokens, "runs": a.runs,
                       "ceiling_tokens_per_s": ceilings if batch == 1 else None}
                for p, rs in runs.items():
                    row[p] = {"decode_tokens_per_s": median(rs, "decode_tokens_per_s"),
                              "e2e_tokens_per_s": median(rs, "e2e_tokens_per_s"),
                              "prefill_s": median(rs, "prefill_s"),
                              "peak_rss_mb": median(rs, "peak_rss_mb"),
                              "decode_runs": [r["decode_tokens_per_s"] for r in rs]}
                if server:
                    row["ours"]["peak_rss_mb"] = server.peak_rss_mb()
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            if server:
                server.stop()
    return rows


def adapters(a, threads):
    ks = [int(k) for k in a.adapters.split(",")]
    root = os.path.join(WORK, "adapters")
    shutil.rmtree(root, ignore_errors=True)
    for i in range(max(ks)):
        write_adapter(os.path.join(root, f"bench-{i}"), seed=i)
    server = Server(threads)
    rows = []
    try:
        for i in range(max(ks)):
            status, r = http("POST", server.url + "/v1/adapters",
                             {"base": MODEL, "name": f"bench-{i}", "path": os.path.join(root, f"bench-{i}")},
                             server.token)
            if status not in (200, 201):
                sys.exit(f"POST /v1/adapters bench-{i} answered {status}: {str(r)[:2000]}")
        server.complete(PROMPTS[0], 8, f"{MODEL}:bench-0")
        for k in ks:
            rs = []
            for run in range(a.runs):
                models = [f"{MODEL}:bench-{(run * 16 + j) % k}" for j in range(16)]
                rs.append(server.concurrent(PROMPTS[:16], a.tokens, models))
                print(f"adapters K={k} run {run + 1}: end-to-end "
                      f"{rs[-1]['e2e_tokens_per_s']:.1f} tokens/s", flush=True)
            rows.append({"adapters": k, "threads": threads, "tokens": a.tokens,
                         "e2e_tokens_per_s": median(rs, "e2e_tokens_per_s"),
                         "decode_tokens_per_s": median(rs, "decode_tokens_per_s")})
        rows.append({"peak_rss_mb": server.peak_rss_mb()})
    finally:
        server.stop()
    return rows


def attributed_adapter(server, megabytes=4):
    """A Datanet of Python standard-library sources (about `megabytes` MB, in records of up
    to 2,000 characters), a byte-level span index over its version, and a LoRA adapter over
    SmolLM2 trained one step on it: a served model whose answers trace against real data."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "crosscheck"))
    import sysconfig
    from eth_account import Account
    from eth_account.messages import encode_defunct
    from reference import merkle_root, record_id

    with open(os.path.join(ROOT, "examples", "quickstart", "datanet.json")) as f:
        spec = json.load(f)
    spec.update(id="stdlib", name="Python sources", review="auto")
    status, r = http("POST", server.url + "/v1/datanets", spec, server.token)
    assert status == 201, r
    rows, total, seen = [], 0, set()
    for d, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".py") or total >= megabytes << 20:
                continue
            with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            for k in range(0, len(text), 2000):
                piece = text[k:k + 2000]
                if piece.strip() and piece not in seen:
                    seen.add(piece)
                    rows.append({"text": piece})
                    total += len(piece.encode())
    account = Account.create()
    ids = [record_id(spec["schema"], row) for row in rows]
    signed = Account.sign_message(encode_defunct(primitive=merkle_root(ids)), account.key)
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    req = urllib.request.Request(server.url + "/v1/datanets/stdlib/contributions?format=jsonl",
                                 data=body, method="POST")
    req.add_header("Authorization", f"Bearer {server.token}")
    req.add_header("X-Tributary-Contributor", account.address)
    req.add_header("X-Tributary-Signature", "0x" + signed.signature.hex().removeprefix("0x"))
    with urllib.request.urlopen(req, timeout=900) as resp:
        assert resp.status == 201
    status, r = http("POST", server.url + "/v1/datanets/stdlib/versions", {}, server.token)
    assert status == 201, r

    def job(path, body):
        status, r = http("POST", server.url + path, body, server.token)
        assert status == 202, r
        while True:
            status, r = http("GET", server.url + f"/v1/jobs/{r['id']}", token=server.token)
            if r["state"] in ("succeeded", "failed", "cancelled"):
                assert r["state"] == "succeeded", r
                return r["result"]
            time.sleep(0.5)

    job("/v1/datanets/stdlib/versions/1/indexes", {"tokenizer": "bytes"})
    card = job("/v1/models", {"datanet": "stdlib", "version": 1, "base": MODEL, "steps": 1,
                              "seq_len": 16, "batch_size": 1})
    return f"{MODEL}:{card['id']}", total, len(rows)


def attribution(a, threads, tokens=256):
    server = Server(threads)
    try:
        model, size, records = attributed_adapter(server)
        server.complete(PROMPTS[0], 8, model)
        walls = {False: [], True: []}
        spent = []
        for _ in range(a.runs):
            for on in (False, True):
                r, _, wall = server.complete(PROMPTS[0], tokens, model, attribution=on)
                walls[on].append(wall)
                if on:
                    spent.append(r["timings"]["attribution_s"])
                    assert r["attribution"]["parts"][1]["record"], r["attribution"]
        off, on = statistics.median(walls[False]), statistics.median(walls[True])
        return {"threads": threads, "tokens": tokens, "off_s": off, "on_s": on,
                "attribution_s": statistics.median(spent), "corpus_bytes": size,
                "records": records, "added_percent": 100 * (on - off) / off}
    finally:
        server.stop()


# ---------------------------------------------------------------- report

def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(x, y):
    return None if x is None or y is None else x / y


def table(rows, peers, bw):
    cols = [NAMES[p] for p in peers] + (["ours"] if "ours" in rows[0] else [])
    head = ["threads", "batch"] + [f"{c} decode" for c in cols] + [f"{c} e2e" for c in cols]
    if "ours" in rows[0]:
        head += [f"ours/{NAMES[p]}" for p in peers]
    head += ["ceiling"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = peers + (["ours"] if "ours" in rows[0] else [])
    for r in rows:
        cells = [str(r["threads"]), str(r["batch"])]
        cells += [fmt(r[k]["decode_tokens_per_s"]) for k in keys]
        cells += [fmt(r[k]["e2e_tokens_per_s"]) for k in keys]
        if "ours" in r:
            # Decode against decode; end-to-end against end-to-end where ours reports no timings.
            key = "decode_tokens_per_s" if r["ours"]["decode_tokens_per_s"] else "e2e_tokens_per_s"
            cells += [fmt(ratio(r["ours"][key], r[p][key]), 2) for p in peers]
        cells.append(fmt(r["ceiling_tokens_per_s"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"tokens/s; decode = batch x (tokens - 1) / decode window, e2e = batch x tokens "
                 f"/ (prefill + decode), median of {rows[0]['runs']} runs, {rows[0]['tokens']} "
                 f"new tokens per sequence. Ratios on decode speed (ours e2e where the server "
                 f"reports no timings). Ceiling at batch 1 = {bw['best']:.1f} GB/s / "
                 f"{bw['q4_bytes'] / 1e6:.1f} MB of Q4_1 weights (f32 weights: "
                 f"{bw['f32_ceiling']:.0f} tokens/s); at batch 16 each step also reads the 16 "
                 f"sequences' KV caches and does 16 times the arithmetic, so none is given.")
    lines.append("")
    lines.append("| threads | batch | " + " | ".join(f"{NAMES[k]} prefill s" for k in keys) + " | "
                 + " | ".join(f"{NAMES[k]} peak MB" for k in keys) + " |")
    lines.append("|" + "---|" * (2 + 2 * len(keys)))
    for r in rows:
        lines.append(f"| {r['threads']} | {r['batch']} | "
                     + " | ".join(fmt(r[k]["prefill_s"], 3) for k in keys) + " | "
                     + " | ".join(fmt(r[k]["peak_rss_mb"], 0) for k in keys) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", default="2")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--peers", default="llamacpp,torch")
    p.add_argument("--peers-only", action="store_true", help="leave our server out")
    p.add_argument("--skip-compare", action="store_true", help="only the extra modes")
    p.add_argument("--adapters", help="adapter counts K, e.g. 1,10,50")
    p.add_argument("--attribution", action="store_true")
    a = p.parse_args()
    a.batches = [int(b) for b in a.batches.split(",")]
    if max(a.batches) > len(PROMPTS):
        sys.exit(f"at most {len(PROMPTS)} prompts")
    threads_list = [int(t) for t in a.threads.split(",")]
    peers = [x for x in a.peers.split(",") if x]
    needs_ours = not a.peers_only or a.adapters or a.attribution
    if needs_ours and not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p tributary --bin tributary")
    os.makedirs(WORK, exist_ok=True)

    bw_out = bandwidth(max(threads_list))
    best = max(bw_out["read_gb_per_s"].values())
    c = bw_out["ceilings"]
    bw = {"best": best, "q4_bytes": c["Q4_1 (as stored)"]["bytes_per_token"],
          "f32_ceiling": c["f32"]["tokens_per_s"]}
    print("bandwidth:", json.dumps(bw_out), flush=True)
    results = {"bandwidth": bw_out}

    if not a.skip_compare:
        rows = compare(a, threads_list, peers, best * 1e9 / bw["q4_bytes"])
        results["compare"] = rows
    if a.adapters:
        results["adapters"] = adapters(a, max(threads_list))
    if a.attribution:
        results["attribution"] = attribution(a, max(threads_list))

    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print()
    if "compare" in results:
        print(table(results["compare"], peers, bw))
    if "adapters" in results:
        base = next(r for r in results["adapters"] if r.get("adapters") == min(
            r2["adapters"] for r2 in results["adapters"] if "adapters" in r2))
        print("\n| adapters K | ours e2e tokens/s | ours decode tokens/s | e2e vs K=%d |" % base["adapters"])
        print("|---|---|---|---|")
        for r in results["adapters"]:
            if "adapters" in r:
                print(f"| {r['adapters']} | {fmt(r['e2e_tokens_per_s'])} | "
                      f"{fmt(r['decode_tokens_per_s'])} | "
                      f"{fmt(ratio(r['e2e_tokens_per_s'], base['e2e_tokens_per_s']), 2)} |")
    if "attribution" in results:
        r = results["attribution"]
        print(f"\nattribution, {r['tokens']} tokens at batch 1 over an adapter trained on "
              f"{r['records']} records ({r['corpus_bytes'] / 1e6:.1f} MB, span index): off "
              f"{r['off_s']:.3f} s, on {r['on_s']:.3f} s, added {r['added_percent']:+.1f}% "
              f"(the trace itself: {1000 * r['attribution_s']:.1f} ms)")
    print(f"\n(all numbers in {os.path.join(WORK, 'results.json')})")


if __name__ == "__main__":
    main()
