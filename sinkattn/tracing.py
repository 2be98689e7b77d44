"""SinkTracer: where the attention mass goes, per (prompt, step, layer, batch row, head).

    tracer = SinkTracer(tokenizer=[(pipe.tokenizer, 77), (pipe.tokenizer_3, 256)])
    with intervene(pipe, SinkSuppressProcessor(k=0, tracer=tracer)):   # k=0: analysis only
        for i, prompt in enumerate(prompts):
            tracer.begin(prompt_id=i, prompt=prompt)                      # before every generation
            pipe(prompt, max_sequence_length=256)                         # the T5 segment's length
            tracer.to_csv("sinks.csv")                                    # appends

``begin`` starts a prompt: its rows carry ``prompt_id`` (and any other metadata given), and
with a tokenizer its text is what names the text keys. A tracer with a tokenizer therefore
refuses to record without a prompt (``begin`` not called, or called without ``prompt=``):
the first attention call raises a ValueError rather than leaving every token blank. It
also raises when the tokenizer segments do not add up to the text keys of a call (e.g. a
T5 length other than the pipeline's ``max_sequence_length``), which would label only some
text keys, or the wrong ones. Without a tokenizer ``begin`` is optional (``prompt_id`` is
then None) and text keys are described by index alone.

Each attention call leaves a few small tensors on the device (top keys, their mass, the
intervened keys, shares); they are copied to the host together, once per step (when the
step changes, and on export). The table is tidy: one row per (prompt, step, layer, batch,
head, role, rank), role "top" for the ``top`` keys of largest mass and "selected" for the
intervened keys, with the head's summaries repeated on each row:

    max_mass          the largest key mass of the head (mass: mean attention probability
                      over the mass queries; a head's masses sum to 1)
    top_concentration the summed mass of its ``top`` largest keys
    text_share, image_share  summed mass on text keys and on image keys
    key, mass, kind   the key's index in the attention's key sequence, its mass, "text"/"image"
    token             for text keys, the token string (given a tokenizer; needs a prompt)
    row, col          for image keys, the position on the layer's latent token grid
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import torch

__all__ = ["SinkTracer"]

_SUMMARIES = ("max_mass", "top_concentration", "text_share", "image_share")


@dataclass
class _Pending:
    meta: dict
    text: tuple[int, int]
    image: tuple[int, int]
    batch: int
    heads: int
    n_top: int
    n_sel: int


class SinkTracer:
    """Records sink statistics from a SinkSuppressProcessor (pass it as ``tracer=``).

    Args:
        tokenizer: None; a tokenizer (text keys are its tokens of the prompt, padded to the
            text length of the call); or a list of (tokenizer, n_tokens) segments in key order
            (SD3: [(pipe.tokenizer, 77), (pipe.tokenizer_3, max_sequence_length)]) whose
            n_tokens must add up to the text keys of every call that has any (ValueError
            otherwise). With a tokenizer, :meth:`begin` must give each generation's prompt.
        top: how many keys of largest mass to record per head (and the concentration width).
        grid: (rows, cols) of the image tokens at full resolution, when no step clock
            (``sinkattn.gating.intervene``) provides it; None: square grids.
    """

    def __init__(self, tokenizer=None, top: int = 5, grid: tuple[int, int] | None = None):
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        self.tokenizer = tokenizer
        self.top = top
        self.grid = grid
        self._meta: dict = {"prompt_id": None}
        self._prompt: str | None = None
        self._token_cache: dict[int, list[str]] = {}
        self._checked_text: set[int] = set()
        self._pending: list[_Pending] = []
        self._packed: list[torch.Tensor] = []
        self._step_key = None
        self._seen_layers: set[str] = set()
        self._forward = -1
        self._rows: list[dict] = []

    # -- the runner's side ----------------------------------------------------------------
    def begin(self, prompt_id=None, prompt: str | None = None, **meta) -> None:
        """Start a new prompt (call it before each generation): rows from now on carry
        ``prompt_id`` and ``meta``; ``prompt`` gives the text keys their token strings and is
        required when the tracer has a tokenizer."""
        self.flush()
        self._meta = {"prompt_id": prompt_id, **meta}
        self._prompt = prompt
        self._token_cache = {}
        self._seen_layers = set()
        self._forward = -1

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
            self.flush()
            self._step_key = key
        mass = call.mass.float()
        batch, heads, n_k = mass.shape
        n_top = min(self.top, n_k)
        values, indices = mass.topk(n_top, dim=-1)                              # [B, H, top]
        total = mass.sum(-1)                                                    # [B, H]
        t0, t1 = call.keys.text
        i0, i1 = call.keys.image
        if self.tokenizer is not None:
            self._check_text(layer, t1 - t0)
        columns = [values[..., 0], values.sum(-1), mass[..., t0:t1].sum(-1) / total, mass[..., i0:i1].sum(-1) / total]
        packed = [torch.stack(columns, -1), indices.float(), values]
        n_sel = 0
        if call.sinks is not None:
            sinks = call.sinks if call.sinks.dim() == 3 else call.sinks[:, None, :].expand(batch, heads, -1)
            n_sel = sinks.shape[-1]
            packed += [sinks.float(), mass.gather(-1, sinks)]
        self._packed.append(torch.cat(packed, -1).reshape(batch * heads, -1).double())
        meta = dict(self._meta, generation=generation, step=step, timestep=timestep, layer=layer,
                    layer_index=layer_index, family=family, intervened=bool(intervened))
        self._pending.append(_Pending(meta, (t0, t1), (i0, i1), batch, heads, n_top, n_sel))
        self._grid_now = grid

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

    # -- export -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Copy the pending step to the host (one transfer) and turn it into rows."""
        if not self._pending:
            return
        width = max(t.shape[1] for t in self._packed)
        host = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=math.nan)
                          for t in self._packed]).cpu()
        grid = getattr(self, "_grid_now", None) or self.grid
        offset = 0
        for p in self._pending:
            block = host[offset: offset + p.batch * p.heads].tolist()
            offset += p.batch * p.heads
            self._rows.extend(self._rows_of(p, block, grid))
        self._pending, self._packed = [], []

    def _rows_of(self, p: _Pending, block, grid):
        n_image = p.image[1] - p.image[0]
        cols = _grid_cols(n_image, grid)
        tokens = self._tokens(p.text[1] - p.text[0]) if p.text[1] > p.text[0] else None
        for r, values in enumerate(block):
            base = dict(p.meta, batch=r // p.heads, head=r % p.heads)
            base.update(zip(_SUMMARIES, values[:4]))
            top_keys = values[4: 4 + p.n_top]
            top_mass = values[4 + p.n_top: 4 + 2 * p.n_top]
            start = 4 + 2 * p.n_top
            sel_keys = values[start: start + p.n_sel]
            sel_mass = values[start + p.n_sel: start + 2 * p.n_sel]
            for role, keys, masses in (("top", top_keys, top_mass), ("selected", sel_keys, sel_mass)):
                for rank, (key, m) in enumerate(zip(keys, masses)):
                    yield dict(base, role=role, rank=rank, **_describe(int(key), m, p, cols, tokens))

    def _tokens(self, n_text: int) -> list[str] | None:
        if self.tokenizer is None or self._prompt is None:
            return None
        if n_text not in self._token_cache:
            segments = self.tokenizer if isinstance(self.tokenizer, (list, tuple)) else [(self.tokenizer, n_text)]
            tokens: list[str] = []
            for tok, length in segments:
                ids = tok(self._prompt, padding="max_length", max_length=length, truncation=True).input_ids
                tokens += tok.convert_ids_to_tokens(ids)
            if len(tokens) != n_text:
                raise ValueError(f"SinkTracer: the tokenizer gave {len(tokens)} tokens for {n_text} text keys")
            self._token_cache[n_text] = tokens
        return self._token_cache[n_text]

    def rows(self) -> list[dict]:
        """Every row recorded (and not yet exported with ``clear=True``), as dicts."""
        self.flush()
        return list(self._rows)

    def to_csv(self, path, clear: bool = True) -> int:
        """Append the rows to ``path`` (a header only when the file is new or empty); returns
        the number of rows written. ``clear`` drops them from memory afterwards, so a long
        run over many prompts keeps exporting without growing or writing a row twice."""
        rows = self.rows()
        fields = _fields(rows)
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        if not new:
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if header is not None:
                extra = [c for c in fields if c not in header]
                if extra:
                    raise ValueError(f"{path} has columns {header}; these rows add {extra}")
                fields = header
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            if new:
                writer.writeheader()
            writer.writerows(rows)
        if clear:
            self._rows = []
        return len(rows)

    def to_parquet(self, path, clear: bool = True) -> int:
        """Write the rows as a new part file ``path`` (a directory: part-00000.parquet, ...)
        so that earlier parts are never overwritten. Needs pyarrow."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("SinkTracer.to_parquet needs pyarrow (pip install pyarrow); to_csv does not") from e
        rows = self.rows()
        os.makedirs(path, exist_ok=True)
        part = len([f for f in os.listdir(path) if f.startswith("part-")])
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(path, f"part-{part:05d}.parquet"))
        if clear:
            self._rows = []
        return len(rows)


def _fields(rows) -> list[str]:
    fields: dict[str, None] = {}
    for row in rows[:1] + rows[-1:]:
        fields.update(dict.fromkeys(row))
    return list(fields) or ["prompt_id"]


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


def _describe(key: int, mass: float, p: _Pending, cols, tokens) -> dict:
    out = {"key": key, "mass": mass, "kind": None, "token": None, "row": None, "col": None}
    if p.text[0] <= key < p.text[1]:
        out["kind"] = "text"
        if tokens is not None and key - p.text[0] < len(tokens):
            out["token"] = tokens[key - p.text[0]]
    elif p.image[0] <= key < p.image[1]:
        out["kind"] = "image"
        if cols:
            out["row"], out["col"] = divmod(key - p.image[0], cols)
    return out
