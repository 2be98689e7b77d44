"""Turn a benchmark JSON (benchmarks/run.py) into RESULTS.md and a plot of the ratio to
cuDNN SDPA by shape and mode; with results/whole_model_h200.json (benchmarks/whole_model.py)
also the whole-model section and its plot.

    python benchmarks/report.py [benchmarks/results/h200.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BARS = {  # mode: (bar on the ratio, shapes it applies to), from SPEC section 5 / issue 4
    "plain": (1.0, {"sd3m_1024"}),
    "mass": (1.5, {"sd3m_1024", "sd35l_1024", "flux_1024", "sdxl_self_64x64"}),
    "sink_score": (1.5, {"sd3m_1024", "sd35l_1024", "flux_1024", "sdxl_self_64x64"}),
    "sink_value": (1.5, {"sd3m_1024", "sd35l_1024", "flux_1024", "sdxl_self_64x64"}),
    "sink_score_all_layers_k1": (1.2, {"sd3m_forward_all_layers"}),
}
PLOT_MODES = ["flash_sdpa", "flex_sink_score", "plain", "mass", "sink_score", "sink_value", "sink_score_k10",
              "sink_score_masked_route", "eager_sink_score"]


def _fmt(x, spec):
    return "—" if x is None or x != x else format(x, spec)


def table(rows) -> str:
    lines = ["| shape | mode | ms | ratio to baseline | TFLOP/s | peak extra MiB | bar |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        bar, shapes = BARS.get(r["mode"], (None, set()))
        verdict = ""
        if bar is not None and r["shape"] in shapes:
            ok = r["ratio"] is not None and r["ratio"] <= bar
            verdict = f"<= {bar}: {'met' if ok else 'missed'}"
        note = f" ({r['error']})" if r.get("error") else ""
        lines.append(f"| {r['shape']} | {r['mode']}{note} | {_fmt(r['ms'], '.3f')} | {_fmt(r['ratio'], '.2f')} | "
                     f"{_fmt(r['tflops'], '.0f')} | {_fmt(r['peak_extra_mb'], '.0f')} | {verdict} |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [s for s in dict.fromkeys(r["shape"] for r in rows) if s != "sd3m_forward_all_layers"]
    by = {(r["shape"], r["mode"]): r["ratio"] for r in rows}
    fig, ax = plt.subplots(figsize=(12, 6))
    width = 0.8 / len(PLOT_MODES)
    for i, mode in enumerate(PLOT_MODES):
        ys = [by.get((s, mode)) for s in shapes]
        ys = [y if y is not None and y == y else 0.0 for y in ys]
        ax.bar([j + i * width for j in range(len(shapes))], ys, width, label=mode)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.5, color="r", lw=0.8, ls="--", label="bar 1.5x (mass, sink)")
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=15)
    ax.set_ylabel("time / cuDNN SDPA time (log)")
    ax.set_title("sinkattn on an H200: ratio to cuDNN SDPA on the same tensors (bf16; missing bar = out of memory)")
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def mass_floor_section(path: Path) -> list[str]:
    """Each kernel's clocks against its exponentials at the MUFU rate plus its products at the
    tensor-core peak, and the floor that puts under the mass mode (benchmarks/mass_floor.py)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    meta = data["meta"]
    lines = ["## What bounds the mass and sink bars", "",
             f"`python benchmarks/mass_floor.py` ({meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}, "
             f"{meta['date']}, commit {meta.get('commit')}): each kernel timed, then run for 1.5 s while nvidia-smi "
             "sampled the SM clock and the power draw (medians). kclk = thousands of clocks per SM at that clock; "
             f"exp = exponentials at {meta['mufu_exp2_per_clock']} per clock per SM (MUFU); tensor = FLOP at "
             f"{meta['tensor_flop_per_clock']} per clock per SM (dense bf16 peak). A kernel at or above "
             "exp + tensor ran its exponentials and its products one after the other. The diagnostic rows are "
             f"the key-mass loop ({meta['diagnostic_tile']}, full query tiles) with parts taken out "
             "(see the script's docstring).", "",
             "| shape | kernel | ms | SM MHz | W | kclk | exp kclk | tensor kclk | kclk / (exp + tensor) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        work = r["exp_kclocks"] + r["tensor_kclocks"]
        share = r["kclocks"] / work if r["kclocks"] and work else None
        lines.append(f"| {r['shape']} | {r['kernel']} | {r['ms']:.3f} | {_fmt(r['clock_mhz'], '.0f')} | "
                     f"{_fmt(r['power_w'], '.0f')} | {_fmt(r['kclocks'], '.0f')} | {r['exp_kclocks']:.0f} | "
                     f"{r['tensor_kclocks']:.0f} | {_fmt(share, '.2f')} |")
    lines += ["", "Mass mode with a forward as fast as cuDNN's and a key-mass pass whose exponentials and "
              "products run back to back at their peak rates (at the clock cuDNN ran):", "",
              "| shape | cuDNN ms | key-mass pass at exp + tensor, ms | mass floor / cuDNN |", "|---|---:|---:|---:|"]
    by = {(r["shape"], r["kernel"]): r for r in data["rows"]}
    for shape in dict.fromkeys(r["shape"] for r in data["rows"]):
        cudnn, pass_ = by.get((shape, "cudnn_sdpa")), by.get((shape, "key_mass"))
        if not cudnn or not pass_ or not cudnn["clock_mhz"]:
            continue
        pass_ms = (pass_["exp_kclocks"] + pass_["tensor_kclocks"]) / cudnn["clock_mhz"]
        lines.append(f"| {shape} | {cudnn['ms']:.3f} | {pass_ms:.3f} | {(cudnn['ms'] + pass_ms) / cudnn['ms']:.2f} |")
    return lines + [""]


# Issue 15's whole-model bars on the ratio to the stock processor of the same shape and run:
# (eager, graphed) for the sink modes; trace-only <= 1.10; random and shared within 5% of
# sink_score (k = 1) in the same way (eager or graphed).
WHOLE_MODEL_BARS = {"sd3m_transformer_1024": (1.15, 1.15), "flux_transformer_1024": (1.15, 1.10),
                    "sdxl_unet_1024": (1.30, 1.12), "sd3m_denoise_28": (1.15, 1.15)}
TRACE_ONLY_BAR = 1.10
CONTROL_SPREAD = 1.05
TRACING_ADDS = 1.05  # issue 18: tracing adds <= 5% (sink_traced against sink_score of the same run and mode)
WHOLE_MODEL_MODES = ["sink_score", "sink_value", "random", "shared", "trace_only", "sink_traced"]


def _whole_model_verdict(row, by) -> str:
    graphed = row["mode"].endswith("_graph")
    mode = row["mode"].removesuffix("_graph")
    ratio = row.get("ratio")
    bars = WHOLE_MODEL_BARS.get(row["shape"])
    if ratio is None or ratio != ratio or bars is None or mode == "stock":
        return ""
    if mode in ("sink_score", "sink_value"):
        bar = bars[1] if graphed else bars[0]
        return f"<= {bar}: {'met' if ratio <= bar else 'missed'}"
    if mode == "trace_only":
        return f"<= {TRACE_ONLY_BAR}: {'met' if ratio <= TRACE_ONLY_BAR else 'missed'}"
    sink = by.get((row["shape"], "sink_score_graph" if graphed else "sink_score"))
    if sink and sink.get("ratio"):
        spread = ratio / sink["ratio"]
        bar = TRACING_ADDS if mode == "sink_traced" else CONTROL_SPREAD
        return f"{spread:.3f}x sink_score (<= {bar}): {'met' if spread <= bar else 'missed'}"
    return ""


def whole_model_section(path: Path) -> list[str]:
    """The whole-model rows of one run file (benchmarks/whole_model.py): a table with issue
    15's bars and a plot of the ratio to the stock processor, eager and graphed, by model and
    mode."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    meta, rows = data["meta"], data["rows"]
    by = {(r["shape"], r["mode"]): r for r in rows}
    png = path.with_suffix(".png")
    _whole_model_plot(rows, png)
    lines = [f"## Whole models (`results/{path.name}`)", "",
             f"`python benchmarks/whole_model.py` ({meta['gpu']}, torch {meta['torch']}, triton {meta.get('triton')}, "
             f"diffusers {meta.get('diffusers')}, {meta['date']}, commit {meta.get('commit')}): random-weight models "
             "built from their configs, bf16, 1024px, sinkattn in every attention layer; median of "
             f"{'/'.join(str(n) for n in sorted({r.get('reps') for r in rows if r.get('reps')})) or '?'} forwards "
             "(CUDA events; the count per row in the JSON). `_graph`: one forward captured in a "
             "CUDA graph, replays timed; the ratio is to `stock` or `stock_graph` of the same model in the same run.",
             *(["", "**Tiny configs on a CPU (`--tiny`): a smoke run of the script, not a measurement.**"]
               if meta.get("tiny") else []),
             "", f"![whole-model ratio to the stock processor]({png.relative_to(path.parent.parent)})", "",
             "| model | mode | ms | ratio to stock | bar | peak extra MiB |", "|---|---|---:|---:|---|---:|"]
    for r in rows:
        note = f" ({r['error']})" if r.get("error") else ""
        lines.append(f"| {r['shape']} | {r['mode']}{note} | {_fmt(r['ms'], '.3f')} | {_fmt(r.get('ratio'), '.2f')} | "
                     f"{_whole_model_verdict(r, by)} | {_fmt(r.get('peak_extra_mb'), '.0f')} |")
    return lines + [""]


def _whole_model_plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    by = {(r["shape"], r["mode"]): r.get("ratio") for r in rows}
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / (2 * len(WHOLE_MODEL_MODES))
    for i, mode in enumerate(WHOLE_MODEL_MODES):
        for j, suffix in enumerate(("", "_graph")):
            ys = [by.get((s, mode + suffix)) for s in shapes]
            ys = [y if y is not None and y == y else 0.0 for y in ys]
            offset = (2 * i + j) * width
            ax.bar([k + offset for k in range(len(shapes))], ys, width, label=mode + suffix,
                   color=f"C{i}", hatch="//" if suffix else None, alpha=0.6 if suffix else 1.0)
    for k, shape in enumerate(shapes):
        if shape in WHOLE_MODEL_BARS:
            for bar, style in zip(WHOLE_MODEL_BARS[shape], ("--", ":")):
                ax.hlines(bar, k - width / 2, k + 0.8 - width / 2, colors="r", linestyles=style, lw=0.8)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(shapes))], shapes)
    ax.set_ylabel("time / stock processor time")
    ax.set_title("Whole models: ratio to the stock processor (hatched: CUDA graph; red: issue 15 bars, eager --, graphed :)")
    ax.legend(ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pytest_benchmark_section(path: Path) -> list[str]:
    """Medians of the pytest-benchmark suite (wall clock per call with a synchronisation)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    lines = [f"## pytest-benchmark suite (`results/{path.name}`)", "",
             f"`pytest benchmarks/test_bench.py --benchmark-json=...` ({data['machine_info'].get('node', '')}, "
             f"{data.get('datetime', '')}): wall clock per call including a device synchronisation, so the "
             "host's launch cost shows at small shapes. Median ms over "
             f"{data['benchmarks'][0]['stats']['rounds'] if data['benchmarks'] else 0} rounds.", "",
             "| test | median ms |", "|---|---:|"]
    for b in data["benchmarks"]:
        lines.append(f"| {b['name']} | {b['stats']['median'] * 1e3:.3f} |")
    return lines + [""]


def history(results: Path) -> list[dict]:
    """Every earlier run, one line per (run, shape) of ``results/history.jsonl`` (run.py appends
    to it): {"run", "rerun", "shape", "gpu", "torch", "triton", "cuda", "cudnn", "date",
    "commit", "rows": [{"mode", "ms", "baseline_ms", "ratio", "tflops", "peak_extra_mb"}]}."""
    path = results / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rerun_sections(results: Path, meta: dict) -> list[str]:
    """Other measurements of some shapes beside the main run: re-runs on the same commit
    (``run.py --rerun --shapes ...``: the small shapes are host-bound and the device machine's
    host state varies between and within runs) and later runs of some shapes on a later
    commit (a session that re-measured what its kernel change touched), from
    ``results/history.jsonl``."""
    lines = []
    runs: dict[str, list[dict]] = {}
    for line in history(results):
        rerun = line.get("rerun") and line.get("commit") == meta.get("commit")
        later = line.get("commit") != meta.get("commit") and line["date"] > meta["date"]
        if rerun or later:
            runs.setdefault(line["run"], []).append(line)
    for run, shapes in sorted(runs.items(), key=lambda item: item[1][0]["date"]):
        first = shapes[0]
        rows = [{"shape": line["shape"], **row} for line in shapes for row in line["rows"]]
        what = "Re-run" if first.get("commit") == meta.get("commit") else "Later run"
        lines += [f"## {what} of {', '.join(sorted(line['shape'] for line in shapes))} "
                  f"(commit {first.get('commit')})", "",
                  f"`results/history.jsonl`, run `{run}`: {first['gpu']}, torch {first['torch']}, triton "
                  f"{first['triton']}, date {first['date']}, commit {first.get('commit')}.", "", table(rows), ""]
    return lines


def _run_date(path: Path) -> str:
    """A whole-model JSON's run date (its sections appear in the order the runs were made)."""
    return json.loads(path.read_text())["meta"]["date"]


def main(argv=None):
    src = Path((argv or sys.argv[1:] or [Path(__file__).parent / "results" / "h200.json"])[0])
    data = json.loads(src.read_text())
    meta = data["meta"]
    png = src.with_suffix(".png")
    plot(data["rows"], png)
    out = src.parent.parent / "RESULTS.md"
    body = [
        "# Benchmark results",
        "",
        f"Generated by `python benchmarks/report.py` from `{src.relative_to(src.parent.parent)}` "
        f"(`python benchmarks/run.py --forward`).",
        "",
        f"GPU: {meta['gpu']}; torch {meta['torch']}; triton {meta['triton']}; CUDA {meta.get('cuda')}; "
        f"cuDNN {meta.get('cudnn')}; date {meta['date']}; commit {meta.get('commit')}.",
        "",
        "bf16 inputs in diffusers' strided layout; times are medians of `triton.testing.do_bench`; the ratio is "
        "to cuDNN SDPA on the same tensors (for the forward rows, to the stock forward); TFLOP/s count "
        "4·B·H·Nq·Nk·D per call; peak extra MiB is the peak allocation during the call over what was allocated "
        "before it. Kernel notes, predictions and the analysis of the gaps: `kernels/NOTES.md`.",
        "",
        f"![ratio to cuDNN by shape and mode]({png.relative_to(src.parent.parent)})",
        "",
        table(data["rows"]),
        "",
        *rerun_sections(src.parent, meta),
        *(line for path in sorted(src.parent.glob("whole_model_h200*.json"), key=_run_date)
          for line in whole_model_section(path)),
        *mass_floor_section(src.parent / "mass_floor_h200.json"),
        *(line for path in sorted(src.parent.glob("pytest_benchmark_h200*.json"))
          for line in pytest_benchmark_section(path)),
    ]
    out.write_text("\n".join(body))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
