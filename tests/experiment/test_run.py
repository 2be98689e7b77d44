"""The CLI contract end to end on the tiny preset: records, images, summary, plots, rerun,
kill-and-resume, two-process sharding, failed metrics, paired latents."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sinkattn.cli import main
from sinkattn.experiment.store import merged_records, read_records, record_key

# 4 prompts x (baseline, sink k1, k2, random k1, k2) = 20 images, 2 steps, 2 cheap scorers
ARGS = ["--preset", "tiny", "--limit", "4", "--steps", "2", "--k", "1,2", "--controls", "sink,random",
        "--random-draws", "1", "--metrics", "clip_t,lpips", "--bootstrap", "200", "--no-progress"]
N_RECORDS = 20
PLOTS = {"dose_response.png", "lpips_sink_vs_random.png", "sink_atlas.png", "qualitative_grid.png"}


def _cli(out, *extra, env=None, wait=True):
    cmd = [sys.executable, "-m", "sinkattn", "run", "--out", str(out), *ARGS, *extra]
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full_env.update(env or {})
    # cwd outside the repository: `python -m` puts the cwd on sys.path, and the repository's
    # top-level kernels/ folder must not become importable as `kernels` (diffusers probes it)
    proc = subprocess.Popen(cmd, env=full_env, cwd=os.path.dirname(str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    if not wait:
        return proc
    out_text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out_text.decode()
    return out_text.decode()


def _images(run_dir, records):
    return {record_key(r): hashlib.sha256(open(os.path.join(run_dir, r["image"]), "rb").read()).hexdigest()
            for r in records}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert main(["run", "--out", str(out), *ARGS]) == 0
    return out


def test_records_images_summary_plots(reference_run):
    records = read_records(os.path.join(reference_run, "results.jsonl"))
    assert len(records) == N_RECORDS == len({record_key(r) for r in records})
    for r in records:
        for field in ("prompt_id", "prompt", "tag", "seed", "condition", "metrics", "image", "timings",
                      "metric_errors", "untrained_metrics", "k", "top_k", "condition_spec"):
            assert field in r, field
        assert r["seed"] == 42 + r["prompt_id"]
        assert set(r["metrics"]) == {"clip_t", "lpips"} and all(isinstance(v, float) for v in r["metrics"].values())
        assert r["untrained_metrics"] is True and r["metric_info"]["clip_t"]["untrained"] is True
        data = open(os.path.join(reference_run, r["image"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == r["image_sha256"]
        assert r["timings"]["generate_s"] > 0
    assert {r["condition"] for r in records} == {
        "baseline", "sink_k1_score_head_Lall", "sink_k2_score_head_Lall",
        "random_k1_score_head_Lall_d0", "random_k2_score_head_Lall_d0"}
    assert all(r["metrics"]["lpips"] == 0.0 for r in records if r["condition"] == "baseline")
    summary = json.load(open(os.path.join(reference_run, "summary.json")))
    assert summary["records"] == N_RECORDS and summary["untrained_metrics"] == ["clip_t", "lpips"]
    assert len(summary["statistics"]["vs_baseline"]) == 4 * 2
    assert len(summary["statistics"]["sink_minus_random"]) == 2 * 2
    md = open(os.path.join(reference_run, "summary.md")).read()
    assert "UNTRAINED SCORERS" in md and "sink_k2_score_head_Lall" in md
    plots = os.listdir(os.path.join(reference_run, "plots"))
    assert PLOTS <= set(plots)
    for name in PLOTS:
        with open(os.path.join(reference_run, "plots", name), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert summary["traced_images"] == 4


def test_rerun_adds_nothing(reference_run, capsys):
    path = os.path.join(reference_run, "results.jsonl")
    before = open(path, "rb").read()
    assert main(["run", "--out", str(reference_run), *ARGS]) == 0
    assert open(path, "rb").read() == before
    assert "0 new records, 20 already there" in capsys.readouterr().out


def test_other_generation_settings_are_refused(reference_run, capsys):
    assert main(["run", "--out", str(reference_run), *ARGS, "--steps", "3"]) == 2
    assert "steps" in capsys.readouterr().err


def test_kill_and_resume_matches_uninterrupted(reference_run, tmp_path):
    out = tmp_path / "killed"
    path = out / "results.jsonl"
    proc = _cli(out, wait=False)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 1:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = len(read_records(str(path)))
            break
        time.sleep(0.01)
    assert killed_at is not None and killed_at < N_RECORDS, "the run ended before it could be killed"
    with open(path, "ab") as fh:  # and a torn line, as a kill inside write() would leave
        fh.write(b'{"condition": "sink_k1_sc')
    _cli(out)
    records = read_records(str(path))
    assert len(records) == N_RECORDS == len({record_key(r) for r in records})
    reference = read_records(os.path.join(reference_run, "results.jsonl"))
    assert _images(str(out), records) == _images(str(reference_run), reference)
    ref_metrics = {record_key(r): r["metrics"] for r in reference}
    for r in records:
        assert r["metrics"] == pytest.approx(ref_metrics[record_key(r)], abs=1e-5)
    assert (out / "summary.json").exists()


def test_two_process_sharding_and_report_merge(reference_run, tmp_path):
    out = tmp_path / "sharded"
    procs = [_cli(out, env={"RANK": str(i), "WORLD_SIZE": "2", "LOCAL_RANK": str(i)}, wait=False) for i in range(2)]
    for p in procs:
        text, _ = p.communicate(timeout=300)
        assert p.returncode == 0, text.decode()
    shards = [read_records(str(out / f"results.shard-{i}-of-2.jsonl")) for i in range(2)]
    assert {r["prompt_id"] for r in shards[0]} == {0, 2} and {r["prompt_id"] for r in shards[1]} == {1, 3}
    assert main(["report", str(out)]) == 0
    merged = read_records(str(out / "results.jsonl"))
    reference = read_records(os.path.join(reference_run, "results.jsonl"))
    assert _images(str(out), merged) == _images(str(reference_run), reference)
    assert json.load(open(out / "summary.json"))["records"] == N_RECORDS
    # a rerun of one shard, and an unsharded rerun, add nothing
    assert main(["run", "--out", str(out), *ARGS, "--shard", "1/2", "--no-report"]) == 0
    assert main(["run", "--out", str(out), *ARGS]) == 0
    assert len(read_records(str(out / "results.shard-1-of-2.jsonl"))) == len(shards[1])
    assert len(read_records(str(out / "results.jsonl"))) == N_RECORDS


def test_failed_metric_is_missing_not_a_number_and_latents_are_paired(tmp_path, monkeypatch):
    import sinkattn.metrics.base
    from sinkattn.experiment import models

    real_build = sinkattn.metrics.base.build_scorer  # what sinkattn.metrics.build_scorers calls

    def build(name, *args, **kw):
        scorer = real_build(name, *args, **kw)
        if name == "clip_t":
            def broken(*a, **k):
                raise RuntimeError("scorer exploded")
            scorer.score = broken
        return scorer

    seen = []
    real_call = models.Generator.__call__

    def spy(self, prompt, seed, latents, draw=0):
        seen.append((prompt, seed, latents.clone(), self.latents(seed, draw)))
        return real_call(self, prompt, seed, latents, draw)

    monkeypatch.setattr(sinkattn.metrics.base, "build_scorer", build)
    monkeypatch.setattr(models.Generator, "__call__", spy)
    out = tmp_path / "failed"
    assert main(["run", "--out", str(out), *ARGS, "--limit", "2"]) == 0
    records = read_records(str(out / "results.jsonl"))
    assert len(records) == 10
    for r in records:
        assert r["metrics"]["clip_t"] is None
        assert "scorer exploded" in r["metric_errors"]["clip_t"]
        assert isinstance(r["metrics"]["lpips"], float) and "lpips" not in r["metric_errors"]
    summary = json.load(open(out / "summary.json"))
    assert summary["missing_values"]["clip_t"] == 10
    assert all(row["test"]["n"] == 0 for row in summary["statistics"]["vs_baseline"] if row["metric"] == "clip_t")
    assert "Missing metric values" in open(out / "summary.md").read()
    # every condition of a (prompt, seed) started from the same latents, drawn from the seed
    assert len(seen) == 10
    for _, _, latents, fresh in seen:
        assert (latents == fresh).all()
    by_seed = {}
    for _, seed, latents, _ in seen:
        by_seed.setdefault(seed, []).append(latents)
    assert sorted(by_seed) == [42, 43] and all(len(v) == 5 for v in by_seed.values())
    assert all((x == v[0]).all() for v in by_seed.values() for x in v)
    assert not (by_seed[42][0] == by_seed[43][0]).all()


def test_damaged_line_inside_results_is_set_aside_and_remade(reference_run, tmp_path, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(reference_run, out)
    path = out / "results.jsonl"
    lines = path.read_bytes().split(b"\n")
    lost = json.loads(lines[6])
    lines[6] = lines[6][:40]  # torn in the middle of the file: no later run could read past it
    path.write_bytes(b"\n".join(lines))
    with pytest.warns(UserWarning, match="1 unreadable line"):
        assert main(["report", str(out)]) == 0
    assert json.load(open(out / "summary.json"))["records"] == N_RECORDS - 1
    with pytest.warns(UserWarning, match="moved to .*results.jsonl.corrupt"):
        assert main(["run", "--out", str(out), *ARGS]) == 0
    assert "1 new records, 19 already there" in capsys.readouterr().out
    assert (out / "results.jsonl.corrupt").read_bytes() == lines[6] + b"\n"
    records = read_records(str(path))
    assert len(records) == N_RECORDS == len({record_key(r) for r in records})
    reference = read_records(os.path.join(reference_run, "results.jsonl"))
    assert _images(str(out), records) == _images(str(reference_run), reference)
    (remade,) = [r for r in records if record_key(r) == record_key(lost)]
    assert remade["metrics"] == pytest.approx(lost["metrics"], abs=1e-5)


def test_new_metrics_are_scored_on_the_stored_images(reference_run, tmp_path, capsys):
    out = tmp_path / "rescored"
    assert main(["run", "--out", str(out), *ARGS, "--limit", "2", "--metrics", "lpips"]) == 0
    results = (out / "results.jsonl").read_bytes()
    assert all(set(r["metrics"]) == {"lpips"} for r in read_records(str(out / "results.jsonl")))
    capsys.readouterr()
    assert main(["run", "--out", str(out), *ARGS, "--limit", "2"]) == 0  # ARGS: --metrics clip_t,lpips
    assert "0 new records, 10 already there, 10 metric values scored on stored images" in capsys.readouterr().out
    assert (out / "results.jsonl").read_bytes() == results  # a record is never rewritten
    reference = {record_key(r): r for r in read_records(os.path.join(reference_run, "results.jsonl"))}
    merged = merged_records(str(out))
    assert len(merged) == 10
    for r in merged:
        assert r["metrics"] == pytest.approx(reference[record_key(r)]["metrics"], abs=1e-5)
        assert r["metric_info"]["clip_t"]["untrained"] is True and "clip_t" not in r["metric_errors"]
    summary = json.load(open(out / "summary.json"))
    assert summary["metrics"] == ["clip_t", "lpips"] and summary["missing_values"] == {"clip_t": 0, "lpips": 0}
    # nothing is left to score: a rerun writes nothing, anywhere
    files = {f: (out / f).read_bytes() for f in ("results.jsonl", "metrics.jsonl")}
    assert main(["run", "--out", str(out), *ARGS, "--limit", "2", "--no-report"]) == 0
    assert "0 new records, 10 already there ->" in capsys.readouterr().out
    assert {f: (out / f).read_bytes() for f in files} == files


def test_value_noise_condition_is_seeded_per_image(tmp_path):
    """--value-target noise: the processor draws its noise from a generator seeded per (image
    seed, condition), so two runs make the same images, and the noise images differ from the
    zero-target ones."""
    args = ["--preset", "tiny", "--limit", "2", "--steps", "2", "--k", "1", "--path", "value",
            "--value-target", "zero,noise", "--metrics", "clip_t", "--no-report", "--no-progress"]
    hashes = []
    for name in ("a", "b"):
        assert main(["run", "--out", str(tmp_path / name), *args]) == 0
        records = read_records(str(tmp_path / name / "results.jsonl"))
        hashes.append(_images(tmp_path / name, records))
    assert hashes[0] == hashes[1]
    records = read_records(str(tmp_path / "a" / "results.jsonl"))
    zero = {r["prompt_id"]: r["image"] for r in records if r["condition"] == "sink_k1_value_head_Lall"}
    noise = {r["prompt_id"]: r["image"] for r in records if r["condition"] == "sink_k1_value_head_Lall_vnoise"}
    assert len(zero) == len(noise) == 2
    for pid in zero:
        assert open(tmp_path / "a" / zero[pid], "rb").read() != open(tmp_path / "a" / noise[pid], "rb").read()
