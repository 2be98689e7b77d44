"""`sinkattn report DIR`: merge the shards of a run folder, compute the statistics, write
summary.json, summary.md and plots/*.png."""

from __future__ import annotations

import json
import os
import time
import warnings

from . import plots
from .stats import paired_deltas, paired_test, random_control_deltas, summarize
from .store import atomic_write_text, merged_records, record_key, results_files

__all__ = ["ReportWarning", "write_report", "dose_table"]

METRIC_ORDER = ("clip_t", "image_reward", "hps_v21", "lpips")


def _series(spec: dict) -> str:
    layers = "all" if spec.get("layers") is None else ",".join(str(x) for x in spec["layers"])
    s = f"{spec['path']}/{spec['select']}/L{layers}"
    if spec.get("steps") is not None:
        s += f"/S{','.join(str(x) for x in spec['steps'])}"
    if spec.get("timesteps") is not None:
        s += f"/T{spec['timesteps'][0]:g}-{spec['timesteps'][1]:g}"
    if spec.get("eta"):
        s += f"/eta{spec['eta']:g}"
    for key, default in (("mass_queries", "image"), ("apply_queries", "all"), ("candidates", "all")):
        if spec.get(key, default) != default:
            s += f"/{key}={spec[key]}"
    return s


def dose_table(records, specs, metrics, n_boot, seed) -> list[dict]:
    """Per (metric, control, series, k): the paired test of the deltas, random draws averaged per pair."""
    groups: dict[tuple, list[str]] = {}
    for c in specs:
        if c["control"] == "baseline":
            continue
        groups.setdefault((c["control"], _series(c), c["k"]), []).append(c["name"])
    rows = []
    for (control, series, k), names in groups.items():
        for metric in metrics:
            deltas = (random_control_deltas(records, metric, names) if len(names) > 1
                      else paired_deltas(records, metric, names[0]))
            t = paired_test(deltas.values(), f"dose|{control}|{series}|{k}|{metric}", n_boot, seed)
            rows.append(dict(metric=metric, control=control, series=series, k=k, conditions=names, n=t.n,
                             mean=t.mean, ci_low=t.ci_low, ci_high=t.ci_high))
    return rows


