"""Weights resolution: offline errors, local files / folders / env vars / torch hub cache."""

import os

import pytest
import torch

from sinkattn.metrics import MetricWeightsUnavailable, build_scorer
from sinkattn.metrics._open_clip import TINY_CLIP_CFG
from sinkattn.metrics.hps import hps_preprocess
from sinkattn.metrics.weights import randomize_

EXPECTED_FILES = {
    "clip_t": ["open_clip_model.safetensors", "timm/vit_base_patch32_clip_224.openai", "SINKATTN_CLIP_WEIGHTS"],
    "hps_v21": ["HPS_v2.1_compressed.pt", "xswu/HPSv2", "SINKATTN_HPS_WEIGHTS"],
    "image_reward": ["ImageReward.pt", "med_config.json", "THUDM/ImageReward", "vocab.txt",
                     "google-bert/bert-base-uncased", "SINKATTN_IMAGEREWARD_WEIGHTS"],
    "lpips": ["alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
              "SINKATTN_LPIPS_WEIGHTS"],
}


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in EXPECTED_FILES])
def test_offline_error_names_the_files(name, offline_env):
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_scorer(name, arch="tiny") if name != "lpips" else build_scorer(name)
    msg = str(info.value)
    assert "offline" in msg
    for needle in EXPECTED_FILES[name]:
        assert needle in msg, f"{needle!r} missing from:\n{msg}"
    if name == "lpips":
        assert os.path.join(str(offline_env / "torch-home"), "hub", "checkpoints") in msg


def test_offline_error_names_a_given_hub_repo(offline_env):
    with pytest.raises(MetricWeightsUnavailable, match="Hub repo someone/my-hps"):
        build_scorer("hps_v21", weights="someone/my-hps", arch="tiny")
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_scorer("image_reward", weights="someone/my-ir", arch="tiny")
    msg = str(info.value)
    # the given repo replaces THUDM/ImageReward for both of its files, not BERT's vocabulary
    assert msg.count("Hub repo someone/my-ir") == 2 and "THUDM/ImageReward (" not in msg
    assert "Hub repo google-bert/bert-base-uncased" in msg


def test_bad_weights_argument(offline_env, monkeypatch):
    with pytest.raises(MetricWeightsUnavailable, match=r"weights='/no/such/file.pt' is neither"):
        build_scorer("clip_t", weights="/no/such/file.pt")
    monkeypatch.setenv("SINKATTN_HPS_WEIGHTS", "/no/such/dir/")
    with pytest.raises(MetricWeightsUnavailable, match=r"SINKATTN_HPS_WEIGHTS='/no/such/dir/' is neither"):
        build_scorer("hps_v21", arch="tiny")


def test_a_checkpoint_with_pickled_objects_is_refused(tmp_path, offline_env):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {}, "args": object.__new__(_Opaque)}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        build_scorer("hps_v21", weights=str(path), arch="tiny")


class _Opaque:
    pass


def _cosines(model, preprocess, tokenizer, images, prompts):
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        txt = model.encode_text(tokenizer(prompts), normalize=True)
    return (img * txt).sum(-1).tolist()


def test_clip_t_local_file_matches_open_clip(tmp_path, offline_env, make_images, make_prompts):
    # Full-size ViT-B-32 with random weights in the official safetensors layout, loaded once by
    # our scorer and once by open_clip's own pretrained-file path.
    import open_clip
    from safetensors.torch import save_file

    images, prompts = make_images(2), make_prompts(2)
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    randomize_(model, seed=int(torch.randint(0, 2**31, ())))
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))

    scorer = build_scorer("clip_t", weights=str(path))
    assert scorer.untrained is False and scorer.weights_source == str(path)
    ref_model, _, ref_preprocess = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=str(path), force_quick_gelu=True)
    expected = _cosines(ref_model.eval(), ref_preprocess, open_clip.get_tokenizer("ViT-B-32"), images, prompts)
    assert scorer.score(images, prompts) == pytest.approx(expected, abs=1e-5)
    assert len(set(round(e, 4) for e in expected)) == 2


