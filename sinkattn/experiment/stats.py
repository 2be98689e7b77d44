"""Paired statistics of the study, seeded and free of I/O.

What is computed, and where the original study computed the same (aliases and file:line of
ORIGINAL_STUDY.md):

- Per condition and metric, against the baseline of the same (prompt, seed): mean paired delta
  (condition - baseline) with a percentile bootstrap 95% CI, Wilcoxon signed-rank and paired t
  (two-sided; a one-sample t on the deltas is scipy's ``ttest_rel``, ACF:756). Holm correction in
  three families, each per test type: "all" (every (condition, metric), ours); "per_k" (per metric
  and series, the controls of one k: the original's Holm over its 4 modes per k, ACF:767-772);
  "sweep" (per metric and series, every k x control: the original's global Holm over 20, SK:47-57).
- Delta of deltas (sink minus its equal-budget random control per pair, the random draws first
  averaged per pair; HV:183, DD:59): bootstrap CI, t and Wilcoxon two-sided and one-sided, and the
  original's "sink-specific" rule (DD:81-105, HV:330). For a distance to the baseline image (LPIPS)
  the one-sided alternative is "greater" (the sink perturbs more, PD's reading), else "less".
  For LPIPS also the sink/random ratio of mean distances (the "~6x" of T6/T7) with a paired
  bootstrap CI, which the original reported without an interval.
- Dose trend across k: the original's DT (paired difference of delta-of-deltas between two k
  levels, DT:162-182) for adjacent k levels and lowest vs highest, and Page's L test over every
  k level (see :func:`page_trend`).
- By tag: GenEval's tag field, and the original E1's substring multi-label tags (E1:46-64).
For LPIPS (a distance to the baseline image) the baseline's value is 0, so the "delta" is the
distance itself.

Every bootstrap draws from its own generator, seeded by (seed, test name), so a number does not
change when other conditions are added (the original reseeded each test with 42, DD/DT, to the
same end).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ALPHA", "DISTANCE_METRICS", "E1_TAG_WORDS", "MIN_GROUP_N", "PairedTest", "bootstrap_ci",
           "delta_of_deltas", "directional", "dose_trend", "e1_tags", "holm", "hypothesis", "page_trend",
           "paired_deltas", "paired_test", "random_control_deltas", "ratio_ci", "series", "summarize"]


# Smallest by-tag group (paired values) the report lists: below it a bootstrap interval and a
# Wilcoxon p-value say nothing (n=1 gives a zero-width interval).
MIN_GROUP_N = 5
ALPHA = 0.05  # the original's threshold for every decision rule (DD:105, DT:182, SK)
# Metrics that are a distance to the baseline image: a larger value is a larger effect.
DISTANCE_METRICS = frozenset({"lpips"})
# The original E1's tags (E1:46-64): substrings of the lower-cased prompt, several tags per
# prompt; "single_object" only when no other tag matched.
E1_TAG_WORDS = {
    "counting": ("two ", "three ", "four ", "five ", "six ", "2 ", "3 ", "4 ", "5 ", "6 "),
    "position": (" on ", " under ", " above ", " below ", " next to ", " left of ", " right of ",
                 " in front of ", " behind ", " beside ", " between "),
    "two_object": (" and a ", " and an ", " with a ", " with an "),
    "color": ("red ", "blue ", "green ", "yellow ", "orange ", "purple ", "pink ", "brown ", "black ",
              "white ", "gray ", "grey ", "golden ", "silver "),
}


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


def _finite(values) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def _resamples(n: int, n_boot: int, rng: np.random.Generator):
    """Bootstrap index rows (n_boot x n) in chunks of about 2M indices, to bound memory."""
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(n_boot, start + chunk) - start, n))


def bootstrap_ci(values, n_boot: int = 10000, level: float = 0.95, seed: int = 0, name: str = "") -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (1-D)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    if _constant(x):
        return (float(x.mean()), float(x.mean()))
    means = np.concatenate([x[idx].mean(axis=1) for idx in _resamples(x.size, n_boot, _rng(seed, name))])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def ratio_ci(numerator, denominator, n_boot: int = 10000, level: float = 0.95, seed: int = 0,
             name: str = "") -> tuple[float | None, float | None, float | None]:
    """(mean(numerator) / mean(denominator), percentile bootstrap CI). Why paired: the two lists
    are per-pair values (sink and random LPIPS of one prompt and seed), resampled together, so
    the interval carries their correlation within a pair. None when the denominator's mean is 0."""
    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if a.size == 0 or a.size != b.size or b.mean() == 0:
        return (None, None, None)
    ratio = float(a.mean() / b.mean())
    if _constant(a) and _constant(b):
        return (ratio, ratio, ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.concatenate([a[idx].mean(axis=1) / b[idx].mean(axis=1)
                                 for idx in _resamples(a.size, n_boot, _rng(seed, name))])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(ratios, [alpha, 1.0 - alpha])
    return ratio, float(lo), float(hi)


def _p_wilcoxon(x: np.ndarray, alternative: str = "two-sided") -> float | None:
    from scipy.stats import wilcoxon

    if x.size < 1:
        return None
    if np.all(x == 0):
        return 1.0
    try:
        return float(wilcoxon(x, zero_method="wilcox", alternative=alternative).pvalue)
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
    x = _finite(deltas)
    if x.size == 0:
        return PairedTest(name, 0, None, None, None, None, None)
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed, name=name)
    return PairedTest(name, int(x.size), float(x.mean()), lo, hi, _p_wilcoxon(x), _p_t(x))


