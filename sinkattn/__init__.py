"""sinkattn: exact, memory-flat attention-sink analysis and suppression for diffusion
transformers (Triton kernels, a PyTorch reference, diffusers processors).

``sink_attention`` is the op; ``SinkSuppressProcessor`` (diffusers processor), ``intervene``
(layer/step gating) and ``SinkTracer`` load diffusers on first use."""

from .ops import SinkAttentionResult, kernels_available, sink_attention

__all__ = ["SinkAttentionResult", "kernels_available", "sink_attention", "SinkSuppressProcessor", "SinkTracer",
           "intervene"]
__version__ = "0.1.0"

_LAZY = {"SinkSuppressProcessor": "sinkattn.processors", "SinkTracer": "sinkattn.tracing", "intervene": "sinkattn.gating"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sinkattn' has no attribute {name!r}")
