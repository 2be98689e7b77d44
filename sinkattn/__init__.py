"""sinkattn: exact, memory-flat attention-sink analysis and suppression for diffusion
transformers (Triton kernels, a PyTorch reference, diffusers processors)."""

from .ops import SinkAttentionResult, kernels_available, sink_attention

__all__ = ["SinkAttentionResult", "kernels_available", "sink_attention"]
__version__ = "0.1.0"
