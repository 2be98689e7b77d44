"""Offline, building the scorers fails within seconds (no Hub retries) with one message that
names every missing file of every requested scorer and says, for a CLI user, how to get each
(`hf download ... --local-dir`), where to put it and which flag points at it.

Nothing is mocked: the Hub is unreachable in this sandbox. One case sets HF_HUB_OFFLINE=1,
the other leaves it unset so that the unreachable network itself must be detected."""

import os
import time

import pytest

from sinkattn.metrics import SCORER_NAMES, MetricWeightsUnavailable, build_scorer

OPTIONS = {"clip_t": {"arch": "tiny"}, "image_reward": {"arch": "tiny"}, "hps_v21": {"arch": "tiny"}}
EXPECTED = {
    "clip_t": ["open_clip_model.safetensors", "SINKATTN_CLIP_WEIGHTS",
               "hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors "
               "--local-dir ./weights/clip_t"],
    "hps_v21": ["HPS_v2.1_compressed.pt", "SINKATTN_HPS_WEIGHTS",
                "hf download xswu/HPSv2 HPS_v2.1_compressed.pt --local-dir ./weights/hps_v21"],
    "image_reward": ["ImageReward.pt", "med_config.json", "vocab.txt", "SINKATTN_IMAGEREWARD_WEIGHTS",
                     "hf download THUDM/ImageReward ImageReward.pt med_config.json --local-dir ./weights/image_reward",
                     "hf download google-bert/bert-base-uncased vocab.txt --local-dir ./weights/image_reward"],
    "lpips": ["alexnet-owt-7be5be79.pth", "SINKATTN_LPIPS_WEIGHTS",
              "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "./weights/lpips"],
}


@pytest.fixture(params=["HF_HUB_OFFLINE=1", "unreachable"])
def no_network(request, offline_env, monkeypatch):
    if request.param == "unreachable":
        monkeypatch.delenv("HF_HUB_OFFLINE")
    return offline_env


def test_every_scorer_fails_fast_without_hf_hub_offline(offline_env, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    start = time.monotonic()
    for name in SCORER_NAMES:
        with pytest.raises(MetricWeightsUnavailable, match="offline"):
            build_scorer(name, **OPTIONS.get(name, {}))
    assert time.monotonic() - start < 10


def test_one_message_names_every_missing_file(no_network):
    from sinkattn.metrics import build_scorers

    start = time.monotonic()
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_scorers(SCORER_NAMES, options=OPTIONS)
    elapsed = time.monotonic() - start
    msg = str(info.value)
    assert elapsed < 10, f"{elapsed:.1f} s"
    for name, needles in EXPECTED.items():
        for needle in needles + [f"--metric-weights {name}=./weights/{name}"]:
            assert needle in msg, f"{needle!r} missing from:\n{msg}"
    assert os.path.join(str(no_network / "torch-home"), "hub", "checkpoints") in msg
    assert "--untrained-metrics" in msg and msg.count("--untrained-metrics") == 1
    assert "offline" in msg and "huggingface-cli" not in msg


def test_build_scorers_builds_what_it_can(offline_env):
    from sinkattn.metrics import build_scorers

    scorers = build_scorers(["clip_t", "lpips"], untrained=True, options=OPTIONS)
    assert list(scorers) == ["clip_t", "lpips"] and all(s.untrained for s in scorers.values())
    with pytest.raises(ValueError, match="unknown scorer"):
        build_scorers(["nope"])
