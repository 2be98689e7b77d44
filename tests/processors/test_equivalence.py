"""The processor on whole tiny models: k=0 is the stock processor, k>0 is the stock
processor with its SDPA replaced by sinkattn.reference over hand-derived token ranges.

Families: SD3, SD3.5-medium (MMDiT-X: dual attention, RMS QK-norm), SD3.5-large (RMS
QK-norm), Flux, SDXL, PixArt-Sigma (self + cross-attention with the T5 padding mask),
Qwen-Image ([text, image] joint attention, complex RoPE, the text padding mask) and Wan 2.1
text-to-video (self-attention over a 3-D token grid with RoPE, cross-attention to text).
The tiny inputs of PixArt and Qwen-Image carry a text padding mask on their last batch row."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from sinkattn import tiny
from sinkattn.processors import SinkSuppressProcessor

# On a GPU the processor runs the Triton kernels on diffusers' transposed views; without one
# it runs the reference path. The expectations are the same.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(model):
    """The model and a matching set of random inputs, on DEVICE. cuDNN's TF32 convolutions
    are switched off there: they would turn the kernels' last-bit differences from the
    reference into 1e-3 jumps at TF32 rounding boundaries in the UNet's next conv."""
    torch.backends.cudnn.allow_tf32 = False
    inputs = tiny.tiny_inputs(model)
    move = lambda x: x.to(DEVICE) if isinstance(x, torch.Tensor) else ({k: move(v) for k, v in x.items()} if isinstance(x, dict) else x)  # noqa: E731
    return model.to(DEVICE), move(inputs)


BUILDERS = {
    "sd3": tiny.tiny_sd3_transformer,
    "sd35": tiny.tiny_sd35_transformer,
    "sd35-large": tiny.tiny_sd35_large_transformer,
    "flux": tiny.tiny_flux_transformer,
    "sdxl": tiny.tiny_sdxl_unet,
    "pixart": tiny.tiny_pixart_transformer,
    "qwen": tiny.tiny_qwenimage_transformer,
    "wan": tiny.tiny_wan_transformer,
}


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def hand_ranges(family, mass_queries="image", candidates="all", apply_queries="all"):
    """(attn, hidden_states, encoder_hidden_states, nq, nk) -> op ranges, worked out by hand:
    SD3 [image, text]; Flux [text, image] (single blocks: the test's known text length);
    Qwen-Image [text, image] (every block joint); SDXL, PixArt and Wan self-attention all
    image, cross-attention image queries and text keys."""

    def ranges(attn, hidden_states, encoder_hidden_states, nq, nk):
        if family == "qwen":
            n_txt = encoder_hidden_states.shape[1]
            q = {"image": (n_txt, nq), "text": (0, n_txt), "all": (0, nq)}
            k = {"image": (n_txt, nk), "text": (0, n_txt), "all": (0, nk)}
        elif family in ("sd3", "sd35", "sd35-large"):
            n_img = hidden_states.shape[1]
            q = {"image": (0, n_img), "text": (n_img, nq), "all": (0, nq)}
            k = {"image": (0, n_img), "text": (n_img, nk), "all": (0, nk)}
        elif family == "flux":
            n_txt = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else tiny.FLUX_TEXT_TOKENS
            q = {"image": (n_txt, nq), "text": (0, n_txt), "all": (0, nq)}
            k = {"image": (n_txt, nk), "text": (0, n_txt), "all": (0, nk)}
        else:
            cross = encoder_hidden_states is not None
            q = {"image": (0, nq), "text": (0, 0), "all": (0, nq)}
            k = {"image": (0, 0) if cross else (0, nk), "text": (0, nk) if cross else (0, 0), "all": (0, nk)}
        chosen = {"mass_queries": q[mass_queries], "candidates": k[candidates], "apply_queries": q[apply_queries]}
        if any(b <= a for a, b in chosen.values()):
            return None  # empty range in this layer: unintervened
        return chosen

    return ranges


