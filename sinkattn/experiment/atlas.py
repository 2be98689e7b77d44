"""The sink atlas of a run folder: per-head traces stored per image, a reader, and figures.

Storage (``RUN/atlas/``, one set per shard; ``SUFFIX`` is "" or ".shard-I-of-N"):

    heads{SUFFIX}.arrows   one row per (image, step, layer, forward, batch row, head) of the
                           traced images, plus head-mean rows (head == -1); the columns of
                           :class:`sinkattn.tracing.TraceImage` plus prompt_id, seed, condition
    maps{SUFFIX}.arrows    full per-key mass maps (image keys on the latent grid, text keys per
                           token) of the calls the tracer was asked to map; absent when none
    index{SUFFIX}.jsonl    one line per image: its key (prompt_id, seed, condition), the byte
                           range of its batch in each file, its tokens per branch, its meta

Why an Arrow IPC stream (``.arrows``, zstd-compressed buffers) and not Parquet: a Parquet
file ends in a footer that indexes every row group, so it cannot be appended to without
rewriting it, and a kill while rewriting loses the shard; a stream is a schema followed by
record batches, so one image is one batch appended with a single write + fsync, exactly
like a line of results.jsonl. The file stays a valid stream that pyarrow
(``pa.ipc.open_stream``), polars (``pl.read_ipc_stream``) and DuckDB read as is; the index
makes resuming and reading one image cheap. Resume rules follow ``store.py``: an image is
written first, its index line second; on opening, bytes past the last indexed image (a
write cut by a kill) are cut off, a torn index line is cut, and an image already indexed
is never written twice. Parquet stays available through ``export_parquet``, CSV through
``export_csv`` (the long table of earlier versions).

Reader: :func:`read_atlas` returns a pandas DataFrame (``backend="polars"`` for polars),
:func:`iter_images` yields one image at a time (memory-flat figures), :func:`read_tokens`
the text tokens per image and branch.

Figures (matplotlib, each ends in ``plots._finish`` so the random-weights banner shows):
:func:`figure2` (the original study's Figure 2 per layer over the steps: max incoming mass,
top-5 concentration, text share), :func:`sink_locations` (top-1 sinks on the latent grid
and as tokens, start/end/padding tokens included), :func:`overlay_figure` (the sink heat
map over the generated images, baseline and every condition side by side) and
:func:`token_figure` (text-key mass per token).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import Counter

import numpy as np

from .store import RecordStore, _append_bytes, read_records, record_key, shard_suffix

__all__ = ["ATLAS_DIR", "TraceStore", "atlas_entries", "export_csv", "export_parquet", "figure2", "image_heat",
           "iter_images", "overlay", "overlay_figure", "read_atlas", "read_tokens", "sink_locations", "token_figure",
           "trace_summary", "write_atlas_figures", "heat_rgba"]

ATLAS_DIR = "atlas"
SCHEMA_VERSION = 1
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


# -- schemas ------------------------------------------------------------------------------------

def _schemas():
    import pyarrow as pa

    lst_i, lst_f = pa.list_(pa.int32()), pa.list_(pa.float32())
    key = [("prompt_id", pa.int64()), ("seed", pa.int64()), ("condition", pa.string())]
    call = [("generation", pa.int32()), ("step", pa.int32()), ("timestep", pa.float32()), ("forward", pa.int16()),
            ("layer", pa.string()), ("layer_index", pa.int32())]
    heads = pa.schema(key + call + [
        ("family", pa.string()), ("intervened", pa.bool_()), ("batch", pa.int16()), ("branch", pa.string()),
        ("sample", pa.int16()), ("head", pa.int16()), ("n_keys", pa.int32()), ("text_start", pa.int32()),
        ("text_stop", pa.int32()), ("image_start", pa.int32()), ("image_stop", pa.int32()),
        ("grid_rows", pa.int32()), ("grid_cols", pa.int32()), ("query_sample", pa.int32()),
        ("max_mass", pa.float32()), ("top_key_mass", pa.float32()), ("text_share", pa.float32()),
        ("image_share", pa.float32()), ("entropy", pa.float32()), ("query_top5", pa.float32()),
        ("query_entropy", pa.float32()), ("top_keys", lst_i), ("top_mass", lst_f), ("selected_keys", lst_i),
        ("selected_mass", lst_f)])
    maps = pa.schema(key + call + [
        ("batch", pa.int16()), ("branch", pa.string()), ("sample", pa.int16()), ("head", pa.int16()),
        ("grid_rows", pa.int32()), ("grid_cols", pa.int32()), ("image_mass", lst_f), ("text_mass", lst_f)])
    return {"heads": heads, "maps": maps}


def _conform(table, schema, key: dict):
    """``table`` with the key columns set and every column cast to the store's schema."""
    import pyarrow as pa

    n = len(table)
    cols = []
    for f in schema:
        if f.name in key:
            cols.append(pa.repeat(pa.scalar(key[f.name], f.type), n) if key[f.name] is not None
                        else pa.nulls(n, f.type))
        elif f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(cols, schema=schema).combine_chunks()


