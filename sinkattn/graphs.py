"""Replaying a denoiser's forward from CUDA graphs (issue 15): the host work of a step
(diffusers' Python, every processor call, every kernel launch) is paid once per captured
graph instead of once per step.

    graphs = ForwardGraphs()
    with replay_forward(pipe.unet, graphs):
        image = pipe(prompt).images[0]

A forward is replayed when its inputs have the same structure, shapes, dtypes and devices
and the same non-tensor arguments as a captured one, and ``key()`` (the state outside the
inputs that changes what the forward does: the intervention's step gate) returns the same
value. The first forward of a new signature runs eagerly (it warms up Triton, cuBLAS and
the caches); the second is captured and replayed, and later ones are replayed: the tensor
inputs are copied into the graph's static inputs and its outputs are returned as clones.

Random draws on a CUDA generator replay afresh when the generator is registered with the
graphs (``generators``; the device's default generator always is): each replay draws at the
generator's current offset and advances it as the eager forward would, so a graphed run
draws the same numbers as an eager one from the same seed (the capture's warm-up forward
leaves the registered generators' states as it found them).

What a graph cannot hold, the caller must keep out (the runner does): host work that must
happen on every call (a tracer's records), random draws on a CPU generator (a graph would
replay the same numbers), and host-to-device copies of pageable memory (not capturable; a
capture that fails is reported once and its signature runs eagerly from then on).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["ForwardGraphs", "replay_forward"]

_EAGER = object()  # a signature whose capture failed, or whose inputs cannot be replayed


def _describe(leaf):
    """What a leaf of the inputs contributes to the signature: the layout of a tensor, the
    value of a constant; None for a leaf that forbids replay (an unhashable object)."""
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.requires_grad)
    try:
        hash(leaf)
    except TypeError:
        return None
    return ("value", type(leaf), leaf)


class _Graph:
    def __init__(self, graph, inputs, outputs, out_spec):
        self.graph, self.inputs, self.outputs, self.out_spec = graph, inputs, outputs, out_spec


class ForwardGraphs:
    """The captured graphs of one module's forward, by signature, in one memory pool
    (``pool``: a torch.cuda.graph_pool_handle() to share with other ForwardGraphs whose
    graphs never replay concurrently with these; the outputs are cloned on return, so no
    graph's result lives in the pool past its replay). ``generators``: CUDA generators the
    forward draws from, registered with every graph. ``captures``, ``replays`` and ``eager``
    count what happened (for tests and logs)."""

    def __init__(self, warmup_calls: int = 1, pool=None, generators=()):
        for generator in generators:
            if generator.device.type != "cuda":
                raise ValueError(f"a graph replays draws only from CUDA generators, got one on {generator.device}")
        self.generators = tuple(generators)
        self.warmup_calls = warmup_calls
        self._graphs: dict = {}
        self._seen: Counter = Counter()
        self._pool = pool
        self.captures = self.replays = self.eager = 0

    def __call__(self, forward, key, *args, **kwargs):
        flat, spec = tree_flatten((args, kwargs))
        described = [_describe(x) for x in flat]
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        if (None in described or not tensors or not all(t.is_cuda for t in tensors)
                or torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
                or torch.cuda.is_current_stream_capturing()):
            self.eager += 1
            return forward(*args, **kwargs)
        signature = (spec, tuple(described), key() if key is not None else None)
        entry = self._graphs.get(signature)
        if entry is None:
            if self._seen[signature] < self.warmup_calls:
                self._seen[signature] += 1
                self.eager += 1
                return forward(*args, **kwargs)
            entry = self._graphs[signature] = self._capture(forward, flat, spec)
        if entry is _EAGER:
            self.eager += 1
            return forward(*args, **kwargs)
        for static, leaf in zip(entry.inputs, flat):
            if isinstance(leaf, torch.Tensor):
                static.copy_(leaf)
        entry.graph.replay()
        self.replays += 1
        return tree_unflatten([t.clone() if isinstance(t, torch.Tensor) else t for t in entry.outputs],
                              entry.out_spec)

    def _capture(self, forward, flat, spec):
        static = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in flat]
        args, kwargs = tree_unflatten(static, spec)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        states = [generator.get_state() for generator in self.generators]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            # One warm-up on a side stream, as capture wants, with host synchronisations made
            # errors: a forward that reads the device (a key-padding mask's kept counts) is
            # found here, before a capture could fail inside CUDA.
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                with torch.cuda.stream(side):
                    forward(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
            torch.cuda.current_stream().wait_stream(side)
            for generator, state in zip(self.generators, states):  # the warm-up's draws are not the call's
                generator.set_state(state)
            with torch.cuda.graph(graph, pool=self._pool):
                out = forward(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure means: run this signature eagerly
            warnings.warn(f"sinkattn: this forward could not be captured in a CUDA graph and runs eagerly "
                          f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize()
            return _EAGER
        outputs, out_spec = tree_flatten(out)
        if not all(isinstance(t, torch.Tensor) or _describe(t) is not None for t in outputs):
            return _EAGER
        self.captures += 1
        return _Graph(graph, static, outputs, out_spec)


@contextlib.contextmanager
def replay_forward(module: torch.nn.Module, graphs: ForwardGraphs, key=None):
    """Route ``module``'s forward through ``graphs`` for the duration (its hooks still run on
    every call, eagerly). ``key``: a function returning the hashable state outside the
    inputs that selects the graph (None: the inputs alone). A module whose forward was
    already replaced (accelerate's offload hooks) is left alone."""
    if "forward" in vars(module) or hasattr(module, "_hf_hook"):
        yield
        return
    original = module.forward

    def forward(*args, **kwargs):
        return graphs(original, key, *args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward
