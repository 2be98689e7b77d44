"""The scorer interface shared by every metric, and the factory that builds one by name.

A scorer turns a batch of PIL images (plus their prompts, plus reference images for the
perceptual distance) into one float per image. Every scorer says whether it was built
with random weights (`untrained`): the offline tiny preset scores with such builds, and
the runner records the flag next to every number so that a random-weight score is never
mistaken for a real one.

Nothing heavy is imported here: each builder imports torch / open_clip / transformers /
lpips only when it is called.
"""

from __future__ import annotations

import abc
import importlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image


UNTRAINED_HINT = ("Or score with random weights, marked untrained in every output: --untrained-metrics "
                  "(Python: build_scorer(name, untrained=True)).")


class MetricWeightsUnavailable(RuntimeError):
    """The weights a metric needs are neither given, nor cached, nor downloadable.

    The message lists every missing file with the Hub repository (or URL) it comes from,
    the `hf download` command that fetches it, the flag / environment variable that points
    the scorer at a local copy, and the cache folder where a downloaded copy is looked for.
    """


class WeightsHashMismatch(MetricWeightsUnavailable):
    """A file fetched from a metric's official location does not have its published hash."""


class Scorer(abc.ABC):
    """One metric, ready to score.

    Attributes:
        name: registry name (`clip_t`, `image_reward`, `hps_v21`, `lpips`).
        untrained: True when the model has random (seeded) weights, not the official ones.
        device: the torch device the model lives on.
        needs_prompts / needs_references: which of the optional inputs `score` requires.
        higher_is_better: direction of the metric (LPIPS is a distance: False).
        weights_source: where the weights came from (a path, "hub:<repo>/<file>", or
            "random(seed=...)"); the runner may record it.
    """

    name: str = ""
    needs_prompts: bool = True
    needs_references: bool = False
    higher_is_better: bool = True

    def __init__(self, *, device: "torch.device | str", untrained: bool, weights_source: str,
                 batch_size: int = 8):
        import torch

        self.device = torch.device(device)
        self.untrained = bool(untrained)
        self.weights_source = weights_source
        self.batch_size = int(batch_size)

    def score(self, images: "Sequence[Image.Image]", prompts: "Sequence[str] | None" = None,
              references: "Sequence[Image.Image] | None" = None) -> list[float]:
        """Score `images` (one float per image, same order).

        prompts: one string per image (required when `needs_prompts`).
        references: one image per image (required when `needs_references`), e.g. the
            unintervened image of the same prompt and seed for LPIPS.
        """
        images = list(images)
        if self.needs_prompts:
            if prompts is None:
                raise ValueError(f"{self.name}: prompts is required (one per image)")
            prompts = list(prompts)
            if len(prompts) != len(images):
                raise ValueError(f"{self.name}: got {len(images)} images but {len(prompts)} prompts")
        if self.needs_references:
            if references is None:
                raise ValueError(f"{self.name}: references is required (one per image)")
            references = list(references)
            if len(references) != len(images):
                raise ValueError(f"{self.name}: got {len(images)} images but {len(references)} references")
        out: list[float] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            out.extend(self._score_batch(
                images[start:stop],
                prompts[start:stop] if prompts is not None else None,
                references[start:stop] if references is not None else None,
            ))
        return [float(x) for x in out]

    @abc.abstractmethod
    def _score_batch(self, images, prompts, references) -> list[float]:
        """Score one batch (lengths already checked)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r}, "
                f"untrained={self.untrained}, weights={self.weights_source!r})")


# name -> "module:function"; the module is imported only when that scorer is built.
_REGISTRY: dict[str, str] = {
    "clip_t": "sinkattn.metrics.clip_t:build",
    "image_reward": "sinkattn.metrics.image_reward:build",
    "hps_v21": "sinkattn.metrics.hps:build",
    "lpips": "sinkattn.metrics.lpips_distance:build",
}

SCORER_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_scorer(name: str, weights: str | None = None, device: "torch.device | str" = "cpu",
                 untrained: bool = False, **options: Any) -> Scorer:
    """Build the scorer registered as `name`.

    weights: a local file or folder, or a Hugging Face Hub repo id ("org/name"); None looks
        at the metric's environment variable, then the official Hub location (cached or
        downloaded). Offline without a local copy: `MetricWeightsUnavailable`.
    untrained: random weights (seeded by `options["seed"]`, default 0), no file read, no
        download; the scorer's `untrained` attribute is then True.
    options: metric-specific (e.g. `arch="tiny"` for a small random architecture of the
        same family, `batch_size`, `seed`); see each module's `build`.
    """
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORER_NAMES)}") from None
    module_name, func_name = target.split(":")
    builder: Callable[..., Scorer] = getattr(importlib.import_module(module_name), func_name)
    return builder(weights=weights, device=device, untrained=untrained, **options)


def build_scorers(names: Sequence[str], weights: dict | None = None, device: "torch.device | str" = "cpu",
                  untrained: bool = False, options: dict | None = None) -> dict[str, Scorer]:
    """{name: build_scorer(name, ...)} for every name; `weights` and `options` are dicts keyed by
    scorer name. Every scorer is tried: one MetricWeightsUnavailable names every missing file."""
    weights, options = weights or {}, options or {}
    scorers, failed = {}, []
    for name in names:
        try:
            scorers[name] = build_scorer(name, weights.get(name), device, untrained, **options.get(name, {}))
        except MetricWeightsUnavailable as err:
            failed.append(err)
    if len(failed) == 1:
        raise failed[0]
    if failed:
        details = (str(err).removesuffix("\n" + UNTRAINED_HINT) for err in failed)
        raise MetricWeightsUnavailable("\n".join(details) + "\n" + UNTRAINED_HINT) from failed[0]
    return scorers
