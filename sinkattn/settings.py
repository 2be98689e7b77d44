"""The settings the kernel path reads at call time: one immutable object, the process's
current one, read from the environment once (at first use) and replaced as a whole by
:func:`override` (tests, benchmarks) or :func:`set` (a program that wants other defaults).

    from sinkattn import settings

    settings.current().route                    # "correction"
    with settings.override(route="masked"):     # the second route, for this block only
        sink_attention(q, k, v)

Nothing on the kernel path reads ``os.environ`` per call: ``current()`` is a module-global
read, and launch parameters cached per shape are keyed by the settings object itself (a new
object after every override, so no cache serves a call made under other settings).

Environment (read once):

- ``SINKATTN_ROUTE``: "correction" (default) or "masked", how the intervention reaches the
  output on the kernel path (kernels/NOTES.md says why correction is the default).
- ``SINKATTN_AUTOTUNE``: "0" runs the first config that fits instead of tuning.
- ``SINKATTN_ALLOW_TF32``: "1" lets float32 inputs use TF32 dots (default: IEEE float32).
- ``SINKATTN_SHORT_KEYS``: the longest key sequence that takes the short-key path (all keys
  in one tile: exact row statistics, two launches); "0" turns it off. Default 256.
- ``SINKATTN_HOPPER_FORWARD``: "0" keeps the Triton forward on Hopper (sm_90), where the
  warp-specialised Gluon forward (``kernels/attention_hopper.py``) runs the calls it fits.
- ``TRITON_INTERPRET``: "1" runs the kernels under the Triton interpreter (CPU tensors).
  Triton itself decides this when the kernel modules are imported; this field must agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Settings", "current", "override", "set", "reload", "from_environment"]

ROUTES = ("correction", "masked")


@dataclass(frozen=True, eq=False)  # hashed by identity: a cache key for launch parameters
class Settings:
    """What the kernel path reads at call time.

    route: "correction" or "masked" (see the module docstring).
    autotune: tune the forward and key-mass configs on first use per tuning key (else the
        first candidate that fits, untuned).
    allow_tf32: TF32 dots for float32 inputs.
    interpret: the kernels run under the Triton interpreter (TRITON_INTERPRET=1).
    short_keys: key sequences up to this length take the short-key path; 0 turns it off.
    flagged_key_splits: the correction route's fallback cuts a flagged query tile's keys
        into up to this many ranges computed by separate programs...
    flagged_max_split_tiles: ...when at most this many tiles are flagged in all.
    flagged_programs_per_sm: programs of the fallback pass per multiprocessor.
    hopper_forward: on sm_90, the forward passes that ``launch.hopper_forward_fits`` admits
        run the warp-specialised Gluon kernel (kernels/attention_hopper.py).
    kernel_configs: kernel name -> config dict (block sizes, ``num_warps``, ...) used instead
        of the tuned or default one: "attention_forward", "key_mass", "flagged_tiles",
        "correction", "short_mass", "hopper_forward" (BLOCK_N, STAGES, PINGPONG of the Gluon
        forward). For experiments and tests.
    """

    route: str = "correction"
    autotune: bool = True
    allow_tf32: bool = False
    interpret: bool = False
    short_keys: int = 256
    flagged_key_splits: int = 16
    flagged_max_split_tiles: int = 64
    flagged_programs_per_sm: int = 16
    hopper_forward: bool = True
    kernel_configs: Mapping[str, Mapping] = field(default_factory=dict)

    def __post_init__(self):
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        for name in ("short_keys", "flagged_max_split_tiles"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        for name in ("flagged_key_splits", "flagged_programs_per_sm"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.short_keys > 256:
            raise ValueError(f"short_keys must be <= 256 (one key tile in registers), got {self.short_keys}")
        object.__setattr__(self, "kernel_configs", dict(self.kernel_configs))


def _flag(environ: Mapping[str, str], name: str, default: str) -> bool:
    return environ.get(name, default) not in ("", "0")


def from_environment(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from environment variables (see the module docstring)."""
    environ = os.environ if environ is None else environ
    return Settings(
        route=environ.get("SINKATTN_ROUTE", "correction"),
        autotune=_flag(environ, "SINKATTN_AUTOTUNE", "1"),
        allow_tf32=_flag(environ, "SINKATTN_ALLOW_TF32", "0"),
        interpret=_flag(environ, "TRITON_INTERPRET", "0"),
        short_keys=int(environ.get("SINKATTN_SHORT_KEYS", "256")),
        hopper_forward=_flag(environ, "SINKATTN_HOPPER_FORWARD", "1"),
    )


_current: Settings | None = None


def current() -> Settings:
    """The settings in force (from the environment at first use)."""
    global _current
    if _current is None:
        _current = from_environment()
    return _current


def set(**fields) -> Settings:  # noqa: A001 - settings.set reads naturally
    """Replace the current settings by a copy with ``fields`` changed; returns the new one."""
    global _current
    _current = dataclasses.replace(current(), **fields)
    return _current


def reload() -> Settings:
    """Read the environment again (the current settings are discarded)."""
    global _current
    _current = from_environment()
    return _current


@contextlib.contextmanager
def override(**fields) -> Iterator[Settings]:
    """The current settings with ``fields`` changed, inside the block (not thread-local)."""
    global _current
    previous = current()
    _current = dataclasses.replace(previous, **fields)
    try:
        yield _current
    finally:
        _current = previous
