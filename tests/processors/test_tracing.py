"""SinkTracer against hand-computed rows and the reference math; appending exports; one
host copy per image and no host sync per call; CFG rows labelled with their own tokens;
full per-key maps on request."""

from __future__ import annotations

import csv
import math

import numpy as np
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
    assert top0[0]["top_key_mass"] == pytest.approx(float(m[4] + m[7]))
    assert top0[0]["entropy"] == pytest.approx(float(-(m * m.log()).sum()), rel=1e-5)
    assert top0[0]["branch"] == "cond" and top0[0]["query_sample"] == 0 and math.isnan(top0[0]["query_top5"])
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


def test_one_host_copy_per_image_and_no_sync_per_call(monkeypatch):
    tracer = SinkTracer(top=1)
    clock = StepClock()
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(1) or real_cpu(self, *a, **k))

    def no_sync(self, *a, **k):
        raise AssertionError("a host sync inside record()")

    for image in range(2):
        tracer.begin(prompt_id=image)
        for t in (900.0, 600.0, 300.0):
            clock.tick(t)
            with monkeypatch.context() as m:
                for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
                    m.setattr(torch.Tensor, name, no_sync)
                for layer in ("a", "b", "c"):
                    tracer.record(layer=layer, layer_index=0, family="sd3", call=planted_call()[0], clock=clock)
        assert len(copies) == image                       # nothing left the device during the image
    assert tracer.finish_image().heads.num_rows == 3 * 3 * 1 * (2 + 1)
    assert len(copies) == 2 and tracer.host_copies == 2   # one copy per image (begin flushed the first)
    assert tracer.finish_image() is None


def test_head_mean_rows_and_buffer_growth():
    """head == -1 rows hold the head-mean mass's summaries; a buffer too small for an image
    grows on the device and loses nothing."""
    small = SinkTracer(top=3, device_buffer=torch.empty(7))
    big = SinkTracer(top=3)
    clock = StepClock()
    for t in (900.0, 600.0):
        clock.tick(t, grid=(2, 3))
        for tracer in (small, big):
            for layer in ("a", "b"):
                tracer.record(layer=layer, layer_index=0, family="sd3", call=planted_call()[0], clock=clock)
    a, b = small.finish_image().heads, big.finish_image().heads
    nan = ["query_top5", "query_entropy"]             # no q/k here: NaN, which equals() calls unequal
    assert a.drop_columns(nan).equals(b.drop_columns(nan)) and small._buf.numel() > 7
    assert np.isnan(a["query_top5"].to_numpy()).all() and np.isnan(b["query_entropy"].to_numpy()).all()
    mean = a.filter(pc_equal(a, "head", -1)).to_pylist()[0]
    _, mass = planted_call()
    hm = mass[0].mean(0)
    assert mean["max_mass"] == pytest.approx(float(hm.max())) and mean["top_keys"] == hm.topk(3).indices.tolist()
    assert mean["text_share"] == pytest.approx(float(hm[6:].sum())) and mean["selected_keys"] == []
    assert mean["entropy"] == pytest.approx(float(-(hm * hm.log()).sum()), rel=1e-5)


def pc_equal(table, column, value):
    import pyarrow as pa

    return pa.array(table[column].to_numpy() == value)


def test_cfg_rows_are_labelled_with_their_own_tokens():
    """[uncond, cond] halves: the unconditional row's text keys are the negative prompt's
    tokens (start, end, padding), not the prompt's (issue 14)."""
    tok = tiny.tiny_tokenizer()
    tracer = SinkTracer(tokenizer=tok, top=4)
    tracer.begin(prompt_id=1, prompt="red cat", negative_prompt="")
    mass = torch.full((2, 1, 10), 0.01)
    mass[:, 0, 7] = 0.9                     # text key 1 in both rows
    call = CallRecord(mass=mass / mass.sum(-1, keepdim=True), sinks=None, keys=Tokens(10, 4), mass_queries=(0, 6))
    tracer.record(layer="L", layer_index=0, family="sd3", call=call)
    image = tracer.finish_image()
    assert image.tokens["cond"]["token"] == ["<bos>", "red", "cat", "<eos>"]
    assert image.tokens["cond"]["kind"] == ["start", "word", "word", "end"]
    assert image.tokens["uncond"]["kind"] == ["start", "end", "pad", "pad"]
    from sinkattn.tracing import long_table

    rows = long_table(image).to_pylist()
    sink = {r["branch"]: r["token"] for r in rows if r["rank"] == 0}
    assert sink == {"uncond": image.tokens["uncond"]["token"][1], "cond": "red"}
    assert [r["branch"] for r in rows if r["rank"] == 0] == ["uncond", "cond"]
    tracer.begin(prompt_id=2, prompt="red cat", cfg=False)      # two prompts, no guidance
    tracer.record(layer="L", layer_index=0, family="sd3", call=call)
    assert set(tracer.finish_image().heads["branch"].to_pylist()) == {"cond"}


