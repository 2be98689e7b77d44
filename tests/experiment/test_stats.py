"""Statistics on synthetic data with known answers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from sinkattn.experiment.stats import bootstrap_ci, delta_of_deltas, holm, paired_test, summarize


def _records(values: dict[str, list], tags=None):
    """values: condition -> per-prompt metric values (one seed per prompt)."""
    out = []
    for cond, vals in values.items():
        for i, v in enumerate(vals):
            out.append(dict(prompt_id=i, seed=42 + i, condition=cond, tag=(tags[i] if tags else None),
                            metrics={"m": v}))
    return out


def _spec(name, control, k, draw=None):
    return dict(name=name, control=control, k=k, top_k=k, path="score", select="head", eta=0.0, layers=[12],
                steps=None, timesteps=None, mass_queries="image", apply_queries="all", candidates="all",
                draw=draw, group="")


def test_constant_shift_gives_exact_delta():
    rng = np.random.default_rng(1)
    base = rng.normal(size=40)
    c = 0.25
    t = paired_test(list(base + c - base), n_boot=500)
    assert t.n == 40 and t.mean == pytest.approx(c, abs=1e-12)
    assert t.ci_low == pytest.approx(c, abs=1e-12) and t.ci_high == pytest.approx(c, abs=1e-12)
    assert t.p_t == 0.0 and t.p_wilcoxon < 1e-6
    recs = _records({"baseline": list(base), "sink": list(base + c)})
    s = summarize(recs, [_spec("baseline", "baseline", 0), _spec("sink", "sink", 1)], ["m"], n_boot=500)
    (row,) = s["vs_baseline"]
    assert row["test"]["mean"] == pytest.approx(c) and row["test"]["n"] == 40


def test_p_values_match_scipy_and_drop_missing():
    rng = np.random.default_rng(2)
    d = rng.normal(0.3, 1.0, size=30)
    t = paired_test(list(d) + [None, math.nan], n_boot=200)
    assert t.n == 30
    assert t.p_wilcoxon == pytest.approx(sps.wilcoxon(d).pvalue)
    assert t.p_t == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue)
    assert paired_test([None, None]).mean is None


def test_holm_known_values():
    # sorted p: 0.01, 0.02, 0.03, 0.5 -> 4*0.01, max(.04, 3*.02), max(.06, 2*.03), max(.06, .5)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm([None, 0.01]) == [None, pytest.approx(0.01)]


def test_null_intervals_cover_zero_about_95_percent():
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(200):
        d = rng.normal(0.0, 1.0, size=25)
        lo, hi = bootstrap_ci(d, n_boot=1000, seed=i)
        covered += lo <= 0.0 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_is_seeded():
    d = np.random.default_rng(4).normal(size=20)
    assert bootstrap_ci(d, n_boot=300, seed=7, name="a") == bootstrap_ci(d, n_boot=300, seed=7, name="a")
    assert bootstrap_ci(d, n_boot=300, seed=7, name="a") != bootstrap_ci(d, n_boot=300, seed=8, name="a")


def test_delta_of_deltas_and_ratio():
    base = np.linspace(0, 1, 12)
    recs = _records({"baseline": list(base), "sink": list(base + 0.6),
                     "random_d0": list(base + 0.1), "random_d1": list(base + 0.3)})
    specs = [_spec("baseline", "baseline", 0), _spec("sink", "sink", 1),
             _spec("random_d0", "random", 1, 0), _spec("random_d1", "random", 1, 1)]
    s = summarize(recs, specs, ["m"], n_boot=300)
    (dd,) = s["sink_minus_random"]
    assert dd["random"] == ["random_d0", "random_d1"]
    assert dd["test"]["mean"] == pytest.approx(0.6 - 0.2)
    assert dd["ratio"] == pytest.approx(0.6 / 0.2)
    assert delta_of_deltas({(0, 1): 1.0, (1, 2): 2.0}, {(1, 2): 0.5}) == [1.5]
    assert len(s["vs_baseline"]) == 3
    holm_p = [r["test"]["p_t_holm"] for r in s["vs_baseline"]]
    assert all(p is not None for p in holm_p)


def test_by_tag_breakdown():
    base = np.zeros(10)
    shift = np.array([1.0] * 5 + [-2.0] * 5)
    recs = _records({"baseline": list(base), "sink": list(base + shift)}, tags=["a"] * 5 + ["b"] * 5)
    s = summarize(recs, [_spec("baseline", "baseline", 0), _spec("sink", "sink", 1)], ["m"], n_boot=200)
    by = {r["tag"]: r["test"]["mean"] for r in s["by_tag"]}
    assert by == {"a": pytest.approx(1.0), "b": pytest.approx(-2.0)}
    assert s["vs_baseline"][0]["test"]["mean"] == pytest.approx(-0.5)


def test_by_tag_hides_groups_too_small_to_test():
    tags = ["a"] * 6 + ["b"] * 4 + ["c"]
    base = np.zeros(len(tags))
    recs = _records({"baseline": list(base), "sink": list(base + np.linspace(0, 1, len(tags)))}, tags=tags)
    specs = [_spec("baseline", "baseline", 0), _spec("sink", "sink", 1)]
    s = summarize(recs, specs, ["m"], n_boot=200)
    assert [(r["tag"], r["test"]["n"]) for r in s["by_tag"]] == [("a", 6)]
    assert s["by_tag_hidden"]["groups"] == 2 and s["by_tag_hidden"]["min_n"] == 5
    assert "fewer than 5" in s["by_tag_hidden"]["reason"]
    s = summarize(recs, specs, ["m"], n_boot=200, min_group_n=1)
    assert [r["tag"] for r in s["by_tag"]] == ["a", "b", "c"] and s["by_tag_hidden"]["groups"] == 0


def test_missing_values_are_not_numbers():
    recs = _records({"baseline": [1.0, 2.0, None], "sink": [1.5, None, 3.0]})
    s = summarize(recs, [_spec("baseline", "baseline", 0), _spec("sink", "sink", 1)], ["m"], n_boot=100)
    t = s["vs_baseline"][0]["test"]
    assert t["n"] == 1 and t["mean"] == pytest.approx(0.5)
