"""`sinkattn report` on real tiny run folders: image paths named by records stay inside the
run folder, bad images are warnings, random weights are said everywhere, small by-tag groups
are hidden, and a run without metrics says so instead of printing empty tables."""

import json
import os
import shutil
import warnings

import pytest

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
    for empty in ("## Conditions vs baseline", "## Sink minus", "## By GenEval tag", "| condition | metric |"):
        assert empty not in md
    assert "plots/dose_response.png" not in summary["plots"]
    assert not (run / "plots" / "dose_response.png").exists()
    assert {"plots/sink_atlas.png", "plots/qualitative_grid.png"} <= set(summary["plots"])
    assert "No metrics were computed" in summary["metrics_note"]
