"""The Triton kernels (through the public op) against the float64 reference.

One module for both machines: on a CUDA device it runs the compiled kernels, including
the real SD3 / Flux / SDXL shapes; without one it runs the same kernels under the Triton
interpreter (TRITON_INTERPRET=1) on small shapes. Bounds are SPEC section 4: the output
error within 2x PyTorch's own error for the same computation in the input dtype, plus
1e-5; mass within 1e-3 (half inputs) or 1e-5 (float32); indices identical where the sinks
are planted clearly apart.
"""

import contextlib

import pytest
import torch

from sinkattn import settings

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
GPU_ONLY = pytest.mark.skipif(not CUDA, reason="real model shapes need a GPU (the interpreter would take hours)")


@pytest.fixture(autouse=True, scope="module")
def _triton_interpreter(request):
    """Without a GPU, run these tests under the Triton interpreter (conftest's fixture)."""
    if not CUDA:
        request.getfixturevalue("triton_interpreter")
    yield


@pytest.fixture
def use_settings():
    """use_settings(**fields): sinkattn.settings with those fields changed until the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda **fields: stack.enter_context(settings.override(**fields))


# The two ways keys are walked: all keys in one tile (Nk <= 256: launch.short_mass and
# short_attention, two launches) and tiles with the online softmax, the key-mass pass and the
# correction route ("tiled": settings.short_keys = 0 forces it on short sequences too).
KEYS = pytest.mark.parametrize("keys", ["one-tile", "tiled"])


def use_keys(keys, n_k, use_settings, dim=64, dim_v=64, dtype=torch.float16):
    """Route the call: "tiled" forces the tiled kernels; "one-tile" skips a call that the
    short-key path would not take (too many keys, or key and value tiles over its budget)."""
    from sinkattn import launch

    if keys == "tiled":
        use_settings(short_keys=0)
    elif not launch._fits_one_tile(n_k, dim, dim_v, dtype.itemsize, settings.current().short_keys):
        pytest.skip("keys and values do not fit one tile")


@pytest.fixture
def poisoned(monkeypatch):
    """Every kernel output buffer starts as NaN (float) or 1 (int8 flags), so an unwritten
    element shows up; records the shapes the launchers allocate."""
    from sinkattn import launch

    shapes = []

    def poisoned_output(shape, dtype, device):
        shapes.append(tuple(shape))
        fill = float("nan") if dtype.is_floating_point else 1
        return torch.full(shape, fill, dtype=dtype, device=device)

    monkeypatch.setattr(launch, "_output", poisoned_output)
    return shapes


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def diffusers_layout(B, H, Nq, Nk, D, Dv, dtype):
    """q from a (B, N, H*D) projection, k and v from one packed (B, Nk, 2, H, D) buffer (or
    separate when Dv != D): transposed views with different strides, as diffusers hands them."""
    q = torch.randn(B, Nq, H * D, device=DEVICE, dtype=dtype).view(B, Nq, H, D).transpose(1, 2)
    if Dv == D:
        kv = torch.randn(B, Nk, 2, H, D, device=DEVICE, dtype=dtype)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    else:
        k = torch.randn(B, Nk, H, D, device=DEVICE, dtype=dtype).transpose(1, 2)
        v = torch.randn(B, H, Dv, Nk, device=DEVICE, dtype=dtype).transpose(-1, -2).contiguous()
    return q, k, v


def check_against_reference(q, k, v, res, mass_tol=None, out_floor=1e-5, **kw):
    from sinkattn.reference import sink_attention as reference

    kw = {**kw, "sinks": res.sinks if res.sinks.shape[-1] else None}
    if kw["sinks"] is not None:
        kw.pop("top_k", None)
        kw.pop("control", None)
    exact = reference(q.double(), k.double(), v.double(), return_mass=True, **kw)
    in_dtype = reference(q, k, v, compute_dtype=q.dtype, **kw)
    assert not res.out.isnan().any(), "unwritten or NaN output elements"
    err, torch_err = rel(res.out, exact.out), rel(in_dtype.out, exact.out)
    assert err <= 2 * torch_err + out_floor, f"out error {err:.3g} vs PyTorch's {torch_err:.3g} in {q.dtype}"
    if res.mass is not None:
        tol = mass_tol or (1e-5 if q.dtype == torch.float32 else 1e-3)
        assert rel(res.mass, exact.mass) <= tol
    return exact


def check_selection(res, exact_mass, top_k, select):
    """The kernel's keys carry (by the exact mass) the same masses as the best keys."""
    mass = exact_mass if select == "head" else exact_mass.mean(1)
    got = mass.gather(-1, res.sinks).sort(-1, descending=True).values
    best = mass.topk(top_k, dim=-1).values
    torch.testing.assert_close(got, best, rtol=1e-3, atol=1e-6)


SHAPES = [
    pytest.param((2, 3, 63, 63, 64, 64), torch.float16, id="self-63-fp16"),
    pytest.param((1, 2, 100, 77, 64, 64), torch.bfloat16, id="cross-77-bf16"),
    pytest.param((1, 2, 1, 333, 40, 40), torch.float32, id="one-query-d40-fp32"),
    pytest.param((2, 1, 45, 70, 80, 80), torch.bfloat16, id="d80-bf16"),
    pytest.param((1, 1, 33, 50, 160, 160), torch.float16, id="d160-fp16"),
    pytest.param((1, 2, 70, 65, 128, 64), torch.float32, id="d128-dv64-fp32"),
    pytest.param((2, 24, 4429, 4429, 64, 64), torch.bfloat16, id="sd3-1024-bf16", marks=GPU_ONLY),
    pytest.param((1, 24, 4608, 4608, 128, 128), torch.bfloat16, id="flux-1024-bf16", marks=GPU_ONLY),
    pytest.param((2, 10, 4096, 77, 64, 64), torch.float16, id="sdxl-cross-fp16", marks=GPU_ONLY),
    pytest.param((2, 16, 4096, 4096, 72, 72), torch.bfloat16, id="pixart-self-d72-bf16", marks=GPU_ONLY),
    pytest.param((1, 24, 16717, 16717, 64, 64), torch.bfloat16, id="sd3-2048-bf16", marks=GPU_ONLY),
]

MODES = [
    pytest.param(dict(top_k=0), id="plain"),
    pytest.param(dict(top_k=0, path="none"), id="mass-only"),
    pytest.param(dict(top_k=1, path="score"), id="score-k1"),
    pytest.param(dict(top_k=1, path="value"), id="value-k1"),
    pytest.param(dict(top_k=3, path="score", eta=0.5, mass_queries=(0, 0.5), apply_queries=(0.25, 1.0)), id="score-k3-eta-ranges"),
    pytest.param(dict(top_k=2, path="value", select="shared", candidates=(0.5, 1.0)), id="value-shared-candidates"),
    pytest.param(dict(top_k=2, path="score", control="bottom"), id="score-bottom"),
    pytest.param(dict(top_k=4, path="score", control="random", generator=3), id="score-random"),
]


