"""Kernel benchmark: sinkattn against cuDNN SDPA, the SDPA flash backend, FlexAttention
and the eager full-matrix way, on the same tensors, in one process.

    python benchmarks/run.py [--shapes sd3m_1024,flux_1024] [--out benchmarks/results/h200.json] [--rerun]

Times are the median of triton.testing.do_bench; TFLOP/s count 4 * B * H * Nq * Nk * D per
call; peak_extra_mb is the peak allocation during the call over what was allocated before
it. ``ratio`` is ms / cuDNN SDPA ms on the same tensors (for the forward row: / the stock
forward). Writes JSON with the GPU, versions, date and commit; benchmarks/report.py turns
it into RESULTS.md and a plot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from sinkattn import settings, sink_attention
from sinkattn.reference import sink_attention as reference
from timing import measure  # benchmarks/timing.py

RESULTS = Path(__file__).parent / "results"
SHAPES = {  # name: (B, H, Nq, Nk, D)
    "sd3m_1024": (2, 24, 4429, 4429, 64),
    "sd35l_1024": (2, 38, 4429, 4429, 64),
    "flux_1024": (1, 24, 4608, 4608, 128),
    "sdxl_self_64x64": (2, 10, 4096, 4096, 64),
    "sdxl_cross_64x64": (2, 10, 4096, 77, 64),
    "sd3_2048": (2, 24, 16717, 16717, 64),
}
SINK_MODES = {  # mode name: sink_attention keywords
    "plain": dict(top_k=0),
    "mass": dict(top_k=0, path="none"),
    "sink_score": dict(top_k=1, path="score"),
    "sink_value": dict(top_k=1, path="value"),
    "sink_score_k10": dict(top_k=10, path="score"),
    "sink_value_k10": dict(top_k=10, path="value"),
}


def diffusers_layout(B, H, Nq, Nk, D, dtype=torch.bfloat16, device="cuda", seed=0):
    """Transposed views of (B, N, H*D) projections, as diffusers' processors hand them over.
    Seeded: whether a random draw makes the correction flag a few rows moves the sink rows
    by up to ~0.1 ms at SD3 (kernels/NOTES.md, session 3), so runs compare the same draw."""
    torch.manual_seed(seed)
    q = torch.randn(B, Nq, H * D, device=device, dtype=dtype).view(B, Nq, H, D).transpose(1, 2)
    k = torch.randn(B, Nk, H * D, device=device, dtype=dtype).view(B, Nk, H, D).transpose(1, 2)
    v = torch.randn(B, Nk, H * D, device=device, dtype=dtype).view(B, Nk, H, D).transpose(1, 2)
    return q, k, v


def eager_sink_attention(q, k, v, top_k, path):
    """The original study's way: the whole fp32 attention matrix, mass, top-k, mask, again."""
    return reference(q, k, v, top_k=top_k, path=path, chunk_size=q.shape[2])


def flex_sink(q, k, v):
    """FlexAttention with a score_mod that removes one given key per head (selection not
    included: the sinks come precomputed)."""
    from torch.nn.attention.flex_attention import flex_attention

    sinks = torch.randint(0, k.shape[2], (q.shape[0], q.shape[1]), device=q.device)

    def remove_sink(score, b, h, q_idx, kv_idx):
        return torch.where(kv_idx == sinks[b, h], float("-inf"), score)

    compiled = torch.compile(flex_attention)
    return lambda: compiled(q, k, v, score_mod=remove_sink)