def _stream_parts(table, schema) -> tuple[bytes, bytes]:
    """(schema message bytes, record batch message bytes) of ``table`` as an IPC stream."""
    import pyarrow as pa

    options = pa.ipc.IpcWriteOptions(compression="zstd")
    head = pa.BufferOutputStream()
    pa.ipc.new_stream(head, schema, options=options).close()
    prefix = head.getvalue().to_pybytes()[: -len(_EOS)]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    if not data.startswith(prefix) or not data.endswith(_EOS):  # pragma: no cover - an Arrow format change
        raise RuntimeError("sinkattn atlas: unexpected Arrow IPC stream layout")
    return prefix, data[len(prefix): -len(_EOS)]


# -- the store ------------------------------------------------------------------------------------

class TraceStore:
    """Appends traced images to ``RUN/atlas/`` (one writer per shard, as results.jsonl).

        store = TraceStore(run_dir, shard)                    # once per run
        store.append(tracer.finish_image(), prompt_id=p, seed=s, condition="baseline", tag=t)
    """

    def __init__(self, run_dir: str, shard: tuple[int, int] = (0, 1)):
        self.folder = os.path.join(os.path.abspath(run_dir), ATLAS_DIR)
        os.makedirs(self.folder, exist_ok=True)
        suffix = shard_suffix(tuple(shard))
        self.paths = {what: os.path.join(self.folder, f"{what}{suffix}.arrows") for what in ("heads", "maps")}
        self.index = RecordStore(os.path.join(self.folder, f"index{suffix}.jsonl"))
        self.schemas = _schemas()
        for what, path in self.paths.items():
            _cut_to_index(path, [r.get(what) for r in self.index.records])

    def __contains__(self, key) -> bool:
        return tuple(key) in self.index

    def __len__(self) -> int:
        return len(self.index)

    def append(self, image, prompt_id=None, seed=None, condition=None, **extra) -> bool:
        """Store one :class:`~sinkattn.tracing.TraceImage` under (prompt_id, seed, condition)
        (defaults: its meta's, condition "baseline"); False when that key is stored already
        or ``image`` is None. ``extra`` (e.g. tag=) goes into the index line."""
        if image is None:
            return False
        meta = image.meta
        key = {"prompt_id": meta.get("prompt_id") if prompt_id is None else prompt_id,
               "seed": meta.get("seed") if seed is None else seed,
               "condition": meta.get("condition", "baseline") if condition is None else condition}
        if key["prompt_id"] is None or key["seed"] is None:
            raise ValueError("TraceStore.append: the image needs a prompt_id and a seed (begin(prompt_id=..., "
                             "seed=...) or append(..., prompt_id=..., seed=...))")
        key = {"prompt_id": int(key["prompt_id"]), "seed": int(key["seed"]), "condition": str(key["condition"])}
        if record_key(key) in self.index:
            return False
        line = dict(key, schema=SCHEMA_VERSION, tokens=image.tokens,
                    meta={k: v for k, v in meta.items() if _jsonable(v)}, **extra)
        for what in ("heads", "maps"):
            table = getattr(image, what)
            if table is None or not len(table):
                line[what] = None
                continue
            line[what], line[f"{what}_schema"] = self._write(what, _conform(table, self.schemas[what], key))
            line[f"{what}_rows"] = len(table)
        return self.index.append(line)

    def _write(self, what: str, table) -> list[int]:
        path = self.paths[what]
        prefix, batch = _stream_parts(table, self.schemas[what])
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size == 0:
            _append_bytes(path, prefix + batch)
            return [len(prefix), len(prefix) + len(batch)], len(prefix)
        with open(path, "rb") as fh:
            head = fh.read(len(prefix))
        if head != prefix:
            raise ValueError(f"{path} was written with another schema (another sinkattn version); move it away or "
                             "use another --out folder")
        _append_bytes(path, batch)
        return [size, size + len(batch)], len(prefix)


def _cut_to_index(path: str, ranges: list) -> None:
    """Cut bytes past the last indexed batch (an image written, its index line not: a kill
    in between), so that the next batch follows the last indexed one."""
    if not os.path.exists(path):
        return
    end = max([r[1] for r in ranges if r] or [0])
    size = os.path.getsize(path)
    if size < end:
        raise ValueError(f"{path} is shorter ({size} bytes) than its index says ({end}): the atlas is damaged; "
                         "move the atlas folder away to trace again")
    if size > end:
        with open(path, "rb+") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())


