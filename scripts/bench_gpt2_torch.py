#!/usr/bin/env python3
"""PyTorch CPU beside benches/gpt2_step.rs, on the same machine and the same work: GPT-2 small
(transformers' GPT2LMHeadModel(GPT2Config()), 124M parameters, dropout 0) trained at batch B and
context T on fixed token ids, AdamW (betas 0.9/0.95, weight decay 0.1 on matrices and embeddings),
the gradients clipped at 1.0; without and with gradient checkpointing
(`activation_checkpointing_enable`, formerly `gradient_checkpointing_enable`), each in a process
of its own. Per configuration: ms per step
(the mean of the timed steps after one warm-up step), tokens per second, and the process's peak
resident memory above what it held before the model was made (PyTorch has no CPU allocator
statistics; on the CPU this is its memory high-water mark), measured over the steps (the peak is
reset after the model is made). One JSON line each.

    ~/venvs/kiln-fixtures/bin/python scripts/bench_gpt2_torch.py --threads 2 [--batch 1]
        [--context 256] [--steps 3]
"""

import argparse
import json
import os
import subprocess
import sys
import time


def rss():
    """(peak, current) resident bytes of this process, from /proc."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                vals[k] = int(v.split()[0]) * 1024
    return vals["VmHWM"], vals["VmRSS"]


def one(a, checkpoint):
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    _, before = rss()
    cfg = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    if checkpoint:
        # transformers 5 renamed it; the old name still works but warns.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.config.use_cache = False
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=6e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    b, t = a.batch, a.context
    ids = torch.tensor([(i * 7919) % 50257 for i in range(b * (t + 1))]).view(b, t + 1)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    # The peak counts from here: the steps, not the model's initialisation (Linux: writing 5 to
    # clear_refs resets VmHWM to the current resident size).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    first = step()
    first_secs = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        last = step()
    secs = (time.perf_counter() - t0) / a.steps
    peak, _ = rss()
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "bench": "gpt2_step",
                "impl": "pytorch",
                "model": f"gpt2-{params / 1e6:.0f}M",
                "batch": b,
                "context": t,
                "checkpoint_activations": checkpoint,
                "ms_per_step": round(secs * 1e3, 1),
                "tokens_per_second": round(b * t / secs, 1),
                "first_step_seconds": round(first_secs, 1),
                "memory_peak_bytes": None,
                "rss_peak_delta_bytes": peak - before,
                "parameters": params,
                "loss_first": round(first, 4),
                "loss_last": round(last, 4),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": a.threads,
            }
        ),
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--one", choices=["plain", "checkpoint"])
    a = ap.parse_args()
    if a.one:
        one(a, a.one == "checkpoint")
        return
    for mode in ("plain", "checkpoint"):
        args = [sys.executable, __file__, "--one", mode]
        for k in ("threads", "batch", "context", "steps"):
            args += [f"--{k}", str(getattr(a, k))]
        subprocess.run(args, check=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))


if __name__ == "__main__":
    main()