def _fmt(x, digits=4):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def write_report(run_dir: str, bootstrap: int | None = None, seed: int | None = None, progress: bool = False) -> dict:
    """Merge every results file of ``run_dir``, write the summary and the plots; returns summary.json's dict."""
    run_dir = os.path.abspath(run_dir)
    config = {}
    if os.path.exists(os.path.join(run_dir, "config.json")):
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    n_boot = int(bootstrap if bootstrap is not None else config.get("bootstrap", 10000))
    seed = int(seed if seed is not None else config.get("stats_seed", 0))
    files = results_files(run_dir)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no results*.jsonl (is this a sinkattn run folder?)")
    records = merged_records(run_dir)
    shard_files = [f for f in files if ".shard-" in os.path.basename(f)]
    if shard_files:  # one merged file for readers that expect results.jsonl
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_text(os.path.join(run_dir, "results.jsonl"), lines)

    specs, seen = [], set()
    for r in records:
        if r["condition"] not in seen:
            seen.add(r["condition"])
            specs.append(r["condition_spec"])
    specs.sort(key=lambda s: s["name"] != "baseline")
    names = {m for r in records for m in r["metrics"]}
    metrics = [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))
    untrained = sorted({m for r in records for m, info in r.get("metric_info", {}).items() if info.get("untrained")})
    note = f"UNTRAINED scorers (random weights): {', '.join(untrained)}" if untrained else ""

    stats = summarize(records, specs, metrics, n_boot=n_boot, seed=seed)
    dose = dose_table(records, specs, metrics, n_boot, seed)
    missing = {m: sum(1 for r in records if r["metrics"].get(m) is None) for m in metrics}
    errors = {}
    for r in records:
        for m, e in r.get("metric_errors", {}).items():
            errors.setdefault(m, e)
    counts = {}
    for r in records:
        counts[r["condition"]] = counts.get(r["condition"], 0) + 1

    plot_dir = os.path.join(run_dir, "plots")
    made = [plots.dose_response(dose, metrics, os.path.join(plot_dir, "dose_response.png"), note)]
    if "lpips" in metrics:
        made.append(plots.lpips_sink_vs_random(dose, os.path.join(plot_dir, "lpips_sink_vs_random.png"), note))
    traces = merged_records(run_dir, "trace")
    traces = [t["trace"] for t in traces]
    made.append(plots.sink_atlas(traces, os.path.join(plot_dir, "sink_atlas.png")))
    problems: list[str] = []
    made.append(_qualitative(run_dir, records, specs, os.path.join(plot_dir, "qualitative_grid.png"), problems))
    for p in problems:
        warnings.warn(f"sinkattn report: {p}", ReportWarning, stacklevel=2)

    summary = {
        "run_dir": run_dir, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results_files": [os.path.basename(f) for f in files],
        "records": len(records), "prompts": len({r["prompt_id"] for r in records}),
        "seeds": len({(r["prompt_id"], r["seed"]) for r in records}),
        "conditions": [dict(s, records=counts.get(s["name"], 0)) for s in specs],
        "metrics": metrics, "untrained_metrics": untrained, "missing_values": missing, "first_errors": errors,
        "statistics": stats, "dose_response": dose,
        "plots": [os.path.relpath(p, run_dir) for p in made],
        "traced_images": len(traces), "warnings": problems,
        "config": config,
    }
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write_text(os.path.join(run_dir, "summary.md"), _markdown(summary))
    return summary


class ReportWarning(UserWarning):
    """A record names an image the report may not or cannot show; the report goes on without it."""


def _image_path(run_dir: str, rel, problems: list[str]) -> str | None:
    """The real path of a record's image when it lies inside the run folder, else None.

    Why: results.jsonl is data, and a crafted one must not make the report read files
    elsewhere; comparing real paths catches absolute paths, `..` and symlinks pointing out."""
    if not isinstance(rel, str) or not rel:
        problems.append(f"image {rel!r}: not a path, not shown")
        return None
    root = os.path.realpath(run_dir)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.isabs(rel) or os.path.commonpath([root, path]) != root:
        problems.append(f"image {rel!r}: outside the run folder (resolves to {path}), not opened")
        return None
    return path


def _load_image(run_dir: str, rel, problems: list[str]):
    """A record's image as RGB, or None with a problem noted: a missing or undecodable file
    (a crafted record, a partial copy) costs its grid cell, not the report."""
    from PIL import Image

    path = _image_path(run_dir, rel, problems)
    if path is None:
        return None
    if not os.path.isfile(path):
        problems.append(f"image {rel!r}: missing, not shown")
        return None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL's decoders raise OSError, ValueError, SyntaxError, ...
        problems.append(f"image {rel!r}: cannot be read ({type(err).__name__}: {err}), not shown")
        return None


def _qualitative(run_dir, records, specs, path, problems, max_rows=4, max_cols=8):
    cols = ["baseline"]
    for s in specs:  # sinks first, then one draw of each random control, then bottom
        if s["control"] == "sink":
            cols.append(s["name"])
    for s in specs:
        if s["control"] == "random" and s.get("draw") in (0, None):
            cols.append(s["name"])
    for s in specs:
        if s["control"] == "bottom":
            cols.append(s["name"])
    cols = cols[:max_cols]
    by_key = {record_key(r): r for r in records}
    pairs = sorted({(r["prompt_id"], r["seed"]) for r in records if r["condition"] == "baseline"})[:max_rows]
    cells, labels = [], []
    for pid, seed in pairs:
        row = []
        for c in cols:
            r = by_key.get((pid, seed, c))
            row.append(None if r is None else _load_image(run_dir, r.get("image"), problems))
        cells.append(row)
        labels.append(f"{pid}: {by_key[(pid, seed, 'baseline')]['prompt']}")
    return plots.qualitative_grid(cells, labels, cols, path)


