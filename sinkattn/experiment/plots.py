"""Figures of a run (matplotlib, Agg backend): dose-response, LPIPS sink vs random, the
sink atlas from the tracer, and a qualitative grid. Each function takes plain data and a
path, so the report decides what to draw; ``banner`` (random weights) is stamped on top."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["delta_of_deltas", "dose_response", "lpips_sink_vs_random", "qualitative_grid", "sink_atlas"]

_COLORS = {"sink": "tab:red", "random": "tab:blue", "bottom": "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight", pad_inches=0.2)  # room for the banner's box
    os.replace(tmp, path)
    return path


def _finish(fig, path: str, banner: str = "") -> str:
    """Lay out, stamp the banner, save and close: every figure ends here, so none leaves
    without the random-weights banner when the report asks for one."""
    fig.tight_layout()
    if banner:
        fig.text(0.5, 1.0, banner, ha="center", va="bottom", fontsize=10, fontweight="bold", color="white",
                 bbox=dict(boxstyle="round,pad=0.4", facecolor="tab:red", edgecolor="none"))
    out = _save(fig, path)
    _plt().close(fig)
    return out


def _err(rows):
    mean = np.array([r["mean"] for r in rows], dtype=float)
    lo = np.array([r["ci_low"] for r in rows], dtype=float)
    hi = np.array([r["ci_high"] for r in rows], dtype=float)
    return mean, np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])


def dose_response(dose: list[dict], metrics: list[str], path: str, note: str = "", banner: str = "") -> str:
    """Mean paired delta vs k per metric, one line per (control, series), 95% CI bars.

    dose: rows {metric, control, series, k, n, mean, ci_low, ci_high} (random: draws averaged)."""
    plt = _plt()
    cols = min(len(metrics), 2) or 1
    rows_n = max(1, -(-len(metrics) // cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.6 * rows_n), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        lines = {}
        for r in dose:
            if r["metric"] == metric and r["mean"] is not None:
                lines.setdefault((r["control"], r["series"]), []).append(r)
        for (control, series), pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda r: r["k"])
            mean, err = _err(pts)
            ks = [r["k"] for r in pts]
            ax.errorbar(ks, mean, yerr=err, marker="o", capsize=3, color=_COLORS.get(control),
                        label=f"{control} ({series})" if len({s for _, s in lines}) > 1 else control)
        ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
        all_k = sorted({r["k"] for v in lines.values() for r in v})
        if all_k and all_k[-1] > 10:
            ax.set_xscale("log")
        ax.set_xticks(all_k, [str(k) for k in all_k]) if all_k else None
        ax.minorticks_off()
        ax.set_xlabel("k (keys suppressed per head)")
        ax.set_ylabel(f"delta {metric}" + (" (distance)" if metric == "lpips" else " vs baseline"))
        ax.set_title(metric)
        if lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no paired values", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("Dose-response: mean paired delta with bootstrap 95% CI" + (f"\n{note}" if note else ""), fontsize=10)
    return _finish(fig, path, banner)


def delta_of_deltas(rows: list[dict], trend: list[dict], metrics: list[str], path: str, note: str = "",
                    banner: str = "") -> str:
    """Sink minus equal-budget random (delta of deltas) vs k per metric, one line per series, 95% CI
    bars; the legend carries Page's trend p-value where the series has one. The figure of the
    sink-specificity and dose-trend tests: 0 means the sink does what any equal budget does.

    rows: {metric, series, k, mean, ci_low, ci_high}; trend: stats' trend rows {metric, series, page}."""
    plt = _plt()
    cols = min(len(metrics), 2) or 1
    rows_n = max(1, -(-len(metrics) // cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.6 * rows_n), squeeze=False)
    pages = {(t["metric"], t["series"]): t["page"] for t in trend}
    for ax, metric in zip(axes.flat, metrics):
        lines: dict[str, list] = {}
        for r in rows:
            if r["metric"] == metric and r["mean"] is not None:
                lines.setdefault(r["series"], []).append(r)
        for label, pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda r: r["k"])
            mean, err = _err(pts)
            page = pages.get((metric, label)) or {}
            p = f", Page p={page['p']:.3g}" if page.get("p") is not None else ""
            ax.errorbar([r["k"] for r in pts], mean, yerr=err, marker="o", capsize=3, label=f"{label}{p}")
        ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
        ks = sorted({r["k"] for v in lines.values() for r in v})
        if ks and ks[-1] > 10:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks]) if ks else None
        ax.minorticks_off()
        ax.set_xlabel("k (keys suppressed per head)")
        ax.set_ylabel(f"sink - random, {metric}")
        ax.set_title(metric)
        if lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no sink/random pairs", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("Sink minus equal-budget random: mean with bootstrap 95% CI" + (f"\n{note}" if note else ""),
                 fontsize=10)
    return _finish(fig, path, banner)