@pytest.mark.parametrize("family", [
    pytest.param("sd3", id="sd3"),
    pytest.param("sd35", id="sd35-dual-qknorm"),
    pytest.param("flux", id="flux-double-single-rope"),
    pytest.param("sdxl", id="sdxl-unet"),
    pytest.param("sd35-large", id="sd35-large-qknorm"),
    pytest.param("pixart", id="pixart-sigma-masked-cross"),
    pytest.param("qwen", id="qwen-image-masked-rope"),
    pytest.param("wan", id="wan-t2v-3d-rope"),
])
def test_k0_equals_stock(family):
    model, inputs = on_device(BUILDERS[family]())
    stock = forward(model, inputs)
    model.set_attn_processor(SinkSuppressProcessor(k=0))
    ours = forward(model, inputs)
    torch.testing.assert_close(ours, stock, rtol=0, atol=0)


CASES = [
    pytest.param("sd3", {}, id="sd3-default"),
    pytest.param("sd3", dict(k=3, path="value", eta=0.25), id="sd3-value-k3"),
    pytest.param("sd3", dict(k=2, select="shared", control="bottom", mass_queries="all", apply_queries="image"),
                 id="sd3-shared-bottom"),
    pytest.param("sd3", dict(k=2, control="random", seed=11, candidates="text"), id="sd3-random-text"),
    pytest.param("sd3", dict(k=2, path="value", value_target="noise", value_noise_std=0.5, seed=3), id="sd3-value-noise"),
    pytest.param("sd35", {}, id="sd35-default"),
    pytest.param("sd35", dict(candidates="text", mass_queries="text", eta=0.5), id="sd35-text-attn2-unintervened"),
    pytest.param("flux", {}, id="flux-default"),
    pytest.param("flux", dict(k=2, candidates="image", apply_queries="text"), id="flux-image-cands-text-rows"),
    pytest.param("flux", dict(k=2, candidates="text", mass_queries="text", path="value"), id="flux-text-value"),
    pytest.param("flux", dict(k=1, select="shared", path="both", eta=0.3, eta_mode="prob", value_target="noise", seed=4),
                 id="flux-both-prob-noise-shared"),
    pytest.param("sdxl", {}, id="sdxl-default"),
    pytest.param("sdxl", dict(k=2, candidates="text"), id="sdxl-text-cands-cross-only"),
    pytest.param("sdxl", dict(k=1, candidates="image", select="shared", path="value", eta=0.0), id="sdxl-image-self-only"),
    pytest.param("sd35-large", {}, id="sd35-large-default"),
    pytest.param("sd35-large", dict(k=2, candidates="text", path="value", eta=0.25), id="sd35-large-text-value"),
    pytest.param("pixart", {}, id="pixart-default"),
    pytest.param("pixart", dict(k=2, candidates="text"), id="pixart-text-cands-masked-cross-only"),
    pytest.param("pixart", dict(k=1, candidates="image", select="shared", path="value"), id="pixart-image-self-only"),
    pytest.param("qwen", {}, id="qwen-default"),
    pytest.param("qwen", dict(k=2, candidates="text", mass_queries="all"), id="qwen-text-cands-masked"),
    pytest.param("qwen", dict(k=2, control="bottom", candidates="text"), id="qwen-bottom-text-masked-never-picked"),
    pytest.param("qwen", dict(k=2, candidates="image", apply_queries="text", path="value", eta=0.5),
                 id="qwen-image-cands-text-rows"),
    pytest.param("wan", {}, id="wan-default"),
    pytest.param("wan", dict(k=2, candidates="text"), id="wan-text-cands-cross-only"),
    pytest.param("wan", dict(k=3, candidates="image", select="shared", control="random", seed=5),
                 id="wan-random-image-self-only"),
]


# Without a GPU the processor's attention runs on the reference unless TRITON_INTERPRET=1,
# which routes it through the Triton kernels under the interpreter: both are checked.
ROUTES = ["cuda-kernels"] if DEVICE == "cuda" else ["cpu-reference", "triton-interpreter"]


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    from sinkattn import kernels_available, settings

    settings.current()  # the environment is read once; the interpreter is then a settings field
    if request.param == "triton-interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        with settings.override(interpret=True):
            assert kernels_available(torch.device(DEVICE))
            yield request.param
        return
    assert kernels_available(torch.device(DEVICE)) == (request.param != "cpu-reference")
    yield request.param


