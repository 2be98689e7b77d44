"""What a user meets at the command line: one-line errors for an unusable --out, one
process per run folder (per shard), Ctrl-C, --dry-run checking what a run checks,
--help with the preset's defaults, --version."""

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sinkattn.cli import main
from sinkattn.experiment.config import preset_config
from sinkattn.experiment.store import read_records, record_key
from sinkattn.selection import CONTROLS

# 1 prompt x (baseline, sink k1) = 2 images, 2 steps, no scorers: the cheapest real run
FAST = ["--preset", "tiny", "--limit", "1", "--steps", "2", "--k", "1", "--controls", "sink", "--metrics", "none",
        "--no-progress", "--no-report"]


def _spawn(out, *extra):
    """`python -m sinkattn run` in its own process (stdout and stderr apart)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # cwd outside the repository, as in test_run.py (its kernels/ folder must not be importable)
    return subprocess.Popen([sys.executable, "-m", "sinkattn", "run", "--out", str(out), *FAST, *extra], env=env,
                            cwd=os.path.dirname(str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_record(proc, path, timeout=240):
    """Return once ``path`` holds a record (the process holds its run folder by then)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= 1:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError("no record in time")


def _finish(proc):
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()


# --- 3: one process per run folder ------------------------------------------------------------

def test_second_process_on_one_out_stops_at_once(tmp_path):
    out = tmp_path / "busy"
    first = _spawn(out, "--limit", "3")
    try:
        _wait_for_record(first, out / "results.jsonl")
        os.kill(first.pid, signal.SIGSTOP)  # it holds the folder and makes nothing more while we look
        before = (out / "results.jsonl").read_bytes()
        second = _spawn(out, "--limit", "3")
        _, err = second.communicate(timeout=300)
        err = err.decode()
        assert second.returncode == 2, err
        assert "Traceback" not in err
        assert f"pid {first.pid} on {socket.gethostname()}, started 20" in err.strip().splitlines()[-1]
        assert (out / "results.jsonl").read_bytes() == before
    finally:
        _finish(first)
    records = read_records(str(out / "results.jsonl"))
    assert len(records) == 6 == len({record_key(r) for r in records})


def test_each_shard_holds_its_own_lock(tmp_path, capsys):
    out = tmp_path / "sharded"
    first = _spawn(out, "--limit", "4", "--shard", "0/2")
    try:
        _wait_for_record(first, out / "results.shard-0-of-2.jsonl")
        os.kill(first.pid, signal.SIGSTOP)
        assert main(["run", "--out", str(out), *FAST, "--limit", "4", "--shard", "1/2"]) == 0
        assert main(["run", "--out", str(out), *FAST, "--limit", "4", "--shard", "0/2"]) == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
    finally:
        _finish(first)
    for i in range(2):
        records = read_records(str(out / f"results.shard-{i}-of-2.jsonl"))
        assert len(records) == 4 == len({record_key(r) for r in records})


# --- 8: an unusable --out, a failed start, Ctrl-C ---------------------------------------------

@pytest.mark.parametrize("dry", [[], ["--dry-run"]], ids=["run", "dry-run"])
@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_unusable_out_is_one_clear_line(tmp_path, capsys, where, dry):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = taken if where == "file" else taken / "run"
    assert main(["run", "--out", str(out), *FAST, *dry]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    (line,) = cap.err.strip().splitlines()
    assert line == f"sinkattn: error: --out {out}: {taken} is a file, not a folder"


def test_read_only_out_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root writes anywhere: make os.access say what it says to a user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
            False if os.path.abspath(p) == str(out) and mode & os.W_OK else real(p, mode, **kw)))
    assert main(["run", "--out", str(out), *FAST]) == 2
    assert capsys.readouterr().err.strip() == f"sinkattn: error: --out {out}: the folder is not writable"
    assert os.listdir(out) == []


def test_failed_start_leaves_no_folder_behind(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()  # a local folder that holds no pipeline: loading fails after the folder is made
    out = tmp_path / "new" / "run"
    assert main(["run", "--out", str(out), *FAST, "--model", str(weights)]) == 2
    assert "cannot load the SD3 pipeline" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()  # a folder the run did not make is left where it was
    assert main(["run", "--out", str(existing), *FAST, "--model", str(weights)]) == 2
    assert existing.is_dir() and os.listdir(existing) == []


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
    out = tmp_path / "interrupted"
    proc = _spawn(out, "--limit", "4")
    _wait_for_record(proc, out / "results.jsonl")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    n = len(read_records(str(out / "results.jsonl")))
    assert err.strip().splitlines()[-1] == (
        f"sinkattn: interrupted; {n} records written; rerun the same command to resume")


# --- 10: --dry-run checks what a run checks ---------------------------------------------------

def test_dry_run_refuses_what_a_run_refuses(tmp_path, capsys):
    out = tmp_path / "dry"
    for flags, reason in ((["--k", "0"], "k must be >= 1"), (["--limit", "-3"], "limit must be >= 1"),
                          (["--metrics", "clip_t,fdi"], "metrics: unknown ['fdi']"),
                          (["--select", "shared", "--eta", "2"], "eta must be in [0, 1]")):
        assert main(["run", "--out", str(out), "--dry-run", *flags]) == 2, flags
        cap = capsys.readouterr()
        assert cap.out == "" and reason in cap.err, (flags, cap)
    assert not out.exists()  # a dry run makes nothing
    out.mkdir()
    (out / "config.json").write_text(json.dumps(preset_config("tiny").to_dict()))  # a run made with 4 steps
    assert main(["run", "--out", str(out), "--dry-run", "--steps", "2"]) == 2
    assert "steps: 4 there, 2 now" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--dry-run", "--k", "2", "--select", "shared"]) == 0
    printed = capsys.readouterr().out
    assert '"steps": 4' in printed and "sink_k2_score_shared_Lall" in printed and "8 prompts" in printed
    assert os.listdir(out) == ["config.json"]


# --- 12: --help and --version -----------------------------------------------------------------

def test_help_shows_the_preset_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("denoising steps (default: from --preset; tiny: 4)",
                     "e.g. 1,5,10 (default: from --preset; tiny: 1,4)",
                     f"of {','.join(CONTROLS)} (default: from --preset; tiny: sink,random,bottom)",
                     "first N prompts (default: from --preset; tiny: all)",
                     "(default: from --preset; tiny: clip_t,image_reward,hps_v21,lpips)",
                     "--height HEIGHT (default: from --preset; tiny: 64)",
                     "--untrained-metrics, --no-untrained-metrics score with random-weight scorers (marked "
                     "untrained in every output) (default: from --preset; tiny: True)"):
        assert expected in text, expected


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sinkattn {importlib.metadata.version('sinkattn')}"
