"""diffusers attention processors that find and suppress attention sinks (SD3/SD3.5, Flux,
SDXL), built on one shared core and a table of family differences."""

from .core import SinkSettings, Tokens, sink_core, token_range
from .families import FAMILIES, Family, family_of
from .processor import SinkSuppressProcessor, attention_modules

__all__ = [
    "FAMILIES", "Family", "SinkSettings", "SinkSuppressProcessor", "Tokens", "attention_modules",
    "family_of", "sink_core", "token_range",
]
