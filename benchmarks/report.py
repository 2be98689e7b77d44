"""Turn a benchmark JSON (benchmarks/run.py) into RESULTS.md and a plot of the ratio to
cuDNN SDPA by shape and mode.

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
    """The key-mass pass with its tensor-core work or its exponentials taken out
    (benchmarks/mass_floor.py)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    lines = ["## What bounds the key-mass pass", "",
             f"`python benchmarks/mass_floor.py` ({data['meta']['gpu']}, torch {data['meta']['torch']}, "
             f"triton {data['meta']['triton']}, {data['meta']['date']}), SD3-medium shape: the pass with its parts "
             "taken out (see the script's docstring).", "",
             "| tile | full | dot_only | exp_only | synth_only |", "|---|---:|---:|---:|---:|"]
    by_tile: dict[str, dict[str, float]] = {}
    for r in data["rows"]:
        by_tile.setdefault(r["tile"], {})[r["variant"]] = r["ms"]
    for tile, ms in by_tile.items():
        lines.append(f"| {tile} | " + " | ".join(_fmt(ms.get(v), ".3f") for v in
                                                ("full", "dot_only", "exp_only", "synth_only")) + " |")
    return lines + [""]


def pytest_benchmark_section(path: Path) -> list[str]:
    """Medians of the pytest-benchmark suite (wall clock per call with a synchronisation)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    lines = ["## pytest-benchmark suite", "",
             f"`pytest benchmarks/test_bench.py --benchmark-json=...` ({data['machine_info'].get('node', '')}, "
             f"{data.get('datetime', '')}): wall clock per call including a device synchronisation, so the "
             "host's launch cost shows at small shapes. Median ms over "
             f"{data['benchmarks'][0]['stats']['rounds'] if data['benchmarks'] else 0} rounds.", "",
             "| test | median ms |", "|---|---:|"]
    for b in data["benchmarks"]:
        lines.append(f"| {b['name']} | {b['stats']['median'] * 1e3:.3f} |")
    return lines + [""]


def rerun_sections(results: Path, commit) -> list[str]:
    """Re-runs of some shapes on the same commit (``results/logs/*_rerun.json``, written by
    ``run.py --shapes ...``): the small shapes are host-bound and the device machine's host
    state varies between and within runs, so a second measurement is shown beside the run."""
    lines = []
    for path in sorted((results / "logs").glob("*_rerun.json")):
        data = json.loads(path.read_text())
        if data["meta"].get("commit") != commit:
            continue
        meta = data["meta"]
        lines += [f"## Re-run of {', '.join(sorted({r['shape'] for r in data['rows']}))} (same commit)", "",
                  f"`{path.relative_to(results.parent)}`: {meta['gpu']}, torch {meta['torch']}, triton "
                  f"{meta['triton']}, date {meta['date']}, commit {commit}.", "", table(data["rows"]), ""]
    return lines


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
        *rerun_sections(src.parent, meta.get("commit")),
        *mass_floor_section(src.parent / "mass_floor_h200.json"),
        *pytest_benchmark_section(src.parent / "pytest_benchmark_h200.json"),
    ]
    out.write_text("\n".join(body))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
