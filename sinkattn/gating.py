"""Which layers and which denoising steps get the intervention: a context manager that
installs a processor on a pipeline's denoiser and restores the original processors on exit.

    with intervene(pipe, SinkSuppressProcessor(k=1), layers=range(0, 12), steps=range(5, 28)):
        image = pipe(prompt).images[0]

Steps are counted from the denoiser's own forward (a forward pre-hook), before any of its
attention layers run, so the first forward of a generation is step 0 and nothing is
intervened "at step 0 always". A forward whose timestep equals the previous forward's
belongs to the same step (pipelines that run the conditional and unconditional passes as
two forwards). A new generation starts, and the count restarts at 0, when

  * the pipeline calls ``scheduler.set_timesteps`` (every diffusers pipeline does at the
    start of ``__call__``; patched for the duration when ``target`` is a pipeline), or
  * the timestep rises above the previous forward's (denoising timesteps only fall), or
  * the caller calls ``intervention.clock.new_generation()``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import math
from dataclasses import dataclass, field

import torch

from .processors import attention_modules

__all__ = ["StepClock", "Intervention", "intervene", "denoiser_of", "layer_blocks"]


class StepClock:
    """The denoising step of the current forward, as seen by a forward pre-hook.

    generation: index of the current generation (pipeline call), from 0.
    step: index of the current step within the generation, from 0 (-1 before the first).
    timestep: the timestep value of the current forward (float).
    grid: (rows, cols) of the image tokens at full resolution (after patching), or None.

    The hook reads nothing from the device: a timestep given as a tensor (diffusers' are on
    the GPU) is kept, and read when one of the four values is first asked for (the gate, when
    it gates by step or timestep; a tracer): forwards nobody asks about cost no host
    synchronisation, so a denoiser forward with the hook installed can be captured in a CUDA
    graph. Reading resolves every forward seen so far at once (one synchronisation).
    """

    _PENDING_MAX = 256  # forwards kept unread at most; then they are read (one synchronisation)

    def __init__(self):
        self._generation = -1
        self._step = -1
        self._timestep: float | None = None
        self._grid: tuple[int, int] | None = None
        self._last: float | None = None
        self._pending: list = []  # ("tick", timestep, grid) and ("new",) events, in order

    @property
    def generation(self) -> int:
        self._resolve()
        return self._generation

    @property
    def step(self) -> int:
        self._resolve()
        return self._step

    @property
    def timestep(self) -> float | None:
        self._resolve()
        return self._timestep

    @property
    def grid(self) -> tuple[int, int] | None:
        self._resolve()
        return self._grid

    def new_generation(self) -> None:
        self._pending.append(("new",))

    def tick(self, timestep, grid=None) -> None:
        """Called once per denoiser forward. ``timestep``: a number or a tensor (its first
        element counts; a tensor is copied on its device, not read); ``grid``: (rows, cols),
        or a function returning them, called when the grid is read."""
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.detach().flatten()[:1].clone()
        self._pending.append(("tick", timestep, grid))
        if len(self._pending) > self._PENDING_MAX:
            self._resolve()

    def _resolve(self) -> None:
        if not self._pending:
            return
        events, self._pending = self._pending, []
        tensors = [e[1] for e in events if e[0] == "tick" and isinstance(e[1], torch.Tensor)]
        values = iter(torch.cat([t.float().to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
        for event in events:
            if event[0] == "new":
                self._new_generation()
                continue
            _, timestep, grid = event
            t = next(values) if isinstance(timestep, torch.Tensor) else float(timestep)
            if self._generation < 0 or (self._last is not None and t > self._last):
                self._new_generation()
            if self._last is None or t != self._last:
                self._step += 1
            self._last = t
            self._timestep = t
            self._grid = grid() if callable(grid) else grid

    def _new_generation(self) -> None:
        self._generation += 1
        self._step = -1
        self._last = None

    def pre_hook(self, model):
        signature = inspect.signature(model.forward)
        patch = getattr(getattr(model, "config", None), "patch_size", None) or 1

        def hook(module, args, kwargs):
            bound = signature.bind_partial(*args, **kwargs).arguments
            timestep = bound.get("timestep")
            if timestep is None:
                return None
            sample = bound.get("hidden_states", bound.get("sample"))
            grid = None
            if isinstance(sample, torch.Tensor) and sample.dim() == 4:
                grid = (sample.shape[-2] // patch, sample.shape[-1] // patch)
            elif isinstance(bound.get("img_ids"), torch.Tensor):  # Flux: packed tokens with (0, row, col) ids
                grid = functools.partial(_grid_of_ids, bound["img_ids"])
            self.tick(timestep, grid)
            return None

        return hook


def _grid_of_ids(ids: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of Flux's image ids (0, row, col): read when asked for, one synchronisation."""
    ids = ids.reshape(-1, ids.shape[-1])
    rows, cols = torch.stack([ids[:, 1].max(), ids[:, 2].max()]).tolist()
    return int(rows) + 1, int(cols) + 1


def denoiser_of(target) -> torch.nn.Module:
    """A pipeline's transformer or unet, or the model itself."""
    for attr in ("transformer", "unet"):
        model = getattr(target, attr, None)
        if isinstance(model, torch.nn.Module):
            return model
    if isinstance(target, torch.nn.Module):
        return target
    raise TypeError(f"intervene: {type(target).__name__} is neither a diffusers pipeline with a "
                    ".transformer/.unet nor a torch.nn.Module")