def hypothesis(metric: str) -> str:
    """The one-sided alternative of the sink-specificity and trend tests: the sink harms more
    than random. A score (higher is better) drops: "less" (HV:194-205, DD:81-98, DT:170-176);
    a distance to the baseline image (LPIPS) grows: "greater"."""
    return "greater" if metric in DISTANCE_METRICS else "less"


def directional(values, t: PairedTest, alternative: str) -> dict:
    """One-sided p-values of ``values`` (the values ``t`` summarises) and the original's decision
    rule (DD:105, HV:330, DT:182): the mean on the hypothesised side AND the 95% CI excluding 0
    AND the one-sided t p < 0.05. The one-sided t is the original's halving of the two-sided p
    (p/2 when the mean lies on the hypothesised side, else 1 - p/2), which equals scipy's
    one-sided ttest_1samp."""
    x = _finite(values)
    toward = t.mean is not None and (t.mean < 0 if alternative == "less" else t.mean > 0)
    p_two = _p_t(x)
    p_t_one = None if p_two is None else (p_two / 2 if toward else 1 - p_two / 2)
    excludes = t.ci_low is not None and not (t.ci_low <= 0.0 <= t.ci_high)
    return dict(alternative=alternative, p_t_one_sided=p_t_one,
                p_wilcoxon_one_sided=_p_wilcoxon(x, alternative) if x.size else None,
                ci_excludes_zero=bool(excludes),
                significant=bool(toward and excludes and p_t_one is not None and p_t_one < ALPHA))


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


def series(spec: dict) -> str:
    """The settings of a condition other than its control, k and draw: conditions of one series
    differ only in dose and control, which is what a k sweep varies."""
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


def _apply_holm(tests: list[PairedTest]) -> None:
    for field_p, field_h in (("p_wilcoxon", "p_wilcoxon_holm"), ("p_t", "p_t_holm")):
        adjusted = holm([getattr(t, field_p) for t in tests])
        for t, a in zip(tests, adjusted):
            setattr(t, field_h, a)


