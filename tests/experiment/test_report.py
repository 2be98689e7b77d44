"""`sinkattn report` on real tiny run folders: image paths named by records stay inside the
run folder, bad images are warnings, random weights are said everywhere, small by-tag groups
are hidden, a run without metrics says so instead of printing empty tables; a k sweep gets the
original study's analyses and a Methods paragraph with the report's numbers; FID (a set metric)
is computed from the stored images when the run's metrics include it."""

import json
import os
import shutil
import warnings

import pytest
from PIL import Image

from sinkattn.cli import main
from sinkattn.experiment import plots
from sinkattn.experiment.report import write_report
from sinkattn.experiment.store import read_records

# 4 prompts (2 tags x 2) x (baseline, sink k1, random k1) = 12 images, 2 steps
BASE = ["--preset", "tiny", "--limit", "4", "--steps", "2", "--k", "1", "--controls", "sink,random",
        "--random-draws", "1", "--bootstrap", "100", "--no-progress"]
BANNER = "random weights: numbers exercise the machinery, not the science"


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "run"
    assert main(["run", "--out", str(out), *BASE, "--metrics", "clip_t,lpips"]) == 0
    return out


@pytest.fixture(scope="module")
def unscored_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("unscored") / "run"
    assert main(["run", "--out", str(out), *BASE, "--metrics", "none"]) == 0
    return out


