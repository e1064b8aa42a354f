"""Our span index against the infini-gram engine (PyPI `infini-gram`, its C++ engine and Rust
indexer) on the same token ids: byte-level tokens of Python standard-library sources, laid out
the way infini-gram lays out its `tokenized` file (a 0xFF separator before each document).
Counts of thousands of random n-grams must be equal, and so must the spans `attribute` traces.
"""

import json
import os
import random
import subprocess
import sysconfig
import types

import numpy as np
import pytest
from infini_gram import indexing
from infini_gram.engine import InfiniGramEngine

BIN = os.environ.get("TRIBUTARY_BIN", "target/debug/tributary")
CORPUS_BYTES = 2_000_000


def stdlib_texts(limit):
    """Standard-library sources in a fixed order, up to `limit` bytes of UTF-8."""
    root = sysconfig.get_paths()["stdlib"]
    texts, total = [], 0
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            if "\ufffd" in text or not text:
                continue
            texts.append(text)
            total += len(text.encode())
            if total >= limit:
                return texts
    return texts


def build_infini_gram(texts, save_dir):
    """infini-gram's own suffix-array build over our byte stream."""
    os.makedirs(save_dir)
    offsets, stream = [], bytearray()
    for t in texts:
        offsets.append(len(stream))
        stream += b"\xff" + t.encode()
    with open(os.path.join(save_dir, "tokenized.0"), "wb") as f:
        f.write(stream)
    with open(os.path.join(save_dir, "offset.0"), "wb") as f:
        f.write(np.array(offsets, dtype=np.uint64).tobytes())
    args = types.SimpleNamespace(
        save_dir=save_dir, temp_dir=save_dir, worker_id=0, shards=1, workers=1,
        cpus=2, mem=2, token_width=1,
    )
    cwd = os.getcwd()
    try:
        indexing.build_sa(args)  # it changes directory to run its indexer
    finally:
        os.chdir(cwd)
    return InfiniGramEngine(
        index_dir=save_dir, eos_token_id=0, vocab_size=255, version=4, token_dtype="u8"
    ), bytes(stream)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infini")
    texts = stdlib_texts(CORPUS_BYTES)
    corpus = tmp / "corpus.jsonl"
    with open(corpus, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    out = subprocess.run(
        [BIN, "index", "build", "--jsonl", str(corpus), "--tokenizer", "bytes", "--out", str(tmp / "ours")],
        check=True, capture_output=True, text=True,
    )
    meta = json.loads(out.stdout)
    ours = str(tmp / "ours" / meta["hash"])
    engine, stream = build_infini_gram(texts, str(tmp / "theirs"))
    return types.SimpleNamespace(ours=ours, meta=meta, engine=engine, stream=stream, texts=texts, tmp=tmp)


def test_the_same_stream_and_size(indexes):
    # Same token positions; our index is no larger per token than infini-gram's.
    assert indexes.meta["tokens"] == len(indexes.stream)
    ours = sum(os.path.getsize(os.path.join(indexes.ours, f)) for f in ("tokens", "sa"))
    theirs = sum(
        os.path.getsize(os.path.join(indexes.tmp, "theirs", f)) for f in ("tokenized.0", "table.0")
    )
    # Ours ends with 8 bytes of padding, so that the last pointer reads as one 8-byte load.
    assert ours - 8 <= theirs, (ours, theirs)


def test_counts_equal_on_random_ngrams(indexes):
    rng = random.Random(7)
    stream = indexes.stream
    queries = []
    for _ in range(3000):
        n = rng.randint(1, 40)
        start = rng.randrange(0, len(stream) - n)
        q = stream[start:start + n]
        if b"\xff" in q:
            continue
        queries.append(list(q))
    # Made-up n-grams, mostly absent.
    alphabet = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz_ ():.\n"]
    for _ in range(1000):
        queries.append([rng.choice(alphabet) for _ in range(rng.randint(1, 6))])
    path = indexes.tmp / "queries.txt"
    with open(path, "w") as f:
        for q in queries:
            f.write(",".join(map(str, q)) + "\n")
    out = subprocess.run(
        [BIN, "index", "count", "--index", indexes.ours, "--queries", str(path)],
        check=True, capture_output=True, text=True,
    )
    ours = [int(line) for line in out.stdout.split()]
    assert len(ours) == len(queries)
    present = 0
    for q, c in zip(queries, ours):
        theirs = indexes.engine.count(input_ids=q)["count"]
        assert c == theirs, (bytes(q), c, theirs)
        present += c > 0
    assert len(queries) > 3500 and present > 2500


@pytest.mark.parametrize("length", [256, 1024])
def test_traced_spans_equal_attribute(indexes, length):
    rng = random.Random(length)
    # An "output": pieces of the corpus between made-up text, as a model's answer would be.
    pieces = []
    while sum(len(p) for p in pieces) < length:
        doc = rng.choice(indexes.texts).encode()
        start = rng.randrange(0, max(1, len(doc) - 80))
        pieces.append(doc[start:start + rng.randint(10, 80)])
        pieces.append(b" zq%dx " % rng.randint(0, 10**6))
    ids = list(b"".join(pieces)[:length])
    out = subprocess.run(
        [BIN, "attribute", "--index", indexes.ours, "--ids", ",".join(map(str, ids)),
         "--min-len", "8", "--max-count", "100"],
        check=True, capture_output=True, text=True,
    )
    ours = json.loads(out.stdout)
    theirs = indexes.engine.attribute(
        input_ids=ids, delim_ids=[], min_len=8, max_cnt=100, enforce_bow=False
    )
    mine = sorted(
        (s["start"], s["end"], s["count"], tuple(sorted(o["position"] for o in s["occurrences"])))
        for s in ours["spans"]
    )
    them = sorted(
        (s["l"], s["r"], s["count"], tuple(sorted(d["ptr"] for d in s["docs"])))
        for s in theirs["spans"]
    )
    assert len(them) > 3
    assert mine == them
    # Rarest first, and the scores sum exactly to the unit.
    logprobs = [s["unigram_logprob"] for s in ours["spans"]]
    assert logprobs == sorted(logprobs)
    assert sum(r["score"] for r in ours["records"]) == ours["score_unit"]
