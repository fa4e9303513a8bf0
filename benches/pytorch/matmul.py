"""PyTorch matmul throughput on the shapes of benches/matmul.rs (fp32 with TF32 off, and fp16),
as JSON lines:  python3 matmul.py"""
import json

import torch

from cuda_timer import seconds_per_call

torch.backends.cuda.matmul.allow_tf32 = False
for dtype in (torch.float32, torch.float16):
    for n in (1024, 2048, 4096):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        secs = seconds_per_call(lambda: a @ b)
        print(json.dumps({"bench": "matmul_pytorch", "dtype": str(dtype).split(".")[-1], "n": n,
                          "gflops": round(2 * n**3 / secs / 1e9, 1), "device": torch.cuda.get_device_name()}))
