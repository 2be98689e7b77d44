"""pytest-benchmark suite (GPU only): sinkattn modes and cuDNN SDPA at the SPEC shapes.

    pytest benchmarks/test_bench.py --benchmark-columns=median,iqr --benchmark-json=bench.json

Wall-clock per call with a device synchronisation; benchmarks/run.py is the reference
report (do_bench medians, TFLOP/s, memory, baselines side by side)."""

import pytest
import torch
import torch.nn.functional as F

from run import SHAPES, SINK_MODES, diffusers_layout  # benchmarks/run.py

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="kernel benchmarks need a CUDA device")
BENCH_SHAPES = ["sd3m_1024", "flux_1024", "sdxl_self_64x64", "sdxl_cross_64x64"]


def _timed(benchmark, fn):
    fn()
    torch.cuda.synchronize()

    def call():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=30, warmup_rounds=5)


@pytest.mark.parametrize("shape", BENCH_SHAPES)
def test_cudnn_sdpa(benchmark, shape):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = diffusers_layout(*SHAPES[shape])
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        _timed(benchmark, lambda: F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("mode", list(SINK_MODES))
@pytest.mark.parametrize("shape", BENCH_SHAPES)
def test_sinkattn(benchmark, shape, mode):
    from sinkattn import sink_attention

    q, k, v = diffusers_layout(*SHAPES[shape])
    _timed(benchmark, lambda: sink_attention(q, k, v, **SINK_MODES[mode]))
