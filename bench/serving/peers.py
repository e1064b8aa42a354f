"""One peer of the generation benchmark, run once: SmolLM2-135M-Instruct (the Q4_1 GGUF that
`./dev` fetches) generating exactly `--tokens` tokens greedily, EOS ignored, for `--batch`
prompts at once on `--threads` CPU threads. Prints one JSON line:

  {"peer", "threads", "batch", "tokens", "prompt_tokens", "prefill_s", "decode_s",
   "decode_tokens_per_s", "peak_rss_mb"}

What is timed, the same way for both peers and for ours (run.py):
- prefill_s: from the start of the request to the first token being known (the prompt's
  forward pass; at batch 16 all 16 prompts in one pass);
- decode_s: from the first token being known to the last one being known, that is the
  `tokens - 1` forward passes of one token per sequence that follow the prefill;
- decode_tokens_per_s = batch * (tokens - 1) / decode_s.
One short warm-up generation runs first, so one-time costs (graph or buffer allocation, lazy
initialisation) are out of the timing. peak_rss_mb is the process's maximum resident set,
model loading included (for PyTorch that includes dequantising the GGUF to float32).

Peers:
- llamacpp: llama.cpp through llama-cpp-python's low-level API (the `batched` example's loop):
  the Q4_1 GGUF as is, one llama_batch per step holding one token for each of the `--batch`
  sequences (distinct seq_ids), argmax over each sequence's logits with EOS masked.
  Run it with .venv-bench/bin/python (bench/serving/requirements.txt).
- torch: transformers dequantises the GGUF to float32; `generate` greedy with
  min_new_tokens = max_new_tokens = tokens and the KV cache, batch 16 left-padded in one call.
  The step times come from a logits processor, which generate calls once per new token, right
  after that token's forward pass. Run it with .venv/bin/python (tests/requirements.txt).

  .venv-bench/bin/python bench/serving/peers.py llamacpp --threads 2 --batch 16 --tokens 128
  .venv/bin/python bench/serving/peers.py torch --threads 2 --batch 1 --tokens 128
"""

import argparse
import json
import os
import resource
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GGUF = os.path.join(ROOT, ".cache", "bases", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Sixteen distinct prompts of about 20 to 40 tokens; batch 1 uses the first. Distinct so that
# no peer can share work between the sequences of a batch.
PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when a goldsmith in "
    "Mainz combined movable metal type with an oil-based ink and",
    "To make a simple tomato sauce, warm some olive oil in a wide pan, add two cloves of "
    "sliced garlic, and then",
    "A binary search tree is a data structure in which every node has at most two children, "
    "and the key of each node is",
    "The city council met on Tuesday evening to discuss the new bicycle lanes, which several "
    "shop owners on the main street said would",
    "Photosynthesis is the process by which green plants use the energy of sunlight to turn "
    "carbon dioxide and water into",
    "When the old lighthouse keeper finally retired after forty years, the villagers gathered "
    "on the harbour wall and",
    "In a job interview, one of the most common questions is to describe a time you failed, "
    "and a good answer usually",
    "The first law of thermodynamics says that energy can be neither created nor destroyed, "
    "which means that in a closed system",
    "Dear Sam, thank you so much for the lovely birthday present. The scarf is exactly the "
    "colour I wanted, and I",
    "Volcanoes form where magma from deep inside the Earth rises through cracks in the crust, "
    "most often along the edges of",
    "Here are three practical tips for staying focused while working from home: first, keep "
    "a fixed schedule; second,",
    "The train left the station twenty minutes late, and by the time it crossed the river the "
    "passengers in the last carriage had",
    "Compound interest means that the interest you earn each year is added to the principal, "
    "so that over a long period of time",
    "Octopuses are remarkable animals: they have three hearts, blue blood, and arms that can "
    "taste what they touch, which allows them to",
    "Before the invention of refrigerators, people kept food cold in winter by cutting large "
    "blocks of ice from frozen lakes and",
    "A good night's sleep matters more than most people think, because while we sleep the "
    "brain is busy sorting the memories of",
]