def _copy(run, tmp_path):
    """A private copy of a module-scoped run folder, so a test may craft its records."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst, symlinks=True)
    return dst


def _edit_records(run_dir, edit):
    path = os.path.join(run_dir, "results.jsonl")
    records = [edit(r) or r for r in read_records(path)]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)


def _set_image(run_dir, where: dict):
    """where: {(prompt_id, control): new image field}."""
    def edit(r):
        if (r["prompt_id"], r["control"]) in where:
            r["image"] = where[(r["prompt_id"], r["control"])]
    _edit_records(run_dir, edit)


@pytest.fixture
def opened(monkeypatch):
    """The real paths PIL is asked to open during the test."""
    from PIL import Image

    seen, real_open = [], Image.open

    def spy(fp, *a, **k):
        if isinstance(fp, (str, os.PathLike)):
            seen.append(os.path.realpath(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", spy)
    return seen


@pytest.fixture
def figures(monkeypatch):
    """{png name: texts drawn on the figure} for every figure the report saves."""
    saved, real_save = {}, plots._save

    def spy(fig, path):
        texts = [t.get_text() for t in fig.texts if t.get_visible()]
        texts += [ax.get_title() for ax in fig.axes]
        saved[os.path.basename(path)] = texts
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return saved


def _warnings(summary):
    return "\n".join(summary.get("warnings", []))


def test_image_paths_leaving_the_run_dir_are_refused(scored_run, tmp_path, opened):
    run = _copy(scored_run, tmp_path)
    outside = tmp_path / "secret.png"
    shutil.copy(run / "images" / "baseline" / "p00000_s42.png", outside)
    os.symlink(outside, run / "images" / "link.png")
    _set_image(run, {(0, "baseline"): str(outside), (0, "sink"): "../secret.png",
                     (0, "random"): "images/link.png"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = write_report(str(run))
    root = os.path.realpath(run) + os.sep
    assert opened and all(p.startswith(root) for p in opened), [p for p in opened if not p.startswith(root)]
    assert any("outside the run folder" in str(w.message) for w in caught)
    text = _warnings(summary)
    for named in (str(outside), "../secret.png", "images/link.png"):
        assert named in text
    assert (run / "plots" / "qualitative_grid.png").exists()
    assert "outside the run folder" in (run / "summary.md").read_text()


def test_missing_or_unreadable_image_is_a_warning(scored_run, tmp_path):
    run = _copy(scored_run, tmp_path)
    (run / "images" / "baseline" / "p00001_s43.png").write_text("not a png\n")
    os.remove(run / "images" / "sink_k1_score_head_Lall" / "p00001_s43.png")
    _set_image(run, {(1, "random"): None, (2, "random"): "images/nul\x00.png"})
    with pytest.warns(UserWarning):
        summary = write_report(str(run))
    text = _warnings(summary)
    assert "images/baseline/p00001_s43.png" in text and "cannot be read" in text
    assert "images/sink_k1_score_head_Lall/p00001_s43.png" in text and "missing" in text
    assert "image None: not a path" in text and "image 'images/nul\\x00.png': not a path" in text
    assert summary["records"] == 12 and (run / "plots" / "qualitative_grid.png").exists()


@pytest.mark.parametrize("model,untrained,banner", [
    ("tiny", True, True), ("org/real-model", True, True), ("tiny", False, True), ("org/real-model", False, False)])
def test_random_weights_banner_on_every_figure(scored_run, tmp_path, figures, model, untrained, banner):
    run = _copy(scored_run, tmp_path)

    def edit(r):
        r["model"] = model
        r["untrained_metrics"] = untrained
        for info in r["metric_info"].values():
            info["untrained"] = untrained
    _edit_records(run, edit)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, model=model)))
    summary = write_report(str(run))
    assert set(figures) == {os.path.basename(p) for p in summary["plots"]} >= {"sink_atlas.png",
                                                                               "qualitative_grid.png"}
    for name, texts in figures.items():
        assert any(BANNER in t for t in texts) == banner, (name, texts)
    assert summary["random_weights"] == {"model": model == "tiny", "scorers": ["clip_t", "lpips"] if untrained else [],
                                         "banner": BANNER if banner else None}
    md = (run / "summary.md").read_text()
    assert ("RANDOM-WEIGHT DIFFUSION MODEL" in md) == (model == "tiny")
    assert (BANNER in md) == banner


def test_by_tag_groups_too_small_are_hidden_and_counted(scored_run, tmp_path):
    run = _copy(scored_run, tmp_path)
    summary = write_report(str(run))
    # 2 tags x 2 prompts: every (tag, condition, metric) group has 2 pairs
    assert summary["statistics"]["by_tag"] == []
    hidden = summary["statistics"]["by_tag_hidden"]
    assert hidden["groups"] == 2 * 2 * 2 and hidden["min_n"] == 5
    md = (run / "summary.md").read_text()
    assert "| tag | condition |" not in md
    assert "8 (tag, condition, metric) groups hidden" in md and "fewer than 5" in md


def test_metrics_none_says_so_and_omits_empty_tables(unscored_run, tmp_path):
    run = _copy(unscored_run, tmp_path)
    summary = write_report(str(run))
    md = (run / "summary.md").read_text()
    assert "No metrics were computed" in md and "--metrics clip_t,lpips" in md
    # a rerun into the same folder scores the stored images (runner: metrics*.jsonl)
    assert "rerun the same command into this folder" in md and "adds nothing" not in md
    assert "## Methods" not in md
    for empty in ("## Conditions vs baseline", "## Sink minus", "## By GenEval tag", "| condition | metric |"):
        assert empty not in md
    assert "plots/dose_response.png" not in summary["plots"]
    assert not (run / "plots" / "dose_response.png").exists()
    assert {"plots/sink_atlas.png", "plots/qualitative_grid.png"} <= set(summary["plots"])
    assert "No metrics were computed" in summary["metrics_note"]


# 4 prompts x (baseline + sink and random at k = 1, 2, 4) = 28 images: three dose levels for the trend test
SWEEP = [*BASE[:BASE.index("--k")], "--k", "1,2,4", *BASE[BASE.index("--k") + 2:], "--metrics", "clip_t,lpips"]


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    assert main(["run", "--out", str(out), *SWEEP]) == 0
    return out


@pytest.fixture(scope="module")
def calibration_run(tmp_path_factory):
    """The same prompts and settings, other seeds (seed_base 1000): seed variation alone."""
    out = tmp_path_factory.mktemp("calibration") / "run"
    args = [*BASE, "--controls", "sink", "--seed-base", "1000", "--metrics", "none"]
    assert main(["run", "--out", str(out), *args]) == 0
    return out


def _with_fid(run, tmp_path, **config_changes):
    run = _copy(run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config.update(metrics=config["metrics"] + ["fid"], **config_changes)
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_sweep_gets_the_original_analyses_and_a_methods_paragraph(sweep_run, tmp_path):
    run = _copy(sweep_run, tmp_path)
    summary = write_report(str(run))
    st = summary["statistics"]
    assert summary["fid"] is None  # not asked for
    assert {(r["metric"], tuple(r["k"])) for r in st["trend"]} == {("clip_t", (1, 2, 4)), ("lpips", (1, 2, 4))}
    for row in st["trend"]:
        assert row["page"]["n"] == 4 and row["page"]["p"] is not None
        assert [(d["k_low"], d["k_high"]) for d in row["dt"]] == [(1, 2), (2, 4), (1, 4)]
    dd = {(r["metric"], r["k"]): r for r in st["sink_minus_random"]}
    assert set(dd) == {(m, k) for m in ("clip_t", "lpips") for k in (1, 2, 4)}
    assert all(dd[("lpips", k)]["ratio_ci_low"] is not None for k in (1, 2, 4))
    assert dd[("lpips", 1)]["alternative"] == "greater" and dd[("clip_t", 1)]["alternative"] == "less"
    assert all(set(r["holm"]) == {"per_k", "sweep"} for r in st["vs_baseline"])
    md = (run / "summary.md").read_text()
    for needle in ("## Methods", "100 resamples, seed 0", "ACF:767-772", "SK:47-57", "Page's L", "DD:105",
                   "E1:46-64", "## Dose trend across k", "| lpips | score/head/Lall | 1 -> 4 |",
                   "## By E1 substring tag"):
        assert needle in md, needle
    assert "plots/sink_minus_random.png" in summary["plots"] and (run / "plots" / "sink_minus_random.png").exists()
    again = write_report(str(run))["statistics"]
    assert again == st  # seeded: the same numbers every time


def test_fid_when_the_runs_metrics_include_it(sweep_run, calibration_run, tmp_path):
    from sinkattn.metrics import build_set_metric
    from sinkattn.metrics.fid import frechet_distance

    run = _with_fid(sweep_run, tmp_path)
    summary = write_report(str(run), fid_calibration=str(calibration_run))
    fid = summary["fid"]
    assert fid["error"] is None and fid["untrained"] and fid["package"] == "pytorch-fid" and fid["dims"] == 2048
    assert "fid" in summary["untrained_metrics"] and summary["random_weights"]["banner"] == BANNER
    rows = {r["condition"]: r for r in fid["rows"]}
    assert len(rows) == 6 and all(r["n"] == 4 and r["fid"] >= 0 for r in rows.values())
    cal = fid["calibration"]
    assert cal["n"] == cal["n_other"] == 4 and cal["shared_seed_pairs"] == 0 and cal["settings_differ"] == {}
    assert cal["fid"] > 0
    for r in rows.values():
        assert r["shift"]["ratio"] == pytest.approx(r["fid"] / cal["fid"])
        assert r["shift"]["excess"] == pytest.approx(r["fid"] - cal["fid"])
    # one row recomputed by hand: the condition's images against the baseline images of the same pairs
    records = read_records(str(run / "results.jsonl"))
    name = "sink_k4_score_head_Lall"
    pick = lambda cond: [str(run / r["image"]) for r in sorted(records, key=lambda r: r["prompt_id"])
                         if r["condition"] == cond]
    extractor = build_set_metric("fid", untrained=True)
    load = lambda paths: extractor.features([Image.open(p).convert("RGB") for p in paths])
    assert rows[name]["fid"] == pytest.approx(frechet_distance(load(pick(name)), load(pick("baseline"))), rel=1e-6)
    md = (run / "summary.md").read_text()
    assert "## FID vs the baseline images" in md and "UNTRAINED (random weights)" in md and "Calibration:" in md
    assert "- FID: pytorch-fid" in md


def test_fid_without_weights_is_a_warning_not_a_crash(scored_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SINKATTN_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("SINKATTN_FID_WEIGHTS", raising=False)
    run = _with_fid(scored_run, tmp_path, untrained_metrics=False)
    with pytest.warns(UserWarning, match="fid not computed"):
        summary = write_report(str(run))
    assert "pt_inception-2015-12-05-6726825d.pth" in summary["fid"]["error"]
    assert summary["statistics"]["vs_baseline"]  # the rest of the report is there
    md = (run / "summary.md").read_text()
    assert "**FID not computed:**" in md and "--metric-weights fid=" in md


def test_fid_from_the_run_command_and_the_report_command(calibration_run, tmp_path):
    """`--metrics clip_t,fid`: records carry the per-image metric only; the report the run
    writes holds FID per condition; `sinkattn report --fid-calibration DIR` adds the
    calibration, and `--no-fid` leaves FID out."""
    out = tmp_path / "fid"
    args = [*BASE, "--controls", "sink", "--metrics", "clip_t,fid"]
    assert main(["run", "--out", str(out), *args]) == 0
    records = read_records(str(out / "results.jsonl"))
    assert records and all(set(r["metrics"]) == {"clip_t"} for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["condition"] for r in summary["fid"]["rows"]] == ["sink_k1_score_head_Lall"]
    assert summary["fid"]["rows"][0]["n"] == 4 and summary["fid"]["rows"][0]["fid"] >= 0
    assert summary["fid"]["calibration"] is None
    assert main(["report", str(out), "--fid-calibration", str(calibration_run)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fid"]["calibration"]["fid"] > 0 and summary["fid"]["rows"][0]["shift"]["ratio"] is not None
    assert main(["report", str(out), "--no-fid"]) == 0
    assert json.loads((out / "summary.json").read_text())["fid"] is None
    assert main(["report", str(out), "--fid-calibration", str(tmp_path / "nowhere")]) == 2


def test_traced_run_writes_the_atlas_and_the_html_report(tmp_path):
    """--trace: every baseline's per-head trace goes to RUN/atlas/ (Arrow), trace.jsonl holds
    its summary, and the report draws the atlas figures and writes report.html."""
    from sinkattn.experiment.atlas import atlas_entries, read_atlas

    out = tmp_path / "traced"
    assert main(["run", "--out", str(out), *BASE, "--controls", "sink", "--metrics", "none", "--trace"]) == 0
    entries = atlas_entries(str(out))
    assert sorted((e["prompt_id"], e["condition"]) for e in entries) == [(i, "baseline") for i in range(4)]
    heads = read_atlas(str(out))
    assert len(heads) > 0 and set(heads["prompt_id"].tolist()) == {0, 1, 2, 3}
    traces = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    assert len(traces) == 4 and all(t["trace"]["heads_counted"] > 0 for t in traces)
    plots_made = json.loads((out / "summary.json").read_text())["plots"]
    for name in ("plots/atlas_figure2.png", "plots/atlas_sink_locations.png", "plots/overlay_p00000_s42.png"):
        assert name in plots_made and (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "atlas_figure2" in html
