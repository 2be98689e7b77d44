"""SinkTracer: where the attention mass goes, per (prompt, step, layer, batch row, head).

    tracer = SinkTracer(tokenizer=[(pipe.tokenizer, 77), (pipe.tokenizer_3, 256)])
    with intervene(pipe, SinkSuppressProcessor(k=0, tracer=tracer)):   # k=0: analysis only
        for i, prompt in enumerate(prompts):
            tracer.begin(prompt_id=i, prompt=prompt)                      # before every generation
            pipe(prompt, max_sequence_length=256)                         # the T5 segment's length
            tracer.to_csv("sinks.csv")                                    # appends

What one attention call leaves behind (on the device, no host sync):
the processor hands over the (B, H, Nk) key mass (mean attention probability over the mass
queries); the tracer reduces it at once to what is kept (on the kernels' devices in three
launches per call: kernels/trace_stats.py for the key-mass columns, kernels/query_stats.py
and its merge for the sampled query statistics; elsewhere in torch ops) and writes that into
one preallocated device buffer (a flat float32 tensor that is reused from image to image and
grows by doubling, on the device, when an image needs more). The buffer reaches the host
in ONE copy per image: when the next ``begin`` starts, or on :meth:`finish_image`,
:meth:`rows`, :meth:`to_csv`. No ``.item()``/``.cpu()`` runs per call.

Kept per call, per batch row and per head, plus one "head-mean" row per batch row
(``head == -1``: the same quantities of the mass averaged over the heads):

    max_mass          the largest key mass (mass: mean attention probability over the mass
                      queries; a head's masses sum to 1)
    top_key_mass      the summed mass of its ``top`` largest keys (NOT the original study's
                      top-5 concentration, which is per query: see query_top5)
    text_share, image_share  summed mass on the text keys and on the image keys
    entropy           entropy (nats) of the key-mass distribution
    query_top5        the original study's top-5 concentration (ORIGINAL_STUDY.md 3.5):
                      the mean over image queries of each query row's top-5 probability sum;
                      estimated on ``query_sample`` image queries evenly spaced over the
                      mass queries, with the reference math (fp32 softmax of q k^T * scale)
                      on the device; NaN when the call record carries no q/k (the op gives
                      per-key mass only, and its kernels do not return per-query maxima)
    query_entropy     the mean over the same sampled queries of each row's entropy (nats)
    top_keys, top_mass        the ``top`` keys of largest mass and their mass (rank order;
                              equal masses by ascending key)
    selected_keys, selected_mass  the intervened keys and their (unintervened) mass

Rows are labelled by ``branch``: with classifier-free guidance the pipeline runs the
unconditional (negative prompt) and the conditional rows in one batch, unconditional first
(every diffusers pipeline: ``torch.cat([negative, positive])``); their text keys are the
negative prompt's tokens (default "", i.e. start, end and padding tokens) and the prompt's
tokens respectively. ``begin(cfg=False)`` labels all rows "cond" (a batch of prompts
without guidance); ``cfg=None`` (default) takes an even batch as [uncond, cond] halves.

Full per-key mass maps on request (``map_layers``/``map_steps``): for those calls the
head-mean mass of every key (and per head with ``map_heads=True``) is kept too, i.e. the
image-key mass as a heat map on the latent grid and the text-key mass per token.

Export: :meth:`finish_image` returns a :class:`TraceImage` (pyarrow tables, what
``sinkattn.experiment.atlas.TraceStore`` appends to the run folder); :meth:`rows` and
:meth:`to_csv` give the tidy long table of earlier versions, one row per (prompt, step,
layer, batch, head, role, rank), role "top" for the ``top`` keys of largest mass and
"selected" for the intervened keys, with the head's summaries on each row and

    key, mass, kind   the key's index in the attention's key sequence, its mass, "text"/"image"
    token             for text keys, the token string (given a tokenizer; needs a prompt)
    row, col          for image keys, the position on the layer's latent token grid

``begin`` starts a prompt: its rows carry ``prompt_id`` (and any other metadata given), and
with a tokenizer its text is what names the text keys. A tracer with a tokenizer therefore
refuses to record without a prompt (``begin`` not called, or called without ``prompt=``):
the first attention call raises a ValueError rather than leaving every token blank. It
also raises when the tokenizer segments do not add up to the text keys of a call (e.g. a
T5 length other than the pipeline's ``max_sequence_length``), which would label only some
text keys, or the wrong ones. Without a tokenizer ``begin`` is optional (``prompt_id`` is
then None) and text keys are described by index alone.

CUDA graphs: a call does only fixed-shape device work into the preallocated buffer, so a
forward can be captured; the bookkeeping (which slot, which step) is host code and runs
at capture only, so replays of one captured forward rewrite the slots of that capture.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["SinkTracer", "TraceImage", "long_table", "HEAD_MEAN"]

HEAD_MEAN = -1                 # the head index of the head-mean rows
_FIXED = 7                     # value columns before the top keys (see _COLUMNS)
_COLUMNS = ("max_mass", "top_key_mass", "text_share", "image_share", "entropy", "query_top5", "query_entropy")
_INITIAL_CAPACITY = 1 << 20    # floats (4 MiB); doubled on the device when an image needs more
_QUERY_TOP = 5                 # the original study's concentration width (H1D:119-120)


def _on_kernels(t: torch.Tensor) -> bool:
    """Whether the tracer's per-call reductions run on the Triton kernels for ``t``'s device."""
    from .ops import kernels_available

    return kernels_available(t.device)


def _with_head_mean(mass: torch.Tensor) -> torch.Tensor:
    """(B, H, Nk) float32 mass -> (B, H + 1, Nk): the heads, then their mean."""
    return torch.cat([mass, mass.mean(1, keepdim=True)], 1)


@dataclass
class _Call:
    """Host-side bookkeeping of one recorded call: where its block lies in the buffer."""

    offset: int
    batch: int
    heads: int
    width: int
    n_top: int
    n_sel: int
    n_keys: int
    text: tuple[int, int]
    image: tuple[int, int]
    grid: tuple[int, int] | None
    query_sample: int
    generation: int | None
    step: int
    timestep: float | None
    forward: int
    layer: str
    layer_index: int
    family: str
    intervened: bool
    map_offset: int = -1
    map_heads: bool = False


@dataclass
class TraceImage:
    """One image's trace on the host.

    meta: what ``begin`` was given (prompt_id, prompt, negative_prompt, cfg and any other
        keyword), plus ``grid`` (the full-resolution latent token grid, when known).
    heads: a pyarrow Table, one row per (call, batch row, head) plus the head-mean rows
        (head == -1); columns as in the module docstring plus the call's place (generation,
        step, timestep, forward, layer, layer_index, family, intervened), the batch row's
        (batch, branch, sample) and the key layout (n_keys, text_start/stop,
        image_start/stop, grid_rows/cols of this layer's image tokens).
    maps: a pyarrow Table of the full per-key mass of the calls chosen with map_layers /
        map_steps (head-mean rows, and per-head rows with map_heads), or None:
        image_mass (list, row-major on grid_rows x grid_cols) and text_mass (list, one per
        text key, in key order).
    tokens: {branch: {"token": [...], "kind": [...], "segment": [...]}}: the text keys'
        tokens per branch ("start", "end", "pad" or "word"), or {} without a tokenizer.
    """

    meta: dict
    heads: object
    maps: object | None = None
    tokens: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(self.heads.nbytes + (self.maps.nbytes if self.maps is not None else 0))


class SinkTracer:
    """Records sink statistics from a SinkSuppressProcessor (pass it as ``tracer=``).

    Args:
        tokenizer: None; a tokenizer (text keys are its tokens of the prompt, padded to the
            text length of the call); or a list of (tokenizer, n_tokens) segments in key order
            (SD3: [(pipe.tokenizer, 77), (pipe.tokenizer_3, max_sequence_length)]) whose
            n_tokens must add up to the text keys of every call that has any (ValueError
            otherwise). With a tokenizer, :meth:`begin` must give each generation's prompt.
        top: how many keys of largest mass to record per head.
        grid: (rows, cols) of the image tokens at full resolution, when no step clock
            (``sinkattn.gating.intervene``) provides it; None: square grids.
        query_sample: image queries per call on which the per-query top-5 concentration
            and entropy are computed (evenly spaced over the mass queries; 0: not computed).
            Needs q and k on the call record (``call.q``, ``call.k``; ``call.scale`` or
            1/sqrt(D)); without them those columns are NaN.
        map_layers: full per-key mass maps for these layers: layer indices, attention module
            names or fnmatch patterns ("transformer_blocks.1?.attn"), "all", or None (none).
        map_steps: ... at these steps (ints; None: every step).
        map_heads: also keep each head's map (B x H x Nk floats per call instead of B x Nk).
        device_buffer: None, or a flat float32 tensor to use as the buffer (it grows when
            too small); mostly for tests and benchmarks.
    """

    def __init__(self, tokenizer=None, top: int = 5, grid: tuple[int, int] | None = None, query_sample: int = 64,
                 map_layers=None, map_steps=None, map_heads: bool = False, device_buffer: torch.Tensor | None = None):
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        if query_sample < 0:
            raise ValueError(f"query_sample must be >= 0, got {query_sample}")
        self.tokenizer = tokenizer
        self.top = top
        self.grid = grid
        self.query_sample = int(query_sample)
        self.map_layers = map_layers
        self.map_steps = None if map_steps is None else ({map_steps} if isinstance(map_steps, int) else set(map_steps))
        self.map_heads = bool(map_heads)
        self._buf = device_buffer
        self._used = 0
        self._calls: list[_Call] = []
        self._meta: dict = {"prompt_id": None}
        self._prompt: str | None = None
        self._negative: str = ""
        self._cfg: bool | None = None
        self._passes: tuple[str, ...] | None = None
        self._token_cache: dict = {}
        self._checked_text: set[int] = set()
        self._step_key = None
        self._seen_in_step: dict[str, int] = {}
        self._seen_layers: set[str] = set()
        self._forward = -1
        self._grid_now = None
        self._query_index: dict = {}
        self._nan: dict = {}
        self._images: list[TraceImage] = []   # on the host, not yet exported
        self._image_no = 0                    # begin() count: which parts belong to the current image
        self._parts: list[int] = []           # the image number of each entry of _images
        self.host_copies = 0                  # device -> host transfers made (one per image)

    # -- the runner's side ----------------------------------------------------------------
    def begin(self, prompt_id=None, prompt: str | None = None, negative_prompt: str | None = None,
              cfg: bool | None = None, passes: tuple[str, ...] | None = None, **meta) -> None:
        """Start a new prompt (call it before each generation): rows from now on carry
        ``prompt_id`` and ``meta``; ``prompt`` gives the text keys of the conditional rows
        their token strings and is required when the tracer has a tokenizer;
        ``negative_prompt`` (default "") names the unconditional rows' text keys; ``cfg``:
        True/False whether the batch holds [uncond, cond] halves (None: when it is even);
        ``passes``: for pipelines that run the guidance branches as separate forwards of one
        step (Wan, Qwen-Image: ("cond", "uncond")), the branch of each forward in order."""
        self.flush()
        self._meta = {"prompt_id": prompt_id, **meta}
        self._prompt = prompt
        self._negative = negative_prompt or ""
        self._cfg = cfg
        self._passes = tuple(passes) if passes else None
        self._token_cache = {}
        self._seen_layers = set()
        self._forward = -1
        self._step_key = None
        self._image_no += 1

    def finish_image(self) -> TraceImage | None:
        """The current image's trace (one device-to-host copy), removed from the tracer so
        that a long run does not grow; None when nothing was recorded since ``begin``."""
        self.flush()
        mine = [im for im, no in zip(self._images, self._parts) if no == self._image_no]
        keep = [(im, no) for im, no in zip(self._images, self._parts) if no != self._image_no]
        self._images, self._parts = [im for im, _ in keep], [no for _, no in keep]
        return _concat_images(mine) if mine else None

    # -- the processor's side -------------------------------------------------------------
    def record(self, layer: str, layer_index: int, family: str, call, clock=None, intervened: bool = False) -> None:
        """Called by the processor once per attention call with a CallRecord (device tensors)."""
        if clock is not None and clock.step >= 0:
            key = (clock.generation, clock.step)
            step, timestep, generation, grid = clock.step, clock.timestep, clock.generation, clock.grid
        else:
            # No clock: a layer seen again starts the next forward, counted as the next step.
            if layer in self._seen_layers or self._forward < 0:
                self._forward += 1
                self._seen_layers = set()
            self._seen_layers.add(layer)
            key = (None, self._forward)
            step, timestep, generation, grid = self._forward, None, None, self.grid
        if key != self._step_key:
            self._step_key = key
            self._seen_in_step = {}
        forward = self._seen_in_step.get(layer, -1) + 1     # a second pass of the same step (separate CFG forwards)
        self._seen_in_step[layer] = forward
        grid = grid or self.grid
        mass = call.mass
        batch, heads, n_k = mass.shape
        t0, t1 = call.keys.text
        i0, i1 = call.keys.image
        if self.tokenizer is not None:
            self._check_text(layer, t1 - t0)
        n_top = min(self.top, n_k)
        sinks = call.sinks
        n_sel = 0 if sinks is None else sinks.shape[-1]
        width = _FIXED + 2 * n_top + 2 * n_sel
        rows = batch * (heads + 1)
        want_map = self._wants_map(layer, layer_index, step)
        map_size = batch * n_k * ((heads + 1) if (want_map and self.map_heads) else 1) if want_map else 0
        offset = self._reserve(rows * width + map_size, mass.device)
        block = self._buf[offset: offset + rows * width].view(batch, heads + 1, width)
        q, k = getattr(call, "q", None), getattr(call, "k", None)
        n_query = 0
        with torch.no_grad():
            m0, m1 = call.mass_queries
            sample = bool(self.query_sample and q is not None and k is not None and m1 > m0)
            full = None
            if _on_kernels(mass):
                from .launch import trace_mass_stats

                if sample:  # the heads' query columns first: the head-mean row averages them
                    n_query = self._query_stats(q, k, getattr(call, "scale", None), (m0, m1), block[:, :heads, 5:7])
                trace_mass_stats(mass, sinks, (t0, t1), (i0, i1), n_top, _FIXED, block,
                                 query="head_mean" if sample else "nan")
            else:
                m = mass.float()
                full = _with_head_mean(m)                                             # (B, H+1, Nk)
                values, indices = full.sort(dim=-1, descending=True, stable=True)  # equal masses by ascending key
                values, indices = values[..., :n_top], indices[..., :n_top]
                parts = [values[..., :1], values.sum(-1, keepdim=True),
                         full[..., t0:t1].sum(-1, keepdim=True), full[..., i0:i1].sum(-1, keepdim=True),
                         torch.special.xlogy(full, full).sum(-1, keepdim=True).neg(),
                         self._nans(batch, heads + 1, 2, m.device)]
                parts += [indices.float(), values]
                if n_sel:
                    sel = sinks if sinks.dim() == 3 else sinks[:, None, :].expand(batch, heads, n_sel)
                    sel_mass = m.gather(-1, sel)
                    fill = self._nans(batch, 1, n_sel, m.device)
                    parts += [torch.cat([sel.float(), fill], 1), torch.cat([sel_mass, fill], 1)]
                torch.cat(parts, -1, out=block)
                if sample:
                    n_query = self._query_stats(q, k, getattr(call, "scale", None), (m0, m1), block[:, :heads, 5:7])
                    block[:, heads, 5:7] = block[:, :heads, 5:7].mean(1)
            map_offset = -1
            if want_map:
                map_offset = offset + rows * width
                if full is None:
                    full = _with_head_mean(mass.float())
                src = full if self.map_heads else full[:, heads]
                self._buf[map_offset: map_offset + map_size].view_as(src).copy_(src)
        self._calls.append(_Call(offset, batch, heads, width, n_top, n_sel, n_k, (t0, t1), (i0, i1), grid, n_query,
                                 generation, step, timestep, forward, layer, layer_index, family, bool(intervened),
                                 map_offset, want_map and self.map_heads))
        self._grid_now = grid

    def _reserve(self, n: int, device) -> int:
        """Room for ``n`` floats in the device buffer: an offset. Grows (doubling) on the
        device when needed; the first call of an image on another device reallocates."""
        buf = self._buf
        if buf is not None and buf.device != torch.device(device) and self._used == 0:
            buf = None
        # Allocated outside inference mode (the pipelines run in it), so that a buffer made
        # during one generation can be written during the next, inside or outside it.
        with torch.inference_mode(False):
            if buf is None:
                self._buf = torch.empty(max(_INITIAL_CAPACITY, 2 * n), dtype=torch.float32, device=device)
            elif self._used + n > buf.numel():
                grown = torch.empty(max(2 * buf.numel(), self._used + n), dtype=torch.float32, device=buf.device)
                grown[: self._used].copy_(buf[: self._used])
                self._buf = grown
        offset = self._used
        self._used += n
        return offset

    def _nans(self, batch: int, rows: int, cols: int, device) -> torch.Tensor:
        key = (batch, rows, cols, str(device))
        t = self._nan.get(key)
        if t is None:
            t = self._nan[key] = torch.full((batch, rows, cols), math.nan, device=device)
        return t

    def _query_stats(self, q, k, scale, rows, into) -> int:
        """Per (batch, head): the mean over sampled image queries of the top-5 probability sum
        and of the row entropy, exact in fp32, written into ``into`` (B, H, 2); returns the
        number of sampled queries. On the kernels' devices one pass over the keys and a merge
        (kernels/query_stats.py: 0.78 ms per SD3-medium forward on the H200, probe20; ~12 ms
        as torch ops, probe18); elsewhere the softmax of the sampled rows in torch."""
        m0, m1 = rows
        n = min(self.query_sample, m1 - m0)
        key = (m0, m1, n, str(q.device))
        index = self._query_index.get(key)
        if index is None:
            index = self._query_index[key] = torch.linspace(m0, m1 - 1, n, device=q.device).round().long()
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        if q.dtype != torch.float64 and _on_kernels(q):
            from .launch import query_stats

            query_stats(q, k, index, scale, means_into=into)
            return n
        logits = torch.matmul(q.index_select(2, index).float() * scale, k.float().transpose(-1, -2))
        p = logits.softmax(-1)                                                       # (B, H, n, Nk)
        top5 = p.topk(min(_QUERY_TOP, p.shape[-1]), dim=-1).values.sum(-1).mean(-1)     # (B, H)
        ent = torch.special.xlogy(p, p).sum(-1).mean(-1).neg()
        into.copy_(torch.stack([top5, ent], -1))                                     # (B, H, 2)
        return n

    def _wants_map(self, layer: str, layer_index: int, step: int) -> bool:
        chosen = self.map_layers
        if chosen is None:
            return False
        if self.map_steps is not None and step not in self.map_steps:
            return False
        if chosen == "all":
            return True
        items = [chosen] if isinstance(chosen, (int, str)) else list(chosen)
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and item == layer_index:
                return True
            if isinstance(item, str) and (item == layer or fnmatch.fnmatchcase(layer, item)):
                return True
        return False

    def _check_text(self, layer: str, n_text: int) -> None:
        """With a tokenizer: a prompt to tokenize, and segments as long as the call's text."""
        if self._prompt is None:
            raise ValueError(
                "SinkTracer: this tracer has a tokenizer but no prompt to name the text keys with: "
                "call tracer.begin(prompt_id=..., prompt=...) before each generation (or build the "
                "tracer without tokenizer=)")
        if n_text == 0 or n_text in self._checked_text:
            return
        if isinstance(self.tokenizer, (list, tuple)):
            lengths = [int(length) for _, length in self.tokenizer]
            if sum(lengths) != n_text:
                raise ValueError(
                    f"SinkTracer: the tokenizer segments have lengths {lengths}, {sum(lengths)} text tokens "
                    f"in all, but attention layer {layer!r} has {n_text} text keys; give each segment the "
                    "length the pipeline pads its text to (SD3: [(pipe.tokenizer, 77), "
                    "(pipe.tokenizer_3, max_sequence_length)], max_sequence_length=256 by default)")
        self._checked_text.add(n_text)

    # -- the host side ----------------------------------------------------------------------
    def flush(self) -> None:
        """Copy what was recorded since the last flush to the host (one transfer) and turn it
        into a :class:`TraceImage` (kept until exported)."""
        if not self._calls:
            return
        host = self._buf[: self._used].cpu().numpy()       # the one device -> host copy
        self.host_copies += 1
        calls, self._calls, self._used = self._calls, [], 0
        self._images.append(self._image_of(calls, host))
        self._parts.append(self._image_no)

    def _branches(self, batch: int, forward: int = 0) -> tuple[list[str], list[int]]:
        if self._passes is not None:  # one branch per forward of the step
            return [self._passes[min(forward, len(self._passes) - 1)]] * batch, list(range(batch))
        cfg = self._cfg if self._cfg is not None else (batch % 2 == 0)
        if cfg and batch % 2 == 0:
            half = batch // 2
            return ["uncond"] * half + ["cond"] * half, list(range(half)) * 2
        return ["cond"] * batch, list(range(batch))

    def _image_of(self, calls: list[_Call], host: np.ndarray) -> TraceImage:
        import pyarrow as pa

        cols: dict[str, list] = {name: [] for name in _COLUMNS}
        ints: dict[str, list] = {name: [] for name in ("batch", "sample", "head")}
        per_call = []
        lists = {name: ([], []) for name in ("top_keys", "top_mass", "selected_keys", "selected_mass")}
        branches = []
        map_rows = []
        for c in calls:
            rows = c.batch * (c.heads + 1)
            block = host[c.offset: c.offset + rows * c.width].reshape(rows, c.width)
            for j, name in enumerate(_COLUMNS):
                cols[name].append(block[:, j])
            labels, samples = self._branches(c.batch, c.forward)
            ints["batch"].append(np.repeat(np.arange(c.batch, dtype=np.int16), c.heads + 1))
            ints["sample"].append(np.repeat(np.asarray(samples, dtype=np.int16), c.heads + 1))
            ints["head"].append(np.tile(np.r_[np.arange(c.heads), HEAD_MEAN].astype(np.int16), c.batch))
            branches.append(np.repeat(np.asarray(labels, dtype=object), c.heads + 1))
            start = _FIXED
            for name, n, as_int in (("top_keys", c.n_top, True), ("top_mass", c.n_top, False),
                                    ("selected_keys", c.n_sel, True), ("selected_mass", c.n_sel, False)):
                values, offsets = lists[name]
                chunk = block[:, start: start + n]
                start += n
                if name.startswith("selected"):
                    # the head-mean rows have no selected keys: empty lists
                    keep = np.tile(np.r_[np.ones(c.heads, bool), False], c.batch)
                    counts = np.where(keep, n, 0)
                    values.append(chunk[keep].reshape(-1))
                else:
                    counts = np.full(rows, n)
                    values.append(chunk.reshape(-1))
                offsets.append(counts)
            per_call.append(rows)
            if c.map_offset >= 0:
                map_rows.append((c, host, labels, samples))
        counts = np.asarray(per_call)
        grid_cols = [_grid_cols(c.image[1] - c.image[0], c.grid) for c in calls]
        meta_cols = {
            "generation": _nullable([c.generation for c in calls], counts, pa.int32()),
            "step": pa.array(np.repeat([c.step for c in calls], counts), pa.int32()),
            "timestep": _nullable([c.timestep for c in calls], counts, pa.float32()),
            "forward": pa.array(np.repeat([c.forward for c in calls], counts), pa.int16()),
            "layer": pa.array(np.repeat(np.asarray([c.layer for c in calls], dtype=object), counts), pa.string()),
            "layer_index": pa.array(np.repeat([c.layer_index for c in calls], counts), pa.int32()),
            "family": pa.array(np.repeat(np.asarray([c.family for c in calls], dtype=object), counts), pa.string()),
            "intervened": pa.array(np.repeat([c.intervened for c in calls], counts), pa.bool_()),
        }
        table = {"prompt_id": None, **meta_cols,
                 "batch": pa.array(np.concatenate(ints["batch"]), pa.int16()),
                 "branch": pa.array(np.concatenate(branches), pa.string()),
                 "sample": pa.array(np.concatenate(ints["sample"]), pa.int16()),
                 "head": pa.array(np.concatenate(ints["head"]), pa.int16()),
                 "n_keys": pa.array(np.repeat([c.n_keys for c in calls], counts), pa.int32()),
                 "text_start": pa.array(np.repeat([c.text[0] for c in calls], counts), pa.int32()),
                 "text_stop": pa.array(np.repeat([c.text[1] for c in calls], counts), pa.int32()),
                 "image_start": pa.array(np.repeat([c.image[0] for c in calls], counts), pa.int32()),
                 "image_stop": pa.array(np.repeat([c.image[1] for c in calls], counts), pa.int32()),
                 "grid_rows": pa.array(np.repeat([(c.image[1] - c.image[0]) // g if g else 0
                                                  for c, g in zip(calls, grid_cols)], counts), pa.int32()),
                 "grid_cols": pa.array(np.repeat([g or 0 for g in grid_cols], counts), pa.int32()),
                 "query_sample": pa.array(np.repeat([c.query_sample for c in calls], counts), pa.int32())}
        for name in _COLUMNS:
            table[name] = pa.array(np.concatenate(cols[name]), pa.float32())
        for name, (values, offsets) in lists.items():
            flat = np.concatenate(values) if values else np.zeros(0)
            flat = flat.astype(np.int32) if name.endswith("keys") else flat.astype(np.float32)
            off = np.concatenate([np.zeros(1, np.int64), np.cumsum(np.concatenate(offsets))]).astype(np.int32)
            table[name] = pa.ListArray.from_arrays(pa.array(off, pa.int32()), pa.array(flat))
        n = len(table["step"])
        table["prompt_id"] = _constant(self._meta.get("prompt_id"), n)
        heads = pa.table(table)
        maps = _maps_table(map_rows, self._meta.get("prompt_id"), grid_cols_of=lambda c: _grid_cols(
            c.image[1] - c.image[0], c.grid)) if map_rows else None
        meta = dict(self._meta, prompt=self._prompt, negative_prompt=self._negative, cfg=self._cfg,
                    grid=list(self._grid_now) if self._grid_now else None)
        tokens = {}
        if self.tokenizer is not None and self._prompt is not None:
            present = set(np.concatenate(branches).tolist()) if branches else set()
            n_text = max((c.text[1] - c.text[0] for c in calls), default=0)
            if n_text:
                for branch in sorted(present):
                    text = self._negative if branch == "uncond" else self._prompt
                    tokens[branch] = self._tokens(text, n_text)
        return TraceImage(meta=meta, heads=heads, maps=maps, tokens=tokens)

    def _tokens(self, text: str, n_text: int) -> dict:
        """{"token", "kind", "segment"} lists for the text keys, from the tokenizer segments."""
        key = (text, n_text)
        if key not in self._token_cache:
            segments = self.tokenizer if isinstance(self.tokenizer, (list, tuple)) else [(self.tokenizer, n_text)]
            out = {"token": [], "kind": [], "segment": []}
            for i, (tok, length) in enumerate(segments):
                enc = tok(text, padding="max_length", max_length=length, truncation=True)
                ids = list(enc.input_ids)
                mask = list(getattr(enc, "attention_mask", None) or [1] * len(ids))
                out["token"] += tok.convert_ids_to_tokens(ids)
                out["kind"] += [_token_kind(tok, t, m) for t, m in zip(ids, mask)]
                out["segment"] += [i] * len(ids)
            if len(out["token"]) != n_text:
                raise ValueError(f"SinkTracer: the tokenizer gave {len(out['token'])} tokens for {n_text} text keys")
            self._token_cache[key] = out
        return self._token_cache[key]

    # -- exports ----------------------------------------------------------------------------
    def _long(self):
        self.flush()
        return [long_table(im) for im in self._images]

    def rows(self) -> list[dict]:
        """Every per-head row recorded (and not yet exported with ``clear=True``), in the tidy
        long form (one dict per key kept: role, rank, key, mass, kind, token, row, col)."""
        out = []
        for t in self._long():
            out += t.to_pylist()
        return out

    def to_csv(self, path, clear: bool = True) -> int:
        """Append the long rows to ``path`` (a header only when the file is new or empty);
        returns the number of rows written. ``clear`` drops them from memory afterwards, so a
        long run over many prompts keeps exporting without growing or writing a row twice."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        tables = self._long()
        if not tables:
            return 0
        table = pa.concat_tables(tables, promote_options="permissive")
        fields = table.column_names
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        if not new:
            with open(path, newline="") as f:
                header = f.readline().rstrip("\r\n")
            import csv

            header = next(csv.reader([header]), None)
            if header:
                extra = [c for c in fields if c not in header]
                if extra:
                    raise ValueError(f"{path} has columns {header}; these rows add {extra}")
                table = pa.table({c: table[c] if c in fields else pa.nulls(len(table)) for c in header})
        table = _csv_ready(table)
        with open(path, "ab") as f:
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=new, quoting_style="needed"))
        if clear:
            self._images, self._parts = [], []
        return len(table)

    def to_parquet(self, path, clear: bool = True) -> int:
        """Write the long rows as a new part file in the directory ``path`` (part-00000.parquet,
        ...) so that earlier parts are never overwritten. (A run folder's trace lives in
        ``sinkattn.experiment.atlas.TraceStore`` instead: per-head rows, appendable.)"""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = self._long()
        if not tables:
            return 0
        table = pa.concat_tables(tables, promote_options="permissive")
        os.makedirs(path, exist_ok=True)
        part = len([f for f in os.listdir(path) if f.startswith("part-")])
        pq.write_table(table, os.path.join(path, f"part-{part:05d}.parquet"))
        if clear:
            self._images, self._parts = [], []
        return len(table)


# -- helpers ------------------------------------------------------------------------------------

def _constant(value, n: int):
    import pyarrow as pa

    if value is None:
        return pa.nulls(n, pa.string())
    return pa.repeat(pa.scalar(value), n)


def _nullable(values: list, counts, type_):
    """One value per call repeated over its rows; None becomes null."""
    import pyarrow as pa

    missing = np.repeat([v is None for v in values], counts)
    data = np.repeat([0 if v is None else v for v in values], counts)
    return pa.array(data, type_, mask=missing if missing.any() else None)


def _token_kind(tok, token_id: int, attended: int) -> str:
    if not attended:
        return "pad"
    if token_id == getattr(tok, "bos_token_id", None):
        return "start"
    if token_id == getattr(tok, "eos_token_id", None):
        return "end"
    if token_id == getattr(tok, "pad_token_id", None):
        return "pad"
    return "word"


def _maps_table(map_rows, prompt_id, grid_cols_of):
    import pyarrow as pa

    cols = {k: [] for k in ("generation", "step", "timestep", "forward", "layer", "layer_index", "batch", "branch",
                            "sample", "head", "grid_rows", "grid_cols")}
    image_mass, text_mass = [], []
    for c, host, labels, samples in map_rows:
        per = c.heads + 1 if c.map_heads else 1
        data = host[c.map_offset: c.map_offset + c.batch * per * c.n_keys].reshape(c.batch, per, c.n_keys)
        g = grid_cols_of(c) or 0
        n_image = c.image[1] - c.image[0]
        for b in range(c.batch):
            for h in range(per):
                head = HEAD_MEAN if (not c.map_heads or h == c.heads) else h
                for name, value in (("generation", -1 if c.generation is None else c.generation), ("step", c.step),
                                    ("timestep", math.nan if c.timestep is None else c.timestep),
                                    ("forward", c.forward), ("layer", c.layer), ("layer_index", c.layer_index),
                                    ("batch", b), ("branch", labels[b]), ("sample", samples[b]), ("head", head),
                                    ("grid_rows", n_image // g if g else 0), ("grid_cols", g)):
                    cols[name].append(value)
                image_mass.append(data[b, h, c.image[0]: c.image[1]].astype(np.float32))
                text_mass.append(data[b, h, c.text[0]: c.text[1]].astype(np.float32))
    types = dict(generation=pa.int32(), step=pa.int32(), timestep=pa.float32(), forward=pa.int16(),
                 layer=pa.string(), layer_index=pa.int32(), batch=pa.int16(), branch=pa.string(), sample=pa.int16(),
                 head=pa.int16(), grid_rows=pa.int32(), grid_cols=pa.int32())
    table = {"prompt_id": _constant(prompt_id, len(image_mass))}
    table.update({k: pa.array(v, types[k]) for k, v in cols.items()})
    table["image_mass"] = _list_of(image_mass)
    table["text_mass"] = _list_of(text_mass)
    return pa.table(table)


def _list_of(arrays):
    import pyarrow as pa

    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.float32()))


def _concat_images(images: list[TraceImage]) -> TraceImage:
    import pyarrow as pa

    if len(images) == 1:
        return images[0]
    heads = pa.concat_tables([im.heads for im in images], promote_options="permissive")
    maps = [im.maps for im in images if im.maps is not None]
    tokens = {}
    for im in images:
        tokens.update(im.tokens)
    return TraceImage(meta=images[-1].meta, heads=heads,
                      maps=pa.concat_tables(maps, promote_options="permissive") if maps else None, tokens=tokens)


def _csv_ready(table):
    """Booleans as Python writes them (True/False, as the csv module did), lists dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_boolean(col.type):
            col = pc.if_else(col, "True", "False")
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            continue
        cols[name] = col
    return pa.table(cols)


_LONG_DROP = ("top_keys", "top_mass", "selected_keys", "selected_mass", "n_keys", "text_start", "text_stop",
              "image_start", "image_stop", "grid_rows", "grid_cols")


def long_table(image: TraceImage, heads_only: bool = True):
    """The tidy long form of a trace (one row per kept key): the per-head columns of the
    image, its ``meta`` scalars, and role ("top"/"selected"), rank, key, mass, kind
    ("text"/"image"), token (text keys, given tokens) and row, col (image keys). Rows come
    in recording order: call, batch row, head, then the top keys and the selected keys."""
    import pyarrow as pa

    t = image.heads
    if heads_only:
        t = t.filter(pa.array(t["head"].to_numpy() >= 0))
    n = len(t)
    scalars = {k: v for k, v in image.meta.items()
               if k not in ("prompt", "negative_prompt", "cfg", "grid", "prompt_id") and _scalar(v)}
    srcs, roles, ranks, keys, masses = [], [], [], [], []
    for role, keys_col, mass_col in (("top", "top_keys", "top_mass"), ("selected", "selected_keys", "selected_mass")):
        if not n:
            break
        k = t[keys_col].combine_chunks()
        lengths = k.value_lengths().fill_null(0).to_numpy().astype(np.int64)
        total = int(lengths.sum())
        if not total:
            continue
        srcs.append(np.repeat(np.arange(n), lengths))
        ranks.append(np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        roles.append(np.full(total, 0 if role == "top" else 1, np.int8))
        keys.append(k.flatten().to_numpy().astype(np.int64))
        masses.append(t[mass_col].combine_chunks().flatten().to_numpy().astype(np.float64))
    if not srcs:
        return pa.table({"prompt_id": pa.array([], pa.string())})
    src, role, rank = np.concatenate(srcs), np.concatenate(roles), np.concatenate(ranks)
    key, mass = np.concatenate(keys), np.concatenate(masses)
    order = np.lexsort((rank, role, src))
    src, role, rank, key, mass = src[order], role[order], rank[order], key[order], mass[order]
    base = t.drop_columns([c for c in _LONG_DROP if c in t.column_names]).take(pa.array(src))
    cols = {name: base[name] for name in base.column_names}
    for name, value in scalars.items():
        if name not in cols:
            cols[name] = pa.repeat(pa.scalar(value), len(src)) if value is not None else pa.nulls(len(src))

    def col(name):
        return t[name].to_numpy()[src]

    t0, t1, i0, i1, gcols = col("text_start"), col("text_stop"), col("image_start"), col("image_stop"), col("grid_cols")
    is_text = (key >= t0) & (key < t1)
    is_image = (key >= i0) & (key < i1)
    kind = np.full(len(key), None, dtype=object)
    kind[is_text] = "text"
    kind[is_image] = "image"
    has_grid = is_image & (gcols > 0)
    pos = key - i0
    safe = np.where(gcols > 0, gcols, 1)
    token = np.full(len(key), None, dtype=object)
    if image.tokens:
        branch = np.asarray(base["branch"].to_numpy(zero_copy_only=False), dtype=object)
        for name, info in image.tokens.items():
            names = np.asarray(info["token"], dtype=object)
            sel = np.flatnonzero(is_text & (branch == name))
            idx = key[sel] - t0[sel]
            ok = (idx >= 0) & (idx < len(names))
            token[sel[ok]] = names[idx[ok]]
    cols.update(role=pa.array(np.where(role == 0, "top", "selected"), pa.string()), rank=pa.array(rank, pa.int32()),
                key=pa.array(key, pa.int64()), mass=pa.array(mass, pa.float64()),
                kind=pa.array(kind, pa.string()), token=pa.array(token, pa.string()),
                row=pa.array(np.where(has_grid, pos // safe, 0), pa.int32(), mask=~has_grid),
                col=pa.array(np.where(has_grid, pos % safe, 0), pa.int32(), mask=~has_grid))
    return pa.table(cols)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _grid_cols(n_image: int, grid) -> int | None:
    """Columns of the token grid of a layer with ``n_image`` image tokens: the full-resolution
    grid scaled down by the layer's factor (UNet levels), or a square grid."""
    if n_image <= 0:
        return None
    if grid is not None:
        rows, cols = grid
        factor = math.sqrt(rows * cols / n_image)
        c, r = round(cols / factor), round(rows / factor)
        if c * r == n_image:
            return c
    side = math.isqrt(n_image)
    return side if side * side == n_image else None