def bench_shape(name, shape, with_eager=True):
    B, H, Nq, Nk, D = shape
    q, k, v = diffusers_layout(B, H, Nq, Nk, D)
    flops = 4 * B * H * Nq * Nk * D
    rows = []

    def row(mode, ms, peak, baseline_ms, error=None):
        r = {"shape": name, "mode": mode, "ms": ms, "baseline_ms": baseline_ms,
             "ratio": ms / baseline_ms if baseline_ms else None,
             "tflops": flops / ms / 1e9 if ms == ms else None, "peak_extra_mb": peak}
        if error:
            r["error"] = error
        rows.append(r)
        print(f"{name:18s} {mode:16s} {ms:8.3f} ms  x{r['ratio'] or float('nan'):5.2f}  "
              f"{r['tflops'] or float('nan'):6.1f} TFLOP/s  {peak:9.1f} MiB" + (f"  ({error})" if error else ""),
              flush=True)

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms, cudnn_peak = measure(lambda: F.scaled_dot_product_attention(q, k, v))
    row("cudnn_sdpa", cudnn_ms, cudnn_peak, cudnn_ms)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ms, peak = measure(lambda: F.scaled_dot_product_attention(q, k, v))
        row("flash_sdpa", ms, peak, cudnn_ms)
    except RuntimeError as e:
        row("flash_sdpa", float("nan"), float("nan"), cudnn_ms, str(e).splitlines()[0][:120])
    try:
        ms, peak = measure(flex_sink(q, k, v))
        row("flex_sink_score", ms, peak, cudnn_ms)
    except Exception as e:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
        row("flex_sink_score", float("nan"), float("nan"), cudnn_ms, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    for mode, kw in SINK_MODES.items():
        ms, peak = measure(lambda: sink_attention(q, k, v, **kw))
        row(mode, ms, peak, cudnn_ms)
    with settings.override(route="masked"):  # the alternative route, for the record
        ms, peak = measure(lambda: sink_attention(q, k, v, **SINK_MODES["sink_score"]))
    row("sink_score_masked_route", ms, peak, cudnn_ms)
    if with_eager:
        for mode, path in (("eager_sink_score", "score"), ("eager_mass", "none")):
            try:
                ms, peak = measure(lambda: eager_sink_attention(q, k, v, 1, path))
                row(mode, ms, peak, cudnn_ms)
            except torch.OutOfMemoryError:
                row(mode, float("nan"), float("nan"), cudnn_ms, "out of memory")
                torch.cuda.empty_cache()
    return rows


def meta() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    from sinkattn.kernels import configs

    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("SINKATTN_COMMIT", commit), "configs": configs.chosen_configs()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shape names")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager full-matrix baseline")
    parser.add_argument("--forward", action="store_true", help="also time the SD3-medium transformer forward")
    parser.add_argument("--out", default=str(RESULTS / "h200.json"))
    parser.add_argument("--rerun", action="store_true",
                        help="a second measurement of some shapes: only appended to --history (as a re-run), "
                             "--out is left alone")
    parser.add_argument("--run-name", default=None, help="the run's name in --history (default: its date)")
    parser.add_argument("--history", default=str(RESULTS / "history.jsonl"),
                        help="every run is appended here, one line per shape ('' for none)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/run.py needs a CUDA device")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def save():  # after every shape, so an interrupted run keeps what it measured
        if not args.rerun:
            out.write_text(json.dumps({"meta": meta(), "rows": rows}, indent=1))

    for name in args.shapes.split(","):
        rows += bench_shape(name, SHAPES[name], with_eager=not args.no_eager)
        torch.cuda.empty_cache()
        save()
    if args.forward:
        from forward import bench_forward  # benchmarks/forward.py

        rows += bench_forward()
        save()
    if args.history:
        append_history(Path(args.history), meta(), rows, args.run_name, args.rerun)
    print(f"wrote {'' if args.rerun else out} {args.history}")


def append_history(path: Path, run_meta: dict, rows: list[dict], name: str | None, rerun: bool) -> None:
    """One line per shape of this run in the history file (report.py reads re-runs from it)."""
    head = {k: v for k, v in run_meta.items() if k != "configs"}
    with path.open("a") as f:
        for shape in dict.fromkeys(r["shape"] for r in rows):
            shape_rows = [{k: v for k, v in r.items() if k != "shape"} for r in rows if r["shape"] == shape]
            f.write(json.dumps({"run": name or head["date"], "rerun": rerun, "shape": shape, **head,
                                "rows": shape_rows}) + "\n")


if __name__ == "__main__":
    main()
