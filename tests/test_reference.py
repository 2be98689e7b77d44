"""The reference against a brute-force formulation written differently (Python loops and
scalar math over tiny sizes), and the properties SPEC section 2 promises."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sinkattn.reference import sink_attention


def brute_force(q, k, v, top_k, path, select, control, eta, mass_rows, cand, apply_rows, scale, random_keys=None,
                eta_mode="logit", value_target="zero"):
    """SPEC section 2 with loops: probabilities row by row, mass as a Python sum, selection
    by sorting (mass, index) pairs, intervention as reweighted sums."""
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    probs = [[[None] * Nq for _ in range(H)] for _ in range(B)]
    for b in range(B):
        for h in range(H):
            for i in range(Nq):
                s = [scale * sum(q[b, h, i, d].item() * k[b, h, j, d].item() for d in range(D)) for j in range(Nk)]
                top = max(s)
                e = [math.exp(x - top) for x in s]
                z = sum(e)
                probs[b][h][i] = [x / z for x in e]
    mass = [[[sum(probs[b][h][i][j] for i in range(*mass_rows)) / (mass_rows[1] - mass_rows[0]) for j in range(Nk)]
             for h in range(H)] for b in range(B)]

    def pick(values):
        keys = list(range(*cand))
        if control == "sink":
            keys.sort(key=lambda j: (-values[j], j))
        elif control == "bottom":
            keys.sort(key=lambda j: (values[j], j))
        return keys[:top_k]

    chosen = {}
    for b in range(B):
        if select == "shared":
            head_mean = [sum(mass[b][h][j] for h in range(H)) / H for j in range(Nk)]
            keys = random_keys[b] if control == "random" else pick(head_mean)
            for h in range(H):
                chosen[b, h] = list(keys)
        else:
            for h in range(H):
                chosen[b, h] = random_keys[b][h] if control == "random" else pick(mass[b][h])
    out = torch.zeros(B, H, Nq, Dv, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(Nq):
                p = probs[b][h][i]
                selected = set(chosen[b, h]) if path != "none" and apply_rows[0] <= i < apply_rows[1] else set()
                weights, vals = list(p), [v[b, h, j] for j in range(Nk)]
                if path in ("score", "both") and selected:
                    if eta_mode == "logit":
                        z = sum(p[j] * (eta if j in selected else 1.0) for j in range(Nk))
                        weights = [p[j] * (eta if j in selected else 1.0) / z for j in range(Nk)]
                    else:
                        p_sel = sum(p[j] for j in selected)
                        keep = (1 - eta * p_sel) / (1 - p_sel)
                        weights = [eta * p[j] if j in selected else keep * p[j] for j in range(Nk)]
                if path in ("value", "both") and selected:
                    keys = chosen[b, h]
                    if isinstance(value_target, torch.Tensor):  # the first listed vector of each key
                        targets = {j: value_target[b, h, keys.index(j)] for j in selected}
                    else:
                        targets = {j: sum(vals) / Nk if value_target == "mean" else 0.0 * vals[0] for j in selected}
                    vals = [eta * vals[j] + (1 - eta) * targets[j] if j in selected else vals[j] for j in range(Nk)]
                out[b, h, i] = sum(wt * val for wt, val in zip(weights, vals))
    return out, torch.tensor(mass, dtype=torch.float64), chosen


@st.composite
def calls(draw):
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Nq, Nk, D, Dv = draw(st.integers(1, 9)), draw(st.integers(2, 9)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    path = draw(st.sampled_from(["score", "value", "both", "none"]))
    eta_mode = draw(st.sampled_from(["logit", "prob"]))
    value_target = draw(st.sampled_from(["zero", "mean", "vectors"]))
    select = draw(st.sampled_from(["head", "shared"]))
    control = draw(st.sampled_from(["sink", "bottom", "random"]))
    eta = draw(st.sampled_from([0.0, 0.3, 1.0]))

    def rng(n):
        a = draw(st.integers(0, n - 1))
        return a, draw(st.integers(a + 1, n))

    mass_rows, cand, apply_rows = rng(Nq), rng(Nk), rng(Nq)
    top_k = draw(st.integers(0, min(cand[1] - cand[0], Nk - 1)))
    scale = draw(st.sampled_from([None, 0.7]))
    seed = draw(st.integers(0, 2**16))
    return dict(shape=(B, H, Nq, Nk, D, Dv), top_k=top_k, path=path, select=select, control=control,
                eta=eta, mass_rows=mass_rows, cand=cand, apply_rows=apply_rows, scale=scale, seed=seed,
                eta_mode=eta_mode, value_target=value_target)


@settings(max_examples=120, deadline=None)
@given(calls())
def test_reference_matches_brute_force(c):
    B, H, Nq, Nk, D, Dv = c["shape"]
    gen = torch.Generator().manual_seed(c["seed"])
    q = torch.randn(B, H, Nq, D, generator=gen, dtype=torch.float64) * 2
    k = torch.randn(B, H, Nk, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, H, Nk, Dv, generator=gen, dtype=torch.float64)
    if c["value_target"] == "vectors":
        c["value_target"] = torch.randn(B, H, c["top_k"], Dv, generator=gen, dtype=torch.float64)
    res = sink_attention(q, k, v, top_k=c["top_k"], path=c["path"], select=c["select"], control=c["control"],
                         eta=c["eta"], mass_queries=c["mass_rows"], candidates=c["cand"],
                         apply_queries=c["apply_rows"], scale=c["scale"], generator=c["seed"], return_mass=True,
                         eta_mode=c["eta_mode"], value_target=c["value_target"])
    random_keys = None
    if c["control"] == "random":
        random_keys = res.sinks.tolist()  # the brute force checks the rest given the draw
        cand = set(range(*c["cand"]))
        for row in res.sinks.reshape(-1, res.sinks.shape[-1]).tolist() if c["top_k"] else []:
            assert len(set(row)) == len(row) and set(row) <= cand
    scale = D**-0.5 if c["scale"] is None else c["scale"]
    out, mass, chosen = brute_force(q, k, v, c["top_k"], c["path"], c["select"], c["control"], c["eta"],
                                    c["mass_rows"], c["cand"], c["apply_rows"], scale, random_keys,
                                    c["eta_mode"], c["value_target"])
    torch.testing.assert_close(res.mass, mass, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.out, out, rtol=1e-9, atol=1e-12)
    for (b, h), keys in chosen.items():
        got = res.sinks[b, h] if res.sinks.dim() == 3 else res.sinks[b]
        assert got.tolist() == keys


def _qkv(B=2, H=3, Nq=40, Nk=33, D=16, Dv=12, dtype=torch.float64):
    return (torch.randn(B, H, Nq, D, dtype=dtype), torch.randn(B, H, Nk, D, dtype=dtype),
            torch.randn(B, H, Nk, Dv, dtype=dtype))


def test_mass_sums_to_one_per_head():
    q, k, v = _qkv()
    res = sink_attention(q, k, v, top_k=0, path="none", mass_queries=(3, 29))
    torch.testing.assert_close(res.mass.sum(-1), torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("path", ["score", "value"])
def test_eta_one_is_plain_attention(path):
    q, k, v = _qkv()
    plain = torch.softmax(q @ k.transpose(-1, -2) * 16**-0.5, -1) @ v
    res = sink_attention(q, k, v, top_k=5, path=path, eta=1.0)
    torch.testing.assert_close(res.out, plain)


def test_score_path_gives_selected_keys_zero_probability():
    q, k, v = _qkv(B=1, H=2)
    res = sink_attention(q, k, v, top_k=3, path="score")
    for h in range(2):
        keep = [j for j in range(33) if j not in res.sinks[0, h].tolist()]
        dropped = torch.softmax(q[0, h] @ k[0, h, keep].T * 16**-0.5, -1) @ v[0, h, keep]
        torch.testing.assert_close(res.out[0, h], dropped)


def test_value_path_eta_zero_equals_zeroed_values():
    q, k, v = _qkv()
    res = sink_attention(q, k, v, top_k=2, path="value", select="shared")
    v0 = v.clone()
    for b in range(2):
        v0[b, :, res.sinks[b]] = 0
    torch.testing.assert_close(res.out, torch.softmax(q @ k.transpose(-1, -2) * 16**-0.5, -1) @ v0)


def test_random_control_reproducible_and_fresh():
    q, k, v = _qkv(Nk=200)
    a = sink_attention(q, k, v, top_k=4, control="random", generator=7).sinks
    b = sink_attention(q, k, v, top_k=4, control="random", generator=torch.Generator().manual_seed(7)).sinks
    c = sink_attention(q, k, v, top_k=4, control="random", generator=8).sinks
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(7)
    first = sink_attention(q, k, v, top_k=4, control="random", generator=gen).sinks
    second = sink_attention(q, k, v, top_k=4, control="random", generator=gen).sinks
    assert torch.equal(first, a) and not torch.equal(first, second)  # a fresh draw per call


def test_random_control_is_uniform_over_candidates():
    q, k, v = _qkv(B=1, H=1, Nk=12)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(12)
    for _ in range(600):
        s = sink_attention(q, k, v, top_k=2, control="random", candidates=(4, 10), generator=gen).sinks
        counts[s.flatten()] += 1
    assert counts[:4].sum() == 0 and counts[10:].sum() == 0
    assert (counts[4:10] - 200).abs().max() < 60  # 1200 draws over 6 keys: 200 +- ~13 sd


def test_planted_sinks_are_found_and_ties_go_low(plant_sink):
    q, k, v = _qkv(B=1, H=2, Nk=50)
    plant_sink(q, k, 17, heads=[0])
    plant_sink(q, k, 30, heads=[1])
    res = sink_attention(q, k, v, top_k=1)
    assert res.sinks[0, :, 0].tolist() == [17, 30]
    assert sink_attention(q, k, v, top_k=1, select="shared").sinks.shape == (1, 1)
    # identical keys have identical mass: the lower index wins
    k2 = k.clone()
    k2[:, :, 40] = k2[:, :, 17]
    assert sink_attention(q, k2, v, top_k=1).sinks[0, 0, 0].item() == 17
    flat = torch.zeros(1, 1, 5, 4, dtype=torch.float64)
    vv = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    assert sink_attention(flat[:, :, :3], flat, vv, top_k=2).sinks.tolist() == [[[0, 1]]]
    assert sink_attention(flat[:, :, :3], flat, vv, top_k=2, control="bottom").sinks.tolist() == [[[0, 1]]]


def test_apply_queries_leaves_other_rows_plain():
    q, k, v = _qkv()
    plain = sink_attention(q, k, v, top_k=0).out
    res = sink_attention(q, k, v, top_k=3, apply_queries=(10, 20))
    torch.testing.assert_close(res.out[:, :, :10], plain[:, :, :10])
    torch.testing.assert_close(res.out[:, :, 20:], plain[:, :, 20:])
    assert (res.out[:, :, 10:20] - plain[:, :, 10:20]).abs().max() > 1e-3


def test_chunking_does_not_change_results():
    q, k, v = _qkv(Nq=70)
    a = sink_attention(q, k, v, top_k=2, chunk_size=1024)
    b = sink_attention(q, k, v, top_k=2, chunk_size=7)
    torch.testing.assert_close(a.out, b.out)
    torch.testing.assert_close(a.mass, b.mass)


def test_plain_call_has_no_mass_and_empty_sinks():
    q, k, v = _qkv()
    res = sink_attention(q, k, v, top_k=0)
    assert res.mass is None and res.sinks.shape == (2, 3, 0)
    assert sink_attention(q, k, v, top_k=0, path="none").mass.shape == (2, 3, 33)


def test_half_inputs_give_input_dtype_out_and_float32_mass():
    q, k, v = _qkv(dtype=torch.bfloat16)
    res = sink_attention(q, k, v)
    assert res.out.dtype == torch.bfloat16 and res.mass.dtype == torch.float32 and res.sinks.dtype == torch.int64


@pytest.mark.parametrize("eta_mode,kept", [("prob", 0.025), ("logit", 0.025 / 0.925)])
def test_eta_modes_on_a_known_row(eta_mode, kept):
    """One row, the sink at p = 0.1, eta = 0.25: the original study's prob_scale keeps
    eta * p = 0.025 (the rest rescaled to sum to 0.975); the logit rule renormalises the
    row, leaving 0.025 / (1 - 0.075) ~ 0.027."""
    import math

    logits = torch.tensor([math.log(0.1)] + [math.log(0.9 / 9)] * 9, dtype=torch.float64)
    q = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    k = logits.view(1, 1, 10, 1)
    v = torch.eye(10, dtype=torch.float64).view(1, 1, 10, 10)  # out = the row's probabilities
    res = sink_attention(q, k, v, top_k=1, eta=0.25, scale=1.0, eta_mode=eta_mode)
    assert res.sinks.item() == 0
    torch.testing.assert_close(res.out[0, 0, 0, 0].item(), kept)
    torch.testing.assert_close(res.out.sum().item(), 1.0)


def test_high_outgoing_query_shift_is_a_no_op():
    """The original's anti-sink control (ablation_counterfactual_v3.py) adds -65000 to every
    logit of the picked query rows; softmax is shift-invariant, so the output is plain
    attention up to rounding. The reference applies the shift literally."""
    q, k, v = _qkv()
    plain = sink_attention(q, k, v, top_k=0)
    res = sink_attention(q, k, v, top_k=4, control="high_outgoing_query", select="shared", mass_queries=(0, 30))
    assert res.sinks.shape == (2, 4) and (res.sinks < 30).all()
    torch.testing.assert_close(res.out, plain.out, rtol=1e-9, atol=1e-9)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 16**-0.5, -1)
    peak = probs.amax(-1).mean(1)[:, :30]
    assert torch.equal(res.sinks, peak.topk(4, dim=-1).indices)


def test_high_outgoing_query_ablate_acts_on_the_picked_rows_only():
    q, k, v = _qkv()
    plain = sink_attention(q, k, v, top_k=0)
    res = sink_attention(q, k, v, top_k=3, control="high_outgoing_query_ablate", eta=0.25)
    picked = torch.zeros(2, 3, 40, dtype=torch.bool).scatter_(-1, res.sinks, True)
    torch.testing.assert_close(res.out[picked], 0.25 * plain.out[picked])
    torch.testing.assert_close(res.out[~picked], plain.out[~picked])


@pytest.mark.parametrize("control", ["sink", "bottom", "random"])
@pytest.mark.parametrize("form", ["bool", "additive"])
def test_key_padding_mask_equals_truncated_keys(control, form):
    """Masked keys get no probability and no mass, and are never selected (not even by the
    bottom control, where their zero mass would rank first): the call equals one on the
    kept keys alone."""
    q, k, v = _qkv()
    keep = torch.ones(2, 33, dtype=torch.bool)
    keep[:, 25:] = False
    mask = keep[:, None, None, :] if form == "bool" else torch.zeros(2, 1, 1, 33, dtype=torch.float64).masked_fill(
        ~keep[:, None, None, :], float("-inf"))
    res = sink_attention(q, k, v, top_k=2, control=control, generator=0, attn_mask=mask)
    assert (res.sinks < 25).all()
    short = sink_attention(q, k[:, :, :25], v[:, :, :25], sinks=res.sinks)
    torch.testing.assert_close(res.out, short.out)
    torch.testing.assert_close(res.mass[..., :25], short.mass)
    assert (res.mass[..., 25:] == 0).all()


def test_value_noise_is_drawn_from_the_generator_after_the_selection():
    """value_target="noise": std * N(0, 1) per (b, h, selected key, channel), drawn from the
    call's generator after the random control's draw: the same as passing that draw."""
    q, k, v = _qkv(dtype=torch.float32)
    kw = dict(top_k=2, path="both", eta=0.25, control="random", select="shared")
    res = sink_attention(q, k, v, value_target="noise", value_noise_std=0.5, generator=11, **kw)
    gen = torch.Generator().manual_seed(11)
    torch.rand((2, 33), generator=gen)  # the shared random control's draw, (B, candidates)
    drawn = 0.5 * torch.randn((2, 3, 2, 12), generator=gen)
    given = sink_attention(q, k, v, value_target=drawn, generator=11, **kw)
    assert torch.equal(res.sinks, given.sinks) and torch.equal(res.out, given.out)
    assert not torch.equal(res.out, sink_attention(q, k, v, generator=11, **kw).out)


def test_a_key_listed_twice_takes_its_first_vector():
    q, k, v = _qkv()
    vectors = torch.randn(2, 3, 2, 12, dtype=torch.float64)
    twice = sink_attention(q, k, v, sinks=torch.full((2, 3, 2), 4), path="value", value_target=vectors)
    once = sink_attention(q, k, v, sinks=torch.full((2, 3, 1), 4), path="value", value_target=vectors[:, :, :1])
    torch.testing.assert_close(twice.out, once.out, rtol=0, atol=0)


@pytest.mark.parametrize("eta_mode", ["logit", "prob"])
def test_a_row_with_every_unmasked_key_removed_keeps_its_plain_attention(eta_mode):
    """A key-padding mask keeping one key (PixArt's unconditional row under an empty negative
    prompt: T5 keeps only EOS) and k=1 on the score path: nothing is left to attend to, so
    that batch row keeps its plain attention (it was NaN); the other row is intervened."""
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 1, 33, dtype=torch.bool)
    mask[1, ..., 1:] = False
    res = sink_attention(q, k, v, top_k=1, attn_mask=mask, eta_mode=eta_mode)
    plain = sink_attention(q, k, v, top_k=0, attn_mask=mask)
    assert res.out.isfinite().all()
    torch.testing.assert_close(res.out[1], plain.out[1], rtol=0, atol=0)
    assert not torch.allclose(res.out[0], plain.out[0])
    assert (res.sinks[1] == 0).all()  # the one kept key is still the one reported
