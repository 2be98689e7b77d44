"""Choosing the intervened keys from the (B, H, Nk) key mass on the kernel path.

Same contract as the reference (SPEC section 2), written separately so that the
equivalence tests compare two implementations: per-head or shared (head-mean) groups,
the top_k of the candidate range by mass ("sink"), the bottom_k ("bottom"), or a uniform
draw ("random"); ties go to the lower index; indices are absolute key positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_keys(group_shape, top_k: int, candidates: tuple[int, int], generator, device) -> Tensor:
    """A uniform draw of top_k distinct candidate keys per group: the first top_k positions
    of a random permutation, taken as the argsort of uniform numbers drawn on the
    generator's device (on ``device`` with its global RNG when no generator is given)."""
    start, stop = candidates
    draw_device = generator.device if generator is not None else device
    uniform = torch.rand((*group_shape, stop - start), generator=generator, device=draw_device)
    ranks = uniform.sort(dim=-1, stable=True).indices[..., :top_k]
    return (ranks + start).to(device=device, dtype=torch.int64)


def ranked_keys(mass: Tensor, top_k: int, select: str, control: str, candidates: tuple[int, int]) -> Tensor:
    """The top_k ("sink") or bottom_k ("bottom") candidate keys by mass, per head
    (select="head": (B, H, top_k)) or by head-mean mass (select="shared": (B, top_k))."""
    start, stop = candidates
    score = mass if select == "head" else mass.mean(dim=1)
    window = score[..., start:stop]
    if top_k == 1:
        # argmax / argmin return the first extreme value: ties go to the lower index.
        ranks = (window.argmax if control == "sink" else window.argmin)(dim=-1, keepdim=True)
    else:
        # A stable sort keeps equal values in index order, so ties go to the lower index.
        ranks = window.sort(dim=-1, descending=control == "sink", stable=True).indices[..., :top_k]
    return ranks + start if start else ranks


def per_head(sinks: Tensor, heads: int) -> Tensor:
    """(B, top_k) shared indices as (B, H, top_k); (B, H, top_k) unchanged."""
    if sinks.dim() == 3:
        return sinks
    return sinks[:, None, :].expand(sinks.shape[0], heads, sinks.shape[1])
