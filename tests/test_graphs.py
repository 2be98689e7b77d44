"""Replaying a denoiser's forward from CUDA graphs (sinkattn.graphs, issue 15): the replayed
forward gives the eager forward's output, per step gate, and a run with graphs makes the same
images as one without. Capture needs CUDA: on the CPU only the pass-through is checked here,
the rest is the GPU counterpart (run by the device check like tests/test_kernels.py)."""

import contextlib
import hashlib
import os

import pytest
import torch

from sinkattn.gating import intervene
from sinkattn.graphs import ForwardGraphs, replay_forward
from sinkattn.processors import SinkSuppressProcessor
from sinkattn.tiny import tiny_inputs, tiny_sd3_transformer, tiny_sdxl_unet

CUDA = torch.cuda.is_available()
GPU_ONLY = pytest.mark.skipif(not CUDA, reason="CUDA graph capture needs a GPU")


def _model(builder, device="cuda", dtype=torch.float32):
    model = builder().to(device, dtype).eval().requires_grad_(False)
    inputs = tiny_inputs(model, batch=2, size=16)
    inputs = {k: v.to(device, dtype) if isinstance(v, torch.Tensor) and v.is_floating_point()
              else v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if "added_cond_kwargs" in inputs:
        inputs["added_cond_kwargs"] = {k: v.to(device, dtype) if isinstance(v, torch.Tensor) else v
                                       for k, v in inputs["added_cond_kwargs"].items()}
    return model, inputs


def test_cpu_forward_passes_through_and_is_restored():
    model, inputs = _model(tiny_sd3_transformer, device="cpu")
    graphs = ForwardGraphs()
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        with replay_forward(model, graphs):
            assert "forward" in vars(model)
            got = model(**inputs, return_dict=False)[0]
    assert "forward" not in vars(model)
    assert torch.equal(got, expected)
    assert (graphs.eager, graphs.captures, graphs.replays) == (1, 0, 0)


def test_graphs_take_cuda_generators_only():
    with pytest.raises(ValueError, match="CUDA generators"):
        ForwardGraphs(generators=[torch.Generator()])
    with pytest.raises(ValueError, match="seeded by seed"):
        SinkSuppressProcessor(control="random", generator=torch.Generator())
    generator = torch.Generator()
    proc = SinkSuppressProcessor(control="random", seed=3, generator=generator)
    assert proc.generator is generator and generator.initial_seed() == 3


@GPU_ONLY
@pytest.mark.parametrize("kw", [dict(control="random"), dict(k=2, path="value", value_target="noise")],
                         ids=["random", "noise"])
def test_seeded_draws_replay_as_eager(kw):
    """The random control and value noise on a CUDA generator registered with the graphs:
    every replay draws afresh, the numbers an eager run of the same seed draws (so a graphed
    forward equals the eager one step by step, and a second graphed pass, reseeded, repeats
    the first); another seed gives other outputs."""
    model, inputs = _model(tiny_sd3_transformer)
    generator = torch.Generator(device="cuda")
    graphs = ForwardGraphs(generators=[generator])

    def run(graphed, seed=7):
        model.set_attn_processor(SinkSuppressProcessor(seed=seed, generator=generator, **kw))
        outs = []
        with torch.no_grad():
            for step in range(4):
                step_inputs = dict(inputs, timestep=inputs["timestep"] * (1 - step / 4))
                with replay_forward(model, graphs) if graphed else contextlib.nullcontext():
                    outs.append(model(**step_inputs, return_dict=False)[0])
        return outs

    eager, graphed, again = run(False), run(True), run(True)
    for step, (e, g, a) in enumerate(zip(eager, graphed, again)):
        assert torch.equal(g, e) and torch.equal(a, e), f"step {step}"
    assert (graphs.eager, graphs.captures, graphs.replays) == (1, 1, 7)
    other = run(False, seed=8)
    assert not all(torch.equal(o, e) for o, e in zip(other, eager))


@GPU_ONLY
@pytest.mark.parametrize("builder", [tiny_sd3_transformer, tiny_sdxl_unet], ids=["sd3", "sdxl"])
def test_replayed_forward_equals_eager(builder):
    """First call eager, second captured, later ones replayed: every output is the eager one,
    bit for bit (the same kernels), with new input values copied into the static inputs."""
    model, inputs = _model(builder)
    model.set_attn_processor(SinkSuppressProcessor(k=2, path="both", eta=0.3, eta_mode="prob", value_target="mean"))
    graphs = ForwardGraphs()
    with torch.no_grad():
        for step in range(4):
            step_inputs = dict(inputs, timestep=inputs["timestep"] * (1 - step / 4))
            expected = model(**step_inputs, return_dict=False)[0]
            with replay_forward(model, graphs):
                got = model(**step_inputs, return_dict=False)[0]
            assert torch.equal(got, expected), f"step {step}"
    assert (graphs.eager, graphs.captures, graphs.replays) == (1, 1, 3)


@GPU_ONLY
def test_step_gate_selects_the_graph():
    """Gated by step, the intervened and the stock steps are two graphs; each replays its
    own: the outputs equal an eager run of the same gate step by step."""
    model, inputs = _model(tiny_sd3_transformer)
    timesteps = [900.0, 700.0, 500.0, 300.0, 100.0]
    graphs = ForwardGraphs()

    def run(graphed):
        outs = []
        with torch.no_grad(), intervene(model, SinkSuppressProcessor(k=1), steps=[1, 3]) as iv:
            for t in timesteps:
                step_inputs = dict(inputs, timestep=torch.full_like(inputs["timestep"], t))
                if graphed:
                    with replay_forward(model, graphs, key=iv.step_state):
                        outs.append(model(**step_inputs, return_dict=False)[0])
                else:
                    outs.append(model(**step_inputs, return_dict=False)[0])
        return outs

    for _ in range(2):  # the second pass replays graphs captured in the first
        for step, (got, expected) in enumerate(zip(run(True), run(False))):
            assert torch.equal(got, expected), f"step {step}"
    assert graphs.captures == 2 and graphs.replays >= 6


@GPU_ONLY
def test_run_with_graphs_makes_the_same_images(tmp_path):
    """The tiny preset on CUDA with and without --cuda-graphs: the same images, byte for byte
    (the random control's conditions replay too, drawing on their device generators)."""
    from sinkattn.cli import main
    from sinkattn.experiment.store import read_records

    args = ["--preset", "tiny", "--limit", "2", "--steps", "4", "--k", "1,2", "--controls", "sink,random",
            "--path", "score,value", "--metrics", "none", "--no-report", "--no-progress"]
    digests = []
    for name, flag in (("graphs", "--cuda-graphs"), ("eager", "--no-cuda-graphs")):
        assert main(["run", "--out", str(tmp_path / name), *args, flag]) == 0
        records = read_records(str(tmp_path / name / "results.jsonl"))
        digests.append({(r["condition"], r["prompt_id"]): hashlib.sha256(
            open(os.path.join(tmp_path / name, r["image"]), "rb").read()).hexdigest() for r in records})
    assert len(digests[0]) == 2 * 13 and digests[0] == digests[1]  # baseline, 4 sink, 8 random (2 draws)


@GPU_ONLY
def test_uncapturable_forward_runs_eagerly():
    """A key-padding-masked call reads the kept counts on the host (PixArt's text mask), which
    a capture refuses: the signature is reported once and then runs eagerly, with the eager
    outputs."""
    from sinkattn.tiny import tiny_pixart_transformer

    model, inputs = _model(tiny_pixart_transformer)
    model.set_attn_processor(SinkSuppressProcessor(k=1))
    graphs = ForwardGraphs()
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        with replay_forward(model, graphs), pytest.warns(RuntimeWarning, match="could not be captured"):
            outs = [model(**inputs, return_dict=False)[0] for _ in range(3)]
    assert all(torch.equal(out, expected) for out in outs)
    assert (graphs.captures, graphs.replays, graphs.eager) == (0, 0, 3)
