#!/usr/bin/env python3
"""PyTorch CPU figures beside kiln's for BENCHMARKS.md, on the same machine and the same work:

- all-MiniLM-L6-v2 inference: sentences/s for a batch of 32 texts of exactly 32 tokens cut from
  tiny Shakespeare ([CLS] + 30 tokens + [SEP]), mean pooling and L2 normalisation, as
  `cargo run --release --features hf --example embed -- --bench N`;
- one contrastive fine-tuning step as examples/bert_finetune.rs's default run takes it: 16 pairs
  of consecutive lines of one speech (anchors and positives in one batch of 32 texts cut to 32
  tokens, padded to the longest), MultipleNegativesRankingLoss (cosine x 20, cross-entropy),
  dropout on, AdamW; the median of the timed steps.

Run with the fixture venv (transformers, torch), after scripts/fetch-minilm.sh:

    ~/venvs/kiln-fixtures/bin/python scripts/bench_hf_torch.py [--threads 2] [--iters 10]

Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModel

REPO = Path(__file__).resolve().parents[1]


def minilm_dir():
    root = os.environ.get("KILN_MODELS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache"), "kiln", "models"
    )
    d = Path(root) / "all-MiniLM-L6-v2"
    assert (d / "model.safetensors").is_file(), f"{d} missing: run scripts/setup.sh"
    return d


def pairs(text):
    """(line, next line of the same speech), as examples/bert_finetune.rs makes them."""
    out, prev = [], None
    for line in (l.strip() for l in text.splitlines()):
        speaker = line.endswith(":") and len(line.split()) <= 3
        if not line or speaker:
            prev = None
            continue
        if prev is not None:
            out.append((prev, line))
        prev = line
    return out


def encode(tok, texts, max_len):
    encs = [tok.encode(t) for t in texts]
    # Cut to max_len keeping [SEP], as the tokenizers library's truncation does.
    ids = [e.ids if len(e.ids) <= max_len else e.ids[: max_len - 1] + [e.ids[-1]] for e in encs]
    t = max(len(i) for i in ids)
    input_ids = torch.tensor([i + [0] * (t - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (t - len(i)) for i in ids])
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(input_ids)}


def embed(model, enc):
    h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = minilm_dir()
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text()

    # Inference: 32 windows of 30 tokens between [CLS] and [SEP].
    ids = []
    for line in text.splitlines():
        if line.strip():
            ids += tok.encode(line, add_special_tokens=False).ids
        if len(ids) >= 32 * 30:
            break
    rows = [[101] + ids[i * 30 : (i + 1) * 30] + [102] for i in range(32)]
    enc = {
        "input_ids": torch.tensor(rows),
        "attention_mask": torch.ones(32, 32, dtype=torch.long),
        "token_type_ids": torch.zeros(32, 32, dtype=torch.long),
    }
    model = AutoModel.from_pretrained(str(d)).eval()
    with torch.no_grad():
        embed(model, enc)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            embed(model, enc)
        secs = time.perf_counter() - t0
    inference = {"ms_per_batch": 1e3 * secs / args.iters, "sentences_per_second": 32 * args.iters / secs}

    # Fine-tuning steps, batches of 16 pairs in text order from the training part.
    cut = len(text) * 9 // 10
    train = pairs(text[:cut])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    times, b = [], 16
    for step in range(args.steps + 1):
        batch = train[step * b : (step + 1) * b]
        enc = encode(tok, [p[0] for p in batch] + [p[1] for p in batch], 32)
        t0 = time.perf_counter()
        opt.zero_grad()
        e = embed(model, enc)
        scores = e[:b] @ e[b:].T * 20.0
        loss = F.cross_entropy(scores, torch.arange(b))
        loss.backward()
        opt.step()
        if step > 0:  # the first step warms up
            times.append(time.perf_counter() - t0)
    import transformers

    print(
        json.dumps(
            {
                "bench": "hf_torch",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": args.threads,
                "minilm_batch32x32_ms": inference["ms_per_batch"],
                "minilm_batch32x32_sentences_per_second": inference["sentences_per_second"],
                "finetune_batch16_pairs_median_step_seconds": statistics.median(times),
            }
        )
    )


if __name__ == "__main__":
    main()
