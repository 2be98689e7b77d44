"""`sinkattn report DIR`: merge the shards of a run folder, compute the statistics, write
summary.json, summary.md and plots/*.png."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter

from . import plots
from .stats import paired_deltas, paired_test, random_control_deltas, summarize
from .store import atomic_write_text, merged_records, record_key, results_files

__all__ = ["ReportWarning", "write_report", "dose_table"]

METRIC_ORDER = ("clip_t", "image_reward", "hps_v21", "lpips")
PLOT_NAMES = ("dose_response.png", "lpips_sink_vs_random.png", "sink_atlas.png", "qualitative_grid.png")
RANDOM_MODELS = ("tiny",)  # model names whose pipeline is built with random weights (models.load_pipeline)
BANNER = "random weights: numbers exercise the machinery, not the science"
NO_METRICS = ("No metrics were computed (this run used `--metrics none`), so there are no paired statistics "
              "and no dose-response plot. To score the images, run the same command into a new `--out` folder "
              "with `--metrics clip_t,lpips` (or clip_t,image_reward,hps_v21,lpips); a rerun into this folder "
              "adds nothing, since every record is already there.")


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
    config = _config(run_dir)
    n_boot = int(bootstrap if bootstrap is not None else config.get("bootstrap", 10000))
    seed = int(seed if seed is not None else config.get("stats_seed", 0))
    files = results_files(run_dir)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no results*.jsonl (is this a sinkattn run folder?)")
    records = merged_records(run_dir)
    if any(".shard-" in os.path.basename(f) for f in files):  # one merged file for readers that expect results.jsonl
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
    random_weights = _random_weights(records, config, untrained)
    stats = summarize(records, specs, metrics, n_boot=n_boot, seed=seed)
    dose = dose_table(records, specs, metrics, n_boot, seed)
    traces = [t["trace"] for t in merged_records(run_dir, "trace")]
    problems: list[str] = []
    made = _plots(run_dir, records, specs, metrics, dose, traces, untrained, random_weights["banner"], problems)
    for p in problems:
        warnings.warn(f"sinkattn report: {p}", ReportWarning, stacklevel=2)

    counts = Counter(r["condition"] for r in records)
    summary = {
        "run_dir": run_dir, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results_files": [os.path.basename(f) for f in files],
        "records": len(records), "prompts": len({r["prompt_id"] for r in records}),
        "seeds": len({(r["prompt_id"], r["seed"]) for r in records}),
        "conditions": [dict(s, records=counts[s["name"]]) for s in specs],
        "metrics": metrics, "metrics_note": None if metrics else NO_METRICS,
        "untrained_metrics": untrained, "random_weights": random_weights,
        "missing_values": {m: sum(1 for r in records if r["metrics"].get(m) is None) for m in metrics},
        "first_errors": _first_errors(records),
        "statistics": stats, "dose_response": dose,
        "plots": [os.path.relpath(p, run_dir) for p in made],
        "traced_images": len(traces), "warnings": problems,
        "config": config,
    }
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write_text(os.path.join(run_dir, "summary.md"), _markdown(summary))
    return summary


def _config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _first_errors(records) -> dict:
    errors: dict = {}
    for r in records:
        for m, e in r.get("metric_errors", {}).items():
            errors.setdefault(m, e)
    return errors


def _random_weights(records, config: dict, untrained: list[str]) -> dict:
    """Which weights are random. Why: the tiny preset builds its diffusion pipeline from a
    config with random weights, so its images and every number made from them (like those
    of untrained scorers) test the code, not the hypothesis; outputs must say so."""
    models = {r.get("model") for r in records} | {config.get("model")}
    random_model = bool(models & set(RANDOM_MODELS))
    return {"model": random_model, "scorers": list(untrained),
            "banner": BANNER if random_model or untrained else None}


def _plots(run_dir, records, specs, metrics, dose, traces, untrained, banner, problems) -> list[str]:
    """Draw the figures that have something to show (no metrics: no dose-response), and
    remove a stale copy of one left out, so plots/ never shows an older run's numbers."""
    plot_dir = os.path.join(run_dir, "plots")
    note = f"UNTRAINED scorers (random weights): {', '.join(untrained)}" if untrained else ""
    banner = banner or ""
    made = []
    if metrics:
        made.append(plots.dose_response(dose, metrics, os.path.join(plot_dir, "dose_response.png"), note,
                                        banner=banner))
    if "lpips" in metrics:
        made.append(plots.lpips_sink_vs_random(dose, os.path.join(plot_dir, "lpips_sink_vs_random.png"), note,
                                               banner=banner))
    made.append(plots.sink_atlas(traces, os.path.join(plot_dir, "sink_atlas.png"), banner=banner))
    made.append(_qualitative(run_dir, records, specs, os.path.join(plot_dir, "qualitative_grid.png"), problems,
                             banner=banner))
    for name in PLOT_NAMES:
        stale = os.path.join(plot_dir, name)
        if stale not in made and os.path.isfile(stale):
            os.remove(stale)
    return made


class ReportWarning(UserWarning):
    """A record names an image the report may not or cannot show; the report goes on without it."""


