"""What tracing costs per image: trace bytes and tracer host time for SD3-shaped calls, and
(on a GPU) the tracer's share of the SD3-medium-sized forward, eager and CUDA-graphed.

    python benchmarks/trace_cost.py --cpu [--out benchmarks/results/trace_cost_cpu.json]
    python benchmarks/trace_cost.py --gpu [--out benchmarks/results/trace_cost_h200.json]

--cpu: 24 layers x 28 steps of synthetic SD3-medium calls (B=2 [uncond, cond], H=24, Nk=4429:
4096 image + 77 CLIP + 256 T5 keys, the 1024 px layout), mass drawn as softmax rows. Times
record() per call (the CPU does the "device" reductions too, so this is an upper bound of
the host time), finish_image() (the one copy and the table build), and the bytes one image
adds to the atlas (heads.arrows + index line), with and without full maps of 3 layers x 4
steps. The per-query top-5 needs q and k: it is timed on a few calls and reported apart.
The 553-prompt estimate multiplies the measured per-image figures.

--gpu: the SD3-medium-sized transformer (random weights, bf16, 1024 px, batch 2) forward,
median of repeated runs: stock processors; SinkSuppressProcessor(k=0) without a tracer
(stock SDPA); k=0 with a SinkTracer (mass from the op + the tracer's reductions), with and
without the sampled per-query top-5 (q/k attached to the call records as the processors
will once wired); each eager and replayed from a captured CUDA graph.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LAYERS, STEPS, B, H, N_IMAGE, N_TEXT, D = 24, 28, 2, 24, 4096, 333, 64


def _calls(device="cpu", seed=0):
    from sinkattn.processors.core import CallRecord, Tokens

    g = torch.Generator(device="cpu").manual_seed(seed)
    n = N_IMAGE + N_TEXT
    logits = torch.randn(LAYERS, B, H, n, generator=g) * 3
    logits[..., N_IMAGE] += 6                       # a text sink (CLIP start token), as in SD3
    masses = logits.softmax(-1).to(device)
    tokens = Tokens(n, N_TEXT)
    return [CallRecord(mass=masses[i], sinks=None, keys=tokens, mass_queries=(0, N_IMAGE)) for i in range(LAYERS)]


class _Clock:
    def __init__(self):
        self.generation, self.step, self.timestep, self.grid = 0, -1, None, (64, 64)


def _one_image(tracer, calls, clock, prompt_id):
    tracer.begin(prompt_id=prompt_id, seed=0, cfg=True)
    per_call = []
    for step in range(STEPS):
        clock.step, clock.timestep = step, 1000.0 - step * 35
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            tracer.record(layer=f"transformer_blocks.{i}.attn", layer_index=i, family="joint", call=call, clock=clock)
            per_call.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    image = tracer.finish_image()
    return image, sum(per_call), time.perf_counter() - t0, per_call


def cpu(out: str | None):
    from sinkattn.experiment.atlas import TraceStore
    from sinkattn.tracing import SinkTracer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    calls = _calls()
    results = {"device": "cpu", "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "shape": dict(layers=LAYERS, steps=STEPS, batch=B, heads=H,
                                                                 keys=N_IMAGE + N_TEXT, top=5)}
    for name, options in (("heads", {}), ("heads+maps(3 layers x 4 steps)", dict(map_layers=[6, 12, 18],
                                                                                 map_steps=[0, 9, 18, 27]))):
        tracer = SinkTracer(top=5, query_sample=64, **options)
        _one_image(tracer, calls, _Clock(), -1)       # warm-up (allocates the buffer once)
        with tempfile.TemporaryDirectory() as tmp:
            store = TraceStore(tmp)
            records, finishes, stores, sizes = [], [], [], []
            for prompt_id in range(3):
                image, rec, fin, _ = _one_image(tracer, calls, _Clock(), prompt_id)
                before = _folder_bytes(tmp)
                t0 = time.perf_counter()
                store.append(image, prompt_id=prompt_id, seed=0, condition="baseline")
                stores.append(time.perf_counter() - t0)
                sizes.append(_folder_bytes(tmp) - before)
                records.append(rec)
                finishes.append(fin)
            rows = image.heads.num_rows
        r = {"rows_per_image": rows, "calls_per_image": LAYERS * STEPS,
             "record_s_per_image": statistics.median(records),
             "record_us_per_call": statistics.median(records) / (LAYERS * STEPS) * 1e6,
             "finish_s_per_image": statistics.median(finishes), "store_s_per_image": statistics.median(stores),
             "bytes_per_image": int(statistics.median(sizes)),
             "in_memory_bytes_per_image": int(image.nbytes)}
        r["host_s_per_image"] = r["record_s_per_image"] + r["finish_s_per_image"] + r["store_s_per_image"]
        r["geneval_553_prompts"] = {"bytes": r["bytes_per_image"] * 553, "GiB": r["bytes_per_image"] * 553 / 2 ** 30,
                                    "host_s": r["host_s_per_image"] * 553}
        results[name] = r
        print(f"{name}: {rows} rows/image, record {r['record_us_per_call']:.0f} us/call "
              f"({r['record_s_per_image']:.2f} s/image on this CPU, reductions included), finish "
              f"{r['finish_s_per_image'] * 1e3:.0f} ms, store {r['store_s_per_image'] * 1e3:.0f} ms, "
              f"{r['bytes_per_image'] / 2 ** 20:.2f} MiB/image on disk; 553 prompts: "
              f"{r['geneval_553_prompts']['GiB']:.2f} GiB, {r['geneval_553_prompts']['host_s'] / 60:.1f} min", flush=True)
    # the host's own share: the same calls on 64 keys (the reductions nearly free), i.e. the
    # Python and dispatch time per call that a GPU run spends on the host
    from sinkattn.processors.core import CallRecord, Tokens

    small = CallRecord(mass=torch.rand(B, H, 64).softmax(-1), sinks=None, keys=Tokens(64, 16), mass_queries=(0, 48))
    tracer = SinkTracer(top=5, query_sample=64)
    clock = _Clock()
    times = []
    for rep in range(3):
        tracer.begin(prompt_id=rep)
        t0 = time.perf_counter()
        for step in range(STEPS):
            clock.step = step
            for i in range(LAYERS):
                tracer.record(layer=f"transformer_blocks.{i}.attn", layer_index=i, family="joint", call=small,
                              clock=clock)
        times.append(time.perf_counter() - t0)
        tracer.finish_image()
    results["host_dispatch_us_per_call"] = statistics.median(times) / (LAYERS * STEPS) * 1e6
    print(f"record on 64 keys (host dispatch only): {results['host_dispatch_us_per_call']:.0f} us/call, "
          f"{statistics.median(times) * 1e3:.0f} ms per image of 672 calls", flush=True)
    # the sampled per-query top-5: needs q, k (B, H, N, D)
    g = torch.Generator().manual_seed(1)
    call = calls[0]
    call.q = torch.randn(B, H, N_IMAGE + N_TEXT, D, generator=g)
    call.k = torch.randn(B, H, N_IMAGE + N_TEXT, D, generator=g)
    tracer = SinkTracer(top=5, query_sample=64)
    clock = _Clock()
    clock.step = 0
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        tracer.record(layer="L", layer_index=0, family="joint", call=call, clock=clock)
        times.append(time.perf_counter() - t0)
    results["record_us_per_call_with_query_sample_64"] = statistics.median(times) * 1e6
    print(f"record with the 64-query top-5 sample: {statistics.median(times) * 1e3:.1f} ms/call on this CPU", flush=True)
    _write(out, results)
    return results


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


def gpu(out: str | None, reps: int = 20):
    from diffusers import SD3Transformer2DModel
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from forward import SD3_MEDIUM, sd3_medium_inputs

    import sinkattn.processors.processor as processor_module
    from sinkattn.processors import SinkSuppressProcessor
    from sinkattn.tracing import SinkTracer

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**SD3_MEDIUM).to("cuda", torch.bfloat16).eval()
    inputs = sd3_medium_inputs()
    real_core = processor_module.sink_core

    def core_with_qk(q, k, v, *a, **kw):
        o, rec = real_core(q, k, v, *a, **kw)
        if rec is not None:
            rec.q, rec.k = q, k
        return o, rec

    modes = {
        "stock": (lambda: JointAttnProcessor2_0(), None, False),
        "k0_no_tracer": (lambda: SinkSuppressProcessor(k=0), None, False),
        "k0_tracer": (lambda: SinkSuppressProcessor(k=0, tracer=SinkTracer(query_sample=0)), "tracer", False),
        "k0_tracer_query_top5": (lambda: SinkSuppressProcessor(k=0, tracer=SinkTracer(query_sample=64)), "tracer",
                                 True),
    }
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "modes": {}}

    def forward():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    for name, (make, _, qk) in modes.items():
        processor_module.sink_core = core_with_qk if qk else real_core
        proc = make()
        model.set_attn_processor(proc)
        tracer = getattr(proc, "tracer", None)
        row = {}
        # eager
        for _ in range(3):
            forward()
        torch.cuda.synchronize()
        times, host = [], []
        for _ in range(reps):
            if tracer is not None:
                tracer.begin(prompt_id=0)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            forward()
            end.record()
            host.append(time.perf_counter() - t0)
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        row["eager_ms"] = statistics.median(times)
        row["eager_host_ms"] = statistics.median(host) * 1e3
        if tracer is not None:
            t0 = time.perf_counter()
            image = tracer.finish_image()
            row["finish_ms"] = (time.perf_counter() - t0) * 1e3
            row["rows_per_forward"] = image.heads.num_rows if image else 0
        # graphed: capture one forward, replay it
        try:
            if tracer is not None:
                tracer.begin(prompt_id=1)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    forward()
                    if tracer is not None:
                        tracer.finish_image()
                        tracer.begin(prompt_id=1)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                forward()
            for _ in range(3):
                graph.replay()
            torch.cuda.synchronize()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            row["graphed_ms"] = statistics.median(times)
            del graph
        except Exception as err:  # noqa: BLE001 - report what failed, keep the eager numbers
            row["graphed_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        results["modes"][name] = row
        print(name, row, flush=True)
    processor_module.sink_core = real_core
    base = results["modes"]["k0_no_tracer"]
    for name, row in results["modes"].items():
        for kind in ("eager_ms", "graphed_ms"):
            if kind in row and kind in base:
                row[kind.replace("_ms", "_ratio_to_k0_no_tracer")] = row[kind] / base[kind]
    _write(out, results)
    return results


def _write(out, results):
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(results, fh, indent=2, sort_keys=True)
            fh.write("\n")
        print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.gpu:
        gpu(args.out)
    else:
        cpu(args.out)


if __name__ == "__main__":
    main()