def _markdown(s: dict) -> str:
    out = [f"# sinkattn study: {os.path.basename(s['run_dir'])}", ""]
    if s["untrained_metrics"]:
        out += [f"> **UNTRAINED SCORERS** (random weights): {', '.join(s['untrained_metrics'])}. "
                "Their numbers exercise the pipeline only; they say nothing about image quality.", ""]
    cfg = s.get("config", {})
    out += [f"- model: `{cfg.get('model')}` ({cfg.get('family')}, {cfg.get('dtype')}), {cfg.get('steps')} steps, "
            f"CFG {cfg.get('guidance')}, {cfg.get('width')}x{cfg.get('height')}",
            f"- records: {s['records']} images, {s['prompts']} prompts, {s['seeds']} (prompt, seed) pairs, "
            f"{len(s['conditions'])} conditions; from {', '.join(s['results_files'])}",
            "- k = keys suppressed per attention head (select=shared: top_k = k x heads shared keys)",
            f"- statistics: paired deltas (condition - baseline, same prompt, seed and initial latents); "
            f"bootstrap {s['statistics']['bootstrap']['resamples']} resamples (seed "
            f"{s['statistics']['bootstrap']['seed']}), Wilcoxon signed-rank and paired t, Holm across "
            "each family", ""]
    missing = {m: n for m, n in s["missing_values"].items() if n}
    if missing:
        out += ["**Missing metric values** (recorded as null with the error): " +
                ", ".join(f"{m}: {n}" for m, n in missing.items()), ""]
        for m, e in s["first_errors"].items():
            out.append(f"- {m}: first error `{e[:200]}`")
        out.append("")
    out += ["## Conditions vs baseline", "",
            "| condition | metric | n | mean delta | 95% CI | p Wilcoxon (Holm) | p t (Holm) |",
            "|---|---|---|---|---|---|---|"]
    for row in s["statistics"]["vs_baseline"]:
        t = row["test"]
        out.append(f"| {row['condition']} | {row['metric']} | {t['n']} | {_fmt(t['mean'])} | "
                   f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] | {_fmt(t['p_wilcoxon'], 3)} "
                   f"({_fmt(t['p_wilcoxon_holm'], 3)}) | {_fmt(t['p_t'], 3)} ({_fmt(t['p_t_holm'], 3)}) |")
    if s["statistics"]["sink_minus_random"]:
        out += ["", "## Sink minus equal-budget random (delta of deltas)", "",
                "| sink condition | metric | n | sink delta | random delta | ratio | dd mean | 95% CI | p Wilcoxon (Holm) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in s["statistics"]["sink_minus_random"]:
            t = row["test"]
            out.append(f"| {row['condition']} | {row['metric']} | {t['n']} | {_fmt(row['sink_mean'])} | "
                       f"{_fmt(row['random_mean'])} | {_fmt(row['ratio'], 3)} | {_fmt(t['mean'])} | "
                       f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] | {_fmt(t['p_wilcoxon'], 3)} "
                       f"({_fmt(t['p_wilcoxon_holm'], 3)}) |")
    if s["statistics"]["by_tag"]:
        out += ["", "## By GenEval tag (mean delta, 95% CI)", "", "| tag | condition | metric | n | mean | 95% CI |",
                "|---|---|---|---|---|---|"]
        for row in s["statistics"]["by_tag"]:
            t = row["test"]
            out.append(f"| {row['tag']} | {row['condition']} | {row['metric']} | {t['n']} | {_fmt(t['mean'])} | "
                       f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] |")
    if s["warnings"]:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in s["warnings"]]
    out += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({p})" for p in s["plots"]] + [""]
    return "\n".join(out)
