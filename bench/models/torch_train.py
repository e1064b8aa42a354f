"""The PyTorch side of the training benchmark: the same model, the same windows, the same
optimizer and schedule as `tributary models train|finetune`, timed the same way (steps after
the first two). Prints one JSON line: tokens per second and the steps' losses.

  torch_train.py scratch --config CONFIG.json --windows W.json --batch B --steps S --threads N
  torch_train.py lora --gguf FILE --windows W.json --batch B --steps S --threads N --r 8 --alpha 16
"""

import argparse
import json
import math
import os
import time

import torch


def schedule(step, steps, warmup, lr, floor=0.1):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    low = lr * floor
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["scratch", "lora"])
    p.add_argument("--config")
    p.add_argument("--gguf")
    p.add_argument("--windows", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default="q_proj,v_proj")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if a.kind == "scratch":
        with open(a.config) as f:
            config = LlamaConfig(**json.load(f))
        model = LlamaForCausalLM(config)
        params = list(model.parameters())
    else:
        from peft import LoraConfig, get_peft_model

        folder, name = os.path.split(a.gguf)
        base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        lora = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0,
                          target_modules=a.targets.split(","), task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
        params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    with open(a.windows) as f:
        windows = torch.tensor(json.load(f), dtype=torch.long)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    warmup = max(a.steps // 10, 1)
    losses, started, tokens = [], None, 0
    for step in range(a.steps):
        if step == 2:
            started, tokens = time.perf_counter(), 0
        idx = [(step * a.batch + k) % len(windows) for k in range(a.batch)]
        batch = windows[idx]
        for g in opt.param_groups:
            g["lr"] = schedule(step, a.steps, warmup, a.lr)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        tokens += batch.shape[0] * (batch.shape[1] - 1)
    elapsed = time.perf_counter() - started
    print(json.dumps({"tokens_per_second": tokens / elapsed, "losses": losses,
                      "trainable_parameters": sum(p.numel() for p in params)}))


if __name__ == "__main__":
    main()
