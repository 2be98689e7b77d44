"""Image metrics of the experiment runner: CLIP-T, ImageReward, HPS-v2.1, LPIPS.

    from sinkattn.metrics import build_scorer
    scorer = build_scorer("hps_v21", device="cuda")          # official weights
    scorer.score(images, prompts)                             # -> list[float]
    build_scorer("lpips").score(images, references=baselines)
    build_scorer("clip_t", untrained=True)                    # random weights, offline
    build_set_metric("fid")                                   # per set of images (fid.py)

Importing this package imports neither torch nor any metric library; each scorer's
module is imported when it is built. See weights.py for where weights come from and
INSTALL.txt for the packages each metric needs.
"""

import importlib

from sinkattn.metrics.base import (SCORER_NAMES, MetricWeightsUnavailable, Scorer, WeightsHashMismatch,
                                   build_scorer, build_scorers)

__all__ = ["SCORER_NAMES", "SET_METRIC_NAMES", "MetricWeightsUnavailable", "Scorer", "WeightsHashMismatch",
           "build_scorer", "build_scorers", "build_set_metric"]

# Metrics of a set of images (one number per set, not per image): not Scorers, so the runner
# does not score them per record; the report computes them from the stored images.
_SET_METRICS = {"fid": "sinkattn.metrics.fid:build"}
SET_METRIC_NAMES: tuple[str, ...] = tuple(_SET_METRICS)


def build_set_metric(name: str, weights=None, device="cpu", untrained: bool = False, **options):
    """Build the set metric registered as `name` (weights/untrained/options as for build_scorer)."""
    try:
        module_name, func_name = _SET_METRICS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown set metric {name!r}; known: {', '.join(SET_METRIC_NAMES)}") from None
    return getattr(importlib.import_module(module_name), func_name)(weights=weights, device=device,
                                                                   untrained=untrained, **options)
