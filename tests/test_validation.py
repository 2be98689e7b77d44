"""Every bad input to the public op raises a ValueError or TypeError naming the argument."""

import warnings

import pytest
import torch

from sinkattn import sink_attention


def _qkv(dtype=torch.float32, Nq=8, Nk=6):
    return torch.randn(1, 2, Nq, 4, dtype=dtype), torch.randn(1, 2, Nk, 4, dtype=dtype), torch.randn(1, 2, Nk, 3, dtype=dtype)


def _bad_strides():
    q, k, v = _qkv()
    return dict(q=q.transpose(-1, -2).contiguous().transpose(-1, -2))


def _call(**override):
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v)
    args.update(override)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return sink_attention(q, k, v, **args)


CASES = [
    pytest.param(dict(q=[1, 2]), TypeError, "q must be a torch.Tensor", id="q-not-tensor"),
    pytest.param(dict(k=torch.randn(2, 6, 4)), ValueError, "k must have 4 dims", id="k-3d"),
    pytest.param(dict(v=torch.randint(0, 3, (1, 2, 6, 3))), TypeError, "v has dtype", id="v-int"),
    pytest.param(dict(k=torch.randn(1, 2, 6, 4, dtype=torch.float16)), TypeError, "share one dtype", id="mixed-dtype"),
    pytest.param(dict(k=torch.randn(1, 3, 6, 4)), ValueError, "k shape", id="k-heads"),
    pytest.param(dict(v=torch.randn(1, 2, 5, 3)), ValueError, "v shape", id="v-length"),
    pytest.param(dict(k=torch.randn(1, 2, 6, 5)), ValueError, "head dim", id="k-dim"),
    pytest.param(_bad_strides(), ValueError, "q must have stride", id="q-stride"),
    pytest.param(dict(q=torch.randn(1, 2, 0, 4)), ValueError, "q has an empty", id="q-empty"),
    pytest.param(dict(path="logit"), ValueError, "path must be one of", id="path"),
    pytest.param(dict(select="layer"), ValueError, "select must be one of", id="select"),
    pytest.param(dict(control="top"), ValueError, "control must be one of", id="control"),
    pytest.param(dict(eta=1.5), ValueError, "eta must be in", id="eta-high"),
    pytest.param(dict(eta=-0.1), ValueError, "eta must be in", id="eta-low"),
    pytest.param(dict(eta=float("nan")), ValueError, "eta must be in", id="eta-nan"),
    pytest.param(dict(eta="0"), TypeError, "eta must be a number", id="eta-str"),
    pytest.param(dict(top_k=7), ValueError, "top_k=7 is larger than the number of candidates", id="topk-over"),
    pytest.param(dict(top_k=3, candidates=(0, 2)), ValueError, "candidates", id="topk-over-candidates"),
    pytest.param(dict(top_k=6), ValueError, "remove every key", id="topk-all-score"),
    pytest.param(dict(top_k=-1), ValueError, "top_k must be >= 0", id="topk-negative"),
    pytest.param(dict(top_k=1.0), TypeError, "top_k must be an int", id="topk-float"),
    pytest.param(dict(mass_queries=(0, 9)), ValueError, "mass_queries", id="mass-range-out"),
    pytest.param(dict(apply_queries=(4, 4)), ValueError, "apply_queries", id="apply-empty"),
    pytest.param(dict(candidates=(-1, 3)), ValueError, "candidates", id="candidates-negative"),
    pytest.param(dict(candidates=slice(0, 4, 2)), ValueError, "candidates: a slice must have step 1", id="slice-step"),
    pytest.param(dict(candidates="image"), TypeError, "candidates must be None", id="candidates-str"),
    pytest.param(dict(sinks=torch.tensor([[[0], [9]]])), ValueError, "sinks holds indices outside", id="sinks-range"),
    pytest.param(dict(sinks=torch.zeros(1, 3, 1, dtype=torch.long)), ValueError, "sinks must have shape", id="sinks-shape"),
    pytest.param(dict(sinks=torch.zeros(1, 2, 1)), TypeError, "sinks must be an integer", id="sinks-float"),
    pytest.param(dict(sinks=torch.zeros(1, 2, 1, dtype=torch.long), top_k=2), ValueError, "does not match sinks", id="sinks-topk"),
    pytest.param(dict(sinks=torch.tensor([[[0], [4]]]), candidates=(0, 3)), ValueError,
                 "sinks holds keys outside candidates", id="sinks-outside-candidates"),
    pytest.param(dict(sinks=torch.arange(6).expand(1, 2, 6)), ValueError, "remove every key", id="sinks-all-score"),
    pytest.param(dict(attn_mask=torch.ones(1, 2, 8, 5, dtype=torch.bool)), ValueError, "attn_mask shape", id="mask-shape"),
    pytest.param(dict(attn_mask=torch.ones(1, 6, dtype=torch.int64)), TypeError, "attn_mask must be boolean", id="mask-int"),
    pytest.param(dict(attn_mask=[True]), TypeError, "attn_mask must be a Tensor", id="mask-list"),
    pytest.param(dict(generator="seed"), TypeError, "generator must be", id="generator"),
    pytest.param(dict(scale=float("inf")), ValueError, "scale must be", id="scale-inf"),
    pytest.param(dict(return_mass="yes"), TypeError, "return_mass", id="return-mass"),
    pytest.param(dict(value_target="lerp"), ValueError, "value_target must be one of", id="value-target-name"),
    pytest.param(dict(path="value", value_target=torch.zeros(1, 2, 2, 3)), ValueError,
                 "value_target vectors must have shape (B, H, top_k, Dv) = (1, 2, 1, 3)", id="value-vectors-shape"),
    pytest.param(dict(path="value", value_target=torch.zeros(1, 2, 1, 3, dtype=torch.long)), TypeError,
                 "value_target vectors must be floating point", id="value-vectors-int"),
    pytest.param(dict(path="value", value_target="noise", value_noise_std=-1.0), ValueError, "value_noise_std",
                 id="noise-std-negative"),
    pytest.param(dict(path="value", value_target="noise", value_noise_std=float("nan")), ValueError,
                 "value_noise_std", id="noise-std-nan"),
    pytest.param(dict(path="value", value_target="noise", control="high_outgoing_query_ablate"), ValueError,
                 "needs a key control", id="noise-query-control"),
]


