"""Calls that are not intervened go through diffusers' attention dispatcher when a backend is
set with set_attention_backend, and per-call options the processor does not support are
refused by name instead of being dropped."""

from unittest import mock

import pytest
import torch

from sinkattn import SinkSuppressProcessor, tiny


def test_set_attention_backend_reaches_the_calls_that_are_not_intervened():
    from diffusers.models import attention_dispatch

    model = tiny.tiny_flux_transformer()
    inputs = tiny.tiny_inputs(model)
    processor = SinkSuppressProcessor(k=0)
    model.set_attn_processor(processor)
    with torch.no_grad():
        stock_path = model(**inputs).sample
    model.set_attention_backend("native")
    assert processor._attention_backend is not None
    calls = []
    real = attention_dispatch.dispatch_attention_fn

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    with mock.patch.object(attention_dispatch, "dispatch_attention_fn", spy), torch.no_grad():
        dispatched = model(**inputs).sample
    n_attention = len([m for m in model.modules() if hasattr(m, "processor")])
    assert len(calls) == n_attention and all(getattr(b, "value", b) == "native" for b in calls)
    torch.testing.assert_close(dispatched, stock_path, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", ["encoder_hidden_states_mask", "ip_adapter_masks", "ip_hidden_states", "other"])
def test_unsupported_per_call_options_are_refused_by_name(option):
    model = tiny.tiny_sd3_transformer()
    attn = model.transformer_blocks[0].attn
    hidden = torch.randn(1, 16, attn.query_dim)
    with pytest.raises(TypeError, match=option):
        SinkSuppressProcessor(k=1)(attn, hidden, **{option: torch.ones(1)})