def _image_path(run_dir: str, rel, problems: list[str]) -> str | None:
    """The real path of a record's image when it lies inside the run folder, else None.

    Why: results.jsonl is data, and a crafted one must not make the report read files
    elsewhere; comparing real paths catches absolute paths, `..` and symlinks pointing out."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:  # os.path raises on a NUL byte
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


def _qualitative(run_dir, records, specs, path, problems, max_rows=4, max_cols=8, banner=""):
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
    return plots.qualitative_grid(cells, labels, cols, path, banner=banner)


def _markdown(s: dict) -> str:
    out = [f"# sinkattn study: {os.path.basename(s['run_dir'])}", ""] + _caveats(s) + _overview(s)
    if s["metrics"]:
        out += _missing(s) + _tables(s["statistics"])
    else:
        out += [f"**{s['metrics_note']}**", ""]
    if s["warnings"]:
        out += ["## Warnings", ""] + [f"- {w}" for w in s["warnings"]] + [""]
    out += ["## Plots", ""] + [f"![{os.path.basename(p)}]({p})" for p in s["plots"]] + [""]
    return "\n".join(out)


def _caveats(s: dict) -> list[str]:
    """The random-weights notes, first: a reader must see them before any number."""
    rw, out = s["random_weights"], []
    if rw["banner"]:
        out += [f"> **Warning: {rw['banner']}.**", ""]
    if rw["model"]:
        out += ["> **RANDOM-WEIGHT DIFFUSION MODEL** (`tiny`): the pipeline is built from a config with random "
                "weights, so the images are not generations of a trained model.", ""]
    if s["untrained_metrics"]:
        out += [f"> **UNTRAINED SCORERS** (random weights): {', '.join(s['untrained_metrics'])}. "
                "Their numbers exercise the pipeline only; they say nothing about image quality.", ""]
    return out


def _overview(s: dict) -> list[str]:
    cfg = s.get("config", {})
    boot = s["statistics"]["bootstrap"]
    out = [f"- model: `{cfg.get('model')}` ({cfg.get('family')}, {cfg.get('dtype')}), {cfg.get('steps')} steps, "
           f"CFG {cfg.get('guidance')}, {cfg.get('width')}x{cfg.get('height')}",
           f"- records: {s['records']} images, {s['prompts']} prompts, {s['seeds']} (prompt, seed) pairs, "
           f"{len(s['conditions'])} conditions; from {', '.join(s['results_files'])}",
           "- k = keys suppressed per attention head (select=shared: top_k = k x heads shared keys)"]
    if s["metrics"]:
        out.append(f"- statistics: paired deltas (condition - baseline, same prompt, seed and initial latents); "
                   f"bootstrap {boot['resamples']} resamples (seed {boot['seed']}), Wilcoxon signed-rank and "
                   "paired t, Holm across each family")
    return out + [""]


def _missing(s: dict) -> list[str]:
    missing = {m: n for m, n in s["missing_values"].items() if n}
    if not missing:
        return []
    out = ["**Missing metric values** (recorded as null with the error): " +
           ", ".join(f"{m}: {n}" for m, n in missing.items()), ""]
    out += [f"- {m}: first error `{e[:200]}`" for m, e in s["first_errors"].items()]
    return out + [""]


def _tables(st: dict) -> list[str]:
    out = ["## Conditions vs baseline", "",
           "| condition | metric | n | mean delta | 95% CI | p Wilcoxon (Holm) | p t (Holm) |",
           "|---|---|---|---|---|---|---|"]
    for row in st["vs_baseline"]:
        t = row["test"]
        out.append(f"| {row['condition']} | {row['metric']} | {t['n']} | {_fmt(t['mean'])} | "
                   f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] | {_fmt(t['p_wilcoxon'], 3)} "
                   f"({_fmt(t['p_wilcoxon_holm'], 3)}) | {_fmt(t['p_t'], 3)} ({_fmt(t['p_t_holm'], 3)}) |")
    out.append("")
    if st["sink_minus_random"]:
        out += ["## Sink minus equal-budget random (delta of deltas)", "",
                "| sink condition | metric | n | sink delta | random delta | ratio | dd mean | 95% CI | p Wilcoxon (Holm) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in st["sink_minus_random"]:
            t = row["test"]
            out.append(f"| {row['condition']} | {row['metric']} | {t['n']} | {_fmt(row['sink_mean'])} | "
                       f"{_fmt(row['random_mean'])} | {_fmt(row['ratio'], 3)} | {_fmt(t['mean'])} | "
                       f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] | {_fmt(t['p_wilcoxon'], 3)} "
                       f"({_fmt(t['p_wilcoxon_holm'], 3)}) |")
        out.append("")
    return out + _by_tag(st)


def _by_tag(st: dict) -> list[str]:
    """The by-tag table, with the groups too small to test counted, not listed."""
    hidden = st.get("by_tag_hidden", {})
    if not st["by_tag"] and not hidden.get("groups"):
        return []
    out = ["## By GenEval tag (mean delta, 95% CI)", ""]
    if hidden.get("groups"):
        out += [f"{hidden['groups']} (tag, condition, metric) groups hidden: {hidden['reason']}.", ""]
    if st["by_tag"]:
        out += ["| tag | condition | metric | n | mean | 95% CI |", "|---|---|---|---|---|---|"]
        for row in st["by_tag"]:
            t = row["test"]
            out.append(f"| {row['tag']} | {row['condition']} | {row['metric']} | {t['n']} | {_fmt(t['mean'])} | "
                       f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] |")
        out.append("")
    return out