@pytest.mark.parametrize("family, kwargs", CASES)
def test_matches_reference(family, kwargs, install_reference, route):
    model, inputs = on_device(BUILDERS[family]())
    kwargs = dict(kwargs)
    names = {n: kwargs.get(n, d) for n, d in (("mass_queries", "image"), ("candidates", "all"), ("apply_queries", "all"))}
    op = {n: kwargs[n] for n in ("path", "select", "control", "eta", "eta_mode", "value_target", "value_noise_std")
          if n in kwargs}
    k = kwargs.get("k", 1)
    stock = forward(model, inputs)

    install_reference(model, hand_ranges(family, **names), seed=kwargs.get("seed"), top_k=k, **op)
    expected = forward(model, inputs)
    model.set_attn_processor(SinkSuppressProcessor(**kwargs))  # one instance, every layer
    got = forward(model, inputs)

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (expected - stock).abs().max() > 1e-6, "the intervention should change the output"


def test_flux_single_blocks_alone_need_text_len():
    model = tiny.tiny_flux_transformer()
    inputs = tiny.tiny_inputs(model)
    procs = {name: (SinkSuppressProcessor(k=1) if name.startswith("single") else proc)
             for name, proc in model.attn_processors.items()}
    model.set_attn_processor(dict(procs))  # diffusers pops the dict it is given
    with pytest.raises(ValueError, match="text_len"):
        forward(model, inputs)
    with_len = {name: (SinkSuppressProcessor(k=1, text_len=tiny.FLUX_TEXT_TOKENS) if name.startswith("single") else p)
                for name, p in procs.items()}
    model.set_attn_processor(with_len)
    forward(model, inputs)


def test_sdxl_attention_mask_equals_truncated_keys():
    """A key-padding mask of the last text tokens: masked keys get no probability, so no mass
    and no selection; the result equals running on the unpadded text alone."""
    model = tiny.tiny_sdxl_unet()
    inputs = tiny.tiny_inputs(model)
    keep = tiny.SDXL_TEXT_TOKENS - 3
    mask = torch.zeros(2, tiny.SDXL_TEXT_TOKENS, dtype=torch.bool)
    mask[:, :keep] = True
    model.set_attn_processor(SinkSuppressProcessor(k=2, candidates="all", control="sink"))
    masked = forward(model, dict(inputs, encoder_attention_mask=mask))
    truncated = forward(model, dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, :keep]))
    torch.testing.assert_close(masked, truncated, rtol=1e-5, atol=1e-5)
    unmasked = forward(model, inputs)
    assert (unmasked - truncated).abs().max() > 1e-4


def _spatial_attention():
    return Attention(query_dim=32, heads=2, dim_head=64, bias=True, norm_num_groups=8, spatial_norm_dim=8,
                     residual_connection=True, rescale_output_factor=2.0, processor=AttnProcessor2_0()).eval()


def test_group_norm_spatial_norm_residual_rescale():
    attn = _spatial_attention()
    x, temb = torch.randn(2, 32, 4, 5), torch.randn(2, 8, 4, 5)
    with torch.no_grad():
        stock = attn(x, temb=temb)
        attn.set_processor(SinkSuppressProcessor(k=0))
        plain = attn(x, temb=temb)
        attn.set_processor(SinkSuppressProcessor(k=2, path="value"))
        ours = attn(x, temb=temb)
    torch.testing.assert_close(plain, stock, rtol=0, atol=0)

    # Hand-made: the stock processor with the reference in place of SDPA, all tokens image.
    from unittest import mock

    from sinkattn import reference

    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, **_):
        return reference.sink_attention(q, k, v, top_k=2, path="value").out

    with torch.no_grad(), mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", sdpa):
        expected = AttnProcessor2_0()(attn, x, temb=temb)
    assert torch.nn.functional.scaled_dot_product_attention is real
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert (ours - stock).abs().max() > 1e-4


def test_vae_mid_block_attention():
    """AutoencoderKL's mid-block attention (group norm, residual, 4-D input) through the
    processor: k=0 is stock."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        stock = vae(x, sample_posterior=False).sample
        vae.set_attn_processor(SinkSuppressProcessor(k=0))
        plain = vae(x, sample_posterior=False).sample
        vae.set_attn_processor(SinkSuppressProcessor(k=1))
        ours = vae(x, sample_posterior=False).sample
    torch.testing.assert_close(plain, stock, rtol=0, atol=0)
    assert (ours - stock).abs().max() > 1e-5