def qk_call(seed=0, batch=2, heads=3, n_image=12, n_text=5, dim=8):
    """A CallRecord of an SD3-like call (image first) with q and k, and its full probabilities."""
    g = torch.Generator().manual_seed(seed)
    n = n_image + n_text
    q = torch.randn(batch, heads, n, dim, generator=g) * 2
    k = torch.randn(batch, heads, n, dim, generator=g) * 2
    p = (q @ k.transpose(-1, -2) * dim ** -0.5).softmax(-1)
    mass = p[:, :, :n_image].mean(2)
    call = CallRecord(mass=mass, sinks=None, keys=Tokens(n, n_text), mass_queries=(0, n_image))
    call.q, call.k = q, k
    return call, p


@pytest.mark.parametrize("sample", [12, 4])
def test_query_top5_is_the_original_concentration(sample):
    """query_top5 = mean over image queries of each row's top-5 probability sum
    (ORIGINAL_STUDY.md 3.5), over all queries when query_sample covers them, else on the
    evenly spaced sample; query_entropy likewise."""
    call, p = qk_call()
    tracer = SinkTracer(query_sample=sample)
    tracer.record(layer="L", layer_index=0, family="sd3", call=call)
    heads = tracer.finish_image().heads.to_pandas()
    rows = torch.linspace(0, 11, sample).round().long()
    sub = p[:, :, rows]
    expect = sub.topk(5, -1).values.sum(-1).mean(-1)              # (B, H)
    entropy = -(sub * sub.log()).sum(-1).mean(-1)
    per_head = heads[heads["head"] >= 0]
    np.testing.assert_allclose(per_head["query_top5"], expect.reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(per_head["query_entropy"], entropy.reshape(-1), rtol=1e-5)
    assert (per_head["query_sample"] == sample).all()
    # The original's figure value: mean over (batch incl. uncond, heads, image queries).
    mean_rows = heads[heads["head"] == -1]
    assert mean_rows["query_top5"].mean() == pytest.approx(float(expect.mean()), rel=1e-5)
    if sample == 12:
        full = p[:, :, :12].topk(5, -1).values.sum(-1).mean()
        assert per_head["query_top5"].mean() == pytest.approx(float(full), rel=1e-5)


def test_maps_on_request():
    call, _ = qk_call()
    tracer = SinkTracer(map_layers=["L1"], map_steps=[1], map_heads=True, grid=(3, 4))
    clock = StepClock()
    for t in (900.0, 600.0):
        clock.tick(t, grid=(3, 4))
        for i, layer in enumerate(("L0", "L1")):
            tracer.record(layer=layer, layer_index=i, family="sd3", call=call, clock=clock)
    maps = tracer.finish_image().maps.to_pandas()
    assert set(zip(maps["layer"], maps["step"])) == {("L1", 1)}
    assert len(maps) == 2 * (3 + 1) and set(maps["head"]) == {-1, 0, 1, 2}
    row = maps[(maps["batch"] == 1) & (maps["head"] == -1)].iloc[0]
    hm = call.mass[1].mean(0)
    np.testing.assert_allclose(row["image_mass"], hm[:12], rtol=1e-6)
    np.testing.assert_allclose(row["text_mass"], hm[12:], rtol=1e-6)
    assert (row["grid_rows"], row["grid_cols"]) == (3, 4)
    head2 = maps[(maps["batch"] == 0) & (maps["head"] == 2)].iloc[0]
    np.testing.assert_allclose(head2["image_mass"], call.mass[0, 2, :12], rtol=1e-6)


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
    assert {r["intervened"] for r in rows} == {"True"} and {r["role"] for r in rows} == {"top", "selected"}
    assert all((r["row"] == "") == (r["kind"] != "image") for r in rows)


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
    """Each row's text keys are named with its own text: the prompt's tokens in the
    conditional row, the (empty) negative prompt's in the unconditional row (issue 14)."""
    rows = traced_pipeline_run((77, 16)).rows()
    text = [r for r in rows if r["kind"] == "text"]
    assert text and all(r["token"] is not None and r["prompt_id"] == "p" for r in text)
    assert {r["branch"] for r in rows} == {"cond", "uncond"}      # CFG: [uncond, cond] in one batch
    # SD3 text keys follow the 16 x 16 image keys: CLIP's 77 tokens, then T5's 16.
    tok = tiny.tiny_tokenizer()
    for branch, prompt in (("cond", "a photo of a red cat"), ("uncond", "")):
        expected = [tok.convert_ids_to_tokens(tok(prompt, padding="max_length", max_length=n).input_ids)
                    for n in (77, 16)]
        expected = expected[0] + expected[1]
        mine = [r for r in text if r["branch"] == branch]
        assert mine and all(r["token"] == expected[r["key"] - 256] for r in mine)


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