def _jsonable(v) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


# -- reading --------------------------------------------------------------------------------------

def _index_files(run_dir: str) -> list[str]:
    pattern = re.compile(r"^index(\.shard-\d+-of-\d+)?\.jsonl$")
    files = sorted(glob.glob(os.path.join(run_dir, ATLAS_DIR, "index*.jsonl")))
    return [f for f in files if pattern.match(os.path.basename(f))]


def atlas_entries(run_dir: str) -> list[dict]:
    """The index lines of every shard (one per image, first wins), each with ``_shard`` (its
    file suffix), sorted by (prompt_id, seed)."""
    seen: dict = {}
    for path in _index_files(run_dir):
        suffix = os.path.basename(path)[len("index"): -len(".jsonl")]
        for entry in read_records(path, strict=False):
            seen.setdefault(record_key(entry), dict(entry, _shard=suffix))
    return sorted(seen.values(), key=lambda e: (e["prompt_id"], e["seed"], e["condition"]))


def _read_tables(run_dir: str, entries: list[dict], what: str):
    """{id(entry): pyarrow Table} of the entries' batches, read by byte range."""
    import pyarrow as pa

    out = {}
    by_file: dict[str, list] = {}
    for e in entries:
        if e.get(what):
            by_file.setdefault(e["_shard"], []).append(e)
    for suffix, group in by_file.items():
        path = os.path.join(run_dir, ATLAS_DIR, f"{what}{suffix}.arrows")
        if not os.path.exists(path):
            continue
        with open(path, "rb") as fh:
            prefix = fh.read(group[0][f"{what}_schema"])       # the schema message opens the file
            for e in group:
                start, end = e[what]
                fh.seek(start)
                data = prefix + fh.read(end - start)
                out[id(e)] = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    return out


def iter_images(run_dir: str, prompt_ids=None, conditions=None, maps: bool = False, batch: int = 16):
    """Yield (index entry, TraceImage) per stored image (``maps``: with its maps), reading
    ``batch`` images at a time: figures over a whole study stay memory-flat."""
    from ..tracing import TraceImage

    entries = _select(atlas_entries(run_dir), prompt_ids, conditions)
    for i in range(0, len(entries), batch):
        chunk = entries[i: i + batch]
        heads = _read_tables(run_dir, chunk, "heads")
        mp = _read_tables(run_dir, chunk, "maps") if maps else {}
        for e in chunk:
            if id(e) not in heads:
                continue
            meta = dict(e.get("meta", {}), prompt_id=e["prompt_id"], seed=e["seed"], condition=e["condition"])
            yield e, TraceImage(meta=meta, heads=heads[id(e)], maps=mp.get(id(e)), tokens=e.get("tokens") or {})


def _select(entries, prompt_ids, conditions):
    if prompt_ids is not None:
        wanted = {prompt_ids} if isinstance(prompt_ids, int) else set(prompt_ids)
        entries = [e for e in entries if e["prompt_id"] in wanted]
    if conditions is not None:
        wanted = {conditions} if isinstance(conditions, str) else set(conditions)
        entries = [e for e in entries if e["condition"] in wanted]
    return entries


def read_atlas(run_dir: str, what: str = "heads", long: bool = False, prompt_ids=None, conditions=None,
               backend: str = "pandas"):
    """The stored traces as one frame: ``what="heads"`` (per-head rows, head-mean rows at
    head == -1) or ``"maps"``; ``long=True``: the tidy one-row-per-key form (role, rank,
    key, mass, kind, token, row, col; per-head rows only). ``backend``: "pandas",
    "polars" or "arrow" (a pyarrow Table)."""
    import pyarrow as pa

    from ..tracing import long_table

    if what not in ("heads", "maps"):
        raise ValueError(f"what must be 'heads' or 'maps', got {what!r}")
    tables = []
    for _, image in iter_images(run_dir, prompt_ids, conditions, maps=what == "maps"):
        if what == "maps":
            if image.maps is not None:
                tables.append(image.maps)
        else:
            tables.append(long_table(image) if long else image.heads)
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        table = _schemas()[what].empty_table()
    if backend == "arrow":
        return table
    if backend == "polars":
        import polars as pl

        return pl.from_arrow(table)
    return table.to_pandas()


