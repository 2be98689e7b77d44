"""Statistics on synthetic data with known answers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from sinkattn.experiment.stats import (bootstrap_ci, delta_of_deltas, e1_tags, holm, page_trend, paired_deltas,
                                       paired_test, ratio_ci, summarize)


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


# ---- the original's analyses: Holm families, delta of deltas, LPIPS ratio, dose trend, E1 tags ----

KS = [1, 5, 10, 20, 50]


def _sweep_records(metric_of, n_prompts=32, ks=KS, seed=0):
    """A k sweep: baseline, sink and one random draw per k; ``metric_of(rng, prompt_level, control, k)``
    gives the value of one image (prompt_level: the prompt's own offset, shared by its images)."""
    rng = np.random.default_rng(seed)
    recs, specs = [], [_spec("baseline", "baseline", 0)]
    for k in ks:
        specs += [_spec(f"sink_k{k}", "sink", k), _spec(f"random_k{k}_d0", "random", k, 0)]
    for i in range(n_prompts):
        level = rng.normal(0.0, 1.0)
        recs.append(dict(prompt_id=i, seed=42 + i, condition="baseline", tag=None, prompt="",
                         metrics={"m": level}))
        for k in ks:
            for name, control in ((f"sink_k{k}", "sink"), (f"random_k{k}_d0", "random")):
                recs.append(dict(prompt_id=i, seed=42 + i, condition=name, tag=None, prompt="",
                                 metrics={"m": level + metric_of(rng, control, k)}))
    return recs, specs


def _planted(rng, control, k):
    """The sink lowers the score by 0.03 * log(k) more than random does, plus per-image noise."""
    return (-0.03 * math.log(k) if control == "sink" else 0.0) + rng.normal(0.0, 0.05)


def _null(rng, control, k):
    return rng.normal(0.0, 0.05)


def test_holm_families_follow_the_original():
    recs, specs = _sweep_records(_planted, n_prompts=12, ks=[1, 10])
    s = summarize(recs, specs, ["m"], n_boot=200)
    rows = s["vs_baseline"]
    assert len(rows) == 4 and all(r["series"] == "score/head/L12" for r in rows)
    for k in (1, 10):  # per k: the controls of that k (ACF:767-772)
        fam = [r for r in rows if r["k"] == k]
        assert [r["holm"]["per_k"]["p_t"] for r in fam] == pytest.approx(holm([r["test"]["p_t"] for r in fam]))
    # the k sweep: every k x control of the metric and series (SK:47-57)
    assert [r["holm"]["sweep"]["p_t"] for r in rows] == pytest.approx(holm([r["test"]["p_t"] for r in rows]))
    assert [r["holm"]["sweep"]["p_wilcoxon"] for r in rows] == pytest.approx(
        holm([r["test"]["p_wilcoxon"] for r in rows]))
    assert set(s["family"]) >= {"all", "per_k", "sweep", "sink_minus_random"}


def test_delta_of_deltas_one_sided_tests_and_rule_match_the_original():
    recs, specs = _sweep_records(_planted, n_prompts=24, ks=[50])
    s = summarize(recs, specs, ["m"], n_boot=1000)
    (row,) = s["sink_minus_random"]
    sink = paired_deltas(recs, "m", "sink_k50")
    rand = paired_deltas(recs, "m", "random_k50_d0")
    d = np.array([sink[key] - rand[key] for key in sorted(sink)])
    p_two = sps.ttest_1samp(d, 0.0).pvalue
    assert row["test"]["p_t"] == pytest.approx(p_two)
    # DD:81-89: one-sided by halving; equal to scipy's one-sided t
    assert row["p_t_one_sided"] == pytest.approx(p_two / 2 if d.mean() < 0 else 1 - p_two / 2)
    assert row["p_t_one_sided"] == pytest.approx(sps.ttest_1samp(d, 0.0, alternative="less").pvalue)
    assert row["p_wilcoxon_one_sided"] == pytest.approx(sps.wilcoxon(d, alternative="less").pvalue)
    assert row["alternative"] == "less" and d.mean() < 0
    assert row["significant"] == (row["ci_excludes_zero"] and row["p_t_one_sided"] < 0.05)
    assert row["significant"]  # -0.03 * log(50) = -0.117 per prompt, noise 0.07
    assert row["ratio_ci_low"] is None  # a ratio CI only for distances


def test_sink_specific_rule_needs_the_hypothesised_side():
    # the sink is *better* than random: two-sided tests fire, the sink-specific rule does not
    recs, specs = _sweep_records(lambda rng, c, k: (0.2 if c == "sink" else 0.0) + rng.normal(0, 0.05),
                                 n_prompts=20, ks=[5])
    (row,) = summarize(recs, specs, ["m"], n_boot=500)["sink_minus_random"]
    assert row["test"]["p_t"] < 1e-6 and row["ci_excludes_zero"]
    assert row["p_t_one_sided"] > 0.99 and not row["significant"]


def test_lpips_ratio_has_a_paired_bootstrap_ci():
    rng = np.random.default_rng(5)
    n = 40
    rand = rng.uniform(0.02, 0.06, size=n)
    sink = 6.0 * rand * rng.uniform(0.8, 1.2, size=n)
    recs = []
    for i in range(n):
        for cond, v in (("baseline", 0.0), ("sink", sink[i]), ("random", rand[i])):
            recs.append(dict(prompt_id=i, seed=i, condition=cond, tag=None, prompt="", metrics={"lpips": v}))
    specs = [_spec("baseline", "baseline", 0), _spec("sink", "sink", 1), _spec("random", "random", 1, 0)]
    (row,) = summarize(recs, specs, ["lpips"], n_boot=2000)["sink_minus_random"]
    assert row["ratio"] == pytest.approx(sink.mean() / rand.mean())
    assert row["ratio_ci_low"] < row["ratio"] < row["ratio_ci_high"]
    assert 5.0 < row["ratio_ci_low"] and row["ratio_ci_high"] < 7.0
    assert row["alternative"] == "greater" and row["significant"]  # the sink perturbs more
    again = summarize(recs, specs, ["lpips"], n_boot=2000)["sink_minus_random"][0]
    assert (again["ratio_ci_low"], again["ratio_ci_high"]) == (row["ratio_ci_low"], row["ratio_ci_high"])
    assert ratio_ci([1.0, 2.0], [0.0, 0.0]) == (None, None, None)


def _trend(recs, specs):
    (row,) = summarize(recs, specs, ["m"], n_boot=1000, seed=0)["trend"]
    return row


def test_dose_trend_detects_a_planted_trend():
    row = _trend(*_sweep_records(_planted, seed=11))
    assert row["k"] == KS and row["alternative"] == "less"
    page = row["page"]
    assert page["n"] == 32 and page["p"] < 0.001 and page["significant"]
    assert page["mean_rho"] < -0.3
    assert page["means"][0] > page["means"][2] > page["means"][-1]  # falls with k
    dts = {(d["k_low"], d["k_high"]): d for d in row["dt"]}
    assert set(dts) == {(1, 5), (5, 10), (10, 20), (20, 50), (1, 50)}
    assert dts[(1, 50)]["significant"] and dts[(1, 50)]["test"]["mean"] < 0
    assert dts[(1, 50)]["test"]["mean"] == pytest.approx(-0.03 * math.log(50), abs=0.04)


def test_dose_trend_stays_quiet_without_one():
    row = _trend(*_sweep_records(_null, seed=11))
    assert row["page"]["p"] > 0.05 and not row["page"]["significant"]
    assert not any(d["significant"] for d in row["dt"])


def test_page_statistic_matches_scipy_and_needs_three_levels():
    rng = np.random.default_rng(9)
    per_level = [{(i, 0): float(rng.normal(-0.1 * j)) for i in range(10)} for j in range(4)]
    out = page_trend(per_level, [1, 2, 3, 4], "less")
    data = np.array([[d[(i, 0)] for d in per_level] for i in range(10)])
    ref = sps.page_trend_test(data[:, ::-1])  # falling with k == rising in reversed order
    assert out["statistic"] == pytest.approx(ref.statistic) and out["p"] == pytest.approx(ref.pvalue)
    two = page_trend(per_level[:2], [1, 2], "less")
    assert two["p"] is None and "at least 3 k levels" in two["note"]


def test_dose_trend_only_where_sink_and_random_exist_at_two_levels():
    recs, specs = _sweep_records(_planted, n_prompts=6, ks=[1])
    assert summarize(recs, specs, ["m"], n_boot=100)["trend"] == []


def test_e1_tags_are_the_original_substring_tags():
    assert e1_tags("a photo of a cat") == ["single_object"]
    assert e1_tags("a photo of two red apples on a table") == ["counting", "position", "color"]
    assert e1_tags("a photo of a dog and a bench") == ["two_object"]
    # where they differ from GenEval's tag field (single_object, color_attr): the Methods text says so
    assert e1_tags("a photo of a red bicycle") == ["color"]
    assert e1_tags("a photo of a yellow bus and a green bench") == ["two_object", "color"]
    recs = _records({"baseline": [0.0] * 6, "sink": [1.0] * 6})
    for r in recs:
        r["prompt"] = "two cats" if r["prompt_id"] < 5 else "a cat"
    s = summarize(recs, [_spec("baseline", "baseline", 0), _spec("sink", "sink", 1)], ["m"], n_boot=100)
    assert [(r["tag"], r["test"]["n"]) for r in s["by_e1_tag"]] == [("counting", 5)]
    assert s["by_e1_tag_hidden"]["groups"] == 1
