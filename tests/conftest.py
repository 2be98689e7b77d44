"""Shared fixtures: one random seed per session (printed in the header; set
SINKATTN_TEST_SEED to repeat a run), re-applied before every test so each test draws
fresh inputs that a failing run can reproduce."""

import os
import random
import sys
import zlib

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    # Triton decides at import time whether its own library functions (tl.sum, tl.max, ...)
    # are interpreted: import it under TRITON_INTERPRET=1 so that tests/test_kernels.py can
    # run the kernels under the interpreter later in this process. The variable is restored
    # at once, so the other tests keep the CPU reference path.
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.language  # noqa: F401
    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous

SEED = int(os.environ.get("SINKATTN_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"sinkattn test seed: {SEED} (SINKATTN_TEST_SEED={SEED} repeats this run)"


@pytest.fixture(autouse=True)
def _seed_everything(request):
    seed = (SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(seed)
    random.seed(seed)
    yield


def _plant_sink(q, k, key, heads=None, strength=4.0):
    """Make ``key`` a clear sink in the given heads (all by default): every query gets a
    shared direction u and the key becomes strength * |q| * u, so it outscores the others."""
    heads = range(q.shape[1]) if heads is None else heads
    for h in heads:
        u = torch.nn.functional.normalize(torch.randn(q.shape[-1], dtype=torch.float64), dim=0).to(q.device, q.dtype)
        norm = q[:, h].float().norm(dim=-1).mean()
        q[:, h] += (norm * u).to(q.dtype)
        k[:, h, key] = (strength * norm * u).to(k.dtype)
    return q, k


@pytest.fixture
def plant_sink():
    return _plant_sink


@pytest.fixture(scope="module")
def triton_interpreter():
    """The kernels run under the Triton interpreter (CPU tensors) for the requesting module,
    and the rest of the suite stays on the reference path. sinkattn.settings reads the
    environment once, so the process's settings are read first and the interpreter is then
    switched on through them; the variable is set too for Triton's own checks."""
    from sinkattn import settings

    settings.current()
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    with settings.override(interpret=True):
        yield
    if previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = previous
