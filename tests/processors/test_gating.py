"""intervene(): which layers and steps are intervened, hand-counted; restore on exit."""

from __future__ import annotations

import pytest
import torch

from sinkattn import tiny
from sinkattn.gating import StepClock, intervene, layer_blocks
from sinkattn.processors import SinkSuppressProcessor
from sinkattn.tracing import SinkTracer


@pytest.fixture(scope="module")
def pipe():
    return tiny.tiny_sd3_pipeline(dual_attention=True)


def generate(pipe, steps=3, seed=0):
    return pipe("a red cat", height=32, width=32, num_inference_steps=steps, max_sequence_length=8,
                generator=torch.Generator().manual_seed(seed), output_type="pt").images


def intervened_calls(tracer):
    """{(generation, step, layer): intervened} from the tracer's rows."""
    return {(r["generation"], r["step"], r["layer"]): r["intervened"] for r in tracer.rows()}


LAYERS = ["transformer_blocks.0.attn", "transformer_blocks.0.attn2", "transformer_blocks.1.attn"]


@pytest.mark.parametrize("layers, steps, timesteps, expected", [
    pytest.param(None, None, None, {(s, l) for s in range(3) for l in LAYERS}, id="everything"),
    pytest.param([1], [0, 2], None, {(0, LAYERS[2]), (2, LAYERS[2])}, id="block1-steps0,2"),
    pytest.param(["*attn2"], range(1, 3), None, {(1, LAYERS[1]), (2, LAYERS[1])}, id="pattern-range"),
    pytest.param(0, 0, None, {(0, LAYERS[0]), (0, LAYERS[1])}, id="block0-step0-both-attns"),
    pytest.param(-1, None, (900, 1000), {(0, LAYERS[2])}, id="last-block-first-timestep"),
    pytest.param(None, [], None, set(), id="no-steps"),
])
def test_gate_hand_counted(pipe, layers, steps, timesteps, expected):
    tracer = SinkTracer()
    with intervene(pipe, SinkSuppressProcessor(k=1, tracer=tracer), layers=layers, steps=steps, timesteps=timesteps):
        generate(pipe)
        generate(pipe)
    calls = intervened_calls(tracer)
    # Two generations of 3 steps, 3 attention layers each: counted from 0 in each generation.
    assert set(calls) == {(g, s, l) for g in range(2) for s in range(3) for l in LAYERS}
    for g in range(2):
        assert {(s, l) for (gg, s, l), on in calls.items() if gg == g and on} == expected


def test_outside_gate_is_stock_and_inside_is_processor(pipe):
    stock = generate(pipe)
    with intervene(pipe, SinkSuppressProcessor(k=1), steps=[]):
        gated_off = generate(pipe)
    with intervene(pipe, SinkSuppressProcessor(k=1), steps=range(3), layers=[0, 1]):
        gated_all = generate(pipe)
    originals = dict(pipe.transformer.attn_processors)
    pipe.transformer.set_attn_processor(SinkSuppressProcessor(k=1))
    try:
        ungated = generate(pipe)
    finally:
        pipe.transformer.set_attn_processor(originals)
    torch.testing.assert_close(gated_off, stock, rtol=0, atol=0)
    torch.testing.assert_close(gated_all, ungated, rtol=0, atol=0)
    assert (ungated - stock).abs().max() > 0


def test_restores_on_exit_and_exception(pipe):
    model = pipe.transformer
    before = dict(model.attn_processors)
    sched_attrs = dict(vars(pipe.scheduler))
    proc = SinkSuppressProcessor(k=1)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(pipe, proc, layers=[1]):
            assert all(p is proc for p in model.attn_processors.values())
            assert len(model._forward_pre_hooks) == 1
            raise RuntimeError("boom")
    after = model.attn_processors
    assert all(after[name] is before[name] for name in before)
    assert len(model._forward_pre_hooks) == 0
    assert "set_timesteps" not in vars(pipe.scheduler) and vars(pipe.scheduler).keys() == sched_attrs.keys()
    assert proc.gate is None and proc.clock is None