def test_clip_t_env_var_folder_with_bin_file(tmp_path, offline_env, monkeypatch, make_images, make_prompts):
    import open_clip

    images, prompts = make_images(3), make_prompts(3)
    direct = build_scorer("clip_t", untrained=True, arch="tiny", seed=11)
    torch.save(direct.model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("SINKATTN_CLIP_WEIGHTS", str(tmp_path))
    loaded = build_scorer("clip_t", arch="tiny")
    assert loaded.untrained is False and loaded.weights_source == str(tmp_path)
    expected = _cosines(direct.model, open_clip.image_transform(224, is_train=False),
                        open_clip.get_tokenizer("ViT-B-32"), images, prompts)
    assert loaded.score(images, prompts) == pytest.approx(expected, abs=1e-5)


def test_hps_env_var_file_matches_direct_model(tmp_path, offline_env, monkeypatch, make_images, make_prompts):
    import open_clip

    images, prompts = make_images(3), make_prompts(3)
    model = open_clip.CLIP(**TINY_CLIP_CFG, output_dict=True)
    randomize_(model, seed=5).eval()
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, path)  # fp16, as the official file
    monkeypatch.setenv("SINKATTN_HPS_WEIGHTS", str(path))
    scorer = build_scorer("hps_v21", arch="tiny")
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        out = model(torch.stack([hps_preprocess(im) for im in images]), open_clip.get_tokenizer("ViT-H-14")(prompts))
    expected = (out["image_features"] * out["text_features"]).sum(-1).tolist()
    assert scorer.score(images, prompts) == pytest.approx(expected, abs=1e-5)


def _random_alexnet_file(path):
    import torchvision

    alexnet = torchvision.models.alexnet(weights=None)
    randomize_(alexnet, seed=int(torch.randint(0, 2**31, ())))
    torch.save(alexnet.state_dict(), path)
    return alexnet


def _lpips_direct(monkeypatch, alexnet, images, references):
    # lpips' own construction, handed our AlexNet instead of downloading torchvision's
    import lpips
    import numpy as np

    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", lambda *a, **k: alexnet)
    model = lpips.LPIPS(net="alex", verbose=False)
    with torch.no_grad():
        return [model(lpips.im2tensor(np.asarray(a)), lpips.im2tensor(np.asarray(b))).item()
                for a, b in zip(images, references)]


def test_lpips_local_file_matches_lpips_package(tmp_path, offline_env, monkeypatch, make_images):
    images = make_images(3)
    refs = make_images(3)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    alexnet = _random_alexnet_file(path)
    scores = build_scorer("lpips", weights=str(path)).score(images, references=refs)
    expected = _lpips_direct(monkeypatch, alexnet, images, refs)
    assert scores == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert all(e > 0 for e in expected)


def test_lpips_finds_the_torch_hub_cache(offline_env, monkeypatch, make_images):
    import dataclasses
    import hashlib

    from sinkattn.metrics import lpips_distance

    cache = offline_env / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    alexnet = _random_alexnet_file(cache / "alexnet-owt-7be5be79.pth")
    # a cached copy is checked against the published hash prefix: publish this file's own
    with open(cache / "alexnet-owt-7be5be79.pth", "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    monkeypatch.setattr(lpips_distance, "FILES", [dataclasses.replace(lpips_distance.FILES[0], sha256=digest[:8])])
    images, refs = make_images(2), make_images(2)
    scorer = build_scorer("lpips")
    assert scorer.untrained is False and scorer.weights_source.startswith(str(cache))
    expected = _lpips_direct(monkeypatch, alexnet, images, refs)
    assert scorer.score(images, references=refs) == pytest.approx(expected, rel=1e-5, abs=1e-7)