def _holm_family(rows: list[dict], family: str, key) -> None:
    """Holm within each group of ``rows`` sharing ``key(row)``, per test type, into row["holm"][family]."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    for members in groups.values():
        for field in ("p_t", "p_wilcoxon"):
            for row, p in zip(members, holm([getattr(m["test"], field) for m in members])):
                row.setdefault("holm", {}).setdefault(family, {})[field] = p


FAMILIES = {
    "all": "every (condition, metric) test against the baseline",
    "per_k": "per metric and series, the controls at one k (the original's Holm over its 4 modes per k, ACF:767-772)",
    "sweep": "per metric and series, every k x control (the original's global Holm over its 20 k x mode tests, "
             "SK:47-57)",
    "sink_minus_random": "every (sink condition, metric) delta of deltas",
}


def summarize(records: list[dict], conditions: list[dict], metrics: list[str], n_boot: int = 10000,
              seed: int = 0, min_group_n: int = MIN_GROUP_N) -> dict:
    """Every statistic of the report.

    conditions: condition specs (``Condition.spec()``) in report order, baseline included.
    min_group_n: by-tag groups with fewer paired values are counted in "by_tag_hidden", not listed.
    Returns {"vs_baseline", "sink_minus_random", "trend", "by_tag", "by_tag_hidden", "by_e1_tag",
    "by_e1_tag_hidden", "family", "bootstrap"}.
    """
    present = {r["condition"] for r in records}
    specs = [c for c in conditions if c["name"] in present and c["name"] != "baseline"]
    vs_baseline = _vs_baseline(records, specs, metrics, n_boot, seed)
    dd_rows = [_dd_row(records, c, names, metric, n_boot, seed)
               for c, names in _sinks_with_random(specs) for metric in metrics]
    _apply_holm([row["test"] for row in dd_rows])
    trend = dose_trend(records, specs, metrics, n_boot, seed)
    by_tag, hidden = _by_group(records, specs, metrics, n_boot, seed, min_group_n, _geneval_tag, "")
    by_e1, hidden_e1 = _by_group(records, specs, metrics, n_boot, seed, min_group_n,
                                 lambda r: e1_tags(r.get("prompt") or ""), "e1:")
    reason = f"fewer than {min_group_n} paired values, too few for a test (their intervals are degenerate)"
    return {
        "vs_baseline": [dict(row, test=row["test"].to_dict()) for row in vs_baseline],
        "sink_minus_random": [dict(row, test=row["test"].to_dict()) for row in dd_rows],
        "trend": trend,
        "by_tag": [dict(row, test=row["test"].to_dict()) for row in by_tag],
        "by_tag_hidden": {"groups": hidden, "min_n": min_group_n, "reason": reason},
        "by_e1_tag": [dict(row, test=row["test"].to_dict()) for row in by_e1],
        "by_e1_tag_hidden": {"groups": hidden_e1, "min_n": min_group_n, "reason": reason},
        "family": dict(FAMILIES, vs_baseline=FAMILIES["all"] + ", Holm per test type"),  # vs_baseline: earlier key
        "bootstrap": {"resamples": n_boot, "level": 0.95, "seed": seed, "method": "percentile"},
        "alpha": ALPHA,
    }


def _vs_baseline(records, specs, metrics, n_boot, seed) -> list[dict]:
    rows = []
    for c in specs:
        for metric in metrics:
            t = paired_test(paired_deltas(records, metric, c["name"]).values(), f"{c['name']}|{metric}",
                            n_boot, seed)
            rows.append(dict(condition=c["name"], control=c["control"], k=c["k"], series=series(c), metric=metric,
                             test=t))
    _apply_holm([row["test"] for row in rows])
    _holm_family(rows, "per_k", lambda r: (r["metric"], r["series"], r["k"]))
    _holm_family(rows, "sweep", lambda r: (r["metric"], r["series"]))
    return rows


def _sinks_with_random(specs) -> list[tuple[dict, list[str]]]:
    """(sink spec, names of its random draws): same settings except control and draw."""
    randoms: dict[tuple, list[str]] = {}
    for c in specs:
        if c["control"] == "random":
            randoms.setdefault(_matched(c), []).append(c["name"])
    return [(c, randoms[_matched(c)]) for c in specs if c["control"] == "sink" and _matched(c) in randoms]


def _dd_pairs(records, metric, sink: str, randoms: list[str]) -> dict[tuple, tuple[float, float]]:
    """{(prompt_id, seed): (sink delta, mean random delta)} over the pairs that have both."""
    s = paired_deltas(records, metric, sink)
    r = random_control_deltas(records, metric, randoms)
    return {key: (s[key], r[key]) for key in sorted(set(s) & set(r))}


def _dd_row(records, c: dict, randoms: list[str], metric: str, n_boot: int, seed: int) -> dict:
    """Delta of deltas of one sink condition: the original's tests and rule, and the sink/random
    ratio (the LPIPS "~6x"; a CI for distances only, where both means are positive)."""
    pairs = _dd_pairs(records, metric, c["name"], randoms)
    sink = [s for s, _ in pairs.values()]
    rand = [r for _, r in pairs.values()]
    dd = [s - r for s, r in zip(sink, rand)]
    t = paired_test(dd, f"dd|{c['name']}|{metric}", n_boot, seed)
    sink_mean = float(np.mean(sink)) if sink else None
    rand_mean = float(np.mean(rand)) if rand else None
    row = dict(condition=c["name"], random=randoms, k=c["k"], series=series(c), metric=metric, test=t,
               sink_mean=sink_mean, random_mean=rand_mean,
               ratio=sink_mean / rand_mean if sink_mean is not None and rand_mean not in (None, 0.0) else None,
               ratio_ci_low=None, ratio_ci_high=None, **directional(dd, t, hypothesis(metric)))
    if metric in DISTANCE_METRICS:
        _, row["ratio_ci_low"], row["ratio_ci_high"] = ratio_ci(sink, rand, n_boot, seed=seed,
                                                                name=f"ratio|{c['name']}|{metric}")
    return row


def dose_trend(records, specs, metrics, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """Per metric and series with at least two k levels that have a sink and a random control:
    the original's DT for adjacent k levels (and lowest vs highest when there are more than two;
    DT compared k=10 with k=50 of its k in {1, 10, 50}), and Page's L across all levels."""
    levels: dict[tuple, dict] = {}
    for c, randoms in _sinks_with_random(specs):
        levels.setdefault(_matched(c, drop=("k", "top_k")), {})[c["k"]] = (c, randoms)
    rows = []
    for by_k in levels.values():
        ks = sorted(by_k)
        if len(ks) < 2:
            continue
        for metric in metrics:
            dd = {k: {key: s - r for key, (s, r) in _dd_pairs(records, metric, by_k[k][0]["name"],
                                                              by_k[k][1]).items()} for k in ks}
            alt = hypothesis(metric)
            pairs = list(zip(ks, ks[1:])) + ([(ks[0], ks[-1])] if len(ks) > 2 else [])
            name = f"{series(by_k[ks[0]][0])}|{metric}"
            rows.append(dict(metric=metric, series=series(by_k[ks[0]][0]), k=ks, alternative=alt,
                             sink_conditions=[by_k[k][0]["name"] for k in ks],
                             dt=[_dt(dd, lo, hi, alt, n_boot, seed, f"dt|{name}|{lo}|{hi}") for lo, hi in pairs],
                             page=page_trend([dd[k] for k in ks], ks, alt)))
    return rows


