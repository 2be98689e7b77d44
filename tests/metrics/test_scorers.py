"""The scorer interface on random-weight builds: counts, finiteness, determinism, checks."""

import math
import subprocess
import sys

import pytest

from sinkattn.metrics import SCORER_NAMES, MetricWeightsUnavailable, Scorer, build_scorer

# Small random architectures of each family keep the module fast on 2 CPU cores; CLIP-T's
# real ViT-B-32 is cheap enough to run at full size once (test_clip_t_full_size_untrained).
TINY = {"clip_t": {"arch": "tiny"}, "hps_v21": {"arch": "tiny"},
        "image_reward": {"arch": "tiny"}, "lpips": {}}


def _score(scorer, images, prompts):
    refs = [im.rotate(180) for im in images]  # same size as each image, other content
    return scorer.score(images, prompts, references=refs)


def test_registry_names():
    assert SCORER_NAMES == ("clip_t", "image_reward", "hps_v21", "lpips")
    with pytest.raises(ValueError, match="unknown scorer 'clipt'"):
        build_scorer("clipt")
    assert issubclass(MetricWeightsUnavailable, RuntimeError)


def test_import_is_light():
    # the metric libraries are imported by the builders, not by `import sinkattn.metrics`
    code = ("import sys, sinkattn.metrics; "
            "print(sorted(m for m in ('open_clip', 'lpips', 'transformers', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in TINY])
def test_untrained_build_scores(name, make_images, make_prompts):
    images, prompts = make_images(5), make_prompts(5)
    scorer = build_scorer(name, untrained=True, batch_size=2, **TINY[name])
    assert isinstance(scorer, Scorer)
    assert scorer.name == name and scorer.untrained is True
    assert str(scorer.device) == "cpu" and scorer.weights_source == "random(seed=0)"
    scores = _score(scorer, images, prompts)
    assert len(scores) == 5
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores), scores
    assert len(set(scores)) > 1, f"{name}: every image got the same score {scores}"
    # batching does not change a score
    single = build_scorer(name, untrained=True, batch_size=1, **TINY[name])
    assert _score(single, images, prompts) == pytest.approx(scores, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in TINY])
def test_untrained_builds_are_deterministic(name, make_images, make_prompts):
    images, prompts = make_images(3), make_prompts(3)
    first = _score(build_scorer(name, untrained=True, seed=7, **TINY[name]), images, prompts)
    again = _score(build_scorer(name, untrained=True, seed=7, **TINY[name]), images, prompts)
    other = _score(build_scorer(name, untrained=True, seed=8, **TINY[name]), images, prompts)
    assert first == again
    assert first != pytest.approx(other, rel=1e-3, abs=1e-4)


def test_clip_t_full_size_untrained(make_images, make_prompts):
    # the real ViT-B-32 architecture with random weights (one build, two images)
    scorer = build_scorer("clip_t", untrained=True)
    assert scorer.model.visual.conv1.weight.shape == (768, 3, 32, 32)
    scores = scorer.score(make_images(2), make_prompts(2))
    assert len(scores) == 2 and all(-1.0 <= s <= 1.0 for s in scores)


def test_text_scores_depend_on_the_prompt(make_images):
    images = make_images(1) * 2
    for name in ["clip_t", "hps_v21", "image_reward"]:
        scorer = build_scorer(name, untrained=True, **TINY[name])
        a, b = scorer.score(images, ["a red cube", "an oil painting of two horses under a tree"])
        assert a != pytest.approx(b, abs=1e-6), name


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in TINY])
def test_input_length_checks(name, make_images):
    scorer = build_scorer(name, untrained=True, **TINY[name])
    images = make_images(2)
    if scorer.needs_prompts:
        with pytest.raises(ValueError, match="2 images but 1 prompts"):
            scorer.score(images, ["one prompt"], references=images)
        with pytest.raises(ValueError, match="prompts is required"):
            scorer.score(images, None, references=images)
    if scorer.needs_references:
        with pytest.raises(ValueError, match="2 images but 1 references"):
            scorer.score(images, ["p", "q"], references=images[:1])
        with pytest.raises(ValueError, match="references is required"):
            scorer.score(images, ["p", "q"])
