"""The paired study: for every prompt and seed, the baseline and every condition from the
same initial latents, each image scored, each record appended atomically.

    from sinkattn.experiment import preset_config, run
    run(preset_config("tiny").merged({"out": "runs/tiny"}))

Order of work for one (prompt, seed): draw the latents (CPU generator, ``seed``; or, with
latents="original", a generator on the pipeline's device handed to every call); make the
baseline (traced, for the sink atlas) or read it back from disk; make every pending
condition with a fresh processor (a random control's processor is seeded from (seed,
condition), so an image never depends on what ran before it); score the group; append a
trace line, then the records. A kill anywhere loses at most the unwritten records of one
group; their images are regenerated with the same bytes. A rerun with metrics that the
folder's records lack scores them on the stored images (metrics*.jsonl, see store.py).

One process per run folder (per shard): the folder's lock is taken before anything is
written, and everything that can refuse a run is checked before the folder is made
(:func:`plan`, which --dry-run runs too).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
import warnings
import zlib
from dataclasses import dataclass

from .config import RunConfig
from .prompts import load_prompts
from .store import (
    FolderLock, RecordStore, atomic_write_bytes, atomic_write_text, merged_records, metric_key, record_key,
    results_files, shard_suffix,
)

__all__ = ["Plan", "RunInterrupted", "RunResult", "check_out", "image_relpath", "plan", "resolve_execution", "run"]

SCHEMA_VERSION = 1


@dataclass
class RunResult:
    out: str
    shard: tuple[int, int]
    written: int
    skipped: int
    report_written: bool
    scored: int = 0  # metric values scored on stored images (metrics an earlier run did not compute)


def resolve_execution(cfg: RunConfig) -> tuple[tuple[int, int], str]:
    """(shard index, shard count) and the device: --shard wins; else RANK / WORLD_SIZE (set by
    torchrun and accelerate launch); a multi-process CUDA run uses cuda:LOCAL_RANK."""
    import torch

    env_world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    env_rank = int(os.environ.get("RANK", "0") or 0)
    if cfg.shard is not None:
        shard = (int(cfg.shard[0]), int(cfg.shard[1]))
    else:
        shard = (env_rank, env_world)
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    device = cfg.device
    if device is None:
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0") or 0) if env_world > 1 else 0
            device = f"cuda:{local}"
        else:
            device = "cpu"
    return shard, device


def image_relpath(condition: str, prompt_id: int, seed: int) -> str:
    return os.path.join("images", condition, f"p{prompt_id:05d}_s{seed}.png")


def _merged_config(cfg: RunConfig, out: str) -> dict:
    """config.json after this run. A run folder holds one study: refuse to mix images made
    with other generation settings (conditions and metrics may grow: the union of condition
    groups is kept)."""
    path = os.path.join(out, "config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        # a field an older sinkattn did not write had its default value there
        defaults = RunConfig().generation_fingerprint()
        diffs = [f"{k}: {old.get(k, defaults[k])!r} there, {v!r} now" for k, v in cfg.generation_fingerprint().items()
                 if old.get(k, defaults[k]) != v]
        if diffs:
            raise ValueError(f"{out} holds a run made with other settings ({'; '.join(diffs)}); "
                             "use another --out folder, or the same settings to resume it")
        groups = old.get("conditions", [])
        for g in cfg.to_dict()["conditions"]:
            if g not in groups:
                groups.append(g)
        merged = dict(cfg.to_dict(), conditions=groups)
    else:
        merged = cfg.to_dict()
    merged.pop("shard", None)
    return merged


def check_out(out: str | None) -> str:
    """The run folder as an absolute path, refused in one line (path and reason) when it
    cannot be one: a file, a path under a file, a folder that is not writable. Checked
    before anything is made, so that a refused start leaves nothing behind."""
    if not out:
        raise ValueError("out: a run folder is required (--out DIR)")
    path = os.path.abspath(out)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        kind = "is a file, not a folder" if os.path.isfile(existing) else "is not a folder"
        raise ValueError(f"--out {out}: {existing} {kind}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the folder" if existing == path else f"{existing} (where it would be made)"
        raise ValueError(f"--out {out}: {where} is not writable")
    return path


@contextlib.contextmanager
def _claimed(out: str, shard: tuple[int, int]):
    """Make the run folder and hold its lock (one per shard) for the whole run. Why the
    cleanup: a start that fails (no model, no scorer weights, Ctrl-C) must not leave an
    empty folder, or a lock file in an empty folder, behind; only what this run made, and
    only while nothing else is in it, is removed."""
    made = []
    folder = out
    while not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    lock = FolderLock(os.path.join(out, f".lock{shard_suffix(shard)}"))
    new_lock = not os.path.exists(lock.path)
    try:
        os.makedirs(out, exist_ok=True)
        lock.acquire()
    except OSError as err:
        _remove_empty(out, made, None)
        raise ValueError(f"--out {out}: {err.strerror or err}") from None
    # FolderBusy: the folder is in use; it is not ours to clean up
    try:
        yield lock
    finally:
        lock.release()
        _remove_empty(out, made, lock.path if new_lock else None)


def _remove_empty(out: str, made: list[str], lock_path: str | None) -> None:
    """Remove ``lock_path`` if it is all ``out`` holds, then the folders in ``made``
    (innermost first) while they are empty."""
    if lock_path and os.path.isdir(out) and os.listdir(out) == [os.path.basename(lock_path)]:
        os.remove(lock_path)
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or gone): it is not ours to remove
            return


def _processor_seed(seed: int, condition: str) -> int:
    return zlib.crc32(f"{seed}|{condition}".encode()) & 0x7FFFFFFF


def _gif_bytes(frames, fps: int = 8) -> bytes:
    """A video's frames as an animated GIF (Pillow: no video package needed)."""
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
    return buf.getvalue()


