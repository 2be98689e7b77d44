"""The family tables on the real diffusers classes with tiny configs: every MODEL_FAMILIES row
against its tiny pipeline (the pipeline class, denoiser, call options, and what the row says
about token grids, latents and text tokens, checked against the pipeline's own forwards),
every attention module against its ATTENTION_KINDS row, the text masks of PixArt-Sigma and
Qwen-Image, and the (frame, row, col) token grid of Wan video."""

from __future__ import annotations

import inspect

import pytest
import torch

from sinkattn import tiny
from sinkattn.processors import SinkSuppressProcessor
from sinkattn.processors.families import MODEL_FAMILIES, Grid, input_grid, kind_of, model_family

PROMPT = "a photo of a red cat"
MAX_SEQUENCE_LENGTH = 16
NUM_FRAMES = 5


def size_of(family):
    return (32, 32) if family.layout == "video" else (64, 64)


_PIPES = {}


def tiny_pipeline(name):
    """One tiny pipeline per family for this module (the builds are deterministic)."""
    if name not in _PIPES:
        _PIPES[name] = getattr(tiny, model_family(name).tiny)()
    return _PIPES[name]


class Recorder:
    """A tracer that keeps what each attention call reports: layer, kind, key layout."""

    def __init__(self):
        self.calls = []

    def record(self, layer, layer_index, family, call, clock=None, intervened=False):
        self.calls.append((layer, family, call.keys, call.mass.shape))


def run(name, pipe=None, output_type="latent", **extra):
    """One 1-step call of the family's tiny pipeline; returns (output, denoiser forward args)."""
    family = model_family(name)
    pipe = pipe or tiny_pipeline(name)
    denoiser = getattr(pipe, family.denoiser)
    signature = inspect.signature(denoiser.forward)
    seen = []

    def hook(module, args, kwargs):
        seen.append(signature.bind_partial(*args, **kwargs).arguments)

    height, width = size_of(family)
    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = pipe(PROMPT, height=height, width=width, num_inference_steps=1, output_type=output_type,
                   generator=torch.Generator().manual_seed(0),
                   **family.call_arguments(guidance=1.0, max_sequence_length=MAX_SEQUENCE_LENGTH,
                                           num_frames=NUM_FRAMES), **extra)
    finally:
        handle.remove()
    return getattr(out, family.output), seen


@pytest.mark.parametrize("name", list(MODEL_FAMILIES))
def test_row_matches_its_tiny_pipeline(name):
    import diffusers

    family = model_family(name)
    pipe = tiny_pipeline(name)
    assert type(pipe) is getattr(diffusers, family.pipeline)
    assert isinstance(getattr(pipe, family.denoiser), diffusers.ModelMixin)
    assert family.hub_id.count("/") == 1
    params = inspect.signature(type(pipe).__call__).parameters
    for option in (*family.call_options, *dict(family.call_kwargs), family.guidance):
        assert option in params, option
    for attribute, length in family.tokenizers:
        assert getattr(pipe, attribute) is not None
        assert length is None or isinstance(length, int) or length in family.call_options
    heads = family.heads(getattr(pipe, family.denoiser))
    assert heads == (None if name == "sdxl" else 2)  # the tiny SDXL UNet has 1 and 2 heads per level


@pytest.mark.parametrize("name", list(MODEL_FAMILIES))
def test_grid_latents_and_text_tokens_match_the_pipeline(name):
    """What the row computes from a call's size and prompt equals what the pipeline's own
    denoiser forwards get: the token grid, the latents' shape, the number of text tokens;
    and the image keys of every joint or self-attention call are the grid's tokens."""
    family = model_family(name)
    pipe = tiny_pipeline(name)
    denoiser = getattr(pipe, family.denoiser)
    height, width = size_of(family)
    recorder = Recorder()
    processor = SinkSuppressProcessor(k=0, tracer=recorder)
    originals = dict(denoiser.attn_processors)
    denoiser.set_attn_processor(processor)
    try:
        latents, seen = run(name)
    finally:
        denoiser.set_attn_processor(originals)
    grid = family.token_grid(pipe, height, width, num_frames=NUM_FRAMES)
    assert input_grid(denoiser, seen[0]) == grid
    assert tuple(latents.shape) == family.latent_shape(pipe, height, width, num_frames=NUM_FRAMES)
    text = family.text_tokens(pipe, PROMPT, max_sequence_length=MAX_SEQUENCE_LENGTH)
    assert seen[0]["encoder_hidden_states"].shape[1] == len(text)
    assert recorder.calls
    if family.layout != "unet":  # UNet levels see the grid downsampled
        image_keys = {keys.image[1] - keys.image[0] for _, _, keys, _ in recorder.calls if keys.n_text < keys.n}
        assert image_keys == {grid.size}