def lpips_sink_vs_random(dose: list[dict], path: str, note: str = "", banner: str = "") -> str:
    """LPIPS to the baseline image, sink vs equal-budget random, per k (bars, 95% CI)."""
    plt = _plt()
    rows = [r for r in dose if r["metric"] == "lpips" and r["control"] in ("sink", "random") and r["mean"] is not None]
    series = sorted({r["series"] for r in rows})
    ks = sorted({r["k"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(ks) * max(1, len(series)) + 2), 3.8))
    width = 0.8 / max(1, 2 * len(series))
    x = np.arange(len(ks))
    i = 0
    for s in series:
        for control in ("sink", "random"):
            pts = {r["k"]: r for r in rows if r["series"] == s and r["control"] == control}
            if not pts:
                continue
            sel = [pts.get(k) for k in ks]
            mean = np.array([p["mean"] if p else np.nan for p in sel])
            lo = np.array([p["ci_low"] if p else np.nan for p in sel])
            hi = np.array([p["ci_high"] if p else np.nan for p in sel])
            err = np.vstack([np.nan_to_num(np.clip(mean - lo, 0, None)), np.nan_to_num(np.clip(hi - mean, 0, None))])
            ax.bar(x + (i - (2 * len(series) - 1) / 2) * width, mean, width, yerr=err, capsize=3,
                   color=_COLORS[control], alpha=0.85 if control == "sink" else 0.55,
                   label=f"{control}" + (f" ({s})" if len(series) > 1 else ""))
            i += 1
    for j, k in enumerate(ks):
        sink = [r["mean"] for r in rows if r["k"] == k and r["control"] == "sink"]
        rnd = [r["mean"] for r in rows if r["k"] == k and r["control"] == "random"]
        if sink and rnd and rnd[0]:
            ax.annotate(f"x{sink[0] / rnd[0]:.1f}", (x[j], max(sink[0], rnd[0])), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [str(k) for k in ks])
    ax.set_xlabel("k (keys suppressed per head)")
    ax.set_ylabel("LPIPS to baseline")
    ax.set_title("LPIPS: sink vs equal-budget random" + (f"\n{note}" if note else ""), fontsize=10)
    if rows:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no LPIPS values", ha="center", va="center", transform=ax.transAxes)
    return _finish(fig, path, banner)


def sink_atlas(traces: list[dict], path: str, top_tokens: int = 15, banner: str = "") -> str:
    """Three panels from the baseline traces: mean largest key mass per (step, layer); where
    the heads' top keys lie on the latent grid (image keys); which text tokens are top keys."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    # 1. mass over steps x layers
    layers: list[str] = []
    steps: set[int] = set()
    for t in traces:
        for name in t["layers"]:
            if name not in layers:
                layers.append(name)
        steps.update(t["steps"])
    steps_sorted = sorted(steps)
    acc = np.zeros((len(steps_sorted), len(layers)))
    cnt = np.zeros_like(acc)
    for t in traces:
        for si, s in enumerate(t["steps"]):
            for li, name in enumerate(t["layers"]):
                v = t["max_mass"][si][li]
                if v is not None:
                    acc[steps_sorted.index(s), layers.index(name)] += v
                    cnt[steps_sorted.index(s), layers.index(name)] += 1
    ax = axes[0]
    if cnt.sum():
        grid = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
        im = ax.imshow(grid.T, aspect="auto", origin="lower", cmap="magma")
        fig.colorbar(im, ax=ax, label="largest key mass (mean over heads)")
        ax.set_xticks(range(len(steps_sorted)), [str(s) for s in steps_sorted], fontsize=7)
        ticks = range(0, len(layers), max(1, len(layers) // 12))
        ax.set_yticks(list(ticks), [str(i) for i in ticks], fontsize=7)
    else:
        ax.text(0.5, 0.5, "no trace", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("attention layer (index)")
    ax.set_title("sink mass over steps x layers")
    # 2. image-sink positions
    ax = axes[1]
    rows = max([t["grid"][0] for t in traces] or [1])
    cols = max([t["grid"][1] for t in traces] or [1])
    heat = np.zeros((rows, cols))
    for t in traces:
        for pos, n in t["image_top_positions"].items():
            r, c = (int(x) for x in pos.split(","))
            if r < rows and c < cols:
                heat[r, c] += n
    im = ax.imshow(heat, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="times a head's top key")
    ax.set_title(f"image-key sinks on the {rows}x{cols} latent grid")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    # 3. text-token sink frequency
    ax = axes[2]
    counts: dict[str, int] = {}
    for t in traces:
        for tok, n in t["text_top_tokens"].items():
            counts[tok] = counts.get(tok, 0) + n
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_tokens]
    if items:
        total = sum(t["heads_counted"] for t in traces) or 1
        ax.barh(range(len(items)), [n / total for _, n in items], color="tab:purple")
        ax.set_yticks(range(len(items)), [tok for tok, _ in items], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("share of (step, layer, head) top keys")
    else:
        ax.text(0.5, 0.5, "no text-token sinks", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("text-token sink frequency")
    fig.suptitle(f"Sink atlas of the baseline generations ({len(traces)} traced images)", fontsize=11)
    return _finish(fig, path, banner)


def qualitative_grid(cells: list[list], row_labels: list[str], col_labels: list[str], path: str,
                     thumb: int = 160, banner: str = "") -> str:
    """Rows of images (PIL or None), baseline first; titles on top, prompts on the left."""
    plt = _plt()
    n_rows, n_cols = len(cells), max(len(r) for r in cells) if cells else 1
    fig, axes = plt.subplots(max(1, n_rows), n_cols, figsize=(1.9 * n_cols, 2.1 * max(1, n_rows)), squeeze=False)
    for i, row in enumerate(cells):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            image = row[j] if j < len(row) else None
            if image is not None:
                ax.imshow(np.asarray(image.convert("RGB").resize((thumb, thumb))))
            if i == 0:
                ax.set_title(col_labels[j].replace("_", "\n", 2), fontsize=7)
            if j == 0:
                label = row_labels[i]
                ax.set_ylabel(label if len(label) < 40 else label[:37] + "...", fontsize=7)
    return _finish(fig, path, banner)
