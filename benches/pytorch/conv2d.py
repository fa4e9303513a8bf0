"""PyTorch conv2d throughput on the shapes of benches/conv2d.rs (fp32, TF32 off): forward, input
gradient and weight gradient, as JSON lines:  python3 conv2d.py"""
import json

import torch

from cuda_timer import seconds_per_call

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = "cuda"
cases = [("lenet_conv2", (256, 6, 14, 14), (16, 6, 5, 5), 0),
         ("conv3x3_128", (32, 128, 56, 56), (128, 128, 3, 3), 1)]

for name, xs, ws, pad in cases:
    x = torch.full(xs, 0.5, device=dev)
    w = torch.full(ws, 0.25, device=dev)
    y = torch.nn.functional.conv2d(x, w, padding=pad)
    dy = torch.ones_like(y)
    flops = 2 * xs[0] * ws[0] * y.shape[2] * y.shape[3] * ws[1] * ws[2] * ws[3]
    passes = {
        "forward": lambda: torch.nn.functional.conv2d(x, w, padding=pad),
        "backward_input": lambda: torch.nn.grad.conv2d_input(xs, w, dy, padding=pad),
        "backward_weight": lambda: torch.nn.grad.conv2d_weight(x, ws, dy, padding=pad),
    }
    for p, fn in passes.items():
        secs = seconds_per_call(fn)
        print(json.dumps({"bench": "conv2d_pytorch", "case": name, "pass": p,
                          "gflops": round(flops / secs / 1e9, 1), "ms_per_call": round(secs * 1e3, 3),
                          "device": torch.cuda.get_device_name()}))
