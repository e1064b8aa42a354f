"""Training speed and peak memory, ours against PyTorch on CPU, in one run on the same windows,
the same model shape and the same thread count:

- from scratch: a byte-level Llama (width 256, 4 layers, 4 heads, about 3.3M parameters) on
  Python standard-library sources, windows of 128 tokens, batches of 8;
- LoRA rank 8 on q_proj and v_proj of all 30 layers of SmolLM2-135M-Instruct (dequantised
  from the GGUF that `./dev` fetches), windows of 128 tokens, batches of 2.

Both sides time the steps after the first two, and peak memory is each process's maximum
resident set (`/usr/bin/time`). Needs the release binary (`cargo build --release -p tributary
--bin tributary`) and the `.venv` of `./dev test` (torch, transformers, peft, gguf).

  .venv/bin/python bench/models/run.py [--threads 1,2] [--runs 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "tributary")
GGUF = os.path.join(ROOT, ".cache", "bases", "SmolLM2-135M-Instruct.Q4_1.gguf")
WORK = os.environ.get("BENCH_DIR", "/tmp/tributary-bench/models")
TORCH = os.path.join(os.path.dirname(__file__), "torch_train.py")


def corpus(limit):
    """Standard-library sources in a fixed order, about `limit` bytes."""
    root = sysconfig.get_paths()["stdlib"]
    texts, total = [], 0
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                if text and "\ufffd" not in text:
                    texts.append(text)
                    total += len(text.encode())
                    if total >= limit:
                        return texts
    return texts


def pack(docs, eos, seq_len):
    stream = []
    for d in docs:
        stream.extend(d)
        stream.append(eos)
    w = seq_len + 1
    return [stream[i:i + w] for i in range(0, len(stream) - w + 1, w)]


def timed(cmd):
    """Runs `cmd` under /usr/bin/time; returns stdout and peak RSS in MB."""
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    peak_kb = int(out.stderr.strip().splitlines()[-1])
    return out.stdout, peak_kb / 1024


def ours_speed(outcome, batch, seq_len):
    steps = outcome["report"]["steps"]
    span = steps[-1]["seconds"] - steps[1]["seconds"]
    return batch * seq_len * (len(steps) - 2) / span


def run_ours(kind, threads, a, out):
    common = ["--steps", str(a.steps if kind == "scratch" else a.lora_steps),
              "--batch-size", str(a.batch if kind == "scratch" else a.lora_batch),
              "--seq-len", str(a.seq_len), "--eval-every", "0", "--out", out,
              "--data", os.path.join(WORK, "corpus.jsonl")]
    if kind == "scratch":
        cmd = [BIN, "--threads", str(threads), "models", "train", "--tokenizer", "bytes",
               "--hidden", "256", "--layers", "4", "--heads", "4", "--lr", "3e-3"] + common
    else:
        cmd = [BIN, "--threads", str(threads), "models", "finetune", "--base", GGUF,
               "--r", "8", "--alpha", "16", "--targets", "q_proj,v_proj", "--lr", "1e-3"] + common
    stdout, peak = timed(cmd)
    outcome = json.loads(stdout)
    batch = a.batch if kind == "scratch" else a.lora_batch
    return ours_speed(outcome, batch, a.seq_len), peak, outcome["trainable_parameters"]


def run_torch(kind, threads, a, windows, config=None):
    cmd = [sys.executable, TORCH, kind, "--windows", windows, "--threads", str(threads),
           "--steps", str(a.steps if kind == "scratch" else a.lora_steps),
           "--batch", str(a.batch if kind == "scratch" else a.lora_batch)]
    cmd += ["--config", config, "--lr", "3e-3"] if kind == "scratch" else [
        "--gguf", GGUF, "--r", "8", "--alpha", "16", "--lr", "1e-3"]
    stdout, peak = timed(cmd)
    result = json.loads(stdout.strip().splitlines()[-1])
    return result["tokens_per_second"], peak, result["trainable_parameters"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lora-steps", type=int, default=8)
    p.add_argument("--lora-batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--kinds", default="scratch,lora")
    a = p.parse_args()
    os.makedirs(WORK, exist_ok=True)
    texts = corpus(2_000_000)
    with open(os.path.join(WORK, "corpus.jsonl"), "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    kinds = a.kinds.split(",")
    # The same windows on both sides: bytes (end of document 255), or SmolLM2's tokens.
    windows = {}
    if "scratch" in kinds:
        windows["scratch"] = pack([list(t.encode()) for t in texts], 255, a.seq_len)
    if "lora" in kinds:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF))
        windows["lora"] = pack([tok.encode(t, add_special_tokens=False) for t in texts[:200]],
                               2, a.seq_len)
    for kind, w in windows.items():
        with open(os.path.join(WORK, f"windows-{kind}.json"), "w") as f:
            json.dump(w, f)
    results = []
    for kind in kinds:
        for threads in [int(t) for t in a.threads.split(",")]:
            ours, theirs = [], []
            for run in range(a.runs):
                out = os.path.join(WORK, f"{kind}-{threads}-{run}")
                subprocess.run(["rm", "-rf", out])
                ours.append(run_ours(kind, threads, a, out))
                config = os.path.join(out, "config.json") if kind == "scratch" else None
                theirs.append(run_torch(kind, threads, a, os.path.join(WORK, f"windows-{kind}.json"), config))
                print(f"{kind} threads={threads} run {run + 1}: ours {ours[-1][0]:.0f} tokens/s "
                      f"{ours[-1][1]:.0f} MB; torch {theirs[-1][0]:.0f} tokens/s {theirs[-1][1]:.0f} MB",
                      flush=True)
            med = lambda xs, i: statistics.median(x[i] for x in xs)
            row = {
                "kind": kind, "threads": threads, "runs": a.runs,
                "ours_tokens_per_second": med(ours, 0), "torch_tokens_per_second": med(theirs, 0),
                "ours_peak_mb": med(ours, 1), "torch_peak_mb": med(theirs, 1),
                "ours_runs": [round(x[0]) for x in ours], "torch_runs": [round(x[0]) for x in theirs],
                "trainable_parameters": [ours[0][2], theirs[0][2]],
            }
            row["speed_ratio"] = row["ours_tokens_per_second"] / row["torch_tokens_per_second"]
            row["memory_ratio"] = row["torch_peak_mb"] / row["ours_peak_mb"]
            results.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
