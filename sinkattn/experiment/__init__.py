"""The experiment runner: the paired sink-vs-control study over a prompt set, with
metrics, statistics, plots and a report (``sinkattn run`` / ``sinkattn report``).

Layers: config (what a study is, presets), prompts, store (append-only records), models
(pipelines), runner (generation and scoring), stats (paired statistics), plots, report.
"""

from .config import PRESETS, Condition, ConditionGroup, RunConfig, expand_conditions, preset_config
from .prompts import Prompt, load_prompts
from .report import write_report
from .runner import RunResult, run

__all__ = ["PRESETS", "Condition", "ConditionGroup", "Prompt", "RunConfig", "RunResult", "expand_conditions",
           "load_prompts", "preset_config", "run", "write_report"]