WARMUP_TOKENS = 4


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result(a, prompt_tokens, prefill_s, decode_s):
    return {
        "peer": a.peer, "threads": a.threads, "batch": a.batch, "tokens": a.tokens,
        "prompt_tokens": prompt_tokens, "prefill_s": prefill_s, "decode_s": decode_s,
        "decode_tokens_per_s": a.batch * (a.tokens - 1) / decode_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_llamacpp(a, prompts):
    import llama_cpp as L
    import numpy as np

    # llama.cpp logs model loading and every context to stderr; run.py shows stderr only when
    # a peer fails, so it is left on.
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(a.gguf.encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {a.gguf}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    eos = L.llama_vocab_eos(vocab)

    def tokenize(text):
        raw = text.encode()
        buf = (L.llama_token * (len(raw) + 8))()
        n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
        return list(buf[:n])

    seqs = [tokenize(p) for p in prompts]
    longest = max(len(s) for s in seqs)
    cparams = L.llama_context_default_params()
    # Each sequence gets its own share of the KV cache: n_ctx / n_seq_max cells.
    per_seq = longest + a.tokens + 16
    cparams.n_ctx = a.batch * per_seq
    cparams.n_batch = max(sum(len(s) for s in seqs), a.batch)
    cparams.n_ubatch = cparams.n_batch
    cparams.n_seq_max = a.batch
    cparams.n_threads = a.threads
    cparams.n_threads_batch = a.threads
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context")
    memory = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(cparams.n_batch, 0, 1)

    def fill(entries):
        """entries: (token, position, seq_id, wants_logits); returns batch indices of logits."""
        out = []
        for i, (tok, pos, sid, logits) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sid
            batch.logits[i] = logits
            if logits:
                out.append(i)
        batch.n_tokens = len(entries)
        return out

    def decode(entries):
        rows = fill(entries)
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
        # Greedy with EOS masked, as torch's min_new_tokens does, so each sequence runs to the
        # full length.
        picks = []
        for r in rows:
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, r), shape=(n_vocab,))
            logits = logits.copy()
            logits[eos] = -np.inf
            picks.append(int(logits.argmax()))
        return picks

    def generate(tokens):
        L.llama_memory_clear(memory, True)
        t0 = time.perf_counter()
        entries = []
        for sid, s in enumerate(seqs):
            entries += [(tok, pos, sid, pos == len(s) - 1) for pos, tok in enumerate(s)]
        last = decode(entries)
        t1 = time.perf_counter()
        pos = [len(s) for s in seqs]
        outputs = [[t] for t in last]
        for _ in range(tokens - 1):
            last = decode([(last[sid], pos[sid], sid, True) for sid in range(len(seqs))])
            for sid, t in enumerate(last):
                outputs[sid].append(t)
                pos[sid] += 1
        t2 = time.perf_counter()
        assert all(len(o) == tokens for o in outputs)
        return t1 - t0, t2 - t1

    generate(WARMUP_TOKENS)
    prefill_s, decode_s = generate(a.tokens)
    n_prompt = sum(len(s) for s in seqs)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return result(a, n_prompt, prefill_s, decode_s)


def run_torch(a, prompts):
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    folder, name = os.path.split(a.gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True)

    class Clock(LogitsProcessor):
        """Called once per generated token, right after the forward pass that produced it."""

        def __init__(self):
            self.stamps = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            return scores

    def generate(tokens):
        clock = Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **enc, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                use_cache=True, pad_token_id=tok.pad_token_id,
                logits_processor=LogitsProcessorList([clock]))
        new = out.shape[1] - enc["input_ids"].shape[1]
        assert new == tokens and len(clock.stamps) == tokens, (new, len(clock.stamps))
        return clock.stamps[0] - t0, clock.stamps[-1] - clock.stamps[0]

    generate(WARMUP_TOKENS)
    prefill_s, decode_s = generate(a.tokens)
    return result(a, int(enc["attention_mask"].sum()), prefill_s, decode_s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("peer", choices=["llamacpp", "torch"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--gguf", default=GGUF)
    p.add_argument("--prompt-file", help="a JSON list of prompts, instead of PROMPTS")
    a = p.parse_args()
    prompts = PROMPTS
    if a.prompt_file:
        with open(a.prompt_file) as f:
            prompts = json.load(f)
    if a.batch > len(prompts):
        raise SystemExit(f"--batch {a.batch} needs {a.batch} prompts, there are {len(prompts)}")
    if a.tokens < 2:
        raise SystemExit("--tokens must be at least 2 (decode is timed after the first token)")
    prompts = prompts[:a.batch]
    run = run_llamacpp if a.peer == "llamacpp" else run_torch
    print(json.dumps(run(a, prompts)), flush=True)


if __name__ == "__main__":
    main()