def read_tokens(run_dir: str, backend: str = "pandas"):
    """One row per (image, branch, text key): prompt_id, seed, condition, branch, position
    (index among the text keys), token, kind ("start", "end", "pad", "word"), segment."""
    import pyarrow as pa

    rows = {k: [] for k in ("prompt_id", "seed", "condition", "branch", "position", "token", "kind", "segment")}
    for e in atlas_entries(run_dir):
        for branch, info in (e.get("tokens") or {}).items():
            n = len(info["token"])
            rows["prompt_id"] += [e["prompt_id"]] * n
            rows["seed"] += [e["seed"]] * n
            rows["condition"] += [e["condition"]] * n
            rows["branch"] += [branch] * n
            rows["position"] += list(range(n))
            rows["token"] += info["token"]
            rows["kind"] += info["kind"]
            rows["segment"] += info["segment"]
    table = pa.table(rows)
    return table if backend == "arrow" else table.to_pandas()


def export_csv(run_dir: str, path: str) -> int:
    """The long table of every stored image as one CSV (the format of ``SinkTracer.to_csv``);
    returns the number of rows."""
    import pyarrow.csv as pacsv

    from ..tracing import _csv_ready, long_table

    written = 0
    with open(path, "wb") as fh:
        for _, image in iter_images(run_dir):
            table = _csv_ready(long_table(image))
            pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=written == 0))
            written += len(table)
    return written


def export_parquet(run_dir: str, path: str, what: str = "heads") -> int:
    """The stored ``what`` ("heads" or "maps") as one Parquet file; returns the rows."""
    import pyarrow.parquet as pq

    table = read_atlas(run_dir, what=what, backend="arrow")
    pq.write_table(table, path, compression="zstd")
    return len(table)


# -- per-image summaries (trace.jsonl) ------------------------------------------------------------

def _np(table, name):
    return table[name].to_numpy(zero_copy_only=False)


def _first_keys(table) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_element(table["top_keys"], 0).to_numpy(zero_copy_only=False).astype(np.int64)


def trace_summary(image, grid=None) -> dict:
    """What trace.jsonl keeps per traced image (what ``plots.sink_atlas`` and :func:`figure2`
    draw), for the conditional rows (the unconditional rows under ``branches``):

    steps, layers, layer_index; per [step][layer], means over heads (and forwards):
    max_mass (largest key mass), query_top5 (the original's top-5 concentration, sampled;
    None where not measured), text_top_share (share of heads whose top key is a text key),
    text_share (text-key mass share), heads (rows counted); image_top_positions
    {"row,col": n} (top keys on the latent grid of layers at full resolution),
    text_top_tokens {token: n} and text_top_kinds {token: kind}; text_share_mean,
    heads_counted, grid, branch."""
    heads = image.heads
    grid = list(grid) if grid is not None else image.meta.get("grid")
    branches = {}
    branch_col = _np(heads, "branch")
    for branch in ("cond", "uncond"):
        sel = np.flatnonzero((branch_col == branch) & (_np(heads, "head") >= 0))
        if len(sel):
            branches[branch] = _summary_of(heads.take(sel), image.tokens.get(branch), grid)
    main = branches.get("cond") or next(iter(branches.values()), _summary_of(heads.slice(0, 0), None, grid))
    out = dict(main, branch="cond" if "cond" in branches else None)
    out["branches"] = {b: s for b, s in branches.items() if b != "cond"}
    return out


