"""pytest-benchmark suite (GPU only): sinkattn modes and cuDNN SDPA at the SPEC shapes, and
the whole-model rows of benchmarks/whole_model.py (each model built once per module).

    pytest benchmarks/test_bench.py --benchmark-columns=median,iqr --benchmark-json=bench.json
    pytest benchmarks/test_bench.py -k whole_model ...

Wall-clock per call with a device synchronisation; benchmarks/run.py and whole_model.py are
the reference reports (do_bench or CUDA-event medians, ratios, memory, side by side)."""

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


WHOLE_MODELS = ["sd3m_transformer_1024", "flux_transformer_1024", "sdxl_unet_1024"]


@pytest.fixture(scope="module", params=WHOLE_MODELS)
def whole_model(request):
    """(shape, model, inputs, stock processor) of benchmarks/whole_model.py, built once."""
    from whole_model import BUILDERS  # benchmarks/whole_model.py

    model, inputs, stock = BUILDERS[request.param](torch.device("cuda"), torch.bfloat16, tiny=False)
    yield request.param, model, inputs, stock
    del model, inputs
    torch.cuda.empty_cache()


@pytest.mark.parametrize("mode", [m + g for m in ("stock", "sink_score", "sink_value", "random", "shared", "trace_only",
                                                  "sink_traced") for g in ("", "_graph")])
def test_whole_model(benchmark, whole_model, mode):
    from whole_model import _graphed, processor

    _, model, inputs, stock = whole_model
    model.set_attn_processor(processor(mode.removesuffix("_graph"), stock))

    def forward():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    for _ in range(2):
        forward()
    fn = forward
    if mode.endswith("_graph"):
        tracer = getattr(next(iter(model.attn_processors.values())), "tracer", None)
        if tracer is not None:
            tracer.flush()
        fn, graph = _graphed(forward, 2)
    torch.cuda.synchronize()

    def call():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=10, warmup_rounds=3)
