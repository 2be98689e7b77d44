"""Paired statistics of the study, seeded and free of I/O.

Per condition and metric, against the baseline of the same (prompt, seed):
  mean paired delta (condition - baseline) with a percentile bootstrap 95% CI,
  Wilcoxon signed-rank and paired t p-values (two-sided), Holm correction across the
  family of tests; delta-of-deltas (sink minus its equal-budget random control, the
  random deltas first averaged over draws per pair); the same per GenEval tag.
For LPIPS (a distance to the baseline image) the baseline's value is 0, so the "delta" is
the distance itself.

Every bootstrap draws from its own generator, seeded by (seed, test name), so a number
does not change when other conditions are added.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MIN_GROUP_N", "PairedTest", "bootstrap_ci", "delta_of_deltas", "holm", "paired_deltas", "paired_test",
           "random_control_deltas", "summarize"]


# Smallest by-tag group (paired values) the report lists: below it a bootstrap interval and a
# Wilcoxon p-value say nothing (n=1 gives a zero-width interval).
MIN_GROUP_N = 5


@dataclass
class PairedTest:
    name: str
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    p_wilcoxon: float | None
    p_t: float | None
    p_wilcoxon_holm: float | None = None
    p_t_holm: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _constant(x: np.ndarray) -> bool:
    """No spread beyond rounding (e.g. (b + c) - b for a constant shift c)."""
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def bootstrap_ci(values, n_boot: int = 10000, level: float = 0.95, seed: int = 0, name: str = "") -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (1-D)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    if _constant(x):
        return (float(x.mean()), float(x.mean()))
    rng = _rng(seed, name)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _p_wilcoxon(x: np.ndarray) -> float | None:
    from scipy.stats import wilcoxon

    if x.size < 1:
        return None
    if np.all(x == 0):
        return 1.0
    try:
        return float(wilcoxon(x, zero_method="wilcox", alternative="two-sided").pvalue)
    except ValueError:
        return None


def _p_t(x: np.ndarray) -> float | None:
    from scipy.stats import ttest_1samp

    if x.size < 2:
        return None
    if _constant(x):  # no spread: the t statistic is infinite (or 0/0)
        return 1.0 if abs(float(x.mean())) <= 1e-12 else 0.0
    return float(ttest_1samp(x, 0.0).pvalue)


def paired_test(deltas, name: str = "", n_boot: int = 10000, seed: int = 0) -> PairedTest:
    """Mean, bootstrap CI and p-values of paired differences ``deltas`` (None/NaN dropped)."""
    x = np.asarray([d for d in deltas if d is not None and math.isfinite(d)], dtype=np.float64)
    if x.size == 0:
        return PairedTest(name, 0, None, None, None, None, None)
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed, name=name)
    return PairedTest(name, int(x.size), float(x.mean()), lo, hi, _p_wilcoxon(x), _p_t(x))


def holm(pvalues) -> list:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); None stays None."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(idx)
    out: list = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def paired_deltas(records: list[dict], metric: str, condition: str) -> dict[tuple, float]:
    """{(prompt_id, seed): value(condition) - value(baseline)} over the pairs where both exist."""
    base = {(r["prompt_id"], r["seed"]): r["metrics"].get(metric) for r in records if r["condition"] == "baseline"}
    out = {}
    for r in records:
        if r["condition"] != condition:
            continue
        key = (r["prompt_id"], r["seed"])
        v, b = r["metrics"].get(metric), base.get(key)
        if v is not None and b is not None:
            out[key] = v - b
    return out


def random_control_deltas(records, metric, conditions: list[str]) -> dict[tuple, float]:
    """Per pair, the mean delta over the random draws ``conditions`` that have one."""
    sums: dict[tuple, list[float]] = {}
    for c in conditions:
        for key, d in paired_deltas(records, metric, c).items():
            sums.setdefault(key, []).append(d)
    return {key: sum(v) / len(v) for key, v in sums.items()}


def delta_of_deltas(sink: dict[tuple, float], control: dict[tuple, float]) -> list[float]:
    return [sink[key] - control[key] for key in sorted(set(sink) & set(control))]


def _apply_holm(tests: list[PairedTest]) -> None:
    for field_p, field_h in (("p_wilcoxon", "p_wilcoxon_holm"), ("p_t", "p_t_holm")):
        adjusted = holm([getattr(t, field_p) for t in tests])
        for t, a in zip(tests, adjusted):
            setattr(t, field_h, a)


def summarize(records: list[dict], conditions: list[dict], metrics: list[str], n_boot: int = 10000,
              seed: int = 0, min_group_n: int = MIN_GROUP_N) -> dict:
    """Every statistic of the report.

    conditions: condition specs (``Condition.spec()``) in report order, baseline included.
    min_group_n: by-tag groups with fewer paired values are counted in "by_tag_hidden", not listed.
    Returns {"vs_baseline": [...], "sink_minus_random": [...], "by_tag": [...], "by_tag_hidden": ...,
    "family": ...}.
    """
    present = {r["condition"] for r in records}
    specs = [c for c in conditions if c["name"] in present and c["name"] != "baseline"]
    vs_baseline = []
    for c in specs:
        for metric in metrics:
            t = paired_test(paired_deltas(records, metric, c["name"]).values(), f"{c['name']}|{metric}",
                            n_boot, seed)
            vs_baseline.append(dict(condition=c["name"], control=c["control"], k=c["k"], metric=metric, test=t))
    _apply_holm([row["test"] for row in vs_baseline])

    # sink vs its random controls: same settings except control and draw
    randoms: dict[str, list[str]] = {}
    for c in specs:
        if c["control"] == "random":
            randoms.setdefault(_matched(c), []).append(c["name"])
    dd_rows = []
    for c in specs:
        if c["control"] != "sink" or _matched(c) not in randoms:
            continue
        for metric in metrics:
            sink = paired_deltas(records, metric, c["name"])
            control = random_control_deltas(records, metric, randoms[_matched(c)])
            t = paired_test(delta_of_deltas(sink, control), f"dd|{c['name']}|{metric}", n_boot, seed)
            sink_mean = float(np.mean(list(sink.values()))) if sink else None
            ctrl_mean = float(np.mean(list(control.values()))) if control else None
            ratio = (sink_mean / ctrl_mean) if sink_mean is not None and ctrl_mean not in (None, 0.0) else None
            dd_rows.append(dict(condition=c["name"], random=randoms[_matched(c)], k=c["k"], metric=metric, test=t,
                                sink_mean=sink_mean, random_mean=ctrl_mean, ratio=ratio))
    _apply_holm([row["test"] for row in dd_rows])

    by_tag, hidden = _by_tag(records, specs, metrics, n_boot, seed, min_group_n)
    return {
        "vs_baseline": [dict(row, test=row["test"].to_dict()) for row in vs_baseline],
        "sink_minus_random": [dict(row, test=row["test"].to_dict()) for row in dd_rows],
        "by_tag": [dict(row, test=row["test"].to_dict()) for row in by_tag],
        "by_tag_hidden": {"groups": hidden, "min_n": min_group_n,
                          "reason": f"fewer than {min_group_n} paired values, too few for a test "
                                    "(their intervals are degenerate)"},
        "family": {"vs_baseline": "every (condition, metric) test against the baseline, Holm per test type",
                   "sink_minus_random": "every (sink condition, metric) delta-of-deltas, Holm per test type"},
        "bootstrap": {"resamples": n_boot, "level": 0.95, "seed": seed, "method": "percentile"},
    }


def _by_tag(records, specs, metrics, n_boot, seed, min_n) -> tuple[list[dict], int]:
    """Per (tag, condition, metric) tests, and how many groups had 0 < n < min_n pairs: a tag holds
    few prompts, and a table of n=1 rows with zero-width intervals reads as evidence when it is none."""
    rows, hidden = [], 0
    for tag in sorted({r.get("tag") for r in records if r.get("tag") is not None}):
        subset = [r for r in records if r.get("tag") == tag]
        for c in specs:
            for metric in metrics:
                t = paired_test(paired_deltas(subset, metric, c["name"]).values(), f"{tag}|{c['name']}|{metric}",
                                n_boot, seed)
                if t.n >= min_n:
                    rows.append(dict(tag=tag, condition=c["name"], metric=metric, test=t))
                elif t.n:
                    hidden += 1
    return rows, hidden


def _matched(spec: dict) -> tuple:
    keep = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()
            if k not in ("control", "draw", "name", "group")}
    return tuple(sorted(keep.items()))
