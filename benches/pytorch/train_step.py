"""PyTorch eager counterparts of benches/train_step.rs (same models, batches and optimizers),
printing the same JSON fields. Run on the GPU machine beside kiln:  python3 train_step.py"""
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

dev = "cuda" if torch.cuda.is_available() else "cpu"


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CharTransformer(nn.Module):
    def __init__(self, vocab, context, width, heads, layers):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, 0.0, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers)
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, ids):
        t = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        h = self.layers(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.ln_f(h)).flatten(0, 1)


class CharLstm(nn.Module):
    def __init__(self, vocab, hidden):
        super().__init__()
        self.emb = nn.Embedding(vocab, 64)
        self.lstm = nn.LSTM(64, hidden, 2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        return self.head(self.lstm(self.emb(ids))[0]).flatten(0, 1)


def bench(name, model, opt, x, y, items, unit, batch, steps=50, autocast=None):
    def step():
        opt.zero_grad(set_to_none=True)
        if autocast is None:
            loss = F.cross_entropy(model(x), y)
        else:
            with torch.autocast(device_type="cuda", dtype=autocast):
                loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    print(json.dumps({"bench": "train_step_pytorch", "model": name, "batch": batch, "ms_per_step": round(secs * 1e3 / steps, 3),
                      f"{unit}_per_s": round(items * steps / secs), "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}))


for batch in (64, 256):
    m = LeNet5().to(dev)
    bench("lenet5", m, torch.optim.SGD(m.parameters(), 0.01, momentum=0.9), torch.randn(batch, 1, 28, 28, device=dev),
          torch.arange(batch, device=dev) % 10, batch, "samples", batch)
m = CharTransformer(65, 256, 384, 6, 6).to(dev)
ids = torch.randint(0, 65, (64, 256), device=dev)
bench("char_transformer_6x384_ctx256", m, torch.optim.AdamW(m.parameters(), 3e-4), ids, ids.flatten(), 64 * 256, "tokens", 64)
if dev == "cuda":
    # Mixed precision (bf16 autocast), beside kiln's char_transformer_..._f16 step.
    m = CharTransformer(65, 256, 384, 6, 6).to(dev)
    bench("char_transformer_6x384_ctx256_bf16_autocast", m, torch.optim.AdamW(m.parameters(), 3e-4), ids, ids.flatten(),
          64 * 256, "tokens", 64, autocast=torch.bfloat16)
m = CharLstm(65, 256).to(dev)
ids = torch.randint(0, 65, (64, 100), device=dev)
bench("lstm_2x256_seq100", m, torch.optim.Adam(m.parameters(), 1e-3), ids, ids.flatten(), 64 * 100, "tokens", 64)
