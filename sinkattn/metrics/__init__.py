"""Image metrics of the experiment runner: CLIP-T, ImageReward, HPS-v2.1, LPIPS.

    from sinkattn.metrics import build_scorer
    scorer = build_scorer("hps_v21", device="cuda")          # official weights
    scorer.score(images, prompts)                             # -> list[float]
    build_scorer("lpips").score(images, references=baselines)
    build_scorer("clip_t", untrained=True)                    # random weights, offline

Importing this package imports neither torch nor any metric library; each scorer's
module is imported when it is built. See weights.py for where weights come from and
INSTALL.txt for the packages each metric needs.
"""

from sinkattn.metrics.base import (SCORER_NAMES, MetricWeightsUnavailable, Scorer, WeightsHashMismatch,
                                   build_scorer, build_scorers)

__all__ = ["SCORER_NAMES", "MetricWeightsUnavailable", "Scorer", "WeightsHashMismatch", "build_scorer",
           "build_scorers"]