def _mp4_bytes(frames, fps: int = 8) -> bytes | None:
    """A video's frames as H.264 MP4 (yuv420p, sides cropped to even), or None when PyAV
    (the "video" extra) is not installed."""
    try:
        import av
        import numpy as np
    except ImportError:
        return None
    width, height = frames[0].width // 2 * 2, frames[0].height // 2 * 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            rgb = np.asarray(frame.convert("RGB"))[:height, :width]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_metrics(cfg: RunConfig) -> list[str]:
    """The metrics of ``cfg`` scored per image (records' "metrics"); the others are set metrics."""
    from ..metrics import SET_METRIC_NAMES

    return [m for m in cfg.metrics if m not in SET_METRIC_NAMES]


class _Scorers:
    """The run's scorers, built once; failures at scoring time become missing values."""

    def __init__(self, cfg: RunConfig, device: str):
        from ..metrics import build_scorers

        # per-image metrics only: a set metric (FID) is one number per condition, computed by
        # the report from the stored images (report._fid)
        names = image_metrics(cfg)
        options = {name: dict(cfg.metric_options.get(name, {})) for name in names}
        for o in options.values():
            o.setdefault("batch_size", cfg.metric_batch_size)
        try:
            # every scorer is tried: one MetricWeightsUnavailable names every missing file
            self.scorers = build_scorers(names, weights=cfg.metric_weights, device=device,
                                         untrained=cfg.untrained_metrics, options=options)
        except ImportError as err:
            which = ", ".join(repr(m) for m in names)
            raise ImportError(f"a metric of {which} needs a package that is not installed ({err}); "
                              "pip install 'sinkattn[metrics]', or leave it out with --metrics") from err
        self.info = {name: {"untrained": s.untrained, "weights": s.weights_source} for name, s in self.scorers.items()}
        self.untrained = any(s.untrained for s in self.scorers.values())

    def score(self, images, prompts, references, names=None):
        """({name: [value or None]}, {name: error or None}) for one batch of images, by
        every scorer or by those in ``names``."""
        import math

        values, errors = {}, {}
        for name, scorer in self.scorers.items():
            if names is not None and name not in names:
                continue
            try:
                out = scorer.score(images, prompts, references)
                if len(out) != len(images):
                    raise RuntimeError(f"returned {len(out)} scores for {len(images)} images")
                bad = [v for v in out if not math.isfinite(v)]
                values[name] = [v if math.isfinite(v) else None for v in out]
                errors[name] = f"non-finite score ({bad[0]})" if bad else None
            except Exception as err:  # noqa: BLE001 - a failed metric is recorded, never a number
                values[name] = [None] * len(images)
                errors[name] = f"{type(err).__name__}: {err}"
        return values, errors


