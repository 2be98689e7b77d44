"""What the host does per call on the study's default path (issue 15): how many kernels it
launches, which torch ops it runs besides, that it never reads a device value (a host
synchronisation, and an error inside CUDA graph capture), and that a call is validated once
per layout and options.

The kernels are not run here: the launches are counted by a stand-in for the interpreter's
launch (the kernels' numerics are tests/test_kernels.py's business), so the profile holds
only the host's own torch ops.
"""

import collections
import contextlib

import pytest
import torch

from sinkattn import settings

pytestmark = [pytest.mark.skipif(torch.cuda.is_available(), reason="counts launches through the Triton interpreter"),
              pytest.mark.usefixtures("triton_interpreter")]

# Torch ops that allocate or make views: no kernel of their own on a GPU.
NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::new_empty", "aten::slice", "aten::as_strided",
             "aten::select", "aten::view", "aten::alias", "aten::expand", "aten::detach", "aten::lift_fresh",
             "aten::to", "aten::unsqueeze", "aten::squeeze"}


@pytest.fixture
def launches(monkeypatch):
    """The names of the kernels launched (not run) since the test began."""
    from triton.runtime import interpreter

    names = []
    monkeypatch.setattr(interpreter.InterpretedFunction, "run",
                        lambda self, *args, **kwargs: names.append(self.fn.__name__))
    return names


def _qkv(n_q, n_k, heads=2, dim=64, dtype=torch.float16):
    """Views of (B, N, H*D) projections, as diffusers hands them over."""
    return (torch.randn(2, n, heads * dim, dtype=dtype).view(2, n, heads, dim).transpose(1, 2)
            for n in (n_q, n_k, n_k))


def _host_ops(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


CALLS = [  # (keyword arguments, launches with long keys, with short keys)
    pytest.param(dict(top_k=1), 4, 2, id="sink-score-k1"),
    pytest.param(dict(top_k=1, path="value"), 4, 2, id="sink-value-k1"),
    pytest.param(dict(top_k=1, select="shared"), 4, None, id="shared-k1"),
    pytest.param(dict(top_k=1, control="random", generator=torch.Generator().manual_seed(3)), 4, 2, id="random-k1"),
    pytest.param(dict(top_k=0, path="none"), 2, 1, id="trace-only"),
    pytest.param(dict(top_k=0), 1, 1, id="plain"),
]


@pytest.mark.parametrize("kw, long_launches, short_launches", CALLS)
@pytest.mark.parametrize("n_k", [300, 77], ids=["long-keys", "short-keys"])
def test_launches_and_host_ops_per_call(kw, long_launches, short_launches, n_k, launches):
    """At most four launches per sink call (two with short keys), and no torch op that would
    launch a kernel besides the random control's draw."""
    from sinkattn import sink_attention

    expected = long_launches if n_k > settings.current().short_keys else short_launches
    if expected is None:
        pytest.skip("select='shared' with short keys ranks the head-mean mass in torch")
    q, k, v = _qkv(200, n_k)
    sink_attention(q, k, v, **kw)  # first call: validation, plan caches
    launches.clear()
    ops = _host_ops(lambda: sink_attention(q, k, v, **kw))
    assert len(launches) == expected, launches
    extra = set()
    if kw.get("control") == "random":
        extra = {"aten::rand", "aten::uniform_"}  # the draw itself
    elif kw.get("path") == "none" and expected == short_launches:
        extra = {"aten::sum", "aten::fill_"}  # the tiles' mass partials added (fill_: the CPU sum's start)
    assert set(ops) - NO_KERNEL == extra, ops
    assert "aten::_to_copy" not in ops and "aten::copy_" not in ops


@contextlib.contextmanager
def _no_device_reads():
    """Every way of reading a tensor's value on the host raises."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a tensor value was read on the host (a device synchronisation on a GPU)")

    names = ["item", "tolist", "numpy", "cpu", "__int__", "__float__", "__bool__", "__index__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}
    try:
        for name in names:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("kw", [c.values[0] for c in CALLS], ids=[c.id for c in CALLS])
@pytest.mark.parametrize("n_k", [300, 77], ids=["long-keys", "short-keys"])
def test_no_host_synchronisation(kw, n_k, launches):
    """The default path never reads a device value, from the first call on (validation
    included): it can be captured in a CUDA graph."""
    from sinkattn import sink_attention
    from sinkattn.validation import _CHECKED

    q, k, v = _qkv(200, n_k)
    _CHECKED.clear()
    with _no_device_reads():
        sink_attention(q, k, v, **kw)
        sink_attention(q, k, v, mass_queries=(0, 150), candidates=(0, 64), apply_queries=(20, 200), **kw)
    assert launches


def test_validation_runs_once_per_layout_and_options(monkeypatch):
    """The checked call is cached by shapes, strides, dtypes, devices and options; a new
    layout or option is checked again, and so is every call with explicit sinks; the types
    of the scalars count (top_k=True is refused even after top_k=1 passed)."""
    from sinkattn import sink_attention, validation

    checks = []
    real = validation._check
    monkeypatch.setattr(validation, "_check", lambda *args: checks.append(1) or real(*args))
    validation._CHECKED.clear()
    q, k, v = _qkv(40, 30)
    with settings.override(interpret=False):  # the reference path: validation alone matters here
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for _ in range(3):
                sink_attention(q, k, v, top_k=1)
            assert len(checks) == 1
            sink_attention(q, k, v, top_k=2)
            sink_attention(q.contiguous(), k, v, top_k=1)
            sink_attention(q, k, v, top_k=1, candidates=(0, 10))
            sink_attention(q, k, v, top_k=1, candidates=(0, 10))
            assert len(checks) == 4
            sinks = torch.zeros(2, 2, 1, dtype=torch.int64)
            sink_attention(q, k, v, sinks=sinks)
            sink_attention(q, k, v, sinks=sinks)
            assert len(checks) == 6
            with pytest.raises(TypeError, match="top_k must be an int"):
                sink_attention(q, k, v, top_k=True)
            with pytest.raises(ValueError, match="eta must be in"):
                sink_attention(q, k, v, top_k=1, eta=float("nan"))
