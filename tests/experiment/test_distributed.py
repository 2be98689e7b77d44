"""The study runner under real launchers, on CPU: `torchrun --nproc-per-node 2`, two ranks
started by hand (one killed with SIGKILL after its first record, then restarted), and
`accelerate launch` when accelerate is installed. Each launch writes one folder with a
shard file per rank; the merge must equal a one-process run of the same settings record
by record (the image bytes included).

The runner only reads RANK / WORLD_SIZE / LOCAL_RANK: it never initialises
torch.distributed, so no process group (gloo or other) is involved."""

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sinkattn.experiment.config import preset_config
from sinkattn.experiment.runner import plan, resolve_execution
from sinkattn.experiment.store import merged_records, read_records, record_key

# 4 prompts x (baseline, sink k1) = 8 images, 2 steps, no scorers; the report is left on
ARGS = ["--preset", "tiny", "--limit", "4", "--steps", "2", "--k", "1", "--controls", "sink", "--metrics", "none",
        "--no-progress"]
N_RECORDS = 8
# what legitimately differs between a shard and a one-process run of the same image
VARYING = {"shard", "device", "created", "timings"}
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BIN = os.path.dirname(sys.executable)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(extra)
    return env


def _popen(cmd, out, env):
    # cwd outside the repository (see test_run.py: its kernels/ folder must not be importable)
    return subprocess.Popen(cmd, env=env, cwd=os.path.dirname(str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _run_cmd(out):
    return [sys.executable, "-m", "sinkattn", "run", "--out", str(out), *ARGS]


def _wait(proc, timeout=300):
    text, _ = proc.communicate(timeout=timeout)
    text = text.decode()
    assert proc.returncode == 0, text
    return text


def _comparable(run_dir, records):
    """{key: record without the varying fields}, after checking each image on disk is the one recorded."""
    table = {}
    for r in records:
        with open(os.path.join(run_dir, r["image"]), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == r["image_sha256"], r["image"]
        table[record_key(r)] = {k: v for k, v in r.items() if k not in VARYING}
    assert len(table) == len(records), "duplicate keys"
    return table


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same study in one process (no launcher, no rank variables)."""
    out = tmp_path_factory.mktemp("one") / "run"
    start = time.perf_counter()
    _wait(_popen(_run_cmd(out), out, _env()))
    print(f"one-process run: {time.perf_counter() - start:.1f} s")
    records = read_records(str(out / "results.jsonl"))
    assert len(records) == N_RECORDS
    assert {r["shard"] for r in records} == {"0/1"}
    return _comparable(str(out), records)


def _check_sharded(out, reference, report_by_run=True):
    """Both shard files side by side, each complete, the merge equal to the one-process run."""
    shards = [read_records(str(out / f"results.shard-{i}-of-2.jsonl")) for i in range(2)]
    for i, records in enumerate(shards):
        assert len(records) == N_RECORDS // 2 == len({record_key(r) for r in records}), i
        assert {r["prompt_id"] for r in records} == {i, i + 2}  # pos % 2 == rank
        assert {r["shard"] for r in records} == {f"{i}/2"}
        assert (out / f"done.shard-{i}-of-2").read_text() == f"{N_RECORDS // 2}\n"
    assert not (out / "results.shard-0-of-1.jsonl").exists()
    merged = merged_records(str(out))
    assert _comparable(str(out), merged) == reference
    if report_by_run:
        # written by the run once both shards were done: after both markers, from both shards
        summary = json.loads((out / "summary.json").read_text())
        assert summary["records"] == N_RECORDS
        shard_files = ["results.shard-0-of-2.jsonl", "results.shard-1-of-2.jsonl"]
        # (results.jsonl too when an earlier report had written its merged copy)
        assert [f for f in summary["results_files"] if f != "results.jsonl"] == shard_files
        done = max((out / f"done.shard-{i}-of-2").stat().st_mtime_ns for i in range(2))
        assert (out / "summary.json").stat().st_mtime_ns >= done
        # the report's merged results.jsonl, for readers that expect one file
        assert _comparable(str(out), read_records(str(out / "results.jsonl"))) == reference
    # config.json: one study, no shard in it
    config = json.loads((out / "config.json").read_text())
    assert config.get("shard") is None and config["steps"] == 2 and config["limit"] == 4


def test_ranks_are_read_from_the_environment_without_a_process_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = preset_config("tiny").merged({"out": str(tmp_path / "run"), "limit": 4})
    assert resolve_execution(cfg) == ((1, 2), "cpu")
    p = plan(cfg)
    assert p.shard == (1, 2) and [pr.prompt_id for pr in p.mine] == [1, 3]
    assert not (dist.is_available() and dist.is_initialized())
    # and nothing in the package sets one up
    package = pathlib.Path(importlib.util.find_spec("sinkattn").origin).parent
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "init_process_group" not in text and "torch.distributed" not in text, path


def test_torchrun_two_ranks_merge_equals_one_process(reference, tmp_path):
    torchrun = os.path.join(BIN, "torchrun")
    out = tmp_path / "torchrun"
    start = time.perf_counter()
    text = _wait(_popen([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "sinkattn", "run",
                         "--out", str(out), *ARGS], out, _env()))
    print(f"torchrun, 2 ranks: {time.perf_counter() - start:.1f} s")
    lines = [line for line in text.splitlines() if line.startswith("sinkattn run:") and "new records" in line]
    assert len(lines) == 2, text
    # at least one rank found both shards done and wrote the report
    assert any("sinkattn report` once" not in line for line in lines), text
    _check_sharded(out, reference)
    # a rerun under the same launcher adds nothing
    before = [(out / f"results.shard-{i}-of-2.jsonl").read_bytes() for i in range(2)]
    text = _wait(_popen([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "sinkattn", "run",
                         "--out", str(out), *ARGS], out, _env()))
    assert text.count("0 new records, 4 already there") == 2, text
    assert [(out / f"results.shard-{i}-of-2.jsonl").read_bytes() for i in range(2)] == before
    _check_sharded(out, reference)


def test_a_shard_waits_for_another_writing_the_report(tmp_path):
    """Two reports at once in one folder crash (one removes the other's temporary plot
    files); a rerun of a finished multi-rank command has every rank write it at once. The
    runner serialises them with a flock on .lock.report: held here, a finished shard waits."""
    import fcntl

    out = tmp_path / "serial"
    for i in range(2):  # both shards done, no report yet
        _wait(_popen([*_run_cmd(out), "--limit", "2", "--no-report"], out,
                     _env(RANK=str(i), WORLD_SIZE="2", LOCAL_RANK=str(i))))
    assert not (out / "summary.json").exists()
    marker = out / "done.shard-0-of-2"
    marked = marker.stat().st_mtime_ns
    fd = os.open(out / ".lock.report", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = _popen([*_run_cmd(out), "--limit", "2"], out, _env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"))
        deadline = time.time() + 240
        while marker.stat().st_mtime_ns == marked and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        # it is at the report by now (unlocked, it writes it within seconds): it waits
        until = time.time() + 10
        while time.time() < until and proc.poll() is None and not (out / "summary.json").exists():
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        assert not (out / "summary.json").exists()
    finally:
        os.close(fd)
    text = _wait(proc)
    assert "once every shard is done" not in text, text
    assert json.loads((out / "summary.json").read_text())["records"] == 4


def test_killed_rank_resumes_and_the_merge_still_matches(reference, tmp_path):
    out = tmp_path / "killed"
    rank_env = [_env(RANK=str(i), WORLD_SIZE="2", LOCAL_RANK=str(i)) for i in range(2)]
    start = time.perf_counter()
    procs = [_popen(_run_cmd(out), out, env) for env in rank_env]
    path = out / "results.shard-1-of-2.jsonl"
    killed_at = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and procs[1].poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 1:
                procs[1].send_signal(signal.SIGKILL)
                procs[1].wait()
                killed_at = len(read_records(str(path)))
                break
            time.sleep(0.01)
        assert killed_at is not None and 1 <= killed_at < N_RECORDS // 2, \
            f"rank 1 ended before it could be killed: {procs[1].communicate()}"
        assert procs[1].returncode == -signal.SIGKILL
        text0 = _wait(procs[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # rank 0 is done, rank 1 is not: no report yet
    assert "once every shard is done" in text0, text0
    assert (out / "done.shard-0-of-2").exists() and not (out / "done.shard-1-of-2").exists()
    assert not (out / "summary.json").exists()
    # rank 1 again, the same command: its lock died with it; it makes only what it lacks
    text1 = _wait(_popen(_run_cmd(out), out, rank_env[1]))
    print(f"killed rank 1 after {killed_at} record(s); kill + restart: {time.perf_counter() - start:.1f} s")
    assert f"{N_RECORDS // 2 - killed_at} new records, {killed_at} already there" in text1, text1
    assert "once every shard is done" not in text1, text1  # the last shard done writes the report
    raw = [line for line in path.read_bytes().split(b"\n") if line]
    assert len(raw) == N_RECORDS // 2  # no duplicate lines, no torn line left
    _check_sharded(out, reference)


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None or shutil.which("accelerate", path=BIN) is None,
                    reason="accelerate is not installed in this environment (pip install accelerate to run it)")
def test_accelerate_launch_two_cpu_processes(reference, tmp_path):
    """accelerate's --cpu always takes its one-process launcher (accelerate 1.16
    launch_command: a CPU run with --num_processes 2 made one process and 8 records);
    --multi_gpu is its torch.distributed.run launcher, which sets RANK and WORLD_SIZE, and
    on a machine without CUDA the runner puts each rank on the CPU."""
    out = tmp_path / "accelerate"
    start = time.perf_counter()
    text = _wait(_popen([shutil.which("accelerate", path=BIN), "launch", "--num_processes", "2", "--multi_gpu",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "-m", "sinkattn", "run", "--out", str(out), *ARGS], out, _env()))
    print(f"accelerate launch, 2 processes: {time.perf_counter() - start:.1f} s")
    assert text.count("new records, 0 already there") == 2, text
    _check_sharded(out, reference)


def test_a_shard_with_work_to_do_withdraws_its_done_marker(tmp_path, monkeypatch):
    """A rerun that adds conditions: a shard with new work removes its earlier done marker
    before it generates, so a faster shard cannot take it as done and write the report
    without its records; the marker is back when it finishes."""
    from sinkattn.experiment import runner

    out = tmp_path / "rerun"
    base = {"out": str(out), "limit": 2, "steps": 2, "metrics": [], "trace": False, "progress": False,
            "conditions": [{"label": "sink", "controls": ["sink"], "k": [1]}]}
    for index in (0, 1):
        runner.run(preset_config("tiny").merged(dict(base, shard=[index, 2])))
    marker = out / "done.shard-1-of-2"
    assert marker.exists() and (out / "summary.json").exists()
    seen = []
    generate = runner._generate

    def watched(*args, **kwargs):
        seen.append(marker.exists())
        return generate(*args, **kwargs)

    monkeypatch.setattr(runner, "_generate", watched)
    more = dict(base, shard=[1, 2], conditions=[{"label": "sink", "controls": ["sink", "bottom"], "k": [1]}])
    result = runner.run(preset_config("tiny").merged(more))
    assert seen == [False] and result.written == 1 and marker.exists()
