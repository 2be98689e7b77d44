"""Probe 17a: where PixArt-Sigma's whole-model time goes with sink k=1 in every layer.

whole_model.py read PixArt-Sigma at 3.37x stock after key padding moved its T5-masked
cross-attention onto the kernels. This builds the same full transformer (random weights, bf16,
1024px, batch 2), times the stock and the sink forward (CUDA events, mean of 5) and prints
torch.profiler's tables (by CUDA time and by CPU time) of one forward of each.

    python3 benchmarks/probes/probe17_pixart.py
"""
import sys, torch
sys.path.insert(0, "benchmarks")
import whole_model
from torch.profiler import profile, ProfilerActivity
from sinkattn.processors import SinkSuppressProcessor
model, inputs, stock = whole_model.pixart_sigma(torch.device("cuda"), torch.bfloat16, tiny=False)
for name, proc in (("stock", stock), ("sink", SinkSuppressProcessor(k=1))):
    model.set_attn_processor(proc)
    with torch.no_grad():
        for _ in range(3): model(**inputs, return_dict=False)
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(5): model(**inputs, return_dict=False)
        e.record(); e.synchronize()
        print(f"== {name}: {s.elapsed_time(e)/5:.2f} ms per forward", flush=True)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            model(**inputs, return_dict=False); torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=8, max_name_column_width=70))