@pytest.mark.parametrize("override,error,message", CASES)
def test_bad_input_names_the_argument(override, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _call(**override)


def test_devices_must_match():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="one device"):
        sink_attention(q, k.to("meta"), v)


def test_score_path_with_positive_eta_may_touch_every_key():
    q, k, v = _qkv()
    res = _call(q=q, k=k, v=v, top_k=6, eta=0.5, path="score")
    plain = _call(q=q, k=k, v=v, top_k=0)
    torch.testing.assert_close(res.out, plain.out)  # scaling every key by eta renormalises away


def test_cpu_fallback_warns_once(recwarn):
    import sinkattn.ops as ops

    ops._warned_reference.clear()
    q, k, v = _qkv()
    sink_attention(q, k, v)
    sink_attention(q, k, v)
    if ops.kernels_available(q.device):
        assert not [w for w in recwarn if "reference" in str(w.message)]
    else:
        assert len([w for w in recwarn if "reference" in str(w.message)]) == 1


@pytest.mark.parametrize("op", ["public", "reference"])
def test_explicit_sinks_with_repeats_are_not_every_key(op):
    """Nk explicit indices with a repeat leave a key on the score path: not refused (issue 13)."""
    from sinkattn.reference import sink_attention as reference

    q, k, v = _qkv()
    sinks = torch.tensor([[[0, 1, 2, 3, 4, 4], [5, 5, 5, 5, 5, 5]]])
    call = _call if op == "public" else (lambda **kw: reference(q, k, v, **kw))
    res = call(q=q, k=k, v=v, sinks=sinks, path="score") if op == "public" else call(sinks=sinks, path="score")
    assert res.out.isfinite().all()
