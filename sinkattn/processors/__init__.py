"""diffusers attention processors that find and suppress attention sinks (SD3/SD3.5, Flux,
SDXL and any module with AttnProcessor2_0 math), built on one shared core and the tables of
family differences (sinkattn.processors.families)."""

from .core import SinkSettings, Tokens, sink_core, token_range
from .families import ATTENTION_KINDS, MODEL_FAMILIES, AttentionKind, ModelFamily, kind_of, model_family
from .processor import SinkSuppressProcessor, attention_modules

__all__ = [
    "ATTENTION_KINDS", "AttentionKind", "MODEL_FAMILIES", "ModelFamily", "SinkSettings", "SinkSuppressProcessor",
    "Tokens", "attention_modules", "kind_of", "model_family", "sink_core", "token_range",
]