def test_latent_shape_feeds_the_pipeline():
    """Latents drawn at the row's shape are what the pipeline takes (here Wan's 5-D video
    latents and Flux's packed ones): the same latents give the same output."""
    for name in ("wan-t2v", "flux"):
        family = model_family(name)
        height, width = size_of(family)
        latents = torch.randn(family.latent_shape(tiny_pipeline(name), height, width, num_frames=NUM_FRAMES))
        first, _ = run(name, output_type="pt", latents=latents.clone())
        again, _ = run(name, output_type="pt", latents=latents.clone())
        assert torch.equal(first, again)


def test_text_tokens_name_the_words():
    qwen = model_family("qwen-image").text_tokens(tiny_pipeline("qwen-image"), PROMPT)
    assert qwen[:6] == PROMPT.split() and qwen[6] == "<|im_end|>"  # the template's closing markers follow
    sd3 = model_family("sd3").text_tokens(tiny_pipeline("sd3"), PROMPT, max_sequence_length=MAX_SEQUENCE_LENGTH)
    assert len(sd3) == 77 + MAX_SEQUENCE_LENGTH and sd3[1:7] == PROMPT.split() and sd3[78:84] == PROMPT.split()
    pixart = model_family("pixart-sigma").text_tokens(tiny_pipeline("pixart-sigma"), "A Photo",
                                                      max_sequence_length=MAX_SEQUENCE_LENGTH)
    assert pixart[1:3] == ["a", "photo"] and pixart[-1] == "<pad>"
    with pytest.raises(ValueError, match="max_sequence_length"):
        model_family("wan-t2v").text_tokens(tiny_pipeline("wan-t2v"), PROMPT)


@pytest.mark.parametrize("builder, expected", [
    (tiny.tiny_sd3_transformer, {"joint"}),
    (tiny.tiny_sd35_transformer, {"joint", "self_cross"}),   # MMDiT-X: block 0's image-only attn2
    (tiny.tiny_sd35_large_transformer, {"joint"}),
    (tiny.tiny_flux_transformer, {"flux"}),
    (tiny.tiny_sdxl_unet, {"self_cross"}),
    (tiny.tiny_pixart_transformer, {"self_cross"}),
    (tiny.tiny_qwenimage_transformer, {"qwen"}),
    (tiny.tiny_wan_transformer, {"wan"}),
], ids=lambda x: getattr(x, "__name__", "")[5:] if callable(x) else None)
def test_every_module_finds_its_row(builder, expected):
    model = builder()
    recorder = Recorder()
    model.set_attn_processor(SinkSuppressProcessor(k=0, tracer=recorder).bind(model))
    with torch.no_grad():
        model(**tiny.tiny_inputs(model), return_dict=False)
    kinds = {layer: kind for layer, kind, _, _ in recorder.calls}
    assert set(kinds.values()) == expected
    assert set(kinds) == {name.rsplit(".", 1)[0] for name in model.attn_processors}  # every module called
    if builder is tiny.tiny_sd35_transformer:
        assert kinds["transformer_blocks.0.attn2"] == "self_cross" and kinds["transformer_blocks.0.attn"] == "joint"


def test_qwen_module_without_its_call_is_sd3_shaped():
    """Qwen-Image's joint Attention is built as SD3's: the module alone reads as "joint";
    its call (a complex (image, text) RoPE pair) makes it "qwen"."""
    attn = tiny.tiny_qwenimage_transformer().transformer_blocks[0].attn
    assert kind_of(attn).name == "joint"


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


@pytest.mark.parametrize("builder, mask_key, keep", [
    (tiny.tiny_qwenimage_transformer, "encoder_hidden_states_mask", tiny.QWEN_TEXT_KEEP),
    (tiny.tiny_pixart_transformer, "encoder_attention_mask", tiny.PIXART_TEXT_KEEP),
], ids=["qwen-image", "pixart-sigma"])
def test_text_mask_equals_truncated_text(builder, mask_key, keep):
    """A padding mask on the last text tokens: masked keys get no probability, hence no mass
    and no selection (control="bottom" would pick them first otherwise), so the image
    output equals running on the unpadded text alone."""
    model = builder()
    inputs = tiny.tiny_inputs(model, batch=1, masked=True)
    truncated = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, :keep])
    truncated[mask_key] = None
    for kwargs in (dict(k=2), dict(k=2, candidates="text", control="bottom"), dict(k=0)):
        model.set_attn_processor(SinkSuppressProcessor(**kwargs))
        torch.testing.assert_close(_forward(model, inputs), _forward(model, truncated), rtol=1e-5, atol=1e-5)
    unmasked = _forward(model, dict(inputs, **{mask_key: None}))
    assert (unmasked - _forward(model, truncated)).abs().max() > 1e-4