def _resolve(mode, n_q, n_k):
    """Ranges in the mode table are fractions of the sequence; turn them into rows."""
    out = dict(mode)
    for name, n in (("mass_queries", n_q), ("apply_queries", n_q), ("candidates", n_k)):
        if name in out:
            a, b = out[name]
            start = min(int(a * n), n - 1)
            out[name] = (start, max(start + 1, int(b * n)))
    return out


@KEYS
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,dtype", SHAPES)
def test_kernels_match_reference(shape, dtype, mode, keys, use_settings, poisoned):
    from sinkattn import sink_attention

    B, H, Nq, Nk, D, Dv = shape
    use_keys(keys, Nk, use_settings, D, Dv, dtype)
    q, k, v = diffusers_layout(B, H, Nq, Nk, D, Dv, dtype)
    kw = _resolve(mode, Nq, Nk)
    res = sink_attention(q, k, v, **kw)
    assert res.out.shape == (B, H, Nq, Dv) and res.out.dtype == dtype and res.out.device == q.device
    exact = check_against_reference(q, k, v, res, **kw)
    if kw["top_k"] == 0:
        assert res.sinks.shape[-1] == 0
        assert (res.mass is None) == (kw.get("path") != "none")
    else:
        assert res.mass.dtype == torch.float32 and res.mass.shape == (B, H, Nk)
        if kw.get("control", "sink") == "sink" and "candidates" not in kw:
            check_selection(res, exact.mass, kw["top_k"], kw.get("select", "head"))
    # no launcher buffer is quadratic in the sequence (head dims are padded to the blocks' width)
    from sinkattn.launch import padded_head_dims

    assert all(torch.Size(s).numel() <= B * H * max(Nq, Nk) * max(padded_head_dims(D, Dv)) for s in poisoned)


@pytest.mark.parametrize("mode", [m for m in MODES if m.values[0]["top_k"] > 0])
@pytest.mark.parametrize("shape,dtype", [SHAPES[0], SHAPES[1], SHAPES[5], SHAPES[6]])
def test_masked_route_matches_reference(shape, dtype, mode, use_settings, poisoned):
    """The second route (settings route="masked"): one masked attention pass for every row, the
    selected keys compared with each key tile inside the kernel."""
    from sinkattn import sink_attention

    use_settings(route="masked", short_keys=0)
    B, H, Nq, Nk, D, Dv = shape
    q, k, v = diffusers_layout(B, H, Nq, Nk, D, Dv, dtype)
    kw = _resolve(mode, Nq, Nk)
    res = sink_attention(q, k, v, **kw)
    check_against_reference(q, k, v, res, **kw)


@pytest.mark.parametrize("route", ["correction", "masked", "one-tile"])
@pytest.mark.parametrize("path", ["score", "value"])
@pytest.mark.parametrize("scale", [0.4, 0.0, -3.0])
def test_any_scale_matches_reference(scale, path, route, use_settings, poisoned):
    """A positive scale is folded into the exponentials' multiply-add (the row max is taken
    on the unscaled products); zero and negative scales take the explicit multiply. Both
    forms, with the intervention inside the masked pass too (log2(eta) / scale)."""
    from sinkattn import sink_attention

    use_settings(**(dict(route=route, short_keys=0) if route != "one-tile" else {}))
    q, k, v = diffusers_layout(2, 2, 70, 77, 64, 64, torch.bfloat16)
    for eta in (0.0, 0.3):
        kw = dict(top_k=1, path=path, eta=eta, scale=scale, apply_queries=(10, 70))
        res = sink_attention(q, k, v, **kw)
        check_against_reference(q, k, v, res, **kw)


@KEYS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("select", ["head", "shared"])
@pytest.mark.parametrize("path", ["score", "value"])
def test_planted_sinks_are_selected_exactly(dtype, select, path, keys, plant_sink, use_settings, poisoned):
    from sinkattn import sink_attention

    B, H, Nq, Nk, D = (2, 4, 4429, 4429, 64) if CUDA else (2, 2, 70, 90, 64)
    if CUDA and keys == "one-tile":
        B, H, Nq, Nk, D = 2, 4, 4096, 200, 64
    use_keys(keys, Nk, use_settings, D, D, dtype)
    q, k, v = (t.contiguous() for t in diffusers_layout(B, H, Nq, Nk, D, D, dtype))
    for key in (3, Nk - 2):  # two sinks, one in the masked tail tile
        plant_sink(q, k, key, strength=4.0 if key == 3 else 3.0)
    from sinkattn.reference import sink_attention as reference

    for top_k in (2, 1):  # k = 1: picked inside the mass kernel (the key-mass epilogue, or the short pass)
        res = sink_attention(q, k, v, top_k=top_k, path=path, select=select)
        exact = check_against_reference(q, k, v, res, top_k=top_k, path=path, select=select)
        independent = reference(q.double(), k.double(), v.double(), top_k=top_k, path=path, select=select)
        assert torch.equal(res.sinks.cpu(), independent.sinks.cpu())
        assert exact.sinks is not None


@KEYS
def test_explicit_sinks_with_repeats_count_once(keys, use_settings, poisoned):
    from sinkattn import sink_attention

    use_keys(keys, 50, use_settings)
    q, k, v = diffusers_layout(1, 2, 40, 50, 64, 64, torch.float16)
    sinks = torch.tensor([[[4, 4, 9], [0, 49, 0]]], device=DEVICE)
    res = sink_attention(q, k, v, sinks=sinks, path="score")
    assert torch.equal(res.sinks, sinks)
    check_against_reference(q, k, v, res, sinks=sinks, path="score")


def test_correction_falls_back_where_it_would_lose_accuracy(plant_sink, poisoned):
    """A sink holding nearly all the mass: O - p_j v_j cancels, so the head is flagged and
    recomputed by the masked pass, and the result still meets the bound. Diffuse attention
    over many keys is corrected in place."""
    from sinkattn import launch, sink_attention

    q, k, v = diffusers_layout(1, 2, 64, 2000, 64, 64, torch.bfloat16)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    plant_sink(q, k, 7, heads=[0], strength=12.0)
    res = sink_attention(q, k, v, top_k=1, path="score")
    check_against_reference(q, k, v, res, top_k=1, path="score")
    counters = launch.counters(q)
    out32, lse = launch.attention(q, k, v, 64**-0.5, torch.float32, counters=counters)
    assert (counters == 0).all()  # zeroed by the forward (launch._output poisons them)
    _, tiles = launch.correct(q, k, v, out32, lse, res.sinks, 0.0, "score", (0, 64), 64**-0.5, q.dtype, counters)
    count = counters[0].item()
    listed = tiles[:count].tolist()
    tiles_per_head = tiles.shape[0] // 2
    assert count > 0 and len(set(listed)) == count  # distinct tiles, each listed once
    assert all(t < tiles_per_head for t in listed)  # head 0 only


