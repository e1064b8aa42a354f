"""Our models in the Hugging Face ecosystem: what `tributary models` trains and saves, the
reference Python stack loads and computes the same way.

- a decoder trained from scratch loads in `transformers` as `LlamaForCausalLM` and gives our
  logits within 1e-4 on the same tokens; its `tokenizer.json` loads in `tokenizers` and
  encodes as ours does;
- a LoRA adapter we fine-tune loads with `peft` on that model and gives our logits;
- SmolLM2-135M-Instruct read from GGUF: `transformers` reads the same GGUF file (its own
  dequantiser and tokenizer converter) and gives our token ids and our logits; an adapter we
  fine-tune over it loads with `peft` too. Over 30 layers with logits up to about 40, float32
  rounding alone moves logits by about 1e-4 (transformers' own float32 result is 0.9e-4 from
  its float64 one), so there ours must be within 1e-4 of transformers, or no further from the
  float64 result than twice transformers' float32 distance.
"""

import copy
import json
import os
import subprocess

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

BIN = os.environ.get("TRIBUTARY_BIN", "target/debug/tributary")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TIPS = os.path.join(ROOT, "examples", "quickstart", "tips.jsonl")
SMOLLM2 = os.environ.get(
    "TRIBUTARY_SMOLLM2_GGUF",
    os.path.join(ROOT, ".cache", "bases", "SmolLM2-135M-Instruct.Q4_1.gguf"),
)
TOLERANCE = 1e-4
TEXTS = [
    "Salt the pasta water generously.",
    "Rest meat 5 minutes; 1234 grams, 3.14159 and 2026-12-01.",
    "Unicode: café, naïve, 日本語, emoji 🍝 and tabs\tand\nnewlines.",
    "  leading spaces, trailing   ",
]

torch.set_num_threads(1)


def run(*args):
    out = subprocess.run([BIN, "--threads", "1", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out


def our_logits(tmp_path, model, text=None, ids=None, adapter=None, name="logits"):
    path = tmp_path / f"{name}.safetensors"
    args = ["models", "logits", "--model", str(model), "--out", str(path)]
    args += ["--text", text] if text is not None else ["--ids", ",".join(map(str, ids))]
    if adapter:
        args += ["--adapter", str(adapter)]
    run(*args)
    t = load_file(str(path))
    return t["ids"].tolist(), t["logits"]


def reference_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A byte-level BPE decoder trained from scratch, and a LoRA adapter over it."""
    tmp = tmp_path_factory.mktemp("scratch")
    base, adapter = tmp / "base", tmp / "adapter"
    run("models", "train", "--data", TIPS, "--tokenizer", "bpe:400", "--out", str(base),
        "--steps", "20", "--seq-len", "32", "--batch-size", "4", "--hidden", "64",
        "--layers", "2", "--heads", "4")
    run("models", "finetune", "--base", str(base), "--data", TIPS, "--out", str(adapter),
        "--steps", "20", "--seq-len", "32", "--batch-size", "4", "--lr", "0.01",
        "--r", "4", "--alpha", "8", "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    return base, adapter


def test_transformers_loads_our_model_with_the_same_logits(scratch, tmp_path):
    base, _ = scratch
    model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    for i, text in enumerate(TEXTS):
        ids, ours = our_logits(tmp_path, base, text=text, name=f"t{i}")
        theirs = reference_logits(model, ids)
        assert ours.shape == theirs.shape
        assert max_diff(ours, theirs) < TOLERANCE, (text, max_diff(ours, theirs))


def test_tokenizers_encodes_as_we_do(scratch, tmp_path):
    base, _ = scratch
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    for i, text in enumerate(TEXTS):
        ids, _ = our_logits(tmp_path, base, text=text, name=f"e{i}")
        assert tok.encode(text, add_special_tokens=False).ids == ids, text
        assert tok.decode(ids) == text


def test_peft_loads_our_adapter_with_the_same_logits(scratch, tmp_path):
    base, adapter = scratch
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    plain = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    for i, text in enumerate(TEXTS[:2]):
        ids, ours = our_logits(tmp_path, base, text=text, adapter=adapter, name=f"a{i}")
        theirs = reference_logits(peft_model, ids)
        assert max_diff(ours, theirs) < TOLERANCE, (text, max_diff(ours, theirs))
        # The adapter is not a no-op: without it the logits differ.
        assert max_diff(ours, reference_logits(plain, ids)) > 1e-3


needs_smollm2 = pytest.mark.skipif(
    not os.path.exists(SMOLLM2), reason=f"{SMOLLM2} is not installed (./dev test fetches it)"
)


@pytest.fixture(scope="module")
def smollm2():
    folder, name = os.path.split(SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer


# How far float32 logits may sit from the float64 ones, relative to the largest logit: 64 ulps
# of float32 at that magnitude. Thirty layers of float32 products and sums land within a few
# dozen; a wrong tensor, scale or layout lands thousands away.
RELATIVE_FLOAT32 = 64 * 2.0**-23


def assert_close_in_float32(ours, model, ids):
    """Within 1e-4 of transformers' float32 logits, or as near the float64 ones as float32
    arithmetic gets: twice transformers' own distance, or 64 ulps of the largest logit, so
    that a run where transformers' rounding happened to cancel does not set the bar."""
    theirs = reference_logits(model, ids)
    diff = max_diff(ours, theirs)
    if diff < TOLERANCE:
        return
    exact = copy.deepcopy(model).double()
    with torch.no_grad():
        truth = exact(torch.tensor([ids])).logits[0]
    ours_err = max_diff(ours.double(), truth)
    theirs_err = max_diff(theirs.double(), truth)
    bound = max(2 * theirs_err, RELATIVE_FLOAT32 * truth.abs().max().item())
    assert ours_err <= bound, (diff, ours_err, theirs_err, bound)


@needs_smollm2
def test_smollm2_gguf_reads_as_transformers_reads_it(smollm2, tmp_path):
    model, tokenizer = smollm2
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True,
    )
    for i, text in enumerate(TEXTS + [chat]):
        ids, ours = our_logits(tmp_path, SMOLLM2, text=text, name=f"s{i}")
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text
        assert_close_in_float32(ours, model, ids)


@needs_smollm2
def test_peft_loads_our_smollm2_adapter_with_the_same_logits(smollm2, tmp_path):
    model, _ = smollm2
    adapter = tmp_path / "adapter"
    run("models", "finetune", "--base", SMOLLM2, "--data", TIPS, "--out", str(adapter),
        "--steps", "2", "--seq-len", "24", "--batch-size", "2", "--lr", "0.01",
        "--r", "4", "--alpha", "8", "--targets", "q_proj,v_proj")
    peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    ids, ours = our_logits(tmp_path, SMOLLM2, text=TEXTS[0], adapter=adapter, name="sa")
    assert_close_in_float32(ours, peft_model, ids)
