#!/usr/bin/env python3
"""examples/bert_finetune.rs's recipe in PyTorch, to explore its settings quickly on a CPU (or a
GPU): contrastive fine-tuning of all-MiniLM-L6-v2 on pairs of consecutive lines of one speech of
tiny Shakespeare (in-batch negatives, cosine x 20, cross-entropy; the embeddings frozen as the
example freezes them), AdamW (weight decay 0.01) with 10% linear warm-up and linear decay, and the
example's held-out next-line retrieval: for each of 4 x 64 held-out lines, is its next line the
most similar of the 64 candidates of its group (consecutive pairs that share no line, from the
last 10% of the text)? Two more retrievals show what the groups do to the figure: the same
queries in random groups of 64 from the whole held-out part, and consecutive groups from the end
of the training part.

    ~/venvs/kiln-fixtures/bin/python scripts/bert_finetune_torch.py --steps 400 --batch 32 \\
        --lr 1e-4 --eval-every 100

Prints the retrievals at each evaluation and one JSON line at the end.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_hf_torch import REPO, embed, encode, minilm_dir, pairs  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModel  # noqa: E402


def disjoint(ps):
    """Pairs that share no line with an earlier one ((a, b), (b, c): the second goes)."""
    used, out = set(), []
    for q, c in ps:
        if q not in used and c not in used:
            used.update((q, c))
            out.append((q, c))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--freeze-layers", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d = minilm_dir()
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    text = (REPO / "data/tinyshakespeare/input.txt").read_text()
    cut = len(text) * 9 // 10
    train = pairs(text[:cut])
    held_all = disjoint(pairs(text[cut:]))
    n = 64 * a.groups
    sets = {
        "held_out": held_all[:n],
        "held_out_random_groups": random.Random(123).sample(held_all, n),
        "training_part": disjoint(pairs(text[:cut])[-3000:])[:n],
    }
    model = AutoModel.from_pretrained(str(d))

    def retrieval(held):
        model.eval()
        hits = 0
        with torch.no_grad():
            for g in range(0, len(held), 64):
                grp = held[g : g + 64]
                eq = embed(model, encode(tok, [p[0] for p in grp], a.max_len))
                ec = embed(model, encode(tok, [p[1] for p in grp], a.max_len))
                hits += (eq @ ec.T).argmax(1).eq(torch.arange(len(grp))).sum().item()
        model.train()
        return hits / len(held)

    def evaluate(step, loss):
        r = {k: retrieval(v) for k, v in sets.items()}
        print(json.dumps({"step": step, "loss": loss, **r}), flush=True)
        return r

    curve = [evaluate(0, None)]
    frozen = list(model.embeddings.parameters())
    for layer in model.encoder.layer[: a.freeze_layers]:
        frozen += list(layer.parameters())
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.01)
    warm = max(a.steps // 10, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (a.steps - s) / max(1, a.steps - warm))
    )
    rng = random.Random(a.seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    at, losses, t0 = 0, [], time.time()
    model.train()
    for step in range(a.steps):
        if at + a.batch > len(order):
            rng.shuffle(order)
            at = 0
        idx = order[at : at + a.batch]
        at += a.batch
        e = embed(model, encode(tok, [train[i][0] for i in idx] + [train[i][1] for i in idx], a.max_len))
        loss = F.cross_entropy(e[: a.batch] @ e[a.batch :].T * a.scale, torch.arange(a.batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if a.eval_every and (step + 1) % a.eval_every == 0 and step + 1 < a.steps:
            curve.append(evaluate(step + 1, sum(losses[-a.eval_every :]) / a.eval_every))
    secs = time.time() - t0
    curve.append(evaluate(a.steps, sum(losses[-5:]) / 5))
    print(
        json.dumps(
            {
                "bench": "bert_finetune_torch",
                **{k.replace("-", "_"): v for k, v in vars(a).items()},
                "pairs_seen": a.steps * a.batch,
                "top1_before": curve[0]["held_out"],
                "top1_after": curve[-1]["held_out"],
                "train_seconds": secs,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