def _summary_of(t, tokens, grid) -> dict:
    steps_all = _np(t, "step") if len(t) else np.zeros(0, int)
    li_all = _np(t, "layer_index") if len(t) else np.zeros(0, int)
    names = _np(t, "layer") if len(t) else np.zeros(0, object)
    steps = sorted(set(steps_all.tolist()))
    layer_ids = sorted(set(li_all.tolist()))
    layer_name = dict(zip(li_all.tolist(), names.tolist()))
    out = {"steps": steps, "layers": [layer_name[i] for i in layer_ids], "layer_index": layer_ids,
           "grid": grid, "image_top_positions": {}, "text_top_tokens": {}, "text_top_kinds": {},
           "heads_counted": int(len(t))}
    if not len(t):
        out.update(max_mass=[], query_top5=[], text_top_share=[], text_share=[], heads=[], text_share_mean=None)
        return out
    s_idx = np.searchsorted(steps, steps_all)
    l_idx = np.searchsorted(layer_ids, li_all)
    shape = (len(steps), len(layer_ids))
    first = _first_keys(t)
    t0, t1 = _np(t, "text_start"), _np(t, "text_stop")
    is_text = (first >= t0) & (first < t1)

    def cell_mean(values):
        values = np.asarray(values, dtype=np.float64)
        ok = ~np.isnan(values)
        total = np.zeros(shape)
        count = np.zeros(shape)
        np.add.at(total, (s_idx[ok], l_idx[ok]), values[ok])
        np.add.at(count, (s_idx[ok], l_idx[ok]), 1)
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in mean], count

    out["max_mass"], count = cell_mean(_np(t, "max_mass"))
    out["query_top5"], _ = cell_mean(_np(t, "query_top5"))
    out["text_top_share"], _ = cell_mean(is_text.astype(float))
    out["text_share"], _ = cell_mean(_np(t, "text_share"))
    out["heads"] = count.astype(int).tolist()
    out["text_share_mean"] = float(np.nanmean(_np(t, "text_share")))
    # where the top keys lie
    i0, gc, gr = _np(t, "image_start"), _np(t, "grid_cols"), _np(t, "grid_rows")
    full = (gr == grid[0]) & (gc == grid[1]) if grid else (gc > 0)
    img = (first >= i0) & (first < _np(t, "image_stop")) & full & (gc > 0)
    pos = first[img] - i0[img]
    cols = gc[img]
    cells = Counter(f"{r},{c}" for r, c in zip((pos // cols).tolist(), (pos % cols).tolist()))
    out["image_top_positions"] = dict(cells)
    text_pos = (first - t0)[is_text]
    if tokens is not None:
        names_ = tokens["token"]
        kinds = tokens["kind"]
        counted = Counter(int(p) for p in text_pos.tolist())
        toks: Counter = Counter()
        for p, n in counted.items():
            if 0 <= p < len(names_):
                toks[names_[p]] += n
                out["text_top_kinds"][names_[p]] = kinds[p]
        out["text_top_tokens"] = dict(toks)
    else:
        out["text_top_tokens"] = dict(Counter(f"#{int(p)}" for p in text_pos.tolist()))
    return out


# -- figures --------------------------------------------------------------------------------------

def _plots():
    from . import plots

    return plots


def _pool(summaries: list[dict], key: str, branch: str = "cond"):
    """(steps, layer labels, mean grid [layer, step]) of ``key`` over the summaries, each
    cell weighted by its head count."""
    steps, layers = [], []
    items = []
    for s in summaries:
        s = _branch(s, branch)
        if s is None or not s.get(key):
            continue
        items.append(s)
        steps += [x for x in s["steps"] if x not in steps]
        for i, name in zip(s["layer_index"], s["layers"]):
            if (i, name) not in layers:
                layers.append((i, name))
    steps.sort()
    layers.sort()
    total = np.zeros((len(layers), len(steps)))
    count = np.zeros_like(total)
    for s in items:
        weights = s.get("heads") or [[1] * len(s["layers"]) for _ in s["steps"]]
        for si, step in enumerate(s["steps"]):
            for li, (i, name) in enumerate(zip(s["layer_index"], s["layers"])):
                v = s[key][si][li]
                if v is None:
                    continue
                w = weights[si][li] or 1
                r, c = layers.index((i, name)), steps.index(step)
                total[r, c] += v * w
                count[r, c] += w
    grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return steps, layers, grid


def _branch(summary: dict, branch: str):
    if branch in (None, "cond") or summary.get("branch") == branch:
        return summary
    return (summary.get("branches") or {}).get(branch)


def figure2(summaries: list[dict], path: str, branch: str = "cond", banner: str = "") -> str:
    """The original study's Figure 2 quantities per layer over the denoising steps, pooled
    over the traced images (``branch`` rows: "cond" by default, "uncond" for the negative
    prompt's rows): (a) max incoming mass, (b) top-5 concentration (mean over image queries
    of each query's top-5 probability sum; sampled queries), (c) share of heads whose top
    key is a text token, (d) max incoming mass over the steps at a quarter, half and three
    quarters of the depth (the original's layers 6, 12, 18 of 24)."""
    plt = _plots()._plt()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    panels = (("max_mass", "max incoming mass", "magma"), ("query_top5", "top-5 concentration (per query)", "viridis"),
              ("text_top_share", "share of heads whose top key is text", "coolwarm"))
    for ax, (key, title, cmap) in zip(axes, panels):
        steps, layers, grid = _pool(summaries, key, branch)
        if not layers or np.isnan(grid).all():
            why = "not measured: no q/k on the call records" if key == "query_top5" and layers else "no trace"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            im = ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap,
                           vmin=0 if key == "text_top_share" else None, vmax=1 if key == "text_top_share" else None)
            fig.colorbar(im, ax=ax, fraction=0.046)
            tick = max(1, len(steps) // 10)
            ax.set_xticks(range(0, len(steps), tick), [str(s) for s in steps[::tick]], fontsize=7)
            ltick = max(1, len(layers) // 12)
            ax.set_yticks(range(0, len(layers), ltick), [str(i) for i, _ in layers[::ltick]], fontsize=7)
        ax.set_xlabel("denoising step")
        ax.set_ylabel("layer (attention module index)")
        ax.set_title(title, fontsize=10)
    ax = axes[3]
    steps, layers, grid = _pool(summaries, "max_mass", branch)
    if layers:
        picks = sorted({min(len(layers) - 1, round(len(layers) * f)) for f in (0.25, 0.5, 0.75)})
        for r in picks:
            ax.plot(steps, grid[r], marker="o", ms=3, label=f"layer {layers[r][0]}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trace", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("max incoming mass")
    ax.set_title("max incoming mass over the steps", fontsize=10)
    n = sum(1 for s in summaries if _branch(s, branch))
    fig.suptitle(f"Figure 2 of the original study, per layer over the steps ({branch} rows of {n} traced images)",
                 fontsize=11)
    return _plots()._finish(fig, path, banner)


_KIND_COLORS = {"start": "tab:orange", "end": "tab:red", "pad": "0.55", "word": "tab:purple", None: "tab:purple"}


def sink_locations(summaries: list[dict], path: str, branch: str = "cond", top_tokens: int = 20,
                   banner: str = "") -> str:
    """Where the heads' top keys lie, pooled over the traced images: on the latent grid
    (image keys) and as tokens (text keys; start, end and padding tokens coloured apart)."""
    plt = _plots()._plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    items = [s for s in (_branch(s, branch) for s in summaries) if s]
    rows = max([s["grid"][0] for s in items if s.get("grid")] or [1])
    cols = max([s["grid"][1] for s in items if s.get("grid")] or [1])
    heat = np.zeros((rows, cols))
    for s in items:
        for pos, n in s.get("image_top_positions", {}).items():
            r, c = (int(x) for x in pos.split(","))
            if r < rows and c < cols:
                heat[r, c] += n
    total = sum(s.get("heads_counted", 0) for s in items) or 1
    ax = axes[0]
    im = ax.imshow(heat / total, cmap="inferno", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of (step, layer, head) top keys")
    ax.set_title(f"image-key sinks on the {rows}x{cols} latent grid", fontsize=10)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    counts: Counter = Counter()
    kinds: dict = {}
    for s in items:
        counts.update(s.get("text_top_tokens", {}))
        kinds.update(s.get("text_top_kinds", {}))
    ax = axes[1]
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_tokens]
    if best:
        ax.barh(range(len(best)), [n / total for _, n in best], color=[_KIND_COLORS.get(kinds.get(t)) for t, _ in best])
        ax.set_yticks(range(len(best)), [f"{t} ({kinds[t]})" if kinds.get(t) not in (None, "word") else t
                                         for t, _ in best], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("share of (step, layer, head) top keys")
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=k) for k, c in _KIND_COLORS.items() if k],
                  fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no text-token sinks", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("text sinks as tokens", fontsize=10)
    fig.suptitle(f"Sink locations ({branch} rows of {len(items)} traced images)", fontsize=11)
    return _plots()._finish(fig, path, banner)


def image_heat(image, branch: str = "cond", layers=None, steps=None) -> tuple[np.ndarray | None, str]:
    """(heat map on the full latent grid, source) of one traced image: the mean image-key
    mass of its maps ("maps", when the tracer kept maps), else the mass of the heads' top
    keys summed per grid cell ("top keys"); None when there is no image key on a grid."""
    def chosen(t):
        keep = _np(t, "branch") == branch
        if layers is not None:
            keep &= np.isin(_np(t, "layer_index"), list(layers))
        if steps is not None:
            keep &= np.isin(_np(t, "step"), list(steps))
        return keep

    maps = image.maps
    if maps is not None and len(maps):
        keep = chosen(maps) & (_np(maps, "head") == -1) & (_np(maps, "grid_cols") > 0)
        sel = np.flatnonzero(keep)
        if len(sel):
            sub = maps.take(sel)
            shapes = list(zip(_np(sub, "grid_rows").tolist(), _np(sub, "grid_cols").tolist()))
            shape = Counter(shapes).most_common(1)[0][0]
            acc = np.zeros(shape)
            n = 0
            for i, s in enumerate(shapes):
                if s == shape:
                    acc += np.asarray(sub["image_mass"][i].values.to_numpy(), dtype=np.float64).reshape(shape)
                    n += 1
            return acc / max(n, 1), "maps"
    t = image.heads
    keep = chosen(t) & (_np(t, "head") >= 0) & (_np(t, "grid_cols") > 0)
    sel = np.flatnonzero(keep)
    if not len(sel):
        return None, "none"
    sub = t.take(sel)
    gr, gc = _np(sub, "grid_rows"), _np(sub, "grid_cols")
    shape = Counter(zip(gr.tolist(), gc.tolist())).most_common(1)[0][0]
    same = (gr == shape[0]) & (gc == shape[1])
    sub = sub.filter(same)
    i0 = np.repeat(_np(sub, "image_start"), sub["top_keys"].combine_chunks().value_lengths().to_numpy())
    keys = sub["top_keys"].combine_chunks().flatten().to_numpy().astype(np.int64)
    mass = sub["top_mass"].combine_chunks().flatten().to_numpy().astype(np.float64)
    pos = keys - i0
    ok = (pos >= 0) & (pos < shape[0] * shape[1])
    heat = np.bincount(pos[ok], weights=mass[ok], minlength=shape[0] * shape[1]).reshape(shape)
    return heat / max(len(sub), 1), "top keys"


def heat_rgba(heat: np.ndarray, size: tuple[int, int], cmap: str = "inferno", alpha: float = 0.6):
    """The heat map as an RGBA PIL image of ``size`` (width, height), stretched from its
    smallest to its largest value: colour from ``cmap``, opacity growing with the value
    (transparent at the smallest), for laying over an image."""
    from matplotlib import colormaps
    from PIL import Image

    h = np.nan_to_num(np.asarray(heat, dtype=np.float64))
    lo, hi = (float(h.min()), float(h.max())) if h.size else (0.0, 0.0)
    norm = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    small = Image.fromarray((norm * 255).astype(np.uint8), mode="L")
    big = np.asarray(small.resize(size, Image.BILINEAR), dtype=np.float64) / 255.0
    rgba = colormaps[cmap](big)
    rgba[..., 3] = np.clip(big * alpha * 1.4, 0, alpha)
    return Image.fromarray((rgba * 255).astype(np.uint8), mode="RGBA")


def overlay(image, heat: np.ndarray, alpha: float = 0.6, cmap: str = "inferno"):
    """``image`` (PIL) with the heat map laid over it (upsampled to its size)."""
    base = image.convert("RGBA")
    return _alpha(base, heat_rgba(heat, base.size, cmap, alpha)).convert("RGB")


def _alpha(base, top):
    from PIL import Image

    return Image.alpha_composite(base, top)


def overlay_figure(run_dir: str, prompt_id: int, seed: int, path: str, records: list[dict] | None = None,
                   banner: str = "", max_conditions: int = 8) -> str | None:
    """The images of every condition of (prompt_id, seed) side by side (top row) and the
    same images with the baseline's sink heat map laid over them (bottom row: where the
    baseline's sinks are, on what each condition made). None when nothing is traced."""
    from PIL import Image

    from .store import merged_records

    images = list(iter_images(run_dir, prompt_ids=[prompt_id], conditions=["baseline"], maps=True))
    images = [im for e, im in images if e["seed"] == seed]
    if not images:
        return None
    heat, source = image_heat(images[0])
    if heat is None:
        return None
    records = records if records is not None else merged_records(run_dir)
    mine = [r for r in records if r["prompt_id"] == prompt_id and r["seed"] == seed]
    mine.sort(key=lambda r: r["condition"] != "baseline")
    mine = mine[:max_conditions]
    root = os.path.realpath(run_dir)
    plt = _plots()._plt()
    fig, axes = plt.subplots(2, max(1, len(mine)), figsize=(2.6 * max(1, len(mine)), 5.6), squeeze=False)
    for j, r in enumerate(mine):
        im = None
        try:  # a record's image path stays inside the run folder; a bad one is an empty cell (the report warns)
            path_img = os.path.realpath(os.path.join(root, str(r.get("image", ""))))
            if os.path.commonpath([root, path_img]) == root and os.path.isfile(path_img):
                with Image.open(path_img) as fh:
                    im = fh.convert("RGB")
        except Exception:  # noqa: BLE001 - ValueError (a NUL in the path), PIL's decoder errors
            im = None
        for i in range(2):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if im is not None:
                ax.imshow(np.asarray(im if i == 0 else overlay(im, heat)))
        axes[0][j].set_title(r["condition"].replace("_", "\n", 2), fontsize=7)
    axes[1][0].set_ylabel(f"baseline sinks ({source})", fontsize=8)
    prompt = mine[0]["prompt"] if mine else ""
    fig.suptitle(f"{prompt_id}: {prompt[:80]} (seed {seed})", fontsize=9)
    return _plots()._finish(fig, path, banner)


def token_figure(image, path: str, branch: str = "cond", banner: str = "", max_tokens: int = 48) -> str | None:
    """Text-key mass per token of one traced image: the head-mean text mass of its maps
    (mean over the mapped layers and steps), else the top-key mass per text token; start,
    end and padding tokens are shown (the padding run folded into one bar)."""
    info = image.tokens.get(branch)
    if not info:
        return None
    n = len(info["token"])
    mass = np.zeros(n)
    source = "top keys"
    maps = image.maps
    if maps is not None and len(maps):
        keep = (_np(maps, "branch") == branch) & (_np(maps, "head") == -1)
        sel = np.flatnonzero(keep)
        rows = [np.asarray(maps["text_mass"][int(i)].values.to_numpy()) for i in sel]
        rows = [r for r in rows if len(r) == n]
        if rows:
            mass = np.mean(rows, axis=0)
            source = "maps"
    if source == "top keys":
        t = image.heads
        sel = np.flatnonzero((_np(t, "branch") == branch) & (_np(t, "head") >= 0))
        sub = t.take(sel)
        lengths = sub["top_keys"].combine_chunks().value_lengths().to_numpy()
        t0 = np.repeat(_np(sub, "text_start"), lengths)
        t1 = np.repeat(_np(sub, "text_stop"), lengths)
        keys = sub["top_keys"].combine_chunks().flatten().to_numpy().astype(np.int64)
        m = sub["top_mass"].combine_chunks().flatten().to_numpy().astype(np.float64)
        ok = (keys >= t0) & (keys < t1) & (t1 - t0 == n)
        mass = np.bincount(keys[ok] - t0[ok], weights=m[ok], minlength=n)[:n] / max(len(sub), 1)
    labels, values, kinds = [], [], []
    pads = [i for i, k in enumerate(info["kind"]) if k == "pad"]
    for i in range(n):
        if info["kind"][i] == "pad":
            continue
        labels.append(info["token"][i])
        values.append(mass[i])
        kinds.append(info["kind"][i])
    if pads:
        labels.append(f"{info['token'][pads[0]]} x{len(pads)}")
        values.append(float(mass[pads].sum()))
        kinds.append("pad")
    labels, values, kinds = labels[:max_tokens], values[:max_tokens], kinds[:max_tokens]
    plt = _plots()._plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(labels) + 2), 3.6))
    ax.bar(range(len(labels)), values, color=[_KIND_COLORS.get(k) for k in kinds])
    ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
    ax.set_ylabel(f"text-key mass ({source})")
    meta = image.meta
    ax.set_title(f"{meta.get('prompt_id')}: text sinks as tokens ({branch} row)", fontsize=10)
    return _plots()._finish(fig, path, banner)


def write_atlas_figures(run_dir: str, summaries: list[dict] | None = None, banner: str = "",
                        max_overlays: int = 4) -> list[str]:
    """The atlas figures of a run folder into ``plots/``: atlas_figure2.png,
    atlas_sink_locations.png (from ``summaries``, default trace*.jsonl's lines), and per
    traced (prompt, seed), up to ``max_overlays``, overlay_pPROMPT_sSEED.png and
    tokens_pPROMPT_sSEED.png (from the atlas). Returns the paths written."""
    from .store import merged_records

    plot_dir = os.path.join(run_dir, "plots")
    if summaries is None:
        summaries = [t["trace"] for t in merged_records(run_dir, "trace")]
    made = []
    if summaries:
        made.append(figure2(summaries, os.path.join(plot_dir, "atlas_figure2.png"), banner=banner))
        made.append(sink_locations(summaries, os.path.join(plot_dir, "atlas_sink_locations.png"), banner=banner))
    entries = [e for e in atlas_entries(run_dir) if e["condition"] == "baseline"][:max_overlays]
    records = merged_records(run_dir) if entries else []
    for e in entries:
        name = f"p{e['prompt_id']:05d}_s{e['seed']}"
        p = overlay_figure(run_dir, e["prompt_id"], e["seed"], os.path.join(plot_dir, f"overlay_{name}.png"),
                           records=records, banner=banner)
        if p:
            made.append(p)
        for _, image in iter_images(run_dir, prompt_ids=[e["prompt_id"]], conditions=["baseline"], maps=True):
            if image.meta.get("seed") == e["seed"]:
                p = token_figure(image, os.path.join(plot_dir, f"tokens_{name}.png"), banner=banner)
                if p:
                    made.append(p)
    # an earlier report's overlays of other images would show beside these: removed
    if os.path.isdir(plot_dir):
        for name in os.listdir(plot_dir):
            path = os.path.join(plot_dir, name)
            if name.startswith(("overlay_p", "tokens_p")) and name.endswith(".png") and path not in made:
                os.remove(path)
    return made