def _dt(dd: dict, k_low, k_high, alternative: str, n_boot: int, seed: int, name: str) -> dict:
    """The original's dose "trend" (DT:162-182): per pair diff = dd(k_high) - dd(k_low), its
    bootstrap CI, one-sided t (halving) and Wilcoxon, and its rule (mean on the hypothesised
    side, CI excluding 0, one-sided t p < 0.05)."""
    keys = sorted(set(dd[k_low]) & set(dd[k_high]))
    diff = [dd[k_high][p] - dd[k_low][p] for p in keys]
    t = paired_test(diff, name, n_boot, seed)
    return dict(k_low=k_low, k_high=k_high, n=t.n, mean_low=_mean([dd[k_low][p] for p in keys]),
                mean_high=_mean([dd[k_high][p] for p in keys]), test=t.to_dict(), **directional(diff, t, alternative))


def _mean(values) -> float | None:
    x = _finite(values)
    return float(x.mean()) if x.size else None


def page_trend(per_level: list[dict], ks: list, alternative: str) -> dict:
    """Page's L test for a monotone trend of the delta of deltas across the k levels.

    per_level: one {(prompt_id, seed): value} per k level, in the order of ``ks`` (ascending).
    alternative: "less" (values fall as k grows) or "greater" (they rise).

    Why Page's L: every (prompt, seed) is a block observed at every k, so the design is a
    randomized complete block; the alternative is ordered (the sink-specific effect grows with
    the dose) without a functional form or a scale for k (a regression on k or log k would
    assume one); ranking within each block removes the prompt's own level. L is a linear
    function of the mean within-block Spearman correlation between k and the values, i.e. the
    pooled form of a "per-prompt Spearman slope", which a sign test would reduce to the sign of
    each slope and so lose power. Reported with it: that mean correlation (signed; negative =
    falling with k) and the mean value per level. Needs at least 3 levels and 2 complete blocks.
    """
    from scipy.stats import page_trend_test, rankdata

    keys = sorted(set.intersection(*(set(d) for d in per_level))) if per_level else []
    data = np.array([[d[key] for d in per_level] for key in keys], dtype=np.float64).reshape(len(keys), len(ks))
    out = dict(k=list(ks), alternative=alternative, n=len(keys), statistic=None, p=None, method=None,
               mean_rho=None, means=[float(v) for v in data.mean(axis=0)] if keys else [None] * len(ks),
               significant=False, note=None)
    if len(ks) < 3 or len(keys) < 2:
        out["note"] = f"needs at least 3 k levels and 2 complete (prompt, seed) blocks; has {len(ks)} and {len(keys)}"
        return out
    m = len(ks)
    predicted = list(range(1, m + 1)) if alternative == "greater" else list(range(m, 0, -1))
    res = page_trend_test(data, predicted_ranks=predicted)
    ranks = rankdata(data, axis=1)
    spread = ranks.std(axis=1) > 0
    rho = [float(np.corrcoef(r, np.arange(m))[0, 1]) for r in ranks[spread]]
    out.update(statistic=float(res.statistic), p=float(res.pvalue), method=res.method,
               mean_rho=float(np.mean(rho)) if rho else None, significant=bool(res.pvalue < ALPHA))
    return out


