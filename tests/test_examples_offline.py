"""Offline, `sinkattn run --preset paper-sd3` and the real-model examples fail within seconds
with a message that says what to download (`hf download`, `hf auth login` for gated repos)
and where to point them (`--model`). The Hub is unreachable in this sandbox: nothing is
mocked; one case sets HF_HUB_OFFLINE=1, the other leaves it unset."""

import importlib.util
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD3 = "stabilityai/stable-diffusion-3-medium-diffusers"
WANTED = ["hf auth login", f"https://huggingface.co/{SD3}", f"hf download {SD3} --local-dir ./weights/"
          "stable-diffusion-3-medium-diffusers", "--model ./weights/stable-diffusion-3-medium-diffusers"]


@pytest.fixture(params=["HF_HUB_OFFLINE=1", "unreachable"])
def no_network(request, monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(SD3, "model_index.json"), str):
        pytest.skip(f"{SD3} is in the local Hugging Face cache")
    if request.param == "unreachable":
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SINKATTN_OFFLINE", raising=False)
    from diffusers import StableDiffusion3Pipeline  # imported before the clock starts

    return StableDiffusion3Pipeline


def _check(msg: str, elapsed: float):
    assert elapsed < 10, f"{elapsed:.1f} s"
    for needle in WANTED:
        assert needle in msg, f"{needle!r} missing from:\n{msg}"
    assert "huggingface-cli" not in msg


def test_paper_sd3_offline_says_what_to_download(no_network, tmp_path, capsys):
    from sinkattn.cli import main

    start = time.monotonic()
    rc = main(["run", "--preset", "paper-sd3", "--prompts", "builtin", "--limit", "1", "--out", str(tmp_path)])
    elapsed = time.monotonic() - start
    assert rc == 2
    _check(capsys.readouterr().err, elapsed)


def test_example_offline_says_what_to_download(no_network):
    import torch

    spec = importlib.util.spec_from_file_location("_hub", os.path.join(ROOT, "examples", "_hub.py"))
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    start = time.monotonic()
    with pytest.raises(SystemExit) as info:
        hub.load(no_network, SD3, "Stable Diffusion 3 medium", torch_dtype=torch.float16)
    _check(str(info.value.code), time.monotonic() - start)


def test_no_huggingface_cli_left():
    # the installed huggingface_hub ships `hf` only; every message recommends that one
    files = [os.path.join(ROOT, "sinkattn", "experiment", "models.py")]
    for folder in ("examples", os.path.join("sinkattn", "metrics")):
        files += [os.path.join(ROOT, folder, f) for f in sorted(os.listdir(os.path.join(ROOT, folder)))
                  if f.endswith((".py", ".txt"))]
    stale = [f for f in files if "huggingface-cli" in open(f, encoding="utf-8").read()]
    assert not stale


def test_hf_has_the_commands_we_recommend():
    hf = os.path.join(os.path.dirname(sys.executable), "hf")
    assert os.path.exists(hf), "huggingface_hub's `hf` command is not installed next to this Python"
    out = subprocess.run([hf, "download", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--local-dir" in out.stdout and "--force-download" in out.stdout
    out = subprocess.run([hf, "auth", "login", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
