"""`sinkattn report DIR`: merge the shards of a run folder, compute the statistics, write
summary.json, summary.md and plots/*.png."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter

from . import atlas, plots
from .html_report import write_html_report
from .stats import E1_TAG_WORDS, paired_deltas, paired_test, random_control_deltas, series, summarize
from .store import FolderLock, atomic_write_text, merged_records, record_key, results_files

__all__ = ["ReportWarning", "write_report", "dose_table"]

METRIC_ORDER = ("clip_t", "image_reward", "hps_v21", "lpips")
PLOT_NAMES = ("dose_response.png", "sink_minus_random.png", "lpips_sink_vs_random.png", "sink_atlas.png",
              "qualitative_grid.png", "atlas_figure2.png", "atlas_sink_locations.png")
RANDOM_MODELS = ("tiny",)  # model names whose pipeline is built with random weights (models.load_pipeline)
BANNER = "random weights: numbers exercise the machinery, not the science"
NO_METRICS = ("No metrics were computed (this run used `--metrics none`), so there are no paired statistics "
              "and no dose-response plot. To score the stored images, rerun the same command into this folder "
              "with `--metrics clip_t,lpips` (or clip_t,image_reward,hps_v21,lpips): the records and images are "
              "kept, and only the metric values they lack are computed, on the stored images (metrics*.jsonl).")


def dose_table(records, specs, metrics, n_boot, seed) -> list[dict]:
    """Per (metric, control, series, k): the paired test of the deltas, random draws averaged per pair."""
    groups: dict[tuple, list[str]] = {}
    for c in specs:
        if c["control"] == "baseline":
            continue
        groups.setdefault((c["control"], series(c), c["k"]), []).append(c["name"])
    rows = []
    for (control, label, k), names in groups.items():
        for metric in metrics:
            deltas = (random_control_deltas(records, metric, names) if len(names) > 1
                      else paired_deltas(records, metric, names[0]))
            t = paired_test(deltas.values(), f"dose|{control}|{label}|{k}|{metric}", n_boot, seed)
            rows.append(dict(metric=metric, control=control, series=label, k=k, conditions=names, n=t.n,
                             mean=t.mean, ci_low=t.ci_low, ci_high=t.ci_high))
    return rows


def _fmt(x, digits=4):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def write_report(run_dir: str, bootstrap: int | None = None, seed: int | None = None, progress: bool = False,
                 fid: bool | None = None, fid_calibration: str | None = None) -> dict:
    """Merge every results file of ``run_dir``, write the summary and the plots; returns summary.json's dict.

    fid: compute FID per condition against the baseline images (None: when the run's metrics,
    config.json's "metrics", include "fid"); fid_calibration: another run folder whose baseline
    images (same prompts and settings, other seeds) give the calibration FID of the FID shift.

    One writer at a time per folder (a blocking flock on ``RUN/.lock.report``): shards that
    end together, or a user's ``sinkattn report`` during a run's own, would otherwise remove
    each other's temporary plot files; the later writer writes the report again."""
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if fid_calibration is not None and not os.path.isdir(fid_calibration):
        raise ValueError(f"--fid-calibration {fid_calibration}: not a folder")
    with FolderLock(os.path.join(run_dir, ".lock.report"), blocking=True):
        return _write_report(run_dir, bootstrap, seed, progress, fid, fid_calibration)


def _write_report(run_dir, bootstrap, seed, progress, fid, fid_calibration) -> dict:
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
    wanted = fid if fid is not None else "fid" in (config.get("metrics") or [])
    fid_summary = _fid(run_dir, records, specs, config, fid_calibration, problems) if wanted else None
    if fid_summary and fid_summary.get("untrained"):
        untrained = sorted(set(untrained) | {"fid"})
        random_weights = _random_weights(records, config, untrained)
    made = _plots(run_dir, records, specs, metrics, dose, stats, traces, untrained, random_weights["banner"],
                  problems)
    for p in problems:
        warnings.warn(f"sinkattn report: {p}", ReportWarning, stacklevel=2)

    counts = Counter(r["condition"] for r in records)
    summary = {
        "run_dir": run_dir, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results_files": [os.path.basename(f) for f in files],
        "records": len(records), "prompts": len({r["prompt_id"] for r in records}),
        "seeds": len({(r["prompt_id"], r["seed"]) for r in records}),
        "conditions": [dict(s, records=counts[s["name"]]) for s in specs],
        "metrics": metrics, "metrics_note": None if metrics or fid_summary else NO_METRICS,
        "untrained_metrics": untrained, "random_weights": random_weights,
        "missing_values": {m: sum(1 for r in records if r["metrics"].get(m) is None) for m in metrics},
        "first_errors": _first_errors(records),
        "statistics": stats, "dose_response": dose, "fid": fid_summary,
        "plots": [os.path.relpath(p, run_dir) for p in made],
        "traced_images": len(traces), "warnings": problems,
        "config": config,
    }
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write_text(os.path.join(run_dir, "summary.md"), _markdown(summary))
    write_html_report(run_dir)  # report.html: the summary, plots and images on one page
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


def _plots(run_dir, records, specs, metrics, dose, stats, traces, untrained, banner, problems) -> list[str]:
    """Draw the figures that have something to show (no metrics: no dose-response), and
    remove a stale copy of one left out, so plots/ never shows an older run's numbers."""
    plot_dir = os.path.join(run_dir, "plots")
    note = f"UNTRAINED scorers (random weights): {', '.join(untrained)}" if untrained else ""
    banner = banner or ""
    made = []
    if metrics:
        made.append(plots.dose_response(dose, metrics, os.path.join(plot_dir, "dose_response.png"), note,
                                        banner=banner))
    if stats["sink_minus_random"]:
        rows = [dict(metric=r["metric"], series=r["series"], k=r["k"], mean=r["test"]["mean"],
                     ci_low=r["test"]["ci_low"], ci_high=r["test"]["ci_high"]) for r in stats["sink_minus_random"]]
        made.append(plots.delta_of_deltas(rows, stats["trend"], metrics,
                                          os.path.join(plot_dir, "sink_minus_random.png"), note, banner=banner))
    if "lpips" in metrics:
        made.append(plots.lpips_sink_vs_random(dose, os.path.join(plot_dir, "lpips_sink_vs_random.png"), note,
                                               banner=banner))
    made.append(plots.sink_atlas(traces, os.path.join(plot_dir, "sink_atlas.png"), banner=banner))
    made += atlas.write_atlas_figures(run_dir, summaries=traces, banner=banner)
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


FID_NOTE = ("FID is one number per set of images, so it is computed here from the stored images, not stored per "
            "record; it is biased upward at small n (and n here is far below the 2048 feature dimensions of the "
            "original's N=100 as well), so compare FIDs of equal n: the shift divides by a calibration FID of two "
            "baseline sets that differ only in their seeds.")


def _fid(run_dir, records, specs, config, calibration_dir, problems) -> dict:
    """FID of each condition's images against the baseline images of the same (prompt, seed)
    pairs (generated vs generated, as the original's calibration, FC:61-63), and the FID shift
    against the calibration FID of ``calibration_dir``. Why here: the runner's records are per
    image, and FID is per set. Weights missing: the section holds the message, the report goes on."""
    from ..metrics import MetricWeightsUnavailable, build_set_metric
    from ..metrics.fid import fid_shift

    options = dict((config.get("metric_options") or {}).get("fid", {}))
    untrained = bool(config.get("untrained_metrics"))
    try:
        extractor = build_set_metric("fid", weights=(config.get("metric_weights") or {}).get("fid"),
                                     device=_device(), untrained=untrained, **options)
    except (MetricWeightsUnavailable, ImportError) as err:
        problems.append(f"fid not computed: {str(err).splitlines()[0]}")
        return {"error": str(err), "untrained": untrained, "rows": [], "calibration": None, "note": FID_NOTE}
    cache: dict = {}
    base = {(r["prompt_id"], r["seed"]): r for r in records if r["condition"] == "baseline"}
    rows = [_fid_row(run_dir, [r for r in records if r["condition"] == c["name"]], base, extractor, cache, problems)
            | {"condition": c["name"], "control": c["control"], "k": c["k"]}
            for c in specs if c["name"] != "baseline"]
    calibration = _fid_calibration(run_dir, calibration_dir, base, config, extractor, cache, problems)
    for row in rows:
        row["shift"] = fid_shift(row["fid"], calibration["fid"] if calibration else None)
    return {"untrained": extractor.untrained, "weights": extractor.weights_source, "dims": extractor.dims,
            "package": "pytorch-fid", "rows": rows, "calibration": calibration, "note": FID_NOTE, "error": None}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fid_row(run_dir, cond_records, base, extractor, cache, problems) -> dict:
    """FID of one condition against the baseline images of its pairs; None below 2 pairs."""
    pairs = [(r, base[(r["prompt_id"], r["seed"])]) for r in cond_records if (r["prompt_id"], r["seed"]) in base]
    a = _features(run_dir, [r for r, _ in pairs], extractor, cache, problems)
    b = _features(run_dir, [b for _, b in pairs], extractor, cache, problems)
    keep = [i for i in range(len(pairs)) if a[i] is not None and b[i] is not None]
    if len(keep) < 2:
        return {"n": len(keep), "fid": None}
    return {"n": len(keep), "fid": extractor.distance([a[i] for i in keep], [b[i] for i in keep])}


def _features(run_dir, records, extractor, cache, problems) -> list:
    """Inception features of each record's image (None where it cannot be read), computed once per
    image and run folder, a batch of images in memory at a time."""
    todo = [r["image"] for r in records if (run_dir, r.get("image")) not in cache]
    for start in range(0, len(todo), extractor.batch_size):
        chunk = todo[start:start + extractor.batch_size]
        images = [_load_image(run_dir, rel, problems) for rel in chunk]
        ok = [i for i, im in enumerate(images) if im is not None]
        feats = extractor.features([images[i] for i in ok]) if ok else []
        for rel in chunk:
            cache[(run_dir, rel)] = None
        for i, f in zip(ok, feats):
            cache[(run_dir, chunk[i])] = f
    return [cache.get((run_dir, r.get("image"))) for r in records]


CALIBRATION_SETTINGS = ("model", "family", "dtype", "steps", "guidance", "height", "width", "max_sequence_length")


def _fid_calibration(run_dir, calibration_dir, base, config, extractor, cache, problems) -> dict | None:
    """FID of this run's baseline images against another run's baseline images of the same prompts
    (by id and text) and other seeds: what seed variation alone gives (the original's
    baseline_A vs baseline_B, FC:108-122). Pairs with a seed in both runs are left out (identical
    images); settings that differ from this run's are listed, since they calibrate another setting
    (the original's calibration ran at CFG 7.5, its tests at 7.0: D24)."""
    if not calibration_dir:
        return None
    other_dir = os.path.abspath(calibration_dir)
    other = {(r["prompt_id"], r["seed"]): r for r in merged_records(other_dir) if r["condition"] == "baseline"}
    texts = {pid: r["prompt"] for (pid, _), r in base.items()}
    other_texts = {pid: r["prompt"] for (pid, _), r in other.items()}
    ours = [r for key, r in base.items() if key not in other and other_texts.get(key[0]) == r["prompt"]]
    theirs = [r for key, r in other.items() if key not in base and texts.get(key[0]) == r["prompt"]]
    a = [f for f in _features(run_dir, ours, extractor, cache, problems) if f is not None]
    b = [f for f in _features(other_dir, theirs, extractor, cache, problems) if f is not None]
    other_cfg = _config(other_dir)
    differs = {k: [config.get(k), other_cfg.get(k)] for k in CALIBRATION_SETTINGS if config.get(k) != other_cfg.get(k)}
    return {"dir": other_dir, "n": len(a), "n_other": len(b), "shared_seed_pairs": len(set(base) & set(other)),
            "fid": extractor.distance(a, b) if min(len(a), len(b)) >= 2 else None, "settings_differ": differs}


def _markdown(s: dict) -> str:
    out = [f"# sinkattn study: {os.path.basename(s['run_dir'])}", ""] + _caveats(s) + _overview(s)
    if s["metrics"]:
        out += _missing(s) + _tables(s["statistics"])
    elif s["metrics_note"]:
        out += [f"**{s['metrics_note']}**", ""]
    if s.get("fid"):
        out += _fid_md(s["fid"])
    if s["metrics"] or s.get("fid"):
        out += _methods(s)
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


def _ci(t: dict) -> str:
    return f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}]"


