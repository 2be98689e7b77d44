"""Shared fixtures: a fresh seed per test (printed on failure), the CPU-fallback warning
silenced, and the stock-vs-reference processor used by the equivalence tests."""

from __future__ import annotations

import inspect
import random
import warnings
from unittest import mock

import pytest
import torch

from sinkattn import reference


@pytest.fixture(autouse=True)
def seed(request):
    value = random.SystemRandom().randrange(2**31)
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="sinkattn: no Triton kernels", category=RuntimeWarning)
        yield value


class ReferenceProcessor:
    """The stock diffusers processor with its SDPA replaced by ``sinkattn.reference`` over
    index ranges worked out by hand for each family, independent of sinkattn.processors.

    ``ranges(attn, hidden_states, encoder_hidden_states, nq, nk)`` -> dict of mass_queries,
    candidates, apply_queries as (start, stop) pairs, or None to run plain attention.
    The stock processor's attention mask (SDXL/PixArt's additive text mask, Qwen-Image's
    boolean joint mask) goes to the reference as ``attn_mask``. Stock processors that call
    through diffusers' dispatcher (Qwen-Image, Wan) reach SDPA through its native backend.
    """

    def __init__(self, stock, ranges, seed=None, **op):
        self.stock, self.ranges, self.op = stock, ranges, op
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    # diffusers passes a processor only the keywords its signature names: the per-family
    # options are named here and handed on under the stock processor's own names (Wan calls
    # its rotary table rotary_emb and passes it fifth; Qwen-Image takes its text mask fourth).
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 encoder_hidden_states_mask=None, **kw):
        real = torch.nn.functional.scaled_dot_product_attention

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
            q, k, v = query, key, value
            assert not is_causal
            ranges = self.ranges(attn, hidden_states, encoder_hidden_states, q.shape[2], k.shape[2])
            if ranges is None:
                return real(q, k, v, attn_mask=attn_mask)
            return reference.sink_attention(q, k, v, generator=self.generator, scale=scale, attn_mask=attn_mask,
                                            **ranges, **self.op).out

        params = inspect.signature(self.stock).parameters
        extra = dict(kw)
        if image_rotary_emb is not None:
            extra["rotary_emb" if "rotary_emb" in params else "image_rotary_emb"] = image_rotary_emb
        if encoder_hidden_states_mask is not None:
            extra["encoder_hidden_states_mask"] = encoder_hidden_states_mask
        with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", sdpa):
            return self.stock(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **extra)


@pytest.fixture
def install_reference():
    """install(model, ranges, **op): wrap every stock processor of ``model`` in a
    ReferenceProcessor (one per layer, one shared generator when ``seed`` is given)."""

    def install(model, ranges, seed=None, **op):
        shared = ReferenceProcessor(None, ranges, seed=seed, **op)
        procs = {}
        for name, stock in model.attn_processors.items():
            proc = ReferenceProcessor(stock, ranges, **op)
            proc.generator = shared.generator
            procs[name] = proc
        model.set_attn_processor(procs)

    return install