@dataclass
class Plan:
    """A run, checked: everything a run checks before it makes anything (what --dry-run
    shows). ``conditions`` is None while select="shared" waits for the model's heads."""

    cfg: RunConfig
    out: str
    shard: tuple[int, int]
    device: str
    prompts: list
    mine: list
    conditions: list | None


def plan(cfg: RunConfig) -> Plan:
    """Check ``cfg`` the way a run does (folder, shard, metrics, prompts, conditions, the
    folder's earlier settings), without loading a model or writing anything."""
    out = check_out(cfg.out)
    shard, device = resolve_execution(cfg)
    from ..metrics import SCORER_NAMES, SET_METRIC_NAMES

    known = (*SCORER_NAMES, *SET_METRIC_NAMES)
    unknown = [m for m in cfg.metrics if m not in known]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; known: {', '.join(known)}")
    prompts = load_prompts(cfg.prompts, cfg.limit)
    mine = [p for pos, p in enumerate(prompts) if pos % shard[1] == shard[0]]
    if any("shared" in g.select for g in cfg.conditions):
        cfg.expand(heads=1)  # every other check; top_k = k * heads waits for the model
        conditions = None
    else:
        conditions = cfg.expand()
    _merged_config(cfg, out)
    return Plan(cfg, out, shard, device, prompts, mine, conditions)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with what it had written (the CLI says so in one line)."""

    def __init__(self, written: int, scored: int):
        super().__init__(f"{written} records written")
        self.written, self.scored = written, scored


def run(cfg: RunConfig) -> RunResult:
    """Run (or resume) the study of ``cfg`` into ``cfg.out``; returns what was done."""
    p = plan(cfg)
    with _claimed(p.out, p.shard):
        suffix = shard_suffix(p.shard)
        stores = {stem: RecordStore(os.path.join(p.out, f"{stem}{suffix}.jsonl"), also=results_files(p.out, stem),
                                    key=metric_key if stem == "metrics" else record_key)
                  for stem in ("results", "trace", "metrics")}
        try:
            return _run(p, stores)
        except KeyboardInterrupt:
            raise RunInterrupted(stores["results"].appended, stores["metrics"].appended) from None


def _run(p: Plan, stores: dict) -> RunResult:
    cfg, out, shard, device = p.cfg, p.out, p.shard, p.device
    gen = None
    conditions = p.conditions
    if conditions is None:
        _, gen = _load(cfg, device)
        conditions = cfg.expand(heads=gen.heads_for)
    keys = [(pr, seed, c) for pr in p.mine for seed in cfg.seeds_for(pr.prompt_id) for c in conditions]
    pending = [(pr, seed, c) for pr, seed, c in keys if (pr.prompt_id, seed, c.name) not in stores["results"]]
    _log(cfg, f"sinkattn run: {out} shard {shard[0]}/{shard[1]} on {device}: {len(p.mine)} prompts x "
              f"{cfg.seeds_per_prompt} seed(s) x {len(conditions)} conditions; {len(keys) - len(pending)} done, "
              f"{len(pending)} to make")
    scorers = None
    if pending:
        # an earlier run's done marker no longer holds: without this, another shard that
        # finishes first would take this one as done and write the report without its records
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, f"done{shard_suffix(shard)}"))
        if gen is None:
            _, gen = _load(cfg, device)
        scorers = _Scorers(cfg, device) if image_metrics(cfg) else None
    # the start went through (model and scorers are there): from here the folder is the run's
    atomic_write_text(os.path.join(out, "config.json"),
                      json.dumps(_merged_config(cfg, out), indent=2, sort_keys=True) + "\n")
    written = _generate(cfg, out, gen, scorers, pending, stores["results"], stores["trace"], shard, device) \
        if pending else 0
    todo = _unscored(cfg, out, [(pr.prompt_id, seed, c.name) for pr, seed, c in keys])
    scored = 0
    if todo:
        _log(cfg, f"sinkattn run: {sum(len(m) for _, m in todo)} metric values to score on stored images")
        scored = _rescore(out, scorers or _Scorers(cfg, device), todo, stores["metrics"])
    return RunResult(out=out, shard=shard, written=written, skipped=len(keys) - len(pending),
                     report_written=_finish(cfg, out, shard, len(stores["results"])), scored=scored)


def _finish(cfg: RunConfig, out: str, shard: tuple[int, int], records: int) -> bool:
    """Mark this shard done; write the report once every shard is (True when written)."""
    if shard[1] > 1:
        atomic_write_text(os.path.join(out, f"done{shard_suffix(shard)}"), f"{records}\n")
    if not (cfg.report and _all_shards_done(out, shard)):
        return False
    from .report import write_report

    write_report(out, bootstrap=cfg.bootstrap, seed=cfg.stats_seed, progress=cfg.progress)
    return True


def _unscored(cfg: RunConfig, out: str, keys: list[tuple]) -> list[tuple[dict, list[str]]]:
    """(record, the metrics of this command it lacks) for this run's keys: what an earlier
    run into the folder, with other --metrics, did not compute."""
    names = image_metrics(cfg)
    if not names:
        return []
    records = {record_key(r): r for r in merged_records(out)}
    todo = []
    for key in keys:
        record = records.get(key)
        missing = [m for m in names if record is not None and m not in record["metrics"]]
        if missing:
            todo.append((record, missing))
    return todo


def _rescore(out: str, scorers: _Scorers, todo: list, metric_store: RecordStore) -> int:
    """Score the metrics the records of ``todo`` lack on their stored images (PNG is
    lossless: the pixels scored at generation time), with the stored baseline of the same
    (prompt, seed) as the reference; each value is one line of metrics*.jsonl (see store.py)."""
    groups: dict[tuple, list] = {}
    for record, names in todo:
        groups.setdefault((record["prompt_id"], record["seed"]), []).append((record, names))
    written = 0
    for (prompt_id, seed), items in groups.items():
        reference = _stored_image(out, image_relpath("baseline", prompt_id, seed))
        items = [(r, names, _stored_image(out, r["image"], r.get("image_sha256"))) for r, names in items]
        items = [item for item in items if item[2] is not None]
        if reference is None or not items:
            continue
        names = {m for _, ms, _ in items for m in ms}
        values, errors = scorers.score([im for _, _, im in items], [r["prompt"] for r, _, _ in items],
                                       [reference] * len(items), names)
        for i, (r, ms, _) in enumerate(items):
            for m in ms:
                written += metric_store.append({
                    "prompt_id": prompt_id, "seed": seed, "condition": r["condition"], "metric": m,
                    "value": values[m][i], "error": errors[m], "info": scorers.info[m],
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return written


def _stored_image(out: str, rel: str, digest: str | None = None):
    """A stored image as RGB, or None (with a warning) when it is missing or not the image recorded."""
    from PIL import Image

    path = os.path.join(out, rel)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        warnings.warn(f"sinkattn: {path}: cannot read it ({err.strerror}); its metrics stay unscored", stacklevel=2)
        return None
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        warnings.warn(f"sinkattn: {path} is not the image its record was made from; its metrics stay unscored",
                      stacklevel=2)
        return None
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _all_shards_done(out: str, shard: tuple[int, int]) -> bool:
    if shard[1] == 1:
        return True
    return all(os.path.exists(os.path.join(out, f"done{shard_suffix((i, shard[1]))}")) for i in range(shard[1]))


def _log(cfg: RunConfig, message: str) -> None:
    if cfg.progress:
        print(message, file=sys.stderr, flush=True)


def _load(cfg: RunConfig, device: str):
    from .models import Generator, load_pipeline, set_scheduler

    pipe = load_pipeline(cfg.model, cfg.family, cfg.dtype, device, tiny_blocks=cfg.tiny_blocks)
    set_scheduler(pipe, cfg.scheduler)
    return pipe, Generator(pipe, cfg.family, cfg.steps, cfg.guidance, cfg.height, cfg.width,
                           cfg.max_sequence_length, device, latents=cfg.latents, num_frames=cfg.num_frames)


def _generate(cfg, out, gen, scorers, pending, store, trace_store, shard, device) -> int:
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..gating import intervene
    from ..graphs import ForwardGraphs, replay_forward
    from ..processors import SinkSuppressProcessor
    from ..tracing import SinkTracer
    from .atlas import TraceStore, trace_summary

    warnings.filterwarnings("ignore", message="sinkattn: no Triton kernels")  # said once in the log instead
    if not device.startswith("cuda"):
        _log(cfg, "sinkattn run: no CUDA device; attention runs on the PyTorch reference (slow for real models)")
        if cfg.latents == "original":
            _log(cfg, "sinkattn run: latents=original draws them from a generator on cpu; the original study drew "
                      "them on CUDA, so these images cannot match its images (the pairing is unchanged)")
    groups: dict[tuple, list] = {}
    for p, seed, c in pending:
        groups.setdefault((p.prompt_id, seed), []).append((p, c))
    grid = gen.token_grid()
    bar = tqdm(total=len(pending), desc=f"images (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else "images",
               position=shard[0] if shard[1] > 1 else None, disable=not cfg.progress, unit="img", file=sys.stderr)
    atlas = TraceStore(out, shard) if cfg.trace else None  # per-head traces: RUN/atlas/
    graphs: dict[str, ForwardGraphs] = {}  # condition -> its denoiser graphs, kept across images
    pool = []  # one memory pool for all of them: they replay one at a time

    draws: dict[str, torch.Generator] = {}  # condition -> the generator its processor draws from

    def replayed(name, key=None):
        """The denoiser's forward from CUDA graphs for this condition (cfg.cuda_graphs)."""
        if not (cfg.cuda_graphs and device.startswith("cuda")):
            return contextlib.nullcontext()
        if not pool:
            pool.append(torch.cuda.graph_pool_handle())
        generators = [draws[name]] if name in draws else []
        return replay_forward(gen.denoiser, graphs.setdefault(name, ForwardGraphs(pool=pool[0], generators=generators)),
                              key=key)

    def generator_of(c):
        """The generator of a condition that draws (random control, value noise), reseeded per
        image: on the run's device (one per condition, kept: its CUDA graphs register it)."""
        if not (c.control == "random" or c.value_target == "noise"):
            return None
        if c.name not in draws:
            draws[c.name] = torch.Generator(device=torch.device(device))
        return draws[c.name]

    written = 0
    for (prompt_id, seed), items in groups.items():
        prompt = items[0][0]
        draw = cfg.draw_index(prompt_id)
        latents = gen.latents(seed, draw)
        made = []  # (condition, image, seconds)
        videos = {}  # condition name -> its GIF (video families)
        baseline_path = os.path.join(out, image_relpath("baseline", prompt_id, seed))
        trace = None
        baseline_image = None
        for _, c in items:
            start = time.perf_counter()
            if c.control == "baseline":
                if cfg.trace:
                    tracer = SinkTracer(tokenizer=gen.tracer_tokenizers(), top=cfg.trace_top, grid=grid)
                    with intervene(gen.pipe, SinkSuppressProcessor(k=0, tracer=tracer)):
                        tracer.begin(prompt_id=prompt_id, prompt=prompt.text, seed=seed, **gen.guidance_branches())
                        image = gen(prompt.text, seed, latents, draw)
                    traced = tracer.finish_image()
                    if traced is not None:
                        trace = trace_summary(traced, grid)
                        atlas.append(traced, prompt_id=prompt_id, seed=seed, condition="baseline", tag=prompt.tag)
                else:
                    with replayed("baseline"):
                        image = gen(prompt.text, seed, latents, draw)
                baseline_image = image
            else:
                generator = generator_of(c)
                processor = SinkSuppressProcessor(
                    k=c.top_k, path=c.path, select=c.select, control=c.control, eta=c.eta,
                    mass_queries=c.mass_queries, apply_queries=c.apply_queries, candidates=c.candidates,
                    eta_mode=c.eta_mode, value_target=c.value_target, fixed=c.fixed or (),
                    generator=generator, seed=_processor_seed(seed, c.name) if generator is not None else None)
                with intervene(gen.pipe, processor, layers=list(c.layers) if c.layers is not None else None,
                               steps=list(c.steps) if c.steps is not None else None, timesteps=c.timesteps) as iv:
                    with replayed(c.name, iv.step_state):
                        image = gen(prompt.text, seed, latents, draw)
            seconds = time.perf_counter() - start
            data = _png_bytes(image)
            rel = image_relpath(c.name, prompt_id, seed)
            atomic_write_bytes(os.path.join(out, rel), data)
            frames = getattr(gen, "last_frames", None)
            if frames and len(frames) > 1:  # a video: every frame beside the first frame's PNG (scored)
                videos[c.name] = rel[:-len(".png")] + ".gif"
                atomic_write_bytes(os.path.join(out, videos[c.name]), _gif_bytes(frames))
                mp4 = _mp4_bytes(frames)
                if mp4 is not None:  # beside the GIF, same name (PyAV installed: the "video" extra)
                    atomic_write_bytes(os.path.join(out, rel[:-len(".png")] + ".mp4"), mp4)
            made.append((c, image, seconds, rel, hashlib.sha256(data).hexdigest()))
            bar.update(1)
        if baseline_image is None:
            with Image.open(baseline_path) as im:
                baseline_image = im.convert("RGB")
        start = time.perf_counter()
        if scorers is not None:
            values, errors = scorers.score([m[1] for m in made], [prompt.text] * len(made),
                                           [baseline_image] * len(made))
        else:
            values, errors = {}, {}
        metric_seconds = (time.perf_counter() - start) / max(1, len(made))
        if trace is not None:
            trace_store.append({"prompt_id": prompt_id, "seed": seed, "condition": "baseline", "tag": prompt.tag,
                                "trace": trace})
        for i, (c, image, seconds, rel, digest) in enumerate(made):
            record = {
                "schema": SCHEMA_VERSION,
                "prompt_id": prompt_id, "prompt": prompt.text, "tag": prompt.tag, "seed": seed,
                "condition": c.name, "control": c.control, "k": c.k if c.control != "baseline" else 0,
                "top_k": c.top_k, "condition_spec": c.spec(),
                "image": rel, "image_sha256": digest, "width": image.width, "height": image.height,
                "video": videos.get(c.name),
                "metrics": {name: values[name][i] for name in values},
                "metric_errors": {name: err for name, err in errors.items() if err is not None},
                "untrained_metrics": bool(scorers.untrained) if scorers is not None else False,
                "metric_info": scorers.info if scorers is not None else {},
                "timings": {"generate_s": round(seconds, 4), "metrics_s": round(metric_seconds, 4)},
                "model": cfg.model, "family": cfg.family, "steps": cfg.steps, "guidance": cfg.guidance,
                "scheduler": cfg.scheduler, "latents": cfg.latents, "seed_scheme": cfg.seed_scheme,
                "device": device, "shard": f"{shard[0]}/{shard[1]}",
                "prompt_meta": prompt.meta or None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            written += store.append(record)
    bar.close()
    return written
