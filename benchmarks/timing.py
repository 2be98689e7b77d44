"""The one timing rule of the benchmarks: warm up (compile, autotune) outside the timing,
peak allocation over what was allocated before the call, then the median of do_bench."""

import torch
import triton


def measure(fn, warmup_ms: int = 50, rep_ms: int = 300) -> tuple[float, float]:
    """(median ms, peak extra MiB) of fn()."""
    torch.cuda.synchronize()
    fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"), peak
