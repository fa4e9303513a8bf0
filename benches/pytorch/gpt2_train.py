"""PyTorch eager beside `gpt2_train --preset gpu` on the same GPU: GPT-2 small (124M, vocabulary
padded to 50,304 as llm.c pads it), micro-batches of 16 x 1,024 tokens accumulated to 524,288 tokens
a step, AdamW (betas 0.9/0.95, weight decay 0.1 on matrices and embeddings, fused), the gradients
clipped at 1.0; in float32 (TF32 off, kiln's f32 path) and under bfloat16 autocast (llm.c's and
nanoGPT's precision). The model is nanoGPT's (plain PyTorch, no transformers needed), attention
through scaled_dot_product_attention. Per precision: ms per step, tokens per second and MFU
(llm.c's 6 N + 6 L C T FLOPs per token over the GPU's dense peak: H100 SXM 66.9 TFLOP/s f32,
989.4 bf16). One JSON line each.

    python3 gpt2_train.py [--steps 5] [--micro 16] [--total 524288]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAKS = {"h200": (66.9, 989.4), "h100": (66.9, 989.4), "a100": (19.5, 312.0)}


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.c_fc, self.mlp_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab=50304, ctx=1024, c=768, layers=12, heads=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(ctx, c)
        self.h = nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if n.endswith("c_proj.weight") or n.endswith("mlp_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for b in self.h:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits[..., :50257].reshape(-1, 50257).float(), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--total", type=int, default=524288)
    a = ap.parse_args()
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name().lower()
    peak = next((v for k, v in PEAKS.items() if k in name), (None, None))
    accum = a.total // (a.micro * a.context)
    for precision in ("f32", "bf16"):
        torch.manual_seed(0)
        model = GPT().to(dev)
        params = sum(p.numel() for p in model.parameters())
        decay = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True,
        )
        x = torch.randint(0, 50257, (a.micro, a.context + 1), device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            for _ in range(accum):
                with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(x[:, :-1], x[:, 1:]) / accum
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        torch.cuda.synchronize()
        secs = (time.perf_counter() - t0) / a.steps
        tps = a.total / secs
        flops = 6 * params + 6 * 12 * 768 * a.context
        p = peak[0] if precision == "f32" else peak[1]
        print(json.dumps({
            "bench": "gpt2_train_pytorch",
            "precision": precision,
            "micro_batch": a.micro,
            "context": a.context,
            "total_batch_tokens": a.total,
            "ms_per_step": round(secs * 1e3, 1),
            "tokens_per_second": round(tps, 1),
            "mfu": None if p is None else round(flops * tps / (p * 1e12), 4),
            "memory_peak_bytes": torch.cuda.max_memory_allocated(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(),
        }), flush=True)
        del model, opt
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