def test_qwen_mask_reaches_attention_at_k0():
    """The issue's symptom: diffusers dropped the text mask of a processor that did not name
    it (k=0 then differed from stock by ~1e-2). Now k=0 is stock with the mask."""
    model = tiny.tiny_qwenimage_transformer()
    inputs = tiny.tiny_inputs(model)
    stock = _forward(model, inputs)
    model.set_attn_processor(SinkSuppressProcessor(k=0))
    torch.testing.assert_close(_forward(model, inputs), stock, rtol=0, atol=0)
    assert (_forward(model, dict(inputs, encoder_hidden_states_mask=None)) - stock).abs().max() > 1e-4


def test_text_mask_refused_where_no_row_takes_it():
    attn = tiny.tiny_pixart_transformer().transformer_blocks[0].attn2
    with pytest.raises(TypeError, match="encoder_hidden_states_mask"):
        SinkSuppressProcessor(k=1)(attn, torch.randn(1, 4, 128), torch.randn(1, 3, 128),
                                   encoder_hidden_states_mask=torch.ones(1, 3))


def test_wan_image_to_video_cross_attention_is_refused():
    from diffusers.models.transformers.transformer_wan import WanAttention

    attn = WanAttention(dim=128, heads=2, dim_head=64, added_kv_proj_dim=32, cross_attention_dim_head=64)
    with pytest.raises(NotImplementedError, match="image-to-video"):
        SinkSuppressProcessor(k=1)(attn, torch.randn(1, 4, 128), torch.randn(1, 513, 128))


def test_grid_positions():
    grid = Grid(3, 4, 2)
    assert grid.size == 24 and grid.position(0) == (0, 0, 0) and grid.position(9) == (1, 0, 1)
    assert grid.position(23) == (2, 3, 1)
    assert grid.frame_range(0) == (0, 8) and grid.frame_range(2) == (16, 24)
    with pytest.raises(IndexError):
        grid.position(24)
    with pytest.raises(IndexError):
        grid.frame_range(3)


def test_wan_grid_is_the_token_order_of_its_rope():
    """Grid.position(i) is the (frame, row, col) of Wan's i-th image token: its 3-D RoPE
    table, built per token from (frame, row, col), agrees at every token."""
    model = tiny.tiny_wan_transformer()
    inputs = tiny.tiny_inputs(model)
    grid = input_grid(model, inputs)
    assert grid == Grid(3, 4, 2)
    cos, _ = model.rope(inputs["hidden_states"])
    cos = cos[0, :, 0]
    assert cos.shape[0] == grid.size
    rope = model.rope
    t, h, w = rope.freqs_cos.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
    for index in range(grid.size):
        frame, row, col = grid.position(index)
        torch.testing.assert_close(cos[index], torch.cat([t[frame], h[row], w[col]]), rtol=0, atol=0)
    first = grid.frame_range(0)
    assert all(grid.position(i)[0] == 0 for i in range(*first))


def test_fixed_first_image_key_is_the_first_frames_first_token(install_reference):
    """'image:0' (the original study's index-0 key, any family) in Wan self-attention is the
    token at (frame 0, row 0, col 0): intervening on it equals the stock processor with the
    reference suppressing key 0 of every self-attention call, cross-attention (no image
    keys) left alone."""
    model = tiny.tiny_wan_transformer()
    inputs = tiny.tiny_inputs(model)
    grid = input_grid(model, inputs)
    assert grid.position(0) == (0, 0, 0)
    stock = _forward(model, inputs)

    def ranges(attn, hidden_states, encoder_hidden_states, nq, nk):
        if encoder_hidden_states is not None:
            return None
        assert nk == grid.size
        return {"mass_queries": (0, nq), "candidates": (0, nk), "apply_queries": (0, nq)}

    install_reference(model, ranges, sinks=torch.zeros(2, 1, dtype=torch.long))
    expected = _forward(model, inputs)
    recorder = Recorder()
    model.set_attn_processor(SinkSuppressProcessor(k=1, fixed="image:0", tracer=recorder))
    got = _forward(model, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - stock).abs().max() > 1e-5
    self_calls = [keys for _, _, keys, _ in recorder.calls if keys.n_text == 0]
    assert self_calls and all(keys.image == (0, grid.size) for keys in self_calls)