def _tables(st: dict) -> list[str]:
    out = ["## Conditions vs baseline", "",
           "| condition | metric | n | mean delta | 95% CI | p Wilcoxon (Holm) | p t (Holm) | p t, Holm per k "
           "| p t, Holm k sweep |", "|---|---|---|---|---|---|---|---|---|"]
    for row in st["vs_baseline"]:
        t, h = row["test"], row.get("holm", {})
        out.append(f"| {row['condition']} | {row['metric']} | {t['n']} | {_fmt(t['mean'])} | {_ci(t)} | "
                   f"{_fmt(t['p_wilcoxon'], 3)} ({_fmt(t['p_wilcoxon_holm'], 3)}) | {_fmt(t['p_t'], 3)} "
                   f"({_fmt(t['p_t_holm'], 3)}) | {_fmt(h.get('per_k', {}).get('p_t'), 3)} | "
                   f"{_fmt(h.get('sweep', {}).get('p_t'), 3)} |")
    out.append("")
    return out + _dd_md(st) + _trend_md(st) + _by_tag(st) + _by_tag(st, "by_e1_tag", "By E1 substring tag")


def _dd_md(st: dict) -> list[str]:
    if not st["sink_minus_random"]:
        return []
    out = ["## Sink minus equal-budget random (delta of deltas)", "",
           "| sink condition | metric | n | sink delta | random delta | ratio [95% CI] | dd mean | 95% CI "
           "| p t two / one-sided | p Wilcoxon two / one-sided (Holm two-sided) | sink-specific |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in st["sink_minus_random"]:
        t = row["test"]
        ratio = _fmt(row["ratio"], 3) + (f" [{_fmt(row['ratio_ci_low'], 3)}, {_fmt(row['ratio_ci_high'], 3)}]"
                                         if row.get("ratio_ci_low") is not None else "")
        out.append(f"| {row['condition']} | {row['metric']} | {t['n']} | {_fmt(row['sink_mean'])} | "
                   f"{_fmt(row['random_mean'])} | {ratio} | {_fmt(t['mean'])} | {_ci(t)} | {_fmt(t['p_t'], 3)} / "
                   f"{_fmt(row.get('p_t_one_sided'), 3)} | {_fmt(t['p_wilcoxon'], 3)} / "
                   f"{_fmt(row.get('p_wilcoxon_one_sided'), 3)} ({_fmt(t['p_wilcoxon_holm'], 3)}) | "
                   f"{_yes(row.get('significant'))} ({row.get('alternative')}) |")
    return out + [""]


def _yes(flag) -> str:
    return "yes" if flag else "no"


def _trend_md(st: dict) -> list[str]:
    """The original's two-level DT rows and Page's L over every k level, per metric and series."""
    rows = st.get("trend") or []
    if not rows:
        return []
    out = ["## Dose trend across k (delta of deltas)", "",
           "| metric | series | k low -> high | n | dd at low | dd at high | diff mean | 95% CI | p t one-sided "
           "| p Wilcoxon one-sided | significant |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for d in row["dt"]:
            out.append(f"| {row['metric']} | {row['series']} | {d['k_low']} -> {d['k_high']} | {d['n']} | "
                       f"{_fmt(d['mean_low'])} | {_fmt(d['mean_high'])} | {_fmt(d['test']['mean'])} | "
                       f"{_ci(d['test'])} | {_fmt(d['p_t_one_sided'], 3)} | {_fmt(d['p_wilcoxon_one_sided'], 3)} | "
                       f"{_yes(d['significant'])} ({d['alternative']}) |")
    out += ["", "| metric | series | k levels | n blocks | mean dd per k | Page's L | p | mean Spearman rho "
                "| monotone trend |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p = row["page"]
        means = ", ".join(_fmt(m) for m in p["means"])
        verdict = p["note"] or f"{_yes(p['significant'])} ({row['alternative']})"
        out.append(f"| {row['metric']} | {row['series']} | {', '.join(str(k) for k in p['k'])} | {p['n']} | "
                   f"{means} | {_fmt(p['statistic'])} | {_fmt(p['p'], 3)} | {_fmt(p['mean_rho'], 3)} | {verdict} |")
    return out + [""]


def _by_tag(st: dict, key: str = "by_tag", title: str = "By GenEval tag") -> list[str]:
    """A by-tag table, with the groups too small to test counted, not listed."""
    hidden = st.get(f"{key}_hidden", {})
    if not st.get(key) and not hidden.get("groups"):
        return []
    out = [f"## {title} (mean delta, 95% CI)", ""]
    if hidden.get("groups"):
        out += [f"{hidden['groups']} (tag, condition, metric) groups hidden: {hidden['reason']}.", ""]
    if st[key]:
        out += ["| tag | condition | metric | n | mean | 95% CI | p t |", "|---|---|---|---|---|---|---|"]
        for row in st[key]:
            t = row["test"]
            out.append(f"| {row['tag']} | {row['condition']} | {row['metric']} | {t['n']} | {_fmt(t['mean'])} | "
                       f"{_ci(t)} | {_fmt(t['p_t'], 3)} |")
        out.append("")
    return out


def _fid_md(f: dict) -> list[str]:
    out = ["## FID vs the baseline images of this run", ""]
    if f.get("error"):
        return out + [f"**FID not computed:** `{f['error'].splitlines()[0]}`", "", "```", f["error"], "```", ""]
    weights = "UNTRAINED (random weights): the values exercise the code only" if f["untrained"] else f["weights"]
    out += [f"pytorch-fid Inception-v3, {f['dims']} pool features; weights: {weights}.", ""]
    cal = f["calibration"]
    if cal:
        out += [f"Calibration: FID(this run's baseline, baseline of `{cal['dir']}`) = {_fmt(cal['fid'])} "
                f"(n = {cal['n']} / {cal['n_other']} images; {cal['shared_seed_pairs']} (prompt, seed) pairs in "
                "both runs left out)." + (f" Settings that differ: {cal['settings_differ']}." if cal['settings_differ']
                                          else " Same generation settings."), ""]
    else:
        out += ["No calibration: the FID shift needs a run folder of the same settings and other seeds "
                "(`write_report(..., fid_calibration=DIR)`).", ""]
    out += ["| condition | n | FID vs baseline | shift: ratio to calibration | shift: excess |",
            "|---|---|---|---|---|"]
    for row in f["rows"]:
        out.append(f"| {row['condition']} | {row['n']} | {_fmt(row['fid'])} | {_fmt(row['shift']['ratio'], 3)} | "
                   f"{_fmt(row['shift']['excess'])} |")
    return out + ["", f["note"], ""]


def _methods(s: dict) -> list[str]:
    """What was tested and how, with this report's numbers: a reader checks the settings here,
    not in the code."""
    st, out = s["statistics"], ["## Methods", ""]
    if s["metrics"]:
        out += _methods_paired(st, len(st["vs_baseline"])) + _methods_trend(st) + _methods_tags(st)
    if s.get("fid") and not s["fid"].get("error"):
        out.append("- FID: pytorch-fid (the package of the original's calibration, FC:61-63), Inception pool features "
                   f"({s['fid']['dims']} dims), each condition's images against the baseline images of the same "
                   "(prompt, seed) pairs (generated vs generated, as the original); the FID shift divides by the "
                   "FID of two baseline sets that differ only in their seeds (ratio) and subtracts it (excess).")
    return out + [""]


def _methods_paired(st: dict, n_tests: int) -> list[str]:
    b = st["bootstrap"]
    return [
        f"- Paired design: per (prompt, seed), condition minus baseline from the same initial latents (LPIPS: the "
        f"distance to the baseline image itself). Percentile bootstrap {int(b['level'] * 100)}% CI of the mean, "
        f"{b['resamples']} resamples, seed {b['seed']}; each test draws from its own generator seeded by (seed, "
        "test name), so a number does not move when conditions are added. The original used 1000 resamples with "
        "seed 42 (ACF, HV, DD, DT; several of its scripts unseeded, D16): `--bootstrap 1000` matches the count.",
        f"- Against the baseline ({n_tests} tests): Wilcoxon signed-rank (two-sided, zero differences dropped) and "
        "paired t (a one-sample t on the deltas, which is `ttest_rel`, as the original). Holm correction per test "
        f"type in three families: all, {st['family']['all']}; per k, {st['family']['per_k']}; k sweep, "
        f"{st['family']['sweep']}.",
        "- Sink minus random (delta of deltas, HV:183, DD:59): per pair sink delta minus the random control's "
        "delta at the same k, layers, path and selection, the random draws averaged per pair first. Bootstrap CI, "
        "one-sample t two-sided and one-sided (the original's halving, DD:81-89), Wilcoxon two-sided and "
        "one-sided; one-sided means 'less' for scores (the sink lowers them more) and 'greater' for LPIPS (the "
        f"sink perturbs more). Sink-specific (the original's rule, DD:105): mean on that side, CI excluding 0, "
        f"one-sided t p < {st['alpha']}. Holm across {st['family']['sink_minus_random']} (two-sided; the original "
        "applied none). LPIPS ratio: mean sink LPIPS / mean random LPIPS over the same pairs, with a paired "
        "bootstrap CI (pairs resampled together; the original gave no interval).",
    ]


def _methods_trend(st: dict) -> list[str]:
    if not st.get("trend"):
        return []
    return [
        "- Dose trend: the original's DT (DT:162-182), per pair the delta of deltas at the higher k minus at the "
        "lower k, with bootstrap CI, one-sided t and Wilcoxon and the same rule, for adjacent k levels and for the "
        "lowest vs the highest; and Page's L test across all k levels (blocks: the (prompt, seed) pairs observed at "
        "every level; predicted order: falling with k for scores, rising for LPIPS). Why Page's L: it is the test "
        "for an ordered alternative in a complete block design, ranks within each pair remove the prompt's own "
        "level, it assumes no functional form or scale for k, and it pools the per-pair Spearman correlations "
        "(reported as mean rho) rather than keeping only their signs as a sign test would. It needs 3 levels or more."]


def _methods_tags(st: dict) -> list[str]:
    words = ", ".join(E1_TAG_WORDS)
    return [
        "- Tags: GenEval's own tag field (one tag per prompt, from the prompt set's metadata: single_object, "
        "two_object, counting, colors, position, color_attr), and, for comparison with the original's E1 "
        f"(E1:46-64), its multi-label substring tags ({words}, else single_object) on the prompt text, a prompt "
        "counting in every tag it matches. The two disagree: 'a photo of a red bicycle' is GenEval single_object "
        "but E1 color; 'a yellow bus and a green bench' is GenEval color_attr but E1 two_object and color. E1 "
        "used an unseeded bootstrap and `ttest_rel`; "
        f"here the seeded bootstrap and the same t. Groups with fewer than {st['by_tag_hidden']['min_n']} pairs "
        "are counted, not listed."]
