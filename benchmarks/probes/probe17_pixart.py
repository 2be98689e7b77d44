"""Probe 17a: where PixArt-Sigma's whole-model time goes with sink k=1 in every layer.

whole_model.py read PixArt-Sigma at 3.37x stock after key padding moved its T5-masked
cross-attention onto the kernels (session 9; 2.51x after head-dim padding; session 10 read
2.60x score and 3.70x value eager). This builds the same full transformer (random weights,
bf16, 1024px, batch 2), and for the stock processor and each sink path given (default: score
and value) prints the forward time (CUDA events, mean of 5), the host synchronisations one
forward makes (torch.cuda's sync debug mode, counted as warnings; a key-padding-masked call
makes one, expected 28 per forward: one per cross-attention layer), and torch.profiler's
tables (by CUDA time and by CPU time) of one forward.

    python3 benchmarks/probes/probe17_pixart.py [score value]
"""
import sys
import warnings

import torch

sys.path.insert(0, "benchmarks")
import whole_model  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sinkattn.processors import SinkSuppressProcessor  # noqa: E402

paths = sys.argv[1:] or ["score", "value"]
model, inputs, stock = whole_model.pixart_sigma(torch.device("cuda"), torch.bfloat16, tiny=False)
for name, proc in [("stock", stock)] + [(f"sink_{p}", SinkSuppressProcessor(k=1, path=p)) for p in paths]:
    model.set_attn_processor(proc)
    with torch.no_grad():
        for _ in range(3):
            model(**inputs, return_dict=False)
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(5):
            model(**inputs, return_dict=False)
        e.record()
        e.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model(**inputs, return_dict=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        print(f"== {name}: {s.elapsed_time(e) / 5:.2f} ms per forward, {syncs} host synchronisations per forward",
              flush=True)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            model(**inputs, return_dict=False)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=8, max_name_column_width=70))
