"""PyTorch on the shapes of benches/rows.rs (GPU sizes): cross-entropy forward + backward over
[8192, 50257] logits, softmax forward + backward over the same, layer norm forward + backward over
[8192, 768], and the element-wise chain x.affine().square().sum() beside them, as JSON lines:
python3 rows.py"""
import json

import torch
import torch.nn.functional as F

from cuda_timer import seconds_per_call

rows, vocab, width = 8192, 50257, 768
x = torch.randn(rows, vocab, device="cuda", requires_grad=True)
y = torch.randint(0, vocab, (rows,), device="cuda")
h = torch.randn(rows, width, device="cuda", requires_grad=True)
g = torch.randn(width, device="cuda", requires_grad=True)
b = torch.randn(width, device="cuda", requires_grad=True)


def xent():
    loss = F.cross_entropy(x, y)
    torch.autograd.grad(loss, x)


def chain():
    with torch.no_grad():
        ((x * 0.5 + 1.0) ** 2).sum()


def softmax():
    s = torch.softmax(x, dim=-1)
    torch.autograd.grad(s, x, x)


def layer_norm():
    o = F.layer_norm(h, (width,), g, b, 1e-5)
    torch.autograd.grad(o, (h, g, b), h)


big = rows * vocab
for op, shape, floats, fn in (
    ("cross_entropy_fwd_bwd", [rows, vocab], 3 * big, xent),
    ("affine_square_sum", [rows, vocab], 5 * big, chain),
    ("softmax_fwd_bwd", [rows, vocab], 6 * big, softmax),
    ("layer_norm_fwd_bwd", [rows, width], 7 * rows * width, layer_norm),
):
    secs = seconds_per_call(fn)
    print(json.dumps({"bench": "rows_pytorch", "op": op, "shape": shape,
                      "ms_per_call": round(secs * 1e3, 3),
                      "gb_per_s": round(floats * 4 / secs / 1e9, 2),
                      "device": torch.cuda.get_device_name()}))
