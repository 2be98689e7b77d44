"""Every metric file fetched from its official location (downloaded, or found in the HF or
torch hub cache) is checked against its published SHA-256 before it is read; a mismatch is
an error naming the file, both hashes and what to do. Real files with wrong contents, no
network: the download test fetches a file:// URL through the same code path."""

import dataclasses
import hashlib
import os

import pytest
import torch

from sinkattn.metrics import MetricWeightsUnavailable, build_scorer
from sinkattn.metrics import lpips_distance
from sinkattn.metrics._open_clip import TINY_CLIP_CFG
from sinkattn.metrics.weights import WeightFile, randomize_, resolve_files

ALEXNET = "alexnet-owt-7be5be79.pth"


def _sha256(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _assert_mismatch(info, path, expected, actual):
    msg = str(info.value)
    assert type(info.value).__name__ == "WeightsHashMismatch", msg
    for needle in (str(path), expected, actual):
        assert needle in msg, f"{needle!r} missing from:\n{msg}"
    assert "delete" in msg.lower() and "--metric-weights" in msg


def test_cached_alexnet_with_wrong_hash_is_refused(offline_env):
    cache = offline_env / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / ALEXNET).write_bytes(b"not torchvision's AlexNet")
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_scorer("lpips")
    _assert_mismatch(info, cache / ALEXNET, "7be5be79", _sha256(cache / ALEXNET))
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in str(info.value)


def test_downloaded_file_with_wrong_hash_is_deleted(tmp_path, offline_env, monkeypatch):
    # the download path of torchvision's AlexNet, fed from a file:// URL (urllib serves it)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    src = tmp_path / "mirror" / ALEXNET
    src.parent.mkdir()
    src.write_bytes(b"a tampered download")
    monkeypatch.setattr(lpips_distance, "FILES", [dataclasses.replace(lpips_distance.FILES[0], url=src.as_uri())])
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_scorer("lpips")
    _assert_mismatch(info, src.as_uri(), "7be5be79", _sha256(src))
    cache = offline_env / "torch-home" / "hub" / "checkpoints"
    assert not cache.exists() or os.listdir(cache) == [], "an unverified download was left in the cache"


def _hub_cache_file(root, repo_id, filename, content: bytes, blob_name: str):
    """A file in the Hugging Face cache layout: snapshots/<commit>/<file> -> blobs/<etag>."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "blobs" / blob_name).write_bytes(content)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.join("..", "..", "blobs", blob_name), snap / filename)
    return snap / filename


def _tiny_hps_checkpoint(tmp_path) -> bytes:
    import open_clip

    model = open_clip.CLIP(**TINY_CLIP_CFG, output_dict=True)
    randomize_(model, seed=3)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path.read_bytes()


def test_hub_cache_file_with_wrong_hash_is_refused(tmp_path, offline_env):
    content = _tiny_hps_checkpoint(tmp_path)
    published = hashlib.sha256(b"the official HPS_v2.1_compressed.pt").hexdigest()
    path = _hub_cache_file(offline_env / "hf-cache", "xswu/HPSv2", "HPS_v2.1_compressed.pt", content, published)
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_scorer("hps_v21", arch="tiny")
    _assert_mismatch(info, path, published, hashlib.sha256(content).hexdigest())
    assert "hf download xswu/HPSv2 HPS_v2.1_compressed.pt --force-download" in str(info.value)


def test_hub_cache_file_matching_its_hash_is_used(tmp_path, offline_env):
    content = _tiny_hps_checkpoint(tmp_path)
    _hub_cache_file(offline_env / "hf-cache", "xswu/HPSv2", "HPS_v2.1_compressed.pt", content,
                    hashlib.sha256(content).hexdigest())
    scorer = build_scorer("hps_v21", arch="tiny")
    assert scorer.untrained is False and scorer.weights_source == "hub:xswu/HPSv2/HPS_v2.1_compressed.pt"


def test_hub_cache_small_file_is_checked_against_its_git_hash(offline_env):
    # files kept in git rather than LFS (med_config.json, vocab.txt) are named by their git blob SHA-1
    content = b'{"hidden_size": 768}\n'
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    files = [WeightFile("med_config.json", repo_id="THUDM/ImageReward")]
    path = _hub_cache_file(offline_env / "hf-cache", "THUDM/ImageReward", "med_config.json", content, git_sha1)
    found, _ = resolve_files("image_reward", files, None, "SINKATTN_IMAGEREWARD_WEIGHTS")
    assert found["med_config.json"] == str(path)
    (offline_env / "hf-cache" / "models--THUDM--ImageReward" / "blobs" / git_sha1).write_bytes(b"{}\n")
    with pytest.raises(MetricWeightsUnavailable) as info:
        resolve_files("image_reward", files, None, "SINKATTN_IMAGEREWARD_WEIGHTS")
    assert type(info.value).__name__ == "WeightsHashMismatch" and git_sha1 in str(info.value)


def test_given_files_are_not_checked(tmp_path, offline_env):
    # a file the user points at explicitly may be their own fine-tune: it is used as given
    path = tmp_path / "HPS_v2.1_compressed.pt"
    path.write_bytes(_tiny_hps_checkpoint(tmp_path))
    assert build_scorer("hps_v21", weights=str(path), arch="tiny").weights_source == str(path)
