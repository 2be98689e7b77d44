"""End to end: a whole tiny StableDiffusion3Pipeline with the processor; torch.compile."""

from __future__ import annotations

import pytest
import torch

from sinkattn import tiny
from sinkattn.processors import SinkSuppressProcessor


def generate(pipe, seed):
    return pipe("a photo of a red cat", height=64, width=64, num_inference_steps=2, max_sequence_length=16,
                generator=torch.Generator().manual_seed(seed), output_type="pt").images


def test_tiny_sd3_pipeline_generates_with_the_processor():
    pipe = tiny.tiny_sd3_pipeline()
    stock = generate(pipe, 0)
    pipe.transformer.set_attn_processor(SinkSuppressProcessor(k=1))
    first, again = generate(pipe, 0), generate(pipe, 0)
    assert first.shape == (1, 3, 64, 64) and torch.isfinite(first).all()
    torch.testing.assert_close(first, again, rtol=0, atol=0)       # deterministic for a seed
    assert (first - stock).abs().max() > 1e-5                       # and the intervention did something
    assert (generate(pipe, 1) - first).abs().max() > 1e-3           # the seed matters


def test_tiny_pipelines_are_deterministic_builds():
    a, b = tiny.tiny_sd3_pipeline(seed=3), tiny.tiny_sd3_pipeline(seed=3)
    for (name, pa), (_, pb) in zip(a.transformer.named_parameters(), b.transformer.named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("builder, kwargs", [
    pytest.param(tiny.tiny_sd3_transformer, dict(k=1), id="sd3-k1"),
    pytest.param(tiny.tiny_flux_transformer, dict(k=2, path="value", eta=0.5), id="flux-value"),
])
def test_torch_compile_matches_eager(builder, kwargs):
    # aot_eager: dynamo + AOTAutograd tracing of the processor (what breaks a compile), without
    # inductor's C++ codegen, which takes minutes on a 2-core CI runner for no extra coverage
    # of our code. On a GPU the op is a torch.library custom op and inductor compiles around it.
    model = builder()
    inputs = tiny.tiny_inputs(model, batch=1, size=8)
    model.set_attn_processor(SinkSuppressProcessor(**kwargs))
    with torch.no_grad():
        eager = model(**inputs, return_dict=False)[0]
        compiled = torch.compile(model, backend="aot_eager")(**inputs, return_dict=False)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
