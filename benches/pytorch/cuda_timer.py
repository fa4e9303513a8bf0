"""Seconds per call of a CUDA workload, from CUDA events (after three warm-up calls); shared by the
kernel benchmark scripts in this folder."""
import torch


def seconds_per_call(fn, reps=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps
