"""SinkTracer against hand-computed rows; appending exports; one host copy per step."""

from __future__ import annotations

import csv

import pytest
import torch

from sinkattn import tiny
from sinkattn.gating import StepClock, intervene
from sinkattn.processors import SinkSuppressProcessor, Tokens
from sinkattn.processors.core import CallRecord
from sinkattn.tracing import SinkTracer


def planted_call():
    """1 batch row, 2 heads, 10 keys: image keys 0..5 on a 2x3 grid, text keys 6..9."""
    mass = torch.full((1, 2, 10), 0.02)
    mass[0, 0, 4] = 0.5          # image sink at row 1, col 1
    mass[0, 0, 7] = 0.2          # text key 1
    mass[0, 1, 8] = 0.6          # text sink: text key 2
    mass[0, 1, 0] = 0.1
    mass = mass / mass.sum(-1, keepdim=True)
    sinks = torch.tensor([[[4], [8]]])
    return CallRecord(mass=mass, sinks=sinks, keys=Tokens(10, 4, text_first=False), mass_queries=(0, 6)), mass


def test_rows_by_hand():
    tok = tiny.tiny_tokenizer()
    tracer = SinkTracer(tokenizer=tok, top=2, grid=(2, 3))
    tracer.begin(prompt_id="p0", prompt="red cat", seed=5)
    call, mass = planted_call()
    clock = StepClock()
    clock.tick(800.0, grid=(2, 3))
    tracer.record(layer="L", layer_index=3, family="sd3", call=call, clock=clock, intervened=True)
    rows = tracer.rows()
    assert len(rows) == 2 * (2 + 1)
    head0 = [r for r in rows if r["head"] == 0]
    top0, sel0 = [r for r in head0 if r["role"] == "top"], [r for r in head0 if r["role"] == "selected"]
    m = mass[0, 0]
    assert [r["key"] for r in top0] == [4, 7] and sel0[0]["key"] == 4
    assert top0[0]["mass"] == pytest.approx(float(m[4])) and top0[0]["max_mass"] == pytest.approx(float(m[4]))
    assert top0[0]["top_concentration"] == pytest.approx(float(m[4] + m[7]))
    assert top0[0]["text_share"] == pytest.approx(float(m[6:].sum()))
    assert top0[0]["image_share"] == pytest.approx(float(m[:6].sum()))
    assert (top0[0]["kind"], top0[0]["row"], top0[0]["col"], top0[0]["token"]) == ("image", 1, 1, None)
    # Text keys 6..9 are the tokens "<bos> red cat <eos>".
    assert (top0[1]["kind"], top0[1]["token"]) == ("text", "red")
    head1 = [r for r in rows if r["head"] == 1]
    assert head1[0]["token"] == "cat" and head1[0]["key"] == 8
    assert (head1[1]["key"], head1[1]["row"], head1[1]["col"]) == (0, 0, 0)
    assert all(r["prompt_id"] == "p0" and r["seed"] == 5 and r["step"] == 0 and r["timestep"] == 800.0
               and r["layer"] == "L" and r["layer_index"] == 3 for r in rows)


def test_one_host_copy_per_step(monkeypatch):
    tracer = SinkTracer(top=1)
    clock = StepClock()
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(1) or real_cpu(self, *a, **k))
    for t in (900.0, 600.0):
        clock.tick(t)
        for layer in ("a", "b", "c"):
            tracer.record(layer=layer, layer_index=0, family="sd3", call=planted_call()[0], clock=clock)
        if t == 900.0:
            assert copies == [] and tracer._rows == []   # nothing leaves the device mid-step
    assert len(copies) == 1                               # step 0 flushed when step 1 began
    tracer.rows()
    assert len(copies) == 2


def test_csv_appends_across_prompts(tmp_path):
    path = tmp_path / "sinks.csv"
    model = tiny.tiny_sd3_transformer()
    tracer = SinkTracer(top=3)
    written = []
    with intervene(model, SinkSuppressProcessor(k=1, tracer=tracer)):
        for prompt_id in range(3):
            tracer.begin(prompt_id=prompt_id)
            with torch.no_grad():
                model(**tiny.tiny_inputs(model, batch=1, size=8, timestep=1000.0 - prompt_id))
            written.append(tracer.to_csv(path))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    # 2 layers x 1 batch row x 2 heads x (3 top + 1 selected) per prompt.
    assert written == [16, 16, 16] and len(rows) == 48
    assert [r["prompt_id"] for r in rows] == [str(i) for i in range(3) for _ in range(16)]
    assert open(path).read().count("prompt_id") == 1


def test_tracing_alone_leaves_output_stock_and_unbound_names():
    """k=0 with a tracer installed by plain set_attn_processor: output is stock (to float
    tolerance), layers are named in call order, forwards counted as steps."""
    model = tiny.tiny_flux_transformer()
    inputs = tiny.tiny_inputs(model, batch=1)
    with torch.no_grad():
        stock = model(**inputs, return_dict=False)[0]
        tracer = SinkTracer(top=2)
        model.set_attn_processor(SinkSuppressProcessor(k=0, tracer=tracer))
        out = model(**inputs, return_dict=False)[0]
        model(**inputs, return_dict=False)
    torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-5)
    rows = tracer.rows()
    assert sorted({(r["step"], r["layer"]) for r in rows}) == [
        (s, f"attn#{i}") for s in range(2) for i in range(3)]
    assert not any(r["intervened"] for r in rows) and {r["role"] for r in rows} == {"top"}
    # Flux: the text keys come first (6 tokens), the image grid is 4 x 5.
    assert all((r["kind"] == "text") == (r["key"] < tiny.FLUX_TEXT_TOKENS) for r in rows)


def traced_pipeline_run(tokenizer_lengths, max_sequence_length=16, begin=True):
    """One 1-step 64x64 generation of the tiny SD3 pipeline (77 CLIP + ``max_sequence_length``
    T5 text tokens per attention call) traced with [(tokenizer, 77), (tokenizer_3, n)]."""
    pipe = tiny.tiny_sd3_pipeline(t5_tokens=16)
    lengths = iter(tokenizer_lengths)
    tracer = SinkTracer(tokenizer=[(pipe.tokenizer, next(lengths)), (pipe.tokenizer_3, next(lengths))], top=3)
    with intervene(pipe, SinkSuppressProcessor(k=1, tracer=tracer)):
        if begin:
            tracer.begin(prompt_id="p", prompt="a photo of a red cat")
        pipe("a photo of a red cat", height=64, width=64, num_inference_steps=1,
             max_sequence_length=max_sequence_length, generator=torch.Generator().manual_seed(0))
    return tracer


def test_every_text_key_gets_its_token():
    rows = traced_pipeline_run((77, 16)).rows()
    text = [r for r in rows if r["kind"] == "text"]
    assert text and all(r["token"] is not None and r["prompt_id"] == "p" for r in text)
    # SD3 text keys follow the 16 x 16 image keys: CLIP's 77 tokens, then T5's 16.
    tok = tiny.tiny_tokenizer()
    expected = [tok.convert_ids_to_tokens(tok("a photo of a red cat", padding="max_length", max_length=n).input_ids)
                for n in (77, 16)]
    expected = expected[0] + expected[1]
    assert all(r["token"] == expected[r["key"] - 256] for r in text)


@pytest.mark.parametrize("lengths", [(77, 15), (77, 256)], ids=["short", "long"])
def test_a_tokenizer_length_that_does_not_match_the_call_raises(lengths):
    """The text keys of the call are 77 + 16 = 93; segments adding up to anything else would
    label only some of them, or the wrong tokens: a clear error at the first call instead."""
    with pytest.raises(ValueError, match=rf"{sum(lengths)} text tokens.* 93 text keys"):
        traced_pipeline_run(lengths)


def test_a_tokenizer_without_a_prompt_raises():
    """A tracer with a tokenizer but no prompt (tracer.begin not called, or called without
    prompt=) cannot name its text keys: it says so at the first attention call."""
    with pytest.raises(ValueError, match=r"tracer\.begin\(.*prompt="):
        traced_pipeline_run((77, 16), begin=False)
    model = tiny.tiny_sd3_transformer()
    tracer = SinkTracer(tokenizer=tiny.tiny_tokenizer())
    tracer.begin(prompt_id=0)
    with pytest.raises(ValueError, match="prompt"), intervene(model, SinkSuppressProcessor(k=0, tracer=tracer)):
        with torch.no_grad():
            model(**tiny.tiny_inputs(model, batch=1, size=8))