def layer_blocks(model: torch.nn.Module) -> dict[str, int]:
    """Attention module name -> block index. A block is the module that holds attention
    modules (``transformer_blocks.3`` holds ``.attn`` and, in SD3.5, ``.attn2``); blocks are
    numbered in registration order, which is forward order for SD3 and Flux (Flux: double
    blocks 0..n-1, then the single blocks)."""
    blocks: dict[str, int] = {}
    out = {}
    for name, _ in attention_modules(model):
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        out[name] = blocks.setdefault(parent, len(blocks))
    return out


def _select_layers(model, layers) -> set[str] | None:
    if layers is None:
        return None
    blocks = layer_blocks(model)
    items = [layers] if isinstance(layers, (int, str)) else list(layers)
    chosen: set[str] = set()
    n_blocks = max(blocks.values()) + 1 if blocks else 0
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"layers: expected block indices or name patterns, got {item!r}")
        if isinstance(item, int):
            index = item + n_blocks if item < 0 else item
            if not 0 <= index < n_blocks:
                raise ValueError(f"layers: block index {item} is outside [0, {n_blocks})")
            chosen |= {name for name, b in blocks.items() if b == index}
        else:
            matched = {name for name in blocks if fnmatch.fnmatchcase(name, item)}
            if not matched:
                raise ValueError(f"layers: pattern {item!r} matches no attention module "
                                 f"(names look like {next(iter(blocks), '?')!r})")
            chosen |= matched
    return chosen


@dataclass
class Intervention:
    """What ``intervene`` yields: the model, the processor, the step clock, and
    ``step_state()``: what the step gate says of the current forward (None when nothing is
    gated by step or timestep; reading it reads the clock), the state a CUDA graph of the
    forward depends on besides its inputs (sinkattn.graphs)."""

    model: torch.nn.Module
    processor: object
    clock: StepClock
    layers: set[str] | None = field(default=None)
    step_state: object = None


@contextlib.contextmanager
def intervene(target, processor, layers=None, steps=None, timesteps=None):
    """Install ``processor`` on every attention module of ``target``'s denoiser, intervening
    only in the given layers and steps; restore the original processors (and remove the
    hooks) on exit, also on exceptions.

    Args:
        target: a diffusers pipeline (its .transformer or .unet) or the model itself.
        processor: a SinkSuppressProcessor (anything with ``gate``, ``clock`` and ``bind``).
        layers: block indices (see :func:`layer_blocks`; negative from the end) and/or
            fnmatch patterns on attention module names ("transformer_blocks.1*.attn").
            None: every layer.
        steps: step indices (an int, iterable or range) of each generation, counted from 0 at
            the denoiser's first forward. None: every step.
        timesteps: (lo, hi), intervene where lo <= timestep <= hi. None: every timestep.

    Layers and steps outside the gate run the stock math (plain SDPA); a tracer on the
    processor still records them. Gating by ``steps`` or ``timesteps`` reads the forward's
    timestep on the host once per forward (the first attention call asks the clock); gating
    by layers alone reads nothing from the device.
    """
    model = denoiser_of(target)
    allowed = _select_layers(model, layers)
    step_set = None
    if steps is not None:
        step_set = {steps} if isinstance(steps, int) else set(steps)
    if timesteps is not None:
        lo, hi = (float(x) for x in timesteps)
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"timesteps must be a (lo, hi) pair with lo <= hi, got {timesteps!r}")
    clock = StepClock()

    def gate(name: str) -> bool:
        if allowed is not None and name not in allowed:
            return False
        if step_set is not None and clock.step not in step_set:
            return False
        if timesteps is not None and (clock.timestep is None or not lo <= clock.timestep <= hi):
            return False
        return True

    def step_state():
        if step_set is None and timesteps is None:
            return None
        return ((step_set is None or clock.step in step_set),
                (timesteps is None or (clock.timestep is not None and lo <= clock.timestep <= hi)))

    originals = dict(model.attn_processors)
    previous = (processor.gate, processor.clock)
    scheduler = getattr(target, "scheduler", None) if target is not model else None
    patched = had_own = False
    handle = model.register_forward_pre_hook(clock.pre_hook(model), with_kwargs=True)
    try:
        if scheduler is not None and hasattr(scheduler, "set_timesteps"):
            had_own = "set_timesteps" in vars(scheduler)
            original_set = scheduler.set_timesteps

            @functools.wraps(original_set)  # keeps the signature pipelines inspect
            def set_timesteps(*args, **kwargs):
                clock.new_generation()
                return original_set(*args, **kwargs)

            scheduler.set_timesteps = set_timesteps
            patched = True
        processor.bind(model)
        processor.gate, processor.clock = gate, clock
        model.set_attn_processor(processor)
        yield Intervention(model=model, processor=processor, clock=clock, layers=allowed, step_state=step_state)
    finally:
        handle.remove()
        if patched and had_own:
            scheduler.set_timesteps = original_set
        elif patched:
            del scheduler.set_timesteps  # the class method shows again
        model.set_attn_processor(originals)
        processor.gate, processor.clock = previous
