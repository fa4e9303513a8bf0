"""PyTorch causal attention on the GPU shape of benches/attention.rs (fp32, fp16 and bf16,
scaled_dot_product_attention: FlashAttention-2 for fp16 and bf16), forward and forward +
backward, as JSON lines:  python3 attention.py
FLOPs count the causal half, as benches/attention.rs does; kiln's f16 lines (f16 operands, f32
accumulation, f32 output) compare with the fp16 ones."""
import json

import torch
import torch.nn.functional as F

from cuda_timer import seconds_per_call

torch.backends.cuda.matmul.allow_tf32 = False
b, h, t, d = 8, 12, 1024, 64
fwd_flops = 2 * b * h * t * t * d


for dtype in (torch.float32, torch.float16, torch.bfloat16):
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    dout = torch.randn(b, h, t, d, device="cuda", dtype=dtype)

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def both():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(o, (q, k, v), dout)

    for p, flops, fn in (("forward", fwd_flops, forward), ("forward_backward", 3.5 * fwd_flops, both)):
        secs = seconds_per_call(fn)
        print(json.dumps({"bench": "attention_pytorch", "dtype": str(dtype).split(".")[-1], "pass": p,
                          "shape": [b, h, t, d], "gflops": round(flops / secs / 1e9, 1),
                          "ms_per_call": round(secs * 1e3, 3), "device": torch.cuda.get_device_name()}))
