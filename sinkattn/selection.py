"""Choosing what a call intervenes on, on the kernel path: the registry of controls.

Same contract as the reference (SPEC section 2), written separately so that the
equivalence tests compare two implementations. A control is one row of ``CONTROLS``: which
side it picks (keys, or queries), and how it ranks them. A name that is not a row is an
error everywhere (sinkattn.validation checks names against this table), so a new control
is one row here, its mirror in ``sinkattn.reference``, and nothing else.

Key controls pick per group (per (b, h) for select="head", by head-mean mass per b for
"shared") from the candidate keys: the most mass ("sink"), the least ("bottom") or a uniform
draw ("random"). Query controls pick query rows from the mass queries by their largest
attention probability ("high_outgoing_query": the original study's anti-sink control,
ablation_counterfactual_v3.py). Ties go to the lower index; indices are absolute positions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Control(NamedTuple):
    """side: "keys" or "queries"; rank: "largest" or "smallest" score first, or "uniform"
    (a draw); effect (query controls only): "shift" adds one constant to every logit of the
    picked rows, as the original did (softmax ignores it: a no-op by construction, kept to
    reproduce the original's control), "ablate" replaces the picked rows' outputs by
    eta * O + (1 - eta) * target (the query-side control that acts)."""

    side: str
    rank: str
    effect: str = ""


CONTROLS: dict[str, Control] = {
    "sink": Control("keys", "largest"),
    "bottom": Control("keys", "smallest"),
    "random": Control("keys", "uniform"),
    "high_outgoing_query": Control("queries", "largest", "shift"),
    "high_outgoing_query_ablate": Control("queries", "largest", "ablate"),
}


def control_of(name: str) -> Control:
    try:
        return CONTROLS[name]
    except KeyError:
        raise ValueError(f"control must be one of {tuple(CONTROLS)}, got {name!r}") from None


def random_uniforms(group_shape, candidates: tuple[int, int], generator, device) -> Tensor:
    """The random control's draw: (*group_shape, stop - start) uniform float32 numbers on
    ``device``, drawn exactly as the reference draws them (torch.rand on the generator's
    device; on ``device`` with its default generator when there is none). Ranked ascending,
    they order the candidates: the key of the smallest is the top-1.

    A generator on the device draws there: no host work, and the draw is captured by a CUDA
    graph (register the generator with the graph; each replay then draws afresh, reproducibly
    from the seed and the number of draws before it). A CPU generator draws on the host; the
    numbers reach the device through pinned memory without a host synchronisation, but a
    captured graph would replay the same numbers."""
    start, stop = candidates
    return _drawn(torch.rand, (*group_shape, stop - start), generator, device)


def _drawn(draw, shape, generator, device) -> Tensor:
    """``draw(shape)`` (torch.rand or torch.randn) on the generator's device (on ``device``
    with its default generator when there is none), then on ``device``: a CPU draw reaches a
    CUDA device through pinned memory, without a host synchronisation."""
    draw_device = generator.device if generator is not None else torch.device(device)
    numbers = draw(shape, generator=generator, device=draw_device)
    if numbers.device != torch.device(device):
        if numbers.device.type == "cpu" and torch.device(device).type == "cuda":
            numbers = numbers.pin_memory()
        numbers = numbers.to(device, non_blocking=True)
    return numbers


def value_noise(shape, std: float, generator, device) -> Tensor:
    """The value path's noise target: ``std`` times standard normal numbers of ``shape``
    (B, H, top_k, Dv), float32 on ``device``, drawn as the reference draws them (on the
    generator's device, or on ``device`` with its default generator when there is none)."""
    return _drawn(torch.randn, shape, generator, device).mul_(std)


def random_keys(group_shape, top_k: int, candidates: tuple[int, int], generator, device) -> Tensor:
    """A uniform draw of top_k distinct candidate keys per group: the first top_k positions
    of a random permutation, taken as the stable argsort of ``random_uniforms``."""
    uniform = random_uniforms(group_shape, candidates, generator, device)
    ranks = uniform.sort(dim=-1, stable=True).indices[..., :top_k]
    return ranks + candidates[0]


def ranked(score: Tensor, top_k: int, select: str, control: str, window: tuple[int, int]) -> Tensor:
    """The top_k indices of ``window`` by a (B, H, N) score (key mass, or query row peaks),
    per head (select="head": (B, H, top_k)) or by the head mean (select="shared": (B, top_k)),
    largest or smallest first as the control ranks."""
    start, stop = window
    largest = control_of(control).rank == "largest"
    per_group = score if select == "head" else score.mean(dim=1)
    part = per_group[..., start:stop]
    if top_k == 1:
        # argmax / argmin return the first extreme value: ties go to the lower index.
        ranks = (part.argmax if largest else part.argmin)(dim=-1, keepdim=True)
    else:
        # A stable sort keeps equal values in index order, so ties go to the lower index.
        ranks = part.sort(dim=-1, descending=largest, stable=True).indices[..., :top_k]
    return ranks + start if start else ranks


def per_head(sinks: Tensor, heads: int) -> Tensor:
    """(B, top_k) shared indices as (B, H, top_k); (B, H, top_k) unchanged."""
    if sinks.dim() == 3:
        return sinks
    return sinks[:, None, :].expand(sinks.shape[0], heads, sinks.shape[1])
