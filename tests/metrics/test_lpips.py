"""LPIPS: identity, monotonicity in noise, size checks (random AlexNet backbone)."""

import numpy as np
import pytest
from PIL import Image

from sinkattn.metrics import build_scorer


@pytest.fixture(scope="module")
def lpips_scorer():
    return build_scorer("lpips", untrained=True, seed=3)


def _noisy(image, rng, sigma):
    arr = np.asarray(image, dtype=np.float64) + rng.normal(0.0, sigma, (image.size[1], image.size[0], 3))
    return Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))


def test_lpips_of_identical_images_is_zero(lpips_scorer, make_images):
    images = make_images(3)
    copies = [im.copy() for im in images]
    assert lpips_scorer.score(images, references=copies) == [0.0, 0.0, 0.0]


def test_lpips_grows_with_noise(lpips_scorer, make_images, rng):
    image = make_images(1)[0]
    sigmas = [2.0, 10.0, 40.0, 100.0]
    noisy = [_noisy(image, rng, s) for s in sigmas]
    dist = lpips_scorer.score(noisy, references=[image] * len(noisy))
    assert all(d > 0 for d in dist), dist
    assert dist == sorted(dist) and len(set(dist)) == len(dist), dist


def test_lpips_is_symmetric_and_ignores_prompts(lpips_scorer, make_images):
    a, b = make_images(2, sizes=((128, 96),))
    ab = lpips_scorer.score([a], prompts=["ignored"], references=[b])
    ba = lpips_scorer.score([b], references=[a])
    assert ab == pytest.approx(ba, rel=1e-5)


def test_lpips_rejects_a_reference_of_another_size(lpips_scorer, make_images):
    a = make_images(1, sizes=((128, 96),))[0]
    b = make_images(1, sizes=((96, 128),))[0]
    with pytest.raises(ValueError, match=r"image size \(128, 96\) differs from its reference's \(96, 128\)"):
        lpips_scorer.score([a], references=[b])