@pytest.mark.parametrize("removed", ["one-key", "a-whole-key-range"])
@pytest.mark.parametrize("split", [True, False], ids=["key-split", "whole-tiles"])
@pytest.mark.parametrize("path", ["score", "value"])
def test_flagged_pass_computes_exactly_the_flagged_tiles(path, split, removed, monkeypatch, use_settings, poisoned):
    """The correction route's fallback gives the listed query tiles the masked attention.
    With few tiles flagged each tile's keys are split over programs and the partials merged
    by the last range to arrive (key-split); with more, the programs stride over the list and
    compute each tile whole (whole-tiles; here a whole head more: more tiles than programs).
    Removing 64 keys empties the first key range of every row on the score path (its partial
    must get no weight). Tiles not listed are not written."""
    from sinkattn import launch
    from sinkattn.kernels import configs

    B, H, N, NK = (2, 24, 4429, 300) if CUDA else (1, 3, 2000, 100)
    q, k, v = diffusers_layout(B, H, N, NK, 64, 64, torch.bfloat16)
    scale = 64 ** -0.5
    if removed == "one-key":
        sinks = torch.full((B, H, 1), 5, dtype=torch.int64, device=DEVICE)
    else:
        sinks = torch.arange(64, device=DEVICE).expand(B, H, 64).contiguous()
    masked, _ = launch.attention(q, k, v, scale, torch.bfloat16, sinks=sinks, path=path)
    block_m = configs.correction_block_m(not CUDA)
    n_tiles = -(-N // block_m)
    flagged = [(0, 0, 0), (0, 0, N - 1), (B - 1, H - 1, N // 2)]
    if not split:  # and every tile of head (0, 1)
        use_settings(flagged_max_split_tiles=len(flagged) - 1)
        flagged += [(0, 1, tile * block_m) for tile in range(n_tiles)]
    tile_list = torch.full((B * H * n_tiles,), -7, dtype=torch.int32, device=DEVICE)
    tile_list[:len(flagged)] = torch.tensor([(b * H + h) * n_tiles + row // block_m for b, h, row in flagged])
    # As the call's forward and correction leave them: slots handed out, no arrivals yet.
    counters = torch.zeros(launch.counter_layout(B, H, settings.current()).size, dtype=torch.int32, device=DEVICE)
    counters[0] = len(flagged)
    allocated = []
    poisoned_output = launch._output

    def recorded_output(*args):
        allocated.append(poisoned_output(*args))
        return allocated[-1]

    monkeypatch.setattr(launch, "_output", recorded_output)
    out = torch.full((B, H, N, 64), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    launch.recompute_flagged(q, k, v, scale, sinks, 0.0, path, (0, N), tile_list, counters, out)
    if split and removed == "a-whole-key-range" and path == "score":
        # The first key range (64 keys on the GPU, 32 under the interpreter) holds only
        # removed keys for the rows of the sequence, the last one none: each range was
        # computed apart.
        part_lse = allocated[-1][:len(flagged)]  # (tiles, ranges, BLOCK_M)
        assert part_lse.shape[1] > 1
        for slot, (_, _, row) in enumerate(flagged):
            in_sequence = row // block_m * block_m + torch.arange(block_m, device=DEVICE) < N
            assert torch.isneginf(part_lse[slot, 0][in_sequence]).all()
            assert torch.isfinite(part_lse[slot, -1]).all()
    expected = torch.zeros(B, H, N, dtype=torch.bool, device=DEVICE)
    for b, h, row in flagged:
        tile = row // block_m
        expected[b, h, tile * block_m:(tile + 1) * block_m] = True
    assert torch.equal(~out.isnan().any(-1), expected)
    assert rel(out[expected], masked[expected]) < 1e-2
    if split:  # every range of every flagged tile arrived once
        splits = allocated[-1].shape[1]
        assert counters[1:1 + len(flagged)].tolist() == [splits] * len(flagged)


def _rows_with_ties_and_nans(shape, largest):
    """Rows of float32 scores with a tie of the extreme, NaNs (the extreme, as torch.argmax),
    a constant row, and rows longer than one block of the selection (1024)."""
    rank = torch.rand(*shape, device=DEVICE)
    n = shape[-1]
    rank.view(-1, n)[0, [min(10, n - 1), max(n - 5, 0)]] = 2.0 if largest else -1.0
    rank.view(-1, n)[1, [n // 2, max(n - 3, 0)]] = float("nan")
    rank.view(-1, n)[2, :] = 0.5
    return rank


@pytest.mark.parametrize("where", ["key-mass-epilogue", "one-tile-pass"])
@pytest.mark.parametrize("largest", [True, False], ids=["largest", "smallest"])
def test_top1_selection_matches_torch(largest, where, poisoned):
    """The top-1 made inside the kernels (the key-mass pass's last program per head or per
    batch, the short-key pass's programs): ties to the lower index, a NaN counts as the
    extreme (as torch.argmax / argmin), candidate windows anywhere. Ranked here on given
    scores (the ``rank`` input that carries the random control's draws)."""
    from sinkattn import launch

    B, H, n_k = (3, 4, 1100) if where == "key-mass-epilogue" else (3, 4, 200)
    q, k, v = diffusers_layout(B, H, 40, n_k, 64, 64, torch.float16)
    windows = [(0, n_k), (7, n_k - 50), (n_k - 60, n_k), (100, 101)]
    if where == "key-mass-epilogue":
        windows.append((1000, n_k))
        _, lse = launch.attention(q, k, v, 0.125, torch.float16)
    else:
        partial, _ = launch.short_mass(q, k, v, 0.125, (0, 40))
    for shared in (False, True):
        for window in windows:
            groups = (B,) if shared else (B, H)
            rank = _rows_with_ties_and_nans((*groups, window[1] - window[0]), largest)
            want = (rank.argmax(-1) if largest else rank.argmin(-1)) + window[0]
            selection = launch.Selection(shared, window, largest, rank)
            if where == "key-mass-epilogue":  # counters as a forward leaves them
                counters = torch.zeros(launch.counter_layout(B, H, settings.current()).size, dtype=torch.int32,
                                       device=DEVICE)
                _, got = launch.key_mass(q, k, lse, 0.125, (0, 40), counters, selection)
            elif shared:
                continue  # the short pass selects per head only (shared goes through torch)
            else:
                _, _, got = launch.short_attention(q, k, v, 0.125, torch.float16, partial, selection=selection)
            expected = want[:, None].expand(B, H) if shared else want
            assert got.shape == (B, H, 1) and torch.equal(got[..., 0], expected), (shared, window)


@pytest.mark.parametrize("select", ["head", "shared"])
def test_mass_over_query_shares(select, use_settings, poisoned):
    """Few keys give too few key-parallel programs, so the mass queries are cut into shares
    whose partial sums the last program of each head adds (and then selects from); a range
    that starts off a tile boundary and ends in a partial tile."""
    from sinkattn import launch, sink_attention

    use_settings(short_keys=0)
    q, k, v = diffusers_layout(1, 2, 1100, 77, 64, 64, torch.bfloat16)
    assert launch.mass_shares(q, 77, 1100 - 13) > 1
    for top_k in (1, 2):
        kw = dict(top_k=top_k, path="score", mass_queries=(13, 1100), select=select)
        res = sink_attention(q, k, v, **kw)
        exact = check_against_reference(q, k, v, res, **kw)
        check_selection(res, exact.mass, top_k, select)


@pytest.mark.parametrize("paired", [False, True], ids=["one_tile", "paired"])
def test_key_mass_loops_match_reference(paired, use_settings, poisoned):
    """Both loops of the key-mass kernel (one query tile per iteration, or two), on ranges
    with an odd number of full tiles and a partial one, shorter than a pair, and starting
    off a tile boundary."""
    from sinkattn import launch
    from sinkattn.reference import sink_attention as reference

    use_settings(kernel_configs={"key_mass": {"BLOCK_M": 32, "BLOCK_N": 32, "PAIRED": paired}})
    q, k, v = diffusers_layout(1, 2, 150, 70, 64, 64, torch.bfloat16)
    _, lse = launch.attention(q, k, v, 64 ** -0.5, torch.bfloat16)
    for rows in [(0, 150), (13, 150), (5, 40), (0, 96)]:
        want = reference(q.double(), k.double(), v.double(), top_k=0, path="none", return_mass=True,
                         mass_queries=rows).mass
        assert rel(launch.key_mass(q, k, lse, 64 ** -0.5, rows), want) < 1e-5, rows


@KEYS
def test_mass_is_deterministic(keys, use_settings):
    from sinkattn import sink_attention

    B, H, N = (2, 24, 4429) if CUDA else (1, 2, 150)
    if CUDA and keys == "one-tile":
        B, H, N = 2, 10, 200
    use_keys(keys, N, use_settings)
    q, k, v = diffusers_layout(B, H, N, N, 64, 64, torch.bfloat16)
    first = sink_attention(q, k, v, top_k=0, path="none").mass
    second = sink_attention(q, k, v, top_k=0, path="none").mass
    assert torch.equal(first, second)


@KEYS
def test_single_key_and_single_query(keys, use_settings):
    from sinkattn import sink_attention

    use_keys(keys, 1, use_settings)
    q, k, v = diffusers_layout(1, 1, 1, 1, 64, 64, torch.float32)
    res = sink_attention(q, k, v, top_k=1, path="value")
    torch.testing.assert_close(res.out, torch.zeros_like(res.out))
    torch.testing.assert_close(res.mass, torch.ones_like(res.mass))


@KEYS
def test_nan_in_a_query_row_stays_in_that_row(keys, use_settings):
    from sinkattn import sink_attention

    use_keys(keys, 30, use_settings)
    q, k, v = diffusers_layout(1, 1, 20, 30, 64, 64, torch.float16)
    q = q.clone()
    q[0, 0, 5, 0] = float("nan")
    for kw in (dict(top_k=0), dict(top_k=0, path="none"), dict(sinks=torch.tensor([[[3]]], device=DEVICE))):
        out = sink_attention(q, k, v, **kw).out
        assert out[0, 0, 5].isnan().all() and not out[0, 0, :5].isnan().any() and not out[0, 0, 6:].isnan().any()


@KEYS
def test_torch_compile_fullgraph_traces_the_op(keys, use_settings):
    from sinkattn import sink_attention

    use_keys(keys, 50, use_settings)

    def f(q, k, v):
        res = sink_attention(q, k, v, top_k=2, path="score", mass_queries=(0, 30))
        return res.out * 2, res.mass

    def random_top1(q, k, v):  # the draw (global generator) and its top-1 inside the op
        return sink_attention(q, k, v, top_k=1, path="value", control="random")

    q, k, v = diffusers_layout(1, 2, 40, 50, 64, 64, torch.float16)
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    got, want = compiled(q, k, v), f(q, k, v)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    drawn = torch.compile(random_top1, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(q, k, v)
    assert drawn.sinks.shape == (1, 2, 1)
    check_against_reference(q, k, v, drawn, path="value")


@GPU_ONLY
def test_no_quadratic_memory_at_sd3_shape():
    from sinkattn import sink_attention

    q, k, v = diffusers_layout(2, 24, 4429, 4429, 64, 64, torch.bfloat16)
    sink_attention(q, k, v, top_k=1)  # warm up (autotuning allocates)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    sink_attention(q, k, v, top_k=1)
    extra = torch.cuda.max_memory_allocated() - base
    quadratic = 2 * 24 * 4429 * 4429 * 2  # one bf16 attention matrix
    assert extra < quadratic / 10, f"{extra / 2**20:.0f} MiB extra"


# The largest key tile any config uses: removing j * this many leading keys removes at least
# j whole key tiles on the GPU (BLOCK_N 32-128) and under the interpreter (BLOCK_N 32).
MAX_BLOCK_N = 128 if CUDA else 32


def _removed_leading_keys(n_removed, surviving_logit, dtype):
    """One head whose queries all point along u: keys [0, n_removed) score surviving_logit + 5
    (the sinks), the 40 keys after them surviving_logit (plus noise); scale D ** -0.5."""
    D, n_q = 64, 70
    u = torch.nn.functional.normalize(torch.randn(D, dtype=torch.float64), dim=0)
    q = (8 * u).expand(1, 2, n_q, D).clone()
    k = (surviving_logit * u + 0.3 * torch.randn(1, 2, n_removed + 40, D, dtype=torch.float64) / 8)
    k[:, :, :n_removed] += 5 * u
    v = torch.randn(1, 2, n_removed + 40, D, dtype=torch.float64)
    return (t.to(DEVICE, dtype) for t in (q, k, v))


@pytest.mark.parametrize("route", ["correction-key-split", "correction-whole-tiles", "masked", "one-tile"])
@pytest.mark.parametrize("surviving_logit", [-10.0, -20.0, -100.0, -200.0])
@pytest.mark.parametrize("tiles", [1, 2, 3])
def test_removed_leading_key_tiles(tiles, surviving_logit, route, use_settings, poisoned):
    """Score path, eta 0, the first `tiles` key tiles of every row removed: the online softmax
    starts on keys that are all -inf, and the surviving keys (strongly negative logits) must
    still give the exact output, not 0 or NaN (issue 13, item 1). The correction kernel flags
    these rows (nearly all their mass is removed), so the correction routes run the
    flagged-tile pass, split over key ranges (with the split merge) or whole; the masked
    route runs the forward with the keys masked."""
    from sinkattn import sink_attention

    n_removed = tiles * MAX_BLOCK_N
    if route == "one-tile":
        use_keys("one-tile", n_removed + 40, use_settings)
    else:
        use_settings(route="masked" if route == "masked" else "correction", short_keys=0)
    if route == "correction-whole-tiles":
        use_settings(flagged_max_split_tiles=0)
    from sinkattn import launch

    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        q, k, v = _removed_leading_keys(n_removed, surviving_logit, dtype)
        if route == "one-tile" and not launch.fits_one_tile(q, k, v, settings.current()):
            continue  # float32 tiles over the short path's budget: the tiled routes above cover them
        res = sink_attention(q, k, v, top_k=n_removed, path="score")
        assert torch.equal(res.sinks.sort(-1).values.cpu(), torch.arange(n_removed).expand(1, 2, -1)), dtype
        assert res.out.isfinite().all(), f"{dtype}: non-finite output"
        # Logits of magnitude 200 take float32 dots (|q.k| = 1600) to an absolute error of
        # ~1e-4, a relative error of ~1e-5 in each probability: the float32 mass bar is
        # SPEC's 1e-4 here, not the 1e-5 that moderate logits meet.
        check_against_reference(q, k, v, res, mass_tol=1e-4 if dtype == torch.float32 else None,
                                top_k=n_removed, path="score")


@KEYS
def test_correction_flags_rows_whose_kept_mass_vanishes(keys, use_settings, poisoned):
    """Removed keys with zero value vectors hold nearly all the mass: the numerator of the
    score-path correction loses nothing (the removed keys add nothing to O), but its
    denominator 1 - sum_J p_j is pure rounding. Such rows must be recomputed, not divided."""
    from sinkattn import sink_attention

    use_keys(keys, 48, use_settings)
    q, k, v = _removed_leading_keys(8, -30.0, torch.float32)
    k[:, :, :8] += 25 * torch.nn.functional.normalize(q[0, 0, 0], dim=0)  # sinks at logit -30 + 5 + 25 = 0
    v[:, :, :8] = 0
    res = sink_attention(q, k, v, sinks=torch.arange(8, device=DEVICE).expand(1, 2, 8), path="score")
    assert res.out.isfinite().all()
    check_against_reference(q, k, v, res, sinks=res.sinks, path="score")


@pytest.mark.parametrize("kw", [
    pytest.param(dict(top_k=0), id="plain"),
    pytest.param(dict(top_k=2, path="score", apply_queries=(5, 30)), id="score-k2"),
    pytest.param(dict(top_k=1, path="value", select="shared", eta=0.3), id="value-shared"),
    pytest.param(dict(top_k=2, path="value", value_target=torch.ones(1, 2, 2, 64)), id="value-vectors"),
])
def test_gradients_flow_through_the_kernel_path(kw, poisoned):
    """With inputs that require grad, the output carries a grad_fn (issue 13, item 2): the
    backward recomputes through the reference with the selected keys held fixed, so the
    gradients are those of the reference given the same keys; mass and keys carry none."""
    from sinkattn import sink_attention
    from sinkattn.reference import sink_attention as reference

    q, k, v = (t.detach().float().requires_grad_() for t in diffusers_layout(1, 2, 40, 50, 64, 64, torch.float32))
    res = sink_attention(q, k, v, **kw)
    assert res.out.grad_fn is not None
    upstream = torch.randn_like(res.out)
    grads = torch.autograd.grad(res.out, (q, k, v), upstream)
    fixed = dict(kw, sinks=res.sinks)
    fixed.pop("top_k")
    expected = torch.autograd.grad(reference(q, k, v, **fixed).out, (q, k, v), upstream)
    for got, want in zip(grads, expected):
        assert rel(got, want) < 1e-4
    assert res.mass is None or not res.mass.requires_grad


INTERVENTIONS = [
    pytest.param(dict(path="score", eta=0.25, eta_mode="prob"), id="score-prob"),
    pytest.param(dict(path="both", eta=0.0), id="both-eta0"),
    pytest.param(dict(path="both", eta=0.4), id="both-logit"),
    pytest.param(dict(path="both", eta=0.4, eta_mode="prob", value_target="mean"), id="both-prob-mean"),
    pytest.param(dict(path="value", eta=0.0, value_target="mean"), id="value-mean"),
    pytest.param(dict(path="value", eta=0.5, value_target="mean", apply_queries=(10, 60)), id="value-lerp-rows"),
]


@pytest.mark.parametrize("route", ["correction", "masked"])
@pytest.mark.parametrize("kw", INTERVENTIONS)
def test_every_intervention_matches_reference(kw, route, use_settings, plant_sink, poisoned):
    """The original study's interventions (prob_scale, score and value together, mean and
    lerp value fills) on the kernel path, with a planted sink holding most of the mass (so
    O_rest must come from the masked fallback) and with diffuse attention (shared keys)."""
    from sinkattn import sink_attention

    use_settings(route=route, short_keys=0)
    # The blend recomputes the selected keys' probabilities outside the kernel, whose lse
    # came from other roundings of the same logits: a relative error of ~|s| * 2^-24 in P,
    # 1e-5 with a sink logit of ~50 (log2 units). float32 is held to SPEC's 1e-4 for it.
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = (t.contiguous() for t in diffusers_layout(1, 2, 70, 90, 64, 64, dtype))
        plant_sink(q, k, 5, heads=[0], strength=10.0)
        for extra in (dict(top_k=1), dict(top_k=3, select="shared")):
            res = sink_attention(q, k, v, **kw, **extra)
            check_against_reference(q, k, v, res, out_floor=1e-4 if dtype == torch.float32 else 1e-5, **kw, **extra)


def _padding(batch, heads, n_k, form):
    """A key-padding mask keeping a different prefix of the first 50 keys per batch row, then
    every key from 60 on (the joint [text, image] layout of Qwen-Image): bool (B, 1, 1, Nk),
    additive -inf (B, 1, 1, Nk), or bool repeated per head (B, H, 1, Nk) as diffusers' UNet hands it."""
    keep = torch.ones(batch, n_k, dtype=torch.bool, device=DEVICE)
    for b in range(batch):
        keep[b, 7 + 13 * b:60] = False
    if form == "bool":
        return keep[:, None, None, :], keep
    if form == "additive":
        return torch.zeros(batch, 1, 1, n_k, device=DEVICE).masked_fill(~keep[:, None, None, :], float("-inf")), keep
    return keep[:, None, None, :].expand(batch, heads, 1, n_k), keep


@pytest.mark.parametrize("form", ["bool", "additive", "per-head"])
@pytest.mark.parametrize("kw", [
    pytest.param(dict(top_k=1), id="score-k1"),
    pytest.param(dict(top_k=3, select="shared", path="value", eta=0.3, value_target="mean"), id="value-mean-shared"),
    pytest.param(dict(top_k=2, control="bottom", candidates=(0, 60)), id="bottom-text-candidates"),
    pytest.param(dict(top_k=0, path="none"), id="trace"),
    pytest.param(dict(path="both", eta=0.2, eta_mode="prob"), id="explicit-both-prob"),
])
def test_key_padding_masks_run_in_the_kernels(form, kw, poisoned, monkeypatch):
    """A key-padding mask (the same for every head and query) runs on the kernels, one call
    per batch row over its kept keys: the reference's output, mass (0 on masked keys) and
    keys (a masked key is never picked, not even by "bottom"), with no reference warning."""
    from sinkattn import sink_attention

    q, k, v = (t.contiguous() for t in diffusers_layout(2, 2, 40, 90, 64, 64, torch.bfloat16))
    mask, keep = _padding(2, 2, 90, form)
    if "top_k" not in kw:
        kw = dict(kw, sinks=torch.tensor([[[2, 65], [70, 3]], [[4, 61], [80, 88]]], device=DEVICE))
    from sinkattn import reference

    with monkeypatch.context() as patch:
        patch.setattr(reference, "sink_attention", lambda *a, **k: pytest.fail("the call went to the reference"))
        res = sink_attention(q, k, v, attn_mask=mask, **kw)
    exact = check_against_reference(q, k, v, res, attn_mask=mask, **kw)
    assert bool((res.mass.masked_select(~keep[:, None, :].expand_as(res.mass)) == 0).all())
    if res.sinks.numel():
        per_batch = res.sinks.reshape(2, -1)
        assert bool(keep.gather(1, per_batch).all()), "a masked key was selected"
    if kw.get("control") == "bottom":
        assert torch.equal(res.sinks.sort(-1).values, exact.sinks.sort(-1).values)


def test_other_masks_stay_on_the_reference(poisoned):
    """A mask that differs per query is not key padding: the call runs on the reference and
    agrees with it."""
    from sinkattn import sink_attention

    q, k, v = (t.contiguous() for t in diffusers_layout(1, 2, 40, 90, 64, 64, torch.bfloat16))
    mask = torch.rand(1, 1, 40, 90, device=DEVICE) > 0.3
    mask[..., 0] = True
    res = sink_attention(q, k, v, top_k=1, attn_mask=mask)
    check_against_reference(q, k, v, res, top_k=1, attn_mask=mask)


@pytest.mark.parametrize("route", ["correction", "masked"])
@pytest.mark.parametrize("kw", [
    pytest.param(dict(path="value", eta=0.0), id="value-replace"),
    pytest.param(dict(path="value", eta=0.5, apply_queries=(10, 60)), id="value-lerp-rows"),
    pytest.param(dict(path="both", eta=0.4, eta_mode="prob"), id="both-prob"),
])
def test_value_vectors_match_reference(kw, route, use_settings, plant_sink, poisoned):
    """Per-key replacement vectors on the value path (the noise target's form): each selected
    key's value becomes eta v_j + (1 - eta) target_j, target_j following its key through the
    blend's sorting, a repeated explicit key taking its first vector; with a planted sink."""
    from sinkattn import sink_attention

    use_settings(route=route, short_keys=0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = (t.contiguous() for t in diffusers_layout(1, 2, 70, 90, 64, 64, dtype))
        plant_sink(q, k, 5, heads=[0], strength=10.0)
        repeats = torch.tensor([[[40, 5, 40], [7, 2, 5]]], device=DEVICE)
        for extra in (dict(top_k=1), dict(top_k=3, select="shared"), dict(sinks=repeats)):
            top_k = extra.get("top_k", 3)
            vectors = torch.randn(1, 2, top_k, 64, generator=gen).to(DEVICE)
            res = sink_attention(q, k, v, value_target=vectors, **kw, **extra)
            check_against_reference(q, k, v, res, out_floor=1e-4 if dtype == torch.float32 else 1e-5,
                                    value_target=vectors, **kw, **{n: x for n, x in extra.items() if n != "sinks"})


@pytest.mark.parametrize("control", ["sink", "random"])
def test_value_noise_is_the_seeded_draw(control, poisoned):
    """value_target="noise" is std * N(0, 1) vectors drawn from the call's generator after the
    random control's draw: the same output as passing that draw, and as the reference with
    the same seed; a different seed gives a different output."""
    from sinkattn import sink_attention
    from sinkattn.reference import sink_attention as reference

    q, k, v = (t.contiguous() for t in diffusers_layout(1, 2, 50, 60, 64, 64, torch.float32))
    kw = dict(top_k=2, path="value", control=control)
    res = sink_attention(q, k, v, value_target="noise", value_noise_std=0.3, generator=7, **kw)
    gen = torch.Generator(device="cpu").manual_seed(7)
    if control == "random":
        torch.rand((1, 2, 60), generator=gen)  # the random control draws first
    drawn = 0.3 * torch.randn((1, 2, 2, 64), generator=gen)
    given = sink_attention(q, k, v, value_target=drawn.to(DEVICE), generator=7, **kw)
    assert torch.equal(res.sinks, given.sinks)
    assert torch.equal(res.out, given.out)
    exact = reference(q, k, v, value_target="noise", value_noise_std=0.3, generator=7, **kw)
    assert rel(res.out, exact.out) < 1e-5
    other = sink_attention(q, k, v, value_target="noise", value_noise_std=0.3, generator=8, **kw)
    assert rel(other.out, res.out) > 1e-3


@pytest.mark.parametrize("control", ["high_outgoing_query", "high_outgoing_query_ablate"])
@pytest.mark.parametrize("select", ["head", "shared"])
def test_query_controls_match_reference(control, select, plant_sink, poisoned):
    """The query controls rank the mass queries by their largest probability, read from the
    forward (1 / l per row): the kernels pick the reference's rows (a few rows are planted
    to attend sharply so that the ranking is clear) and apply the same effect."""
    from sinkattn import sink_attention
    from sinkattn.reference import sink_attention as reference

    q, k, v = (t.contiguous() for t in diffusers_layout(1, 2, 70, 90, 64, 64, torch.float16))
    for row, strength in ((3, 6.0), (40, 5.0), (55, 4.0)):
        q[:, :, row] = (strength * k[:, :, row % 90].float()).to(q.dtype)  # row attends to one key
    kw = dict(top_k=3, control=control, select=select, eta=0.5, mass_queries=(0, 60))
    res = sink_attention(q, k, v, **kw)
    exact = reference(q.double(), k.double(), v.double(), **kw)
    assert torch.equal(res.sinks.sort(-1).values.cpu(), exact.sinks.sort(-1).values.cpu())
    # The returned indices are query rows, not keys: compare the outputs directly.
    in_dtype = reference(q, k, v, compute_dtype=q.dtype, **kw)
    assert rel(res.out, exact.out) <= 2 * rel(in_dtype.out, exact.out) + 1e-5


GRAPH_CALLS = [
    pytest.param(dict(top_k=1), id="sink-score-k1"),
    pytest.param(dict(top_k=1, path="value"), id="sink-value-k1"),
    pytest.param(dict(top_k=1, select="shared"), id="shared-k1"),
    pytest.param(dict(top_k=10), id="sink-score-k10"),
    pytest.param(dict(top_k=1, control="random"), id="random-k1-default-generator"),
    pytest.param(dict(top_k=0, path="none"), id="trace-only"),
]


@GPU_ONLY
@pytest.mark.parametrize("kw", GRAPH_CALLS)
@pytest.mark.parametrize("n_k, dim", [(4429, 64), (77, 64), (4429, 128)],
                         ids=["long-keys", "short-keys", "long-keys-d128"])
def test_sink_call_replays_in_a_cuda_graph(kw, n_k, dim):
    """The study's default calls hold no host synchronisation and no CPU tensor: captured in a
    CUDA graph (after an eager warm-up that autotunes), a replay on new inputs copied into the
    captured ones gives what an eager call gives on them (the random control: a fresh draw
    from the default generator on every replay, so only its shape and bounds are compared).
    Head dim 128 runs the Gluon forward on Hopper (its TMA descriptors are kernel arguments
    captured with the launch)."""
    from sinkattn import sink_attention

    q, k, v = diffusers_layout(2, 24, 4429, n_k, dim, dim, torch.bfloat16)
    for _ in range(2):
        sink_attention(q, k, v, **kw)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = sink_attention(q, k, v, **kw)
    for _ in range(2):
        fresh = diffusers_layout(2, 24, 4429, n_k, dim, dim, torch.bfloat16)
        for dst, src in zip((q, k, v), fresh):
            dst.copy_(src)
        graph.replay()
        eager = sink_attention(q, k, v, **kw)
        torch.cuda.synchronize()
        if kw.get("control") == "random":
            assert captured.sinks.shape == eager.sinks.shape and 0 <= captured.sinks.min() <= captured.sinks.max() < n_k
            continue
        assert torch.equal(captured.sinks, eager.sinks)
        assert torch.equal(captured.out, eager.out)
        if eager.mass is not None:
            assert torch.equal(captured.mass, eager.mass)


@pytest.mark.parametrize("keys_per_split", [None, 64], ids=["default-ranges", "ranges-of-64"])
@pytest.mark.parametrize("n_k, dim, dtype", [(4429 if CUDA else 333, 64, torch.bfloat16), (3, 40, torch.float32),
                                              (77, 128, torch.float16)], ids=["sd3-like", "three-keys-d40", "cross-77-d128"])
def test_query_stats_kernel_matches_torch(n_k, dim, dtype, keys_per_split, poisoned):
    """kernels.query_stats: each sampled row's top-5 probability sum and entropy, against the
    float64 softmax of the same rows; identical keys (padding tokens) tie and count as often
    as they occur, and a row with fewer than 5 keys sums them all (1). With ranges of 64 keys
    the six tied keys straddle two ranges, which the merge folds."""
    from sinkattn import launch

    q, k, _ = diffusers_layout(2, 3, 50, n_k, dim, dim, dtype)
    k = k.clone()
    if n_k > 10:
        k[:, :, 5:9] = k[:, :, 4:5]  # five identical keys
        q[:, :, 7] = (4 * k[:, :, 4].float()).to(dtype)  # a row that attends to them
    if n_k > 70:  # six identical keys across the key tiles' boundary at 64, one more than the top 5
        k[:, :, 61:67] = k[:, :, 60:61]
        q[:, :, 13] = (4 * k[:, :, 60].float()).to(dtype)
    rows = torch.tensor([0, 7, 13, 49], device=DEVICE)
    split = {} if keys_per_split is None else {"keys_per_split": keys_per_split}
    top5, entropy = launch.query_stats(q, k, rows, dim**-0.5, **split)
    p = torch.softmax(q[:, :, rows].double() @ k.double().transpose(-1, -2) * dim**-0.5, dim=-1)
    want_top5 = p.topk(min(5, n_k), dim=-1).values.sum(-1)
    want_entropy = -torch.special.xlogy(p, p).sum(-1)
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # the kernel's logits come from the half-precision dot
    torch.testing.assert_close(top5.double(), want_top5, rtol=tol, atol=tol)
    torch.testing.assert_close(entropy.double(), want_entropy, rtol=tol, atol=tol)


@pytest.mark.parametrize("selected", ["none", "per-head", "shared"])
@pytest.mark.parametrize("n_k, top", [(4429 if CUDA else 333, 5), (7, 7), (90, 1)],
                         ids=["sd3-like", "all-keys", "top-1"])
def test_tracer_rows_from_the_kernels_match_torch(n_k, top, selected, monkeypatch):
    """SinkTracer's per-call reductions on the kernels (kernels.trace_stats, and the query
    statistics' merge writing the per-head and head-mean means) against its torch path: every
    column of every (batch row, head) and head-mean row, the top keys in the same order
    (planted equal masses come by ascending key), the selected keys and their mass; into a
    buffer filled with a sentinel, so a column the kernels leave unwritten shows."""
    import numpy as np

    from sinkattn import tracing
    from sinkattn.processors import Tokens
    from sinkattn.processors.core import CallRecord

    g = torch.Generator(device=DEVICE).manual_seed(3)
    batch, heads, n_text, dim = 2, 3, min(77, n_k // 2), 64
    q = torch.randn(batch, heads, n_k, dim, device=DEVICE, generator=g, dtype=torch.float16)
    k = torch.randn(batch, heads, n_k, dim, device=DEVICE, generator=g, dtype=torch.float16)
    mass = torch.rand(batch, heads, n_k, device=DEVICE, generator=g) ** 4
    mass[0, 1, 3] = mass[0, 1, 5] = mass[0, 1].max() + 0.5  # a tie at the top: key 3 first
    mass[1, :, n_k // 2] = 0.0  # 0 ln 0 = 0
    mass = mass / mass.sum(-1, keepdim=True)
    sinks = {"none": None, "per-head": torch.randint(0, n_k, (batch, heads, 2), device=DEVICE, generator=g),
             "shared": torch.randint(0, n_k, (batch, 3), device=DEVICE, generator=g)}[selected]
    n_image = n_k - n_text

    def traced(on_kernels: bool):
        monkeypatch.setattr(tracing, "_on_kernels", lambda t: on_kernels)
        tracer = tracing.SinkTracer(top=top, query_sample=16 if selected != "shared" else 0,
                                    device_buffer=torch.full((1 << 16,), 7.77, device=DEVICE))
        call = CallRecord(mass=mass, sinks=sinks, keys=Tokens(n_k, n_text), mass_queries=(0, n_image))
        call.q, call.k, call.scale = q, k, dim**-0.5
        tracer.record(layer="L", layer_index=0, family="sd3", call=call)
        return tracer.finish_image().heads.to_pandas()

    got, want = traced(True), traced(False)
    assert len(got) == len(want) == batch * (heads + 1)
    for column in tracing._COLUMNS:
        np.testing.assert_allclose(got[column], want[column], rtol=2e-5, atol=1e-6, err_msg=column)
    for column in ("top_mass", "selected_mass"):
        np.testing.assert_allclose(np.concatenate(got[column].to_list()), np.concatenate(want[column].to_list()),
                                   rtol=1e-6, atol=0, err_msg=column)
    assert got["top_keys"].map(list).to_list() == want["top_keys"].map(list).to_list()
    assert got["selected_keys"].map(list).to_list() == want["selected_keys"].map(list).to_list()
    assert list(got["top_keys"][1][:2]) == [3, 5][:top]


@pytest.mark.parametrize("family", ["pixart", "qwen"])
def test_a_forwards_masked_calls_read_their_padding_plan_once(family, monkeypatch):
    """PixArt-Sigma and Qwen-Image hand one text mask object to every block of a forward: the
    processor builds the op's mask from it once and declares it unchanging, so the
    key-padding plan (a host synchronisation) is read once per forward, not once per masked
    layer, and the forward's output is the same bit for bit as with a read per layer. A mask
    the caller did not declare is read on every call."""
    from sinkattn import ops, sink_attention, tiny
    from sinkattn.processors import SinkSuppressProcessor

    builder = {"pixart": tiny.tiny_pixart_transformer, "qwen": tiny.tiny_qwenimage_transformer}[family]
    model = builder(num_layers=3).to(DEVICE)
    inputs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in tiny.tiny_inputs(model).items()}
    model.set_attn_processor(SinkSuppressProcessor(k=1))
    reads = []
    read_plan = ops._read_plan
    monkeypatch.setattr(ops, "_read_plan", lambda *a: reads.append(1) or read_plan(*a))

    def forward():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    once = [forward() for _ in range(2)]
    assert len(reads) == 2  # one per forward: each forward makes its own mask object
    with monkeypatch.context() as patch:
        patch.setattr(ops, "reuse_key_padding_plans", lambda mask: mask)
        reads.clear()
        every = forward()
        assert len(reads) == 3  # one per masked layer
    assert torch.equal(once[0], every) and torch.equal(once[1], every)

    q, k, v = (t.contiguous() for t in diffusers_layout(2, 2, 40, 90, 64, 64, torch.bfloat16))
    mask = torch.ones(2, 1, 1, 90, dtype=torch.bool, device=DEVICE)
    mask[1, ..., 50:] = False
    reads.clear()
    for _ in range(2):
        sink_attention(q, k, v, top_k=1, attn_mask=mask)
    assert len(reads) == 2
    ops.reuse_key_padding_plans(mask)
    reads.clear()
    first, again = (sink_attention(q, k, v, top_k=1, attn_mask=mask) for _ in range(2))
    assert len(reads) == 1 and torch.equal(first.out, again.out)


@pytest.mark.parametrize("kw", [
    pytest.param(dict(top_k=1), id="score-k1"),
    pytest.param(dict(top_k=1, eta_mode="prob"), id="score-k1-prob"),
    pytest.param(dict(top_k=2, path="both", select="shared"), id="both-k2-shared"),
])
def test_a_row_with_one_kept_key_is_not_emptied(kw, poisoned, monkeypatch):
    """PixArt's unconditional row under an empty negative prompt keeps one text key: sink k=1
    on the score path would leave nothing, so that row keeps its plain attention (with "both",
    only the value part applies), on the kernels (that row runs without its score part) as in
    the reference (no NaN); the other row is intervened."""
    from sinkattn import reference, sink_attention

    q, k, v = (t.contiguous() for t in diffusers_layout(2, 2, 40, 90, 64, 64, torch.bfloat16))
    mask = torch.ones(2, 1, 1, 90, dtype=torch.bool, device=DEVICE)
    mask[1, ..., kw["top_k"]:] = False
    with monkeypatch.context() as patch:
        patch.setattr(reference, "sink_attention", lambda *a, **k: pytest.fail("the call went to the reference"))
        res = sink_attention(q, k, v, attn_mask=mask, **kw)
    assert res.out.isfinite().all()
    check_against_reference(q, k, v, res, attn_mask=mask, **kw)
    assert bool(mask[1, 0, 0].gather(0, res.sinks[1].flatten()).all()), "a masked key was selected"


# -- the warp-specialised forward on Hopper (kernels/attention_hopper.py) ---------------------

HOPPER = CUDA and torch.cuda.get_device_capability() == (9, 0)
HOPPER_ONLY = pytest.mark.skipif(not HOPPER, reason="the Gluon forward runs on sm_90 only; elsewhere (and under the "
                                 "interpreter) launch.attention runs the Triton forward, which every other case checks")


@pytest.mark.parametrize("layout, fits", [
    ("diffusers", True), ("packed-kv", True), ("contiguous", True), ("one-head", True),
    ("heads-not-stacked", False), ("d-strided", False), ("rows-not-16-bytes", False)])
def test_hopper_forward_admits_only_layouts_one_descriptor_reads(layout, fits):
    """launch._tma_layout: a key tile past a head's last row must read only the tensor's own
    next rows or TMA's zero fill (so an exact zero P never meets NaN garbage in V)."""
    from sinkattn import launch

    B, H, N, D = 2, 3, 50, 64
    t = {
        "diffusers": lambda: torch.empty(B, N, H * D).view(B, N, H, D).transpose(1, 2),
        "packed-kv": lambda: torch.empty(B, N, 2, H, D)[:, :, 1].transpose(1, 2),
        "contiguous": lambda: torch.empty(B, H, N, D),
        "one-head": lambda: torch.empty(B, N, 1, D).transpose(1, 2),
        "heads-not-stacked": lambda: torch.empty(H, B, N, D).transpose(0, 1),
        "d-strided": lambda: torch.empty(B, H, D, N).transpose(-1, -2),
        "rows-not-16-bytes": lambda: torch.empty(B, H, N, D + 4)[..., :D],
    }[layout]()
    assert t.shape == (B, 1 if layout == "one-head" else H, N, D)
    assert launch._tma_layout(tuple(t.shape), t.stride()) == fits


HOPPER_SHAPES = [  # head dim 128 (attention_hopper.CONFIGS), and PixArt-Sigma's 72, padded to it
    pytest.param((1, 2, 100, 100, 128), "diffusers", id="one-key-tile"),
    pytest.param((2, 3, 257, 130, 128), "diffusers", id="cross-partial-tile"),
    pytest.param((2, 3, 300, 77, 128), "contiguous", id="cross-77-contiguous"),
    pytest.param((1, 2, 1, 333, 128), "diffusers", id="one-query"),
    pytest.param((2, 3, 300, 300, 72), "diffusers", id="d72-padded"),
    pytest.param((1, 24, 4608, 4608, 128), "diffusers", id="flux-1024"),
    pytest.param((2, 16, 4096, 4096, 72), "diffusers", id="pixart-self-d72"),
]


@HOPPER_ONLY
@pytest.mark.parametrize("mode", [MODES[0], MODES[1], MODES[2], MODES[3], MODES[4]])
@pytest.mark.parametrize("shape, layout", HOPPER_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_hopper_forward_matches_reference(shape, layout, dtype, mode, use_settings, poisoned, monkeypatch):
    """The Gluon forward under every mode whose forward it runs (plain, mass, the correction
    route's float32 forward with its counters zeroed, poisoned buffers): against the float64
    reference, and, on the same draw, the same selection as the Triton forward."""
    from sinkattn import launch, sink_attention

    B, H, Nq, Nk, D = shape
    use_settings(short_keys=0)
    q, k, v = diffusers_layout(B, H, Nq, Nk, D, D, dtype)
    if layout == "contiguous":
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    ran = []
    real = launch._hopper_attention
    monkeypatch.setattr(launch, "_hopper_attention", lambda *a: ran.append(1) or real(*a))
    kw = _resolve(mode, Nq, Nk)
    res = sink_attention(q, k, v, **kw)
    assert ran, "the call did not run the Gluon forward"
    check_against_reference(q, k, v, res, **kw)
    with settings.override(hopper_forward=False):
        triton_res = sink_attention(q, k, v, **kw)
    assert len(ran) == 1
    assert torch.equal(res.sinks, triton_res.sinks)
    if res.mass is not None:
        torch.testing.assert_close(res.mass, triton_res.mass, rtol=1e-3, atol=1e-7)
