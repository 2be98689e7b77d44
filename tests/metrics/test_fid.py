"""FID: the Frechet distance equals pytorch-fid's, the features are pytorch-fid's own (same
model, same preprocessing as its get_activations on image files), the Inception weights are
found and hash-checked like every metric's (offline: one fast message), and the untrained
mode is marked as such. No network: the real weights are never read here."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from sinkattn.metrics import SCORER_NAMES, SET_METRIC_NAMES, MetricWeightsUnavailable, build_set_metric
from sinkattn.metrics.fid import ENV_VAR, URL, _random_state, build, fid_shift, frechet_distance

pytest.importorskip("pytorch_fid")
FILE = "pt_inception-2015-12-05-6726825d.pth"


@pytest.fixture(scope="module")
def random_fid():
    return build(untrained=True, seed=3, batch_size=4)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(6)]


@pytest.fixture
def no_fid_env(offline_env, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    return offline_env


@pytest.mark.parametrize("n_a,n_b", [(40, 50), (8, 12), (3, 30)])
def test_frechet_distance_equals_pytorch_fid(n_a, n_b):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(n_a)
    d = 16
    a = rng.normal(size=(n_a, d)) @ rng.normal(size=(d, d))
    b = rng.normal(0.3, 1.2, size=(n_b, d)) @ rng.normal(size=(d, d))
    ref = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * float((a * a).sum()))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_features_are_pytorch_fids_activations(random_fid, images, tmp_path):
    from pytorch_fid.fid_score import get_activations

    files = []
    for i, im in enumerate(images):
        files.append(str(tmp_path / f"{i}.png"))
        im.save(files[-1])
    ours = random_fid.features(images)
    theirs = get_activations(files, random_fid.model, batch_size=4, dims=2048, device="cpu", num_workers=0)
    assert ours.shape == (6, 2048)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7 * np.abs(theirs).max())


def test_distance_of_image_sets(random_fid, images):
    a = random_fid.features(images)
    assert random_fid.distance(a, a) == pytest.approx(0.0, abs=1e-12)
    shuffled = random_fid.features(images[::-1])
    assert random_fid.distance(a, shuffled) == pytest.approx(0.0, abs=1e-12)
    other = random_fid.features([im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).point(lambda v: 255 - v)
                                 for im in images])
    assert random_fid.distance(a, other) > 0


def test_untrained_is_said_and_seeded(random_fid, images):
    assert random_fid.untrained and random_fid.weights_source == "random(seed=3)"
    assert "untrained=True" in repr(random_fid)
    again = build_set_metric("fid", untrained=True, seed=3, dims=64)
    assert again.untrained and again.dims == 64 and again.features(images[:2]).shape == (2, 64)


def test_offline_message_is_fast_and_says_what_to_do(no_fid_env):
    start = time.monotonic()
    with pytest.raises(MetricWeightsUnavailable) as info:
        build()
    assert time.monotonic() - start < 10
    msg = str(info.value)
    for needle in (FILE, URL, "offline", ENV_VAR, "--metric-weights fid=./weights/fid", "6726825d",
                   "--untrained-metrics"):
        assert needle in msg, f"{needle!r} missing from:\n{msg}"


def test_unreachable_host_is_detected_without_offline_flags(no_fid_env, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    start = time.monotonic()
    with pytest.raises(MetricWeightsUnavailable, match="cannot be reached|offline"):
        build()
    assert time.monotonic() - start < 15


def test_cached_file_with_wrong_hash_is_refused(no_fid_env):
    cache = no_fid_env / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / FILE).write_bytes(b"not pytorch-fid's Inception")
    with pytest.raises(MetricWeightsUnavailable) as info:
        build()
    assert type(info.value).__name__ == "WeightsHashMismatch"
    assert "6726825d" in str(info.value) and str(cache / FILE) in str(info.value)


def test_given_weights_are_loaded_into_pytorch_fids_model(no_fid_env, random_fid, images, tmp_path, monkeypatch):
    path = tmp_path / "copy" / FILE
    path.parent.mkdir()
    torch.save(_random_state(3), path)  # the weights random_fid was built with, as a checkpoint file
    for given in (str(path), str(path.parent)):  # the file, or a folder holding it
        loaded = build(weights=given, batch_size=4)
        assert not loaded.untrained and loaded.weights_source == given
        np.testing.assert_array_equal(loaded.features(images), random_fid.features(images))
    monkeypatch.setenv(ENV_VAR, str(path))
    assert build(batch_size=4).weights_source == str(path)


def test_a_foreign_checkpoint_is_refused(no_fid_env, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(RuntimeError, match="not pytorch-fid's Inception"):
        build(weights=str(path))


def test_fid_is_a_set_metric_not_a_per_image_scorer():
    assert "fid" in SET_METRIC_NAMES and "fid" not in SCORER_NAMES
    with pytest.raises(ValueError, match="unknown set metric"):
        build_set_metric("kid")
    with pytest.raises(ValueError, match="dims"):
        build(untrained=True, dims=100)


def test_fid_shift():
    assert fid_shift(30.0, 10.0) == {"ratio": 3.0, "excess": 20.0}
    assert fid_shift(None, 10.0) == {"ratio": None, "excess": None}
    assert fid_shift(5.0, 0.0) == {"ratio": None, "excess": 5.0}


def test_full_rank_sets_fall_back_where_scipy_drops_pytorch_fids_call(monkeypatch):
    import pytorch_fid.fid_score as fs

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 8)), rng.normal(0.5, 1.0, size=(25, 8))
    expected = frechet_distance(a, b)  # pytorch-fid's own formula (full rank)

    def removed(*args, **kwargs):
        raise TypeError("sqrtm() got an unexpected keyword argument 'disp'")

    monkeypatch.setattr(fs, "calculate_frechet_distance", removed)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