def test_bare_model_step_counting():
    """A bare model: the step is the count of distinct timesteps; equal timesteps in a row
    are one step (separate CFG passes); a rising timestep starts a new generation."""
    model = tiny.tiny_sd3_transformer()
    proc = SinkSuppressProcessor(k=0)
    seen = []
    with intervene(model, proc) as iv:
        for t in (1000.0, 1000.0, 700.0, 300.0, 1000.0, 500.0):
            with torch.no_grad():
                model(**tiny.tiny_inputs(model, batch=1, size=8, timestep=t))
            seen.append((iv.clock.generation, iv.clock.step, iv.clock.timestep, iv.clock.grid))
    assert seen == [(0, 0, 1000.0, (4, 4)), (0, 0, 1000.0, (4, 4)), (0, 1, 700.0, (4, 4)), (0, 2, 300.0, (4, 4)),
                    (1, 0, 1000.0, (4, 4)), (1, 1, 500.0, (4, 4))]


def test_clock_counts_before_attention_runs():
    """The hook ticks before the first attention call: the first forward is step 0."""
    clock = StepClock()
    clock.tick(torch.tensor([999.0]))
    assert (clock.generation, clock.step) == (0, 0)


def test_layer_blocks_and_bad_layers():
    flux = tiny.tiny_flux_transformer(num_layers=2, num_single_layers=2)
    blocks = layer_blocks(flux)
    assert blocks == {"transformer_blocks.0.attn": 0, "transformer_blocks.1.attn": 1,
                      "single_transformer_blocks.0.attn": 2, "single_transformer_blocks.1.attn": 3}
    proc = SinkSuppressProcessor()
    with pytest.raises(ValueError, match="block index 4"):
        with intervene(flux, proc, layers=[4]):
            pass
    with pytest.raises(ValueError, match="matches no attention module"):
        with intervene(flux, proc, layers=["down_blocks.*"]):
            pass
    with pytest.raises(ValueError, match="timesteps"):
        with intervene(flux, proc, timesteps=(10, 1)):
            pass


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_step_hook_reads_no_device_value(family, monkeypatch):
    """The denoiser's pre-hook keeps the timestep (and Flux's image ids) without reading them
    on the host, so a forward with the hook installed can be captured in a CUDA graph; the
    clock reads them when asked."""
    if family == "flux":
        model = tiny.tiny_flux_transformer(num_layers=1, num_single_layers=1)
    else:
        model = tiny.tiny_sd3_transformer()
    inputs = tiny.tiny_inputs(model, batch=1, size=8, timestep=700.0)
    clock = StepClock()
    hook = clock.pre_hook(model)

    def refuse(*_args, **_kwargs):
        raise AssertionError("a tensor value was read on the host")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "numpy", "cpu", "__int__", "__float__", "__bool__", "__index__"):
            patched.setattr(torch.Tensor, name, refuse)
        hook(model, (), inputs)
        hook(model, (), inputs)
    if family == "flux":
        ids = inputs["img_ids"].reshape(-1, 3)
        grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
    else:
        grid = (inputs["hidden_states"].shape[-2] // 2, inputs["hidden_states"].shape[-1] // 2)
    assert (clock.generation, clock.step, clock.grid) == (0, 0, grid)
    assert clock.timestep == pytest.approx(float(inputs["timestep"].flatten()[0]))


def test_clock_read_late_counts_every_forward():
    """Forwards nobody asked about are counted when the clock is read: equal timesteps are one
    step, a rising one or new_generation() starts a generation."""
    eager, late = StepClock(), StepClock()
    seen = []
    for event in (1000.0, 1000.0, 700.0, "new", 900.0, 300.0, 1000.0, 500.0):
        for clock in (eager, late):
            if event == "new":
                clock.new_generation()
            else:
                clock.tick(torch.tensor([event]))
        seen.append((eager.generation, eager.step, eager.timestep))
    assert seen[-1] == (late.generation, late.step, late.timestep) == (2, 1, 500.0)
    assert seen == [(0, 0, 1000.0), (0, 0, 1000.0), (0, 1, 700.0), (1, -1, 700.0), (1, 0, 900.0), (1, 1, 300.0),
                    (2, 0, 1000.0), (2, 1, 500.0)]