def e1_tags(prompt: str) -> list[str]:
    """The original E1's multi-label tags of a prompt (E1:46-64): every tag one of whose
    substrings occurs in the lower-cased prompt, else ["single_object"]."""
    text = prompt.lower()
    tags = [tag for tag, words in E1_TAG_WORDS.items() if any(w in text for w in words)]
    return tags or ["single_object"]


def _geneval_tag(record: dict) -> list:
    return [record["tag"]] if record.get("tag") is not None else []


def _by_group(records, specs, metrics, n_boot, seed, min_n, tags_of, prefix: str) -> tuple[list[dict], int]:
    """Per (tag, condition, metric) tests, and how many groups had 0 < n < min_n pairs: a tag holds
    few prompts, and a table of n=1 rows with zero-width intervals reads as evidence when it is none.
    ``tags_of(record)`` lists a record's tags (one for GenEval's field, several for E1's substrings)."""
    members: dict[str, list[dict]] = {}
    for r in records:
        for tag in tags_of(r):
            members.setdefault(tag, []).append(r)
    rows, hidden = [], 0
    for tag in sorted(members):
        for c in specs:
            for metric in metrics:
                t = paired_test(paired_deltas(members[tag], metric, c["name"]).values(),
                                f"{prefix}{tag}|{c['name']}|{metric}", n_boot, seed)
                if t.n >= min_n:
                    rows.append(dict(tag=tag, condition=c["name"], metric=metric, test=t))
                elif t.n:
                    hidden += 1
    return rows, hidden


def _matched(spec: dict, drop: tuple = ()) -> tuple:
    keep = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()
            if k not in ("control", "draw", "name", "group", *drop)}
    return tuple(sorted(keep.items()))
