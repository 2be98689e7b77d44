"""`sinkattn run` (the paired sink-vs-control study) and `sinkattn report DIR`.

    sinkattn run --preset tiny --out runs/tiny              # offline, CPU, ~2 minutes
    sinkattn run --preset paper-sd3 --out runs/sd3 --limit 50
    sinkattn run --preset paper-t19-ksweep --out runs/t19 --dry-run   # every condition, resolved
    torchrun --nproc-per-node 8 -m sinkattn run --preset paper-sd3 --out runs/sd3   # one shard per GPU
    sinkattn report runs/sd3

Settings come from the preset (default tiny), then --config FILE (JSON/YAML of RunConfig
fields), then flags. Condition flags (--k, --controls, --path, ...) replace the preset's
condition groups by one group, starting from the preset's first group.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import warnings

__all__ = ["main", "build_parser"]

_CONDITION_FLAGS = ("k", "controls", "path", "select", "eta", "layers", "intervene_steps", "timesteps",
                    "random_draws", "mass_queries", "apply_queries", "candidates", "eta_mode", "value_target",
                    "fixed", "phases")


def _csv(cast):
    def parse(text):
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    return parse


def _shard(text):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= I < N")
    return (i, n)


def _pairs(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return tuple(text.split("=", 1))


def _timesteps(text):
    out = []
    for part in text.split(";"):
        part = part.strip()
        if part in ("", "all"):
            out.append(None)
        else:
            lo, hi = (float(x) for x in part.split(","))
            out.append([lo, hi])
    return out


def build_parser() -> argparse.ArgumentParser:
    from .experiment.config import PRESETS
    from .processors.families import MODEL_FAMILIES
    from .reference import ETA_MODES, PATHS, VALUE_TARGETS
    from .selection import CONTROLS

    parser = argparse.ArgumentParser(prog="sinkattn", description="Attention-sink studies on diffusion models.")
    parser.add_argument("--version", action="version", version=f"sinkattn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) the paired sink-vs-control study",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    S = argparse.SUPPRESS
    r.add_argument("--out", required=True, default=S, help="run folder (created; rerun to resume)")
    r.add_argument("--preset", choices=sorted(PRESETS), default=S, help="base settings (default: tiny)")
    r.add_argument("--config", default=S, help="JSON or YAML file of RunConfig fields")
    g = r.add_argument_group("model and generation")
    g.add_argument("--model", default=S, help='"tiny", a Hub id or a local diffusers folder')
    g.add_argument("--family", choices=list(MODEL_FAMILIES), default=S,
                   help="model family (sinkattn.processors.families.MODEL_FAMILIES)")
    g.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=S)
    g.add_argument("--device", default=S, help="default: cuda (cuda:LOCAL_RANK under torchrun) if available, else cpu")
    g.add_argument("--steps", type=int, default=S, help="denoising steps")
    g.add_argument("--guidance", type=float, default=S, help="classifier-free guidance scale")
    g.add_argument("--height", type=int, default=S)
    g.add_argument("--width", type=int, default=S)
    g.add_argument("--max-sequence-length", type=int, default=S,
                   help="text tokens the pipeline pads to, for the families that take it (SD3/SD3.5 and Flux: "
                        "T5; PixArt-Sigma; Wan)")
    g.add_argument("--scheduler", choices=["default", "euler", "dpm++"], default=S,
                   help="default: the model's; euler / dpm++: built from its config, as the original's E2 and "
                        "FID-calibration runs did")
    g.add_argument("--latents", choices=["cpu", "original"], default=S,
                   help="cpu: drawn on the CPU from the seed (the same on every device); original: a "
                        "torch.Generator on the pipeline's device handed to the pipeline, as the original study "
                        "(its latents on CUDA only)")
    g.add_argument("--num-frames", type=int, default=S,
                   help="video families (wan-t2v): frames per video, saved as a GIF beside the first frame's PNG")
    g.add_argument("--tiny-blocks", type=int, default=S,
                   help="--model tiny (SD3, SD3.5): joint blocks; 24 gives SD3-medium's layer indices")
    g = r.add_argument_group("prompts and seeds")
    g.add_argument("--prompts", default=S, help='"builtin", "geneval" (cached or downloaded), "balanced100" or '
                                                '"h1d" (the original study\'s lists), or a .jsonl/.txt path')
    g.add_argument("--limit", type=int, default=S, help="first N prompts")
    g.add_argument("--seed-base", type=int, default=S, help="prompt i uses seed seed_base + i")
    g.add_argument("--seeds-per-prompt", type=int, default=S, help="replicates: seed + r * 1000000")
    g.add_argument("--seed-scheme", choices=["prompt", "shared"], default=S,
                   help="prompt: prompt i uses seed seed_base + i; shared: one generator seeded seed_base, prompt i "
                        "starts from its i-th draw (the original's score/value sweeps)")
    g = r.add_argument_group("conditions (lists are comma-separated; sets of layers/steps separated by ';')")
    g.add_argument("--k", type=_csv(int), default=S, help="keys suppressed PER HEAD, e.g. 1,5,10")
    g.add_argument("--controls", type=_csv(str), default=S, help=f"of {','.join(CONTROLS)}")
    g.add_argument("--path", type=_csv(str), default=S, help=f"of {','.join(PATHS)}")
    g.add_argument("--select", type=_csv(str), default=S, help="head,shared (shared: top_k = k * heads)")
    g.add_argument("--eta", type=_csv(float), default=S, help="0 removes; in [0, 1]")
    g.add_argument("--eta-mode", type=_csv(str), default=S,
                   help=f"of {','.join(ETA_MODES)}: logit adds log(eta) to the key's logits; prob scales its "
                        "probability by eta and renormalises the rest (the original's prob_scale)")
    g.add_argument("--value-target", type=_csv(str), default=S,
                   help=f"of {','.join(VALUE_TARGETS)}: value path v <- eta v + (1 - eta) target (mean with eta: "
                        "the original's lerp; noise: N(0, 0.1^2) per key and channel, seeded per image and condition)")
    g.add_argument("--fixed", default=S,
                   help='keys intervened instead of selected, "RANGE:INDEX" (e.g. text:0, the first text token; '
                        '"none"); sets separated by ";"')
    g.add_argument("--phases", type=_timesteps, default=S,
                   help='windows "lo,hi;lo,hi" of t = step / (steps - 1), each resolved to its step indices, or '
                        '"all"')
    g.add_argument("--layers", default=S, help='block sets: "12", "6;12;18" (three conditions), "0-11", "all"')
    g.add_argument("--intervene-steps", default=S, help='denoising-step sets: "0-9", "0-9;10-19", "all"')
    g.add_argument("--timesteps", type=_timesteps, default=S, help='timestep windows "lo,hi;lo,hi" or "all"')
    g.add_argument("--random-draws", type=int, default=S, help="seeded draws of the random control")
    g.add_argument("--mass-queries", choices=["image", "text", "all"], default=S)
    g.add_argument("--apply-queries", choices=["image", "text", "all"], default=S)
    g.add_argument("--candidates", choices=["image", "text", "all"], default=S)
    g = r.add_argument_group("metrics")
    g.add_argument("--metrics", default=S, help='comma list of clip_t,image_reward,hps_v21,lpips (per image), fid (per condition, '
                        'computed by the report), or "none"')
    g.add_argument("--untrained-metrics", action=argparse.BooleanOptionalAction, default=S,
                   help="score with random-weight scorers (marked untrained in every output)")
    g.add_argument("--metric-weights", type=_pairs, action="append", default=S, metavar="NAME=PATH",
                   help="local file/folder or Hub id of a scorer's weights (repeatable)")
    g.add_argument("--metric-arch", type=_pairs, action="append", default=S, metavar="NAME=ARCH",
                   help="scorer architecture (e.g. clip_t=tiny for untrained builds; repeatable)")
    g.add_argument("--metric-batch-size", type=int, default=S)
    g = r.add_argument_group("tracing, statistics, execution")
    g.add_argument("--trace", action=argparse.BooleanOptionalAction, default=S,
                   help="trace the baseline generations for the sink atlas")
    g.add_argument("--trace-top", type=int, default=S, help="top keys kept per head by the tracer")
    g.add_argument("--bootstrap", type=int, default=S, help="bootstrap resamples")
    g.add_argument("--stats-seed", type=int, default=S)
    g.add_argument("--shard", type=_shard, default=S, help="I/N: prompts i with i %% N == I (default: RANK/WORLD_SIZE)")
    g.add_argument("--report", action=argparse.BooleanOptionalAction, default=S, help="write the report at the end")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=S, help="progress bars and log lines")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=S,
                   help="replay the denoiser's forward from CUDA graphs on CUDA (default on; traced conditions "
                        "run eagerly; random and noise conditions replay their device generator's draws)")
    g.add_argument("--dry-run", action="store_true",
                   help="check everything a run checks, print the resolved config and conditions, make nothing")
    _show_preset_defaults(r)

    p = sub.add_parser("report", help="merge shards, compute statistics, write summary and plots")
    p.add_argument("run_dir")
    p.add_argument("--bootstrap", type=int, default=None)
    p.add_argument("--stats-seed", type=int, default=None)
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=None,
                   help="FID of each condition's images against the baseline images (pytorch-fid's Inception "
                        "weights; default: when the run's --metrics include fid)")
    p.add_argument("--fid-calibration", metavar="DIR", default=None,
                   help="another run folder (same prompts and settings, other seeds, or the setting to compare: "
                        "the paper-t9-fid-* presets) whose baseline images give the calibration FID")
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("sinkattn")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was not installed
        from . import __version__

        return __version__


# flags whose unset value is not the preset's: device and shard are worked out at run time
_NOT_FROM_PRESET = {"out", "preset", "config", "device", "shard", "dry_run", "help"}


def _show_preset_defaults(run_parser: argparse.ArgumentParser) -> None:
    """Append the tiny preset's value to each flag's help. Why: the flags default to
    argparse.SUPPRESS (an unset flag keeps the preset's or the config file's value), so
    ArgumentDefaultsHelpFormatter has no default to show."""
    values = _preset_values()
    for action in run_parser._actions:
        if action.dest in values and action.dest not in _NOT_FROM_PRESET:
            text = _flag_text(values[action.dest]).replace("%", "%%")
            action.help = f"{action.help or ''} (default: from --preset; tiny: {text})".lstrip()


def _preset_values() -> dict:
    """The tiny preset's settings under the flags' names."""
    import dataclasses

    from .experiment.config import preset_config

    cfg = preset_config("tiny")
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    group = cfg.conditions[0]
    values.update({name: getattr(group, name) for name in _CONDITION_FLAGS if hasattr(group, name)})
    values["intervene_steps"] = group.steps  # the group's steps are denoising steps to intervene in
    values["fixed"] = "none" if group.fixed == [None] else group.fixed
    values["scheduler"] = "default"
    values["tiny_blocks"] = "2"
    values["num_frames"] = "1"
    values["metric_arch"] = {name: o["arch"] for name, o in cfg.metric_options.items() if "arch" in o}
    return values


def _flag_text(value) -> str:
    """A setting as one would type it on the command line (None: every prompt / layer / step)."""
    if value is None:
        return "all"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        if any(v is None or isinstance(v, (list, tuple)) for v in value):  # sets, separated by ';'
            return ";".join(_flag_text(v) for v in value)
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def config_from_args(args: argparse.Namespace):
    from .experiment.config import ConditionGroup, load_config_file, parse_int_sets, preset_config

    given = vars(args)
    file_fields = load_config_file(given["config"]) if "config" in given else {}
    preset = given.get("preset", file_fields.get("preset"))
    cfg = preset_config(preset)
    if file_fields:
        cfg = cfg.merged(file_fields)
    overrides = {}
    for name in ("out", "model", "family", "dtype", "device", "steps", "guidance", "height", "width",
                 "max_sequence_length", "prompts", "limit", "seed_base", "seeds_per_prompt", "metric_batch_size",
                 "untrained_metrics", "trace", "trace_top", "bootstrap", "stats_seed", "shard", "report", "progress",
                 "cuda_graphs", "latents", "seed_scheme", "tiny_blocks", "num_frames"):
        if name in given:
            overrides[name] = given[name]
    if "scheduler" in given:
        overrides["scheduler"] = None if given["scheduler"] == "default" else given["scheduler"]
    if "metrics" in given:
        overrides["metrics"] = [] if given["metrics"] in ("", "none") else _csv(str)(given["metrics"])
    if "metric_weights" in given:
        overrides["metric_weights"] = dict(cfg.metric_weights, **dict(given["metric_weights"]))
    if "metric_arch" in given:
        options = {k: dict(v) for k, v in cfg.metric_options.items()}
        for name, arch in given["metric_arch"]:
            options.setdefault(name, {})["arch"] = arch
        overrides["metric_options"] = options
    if any(f in given for f in _CONDITION_FLAGS):
        base = cfg.conditions[0] if cfg.conditions else ConditionGroup()
        group = {k: v for k, v in vars(base).items()}
        for f in ("k", "controls", "path", "select", "eta", "random_draws", "mass_queries", "apply_queries",
                  "candidates", "timesteps", "eta_mode", "value_target", "phases"):
            if f in given:
                group[f] = given[f]
        if "layers" in given:
            group["layers"] = parse_int_sets(given["layers"])
        if "intervene_steps" in given:
            group["steps"] = parse_int_sets(given["intervene_steps"])
            if "phases" not in given:
                group["phases"] = [None]  # steps given: the preset's phases give way
        elif "phases" in given:
            group["steps"] = [None]
        if "fixed" in given:
            group["fixed"] = given["fixed"]
        group["label"] = "cli"
        overrides["conditions"] = [ConditionGroup.from_dict(group)]
    return cfg.merged(overrides) if overrides else cfg


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    default_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _main(args)
    except KeyboardInterrupt as err:
        if args.command != "run":
            print("sinkattn: interrupted", file=sys.stderr)
        else:
            scored = getattr(err, "scored", 0)
            print(f"sinkattn: interrupted; {getattr(err, 'written', 0)} records written"
                  + (f" and {scored} metric values" if scored else "") + "; rerun the same command to resume",
                  file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = default_format


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """sinkattn's own warnings as one line (they say what happened and what was done about it)."""
    text = str(message)
    if text.startswith("sinkattn"):
        return f"{text}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)


_DEFAULT_FORMAT = warnings.formatwarning


def _main(args) -> int:
    from .experiment.models import ModelUnavailable
    from .experiment.store import FolderBusy
    from .metrics import MetricWeightsUnavailable

    try:
        if args.command == "report":
            from .experiment.report import write_report

            summary = write_report(args.run_dir, bootstrap=args.bootstrap, seed=args.stats_seed, fid=args.fid,
                                   fid_calibration=args.fid_calibration)
            print(f"sinkattn report: {summary['records']} records -> {args.run_dir}/summary.md, "
                  f"{args.run_dir}/summary.json, {len(summary['plots'])} plots")
            return 0
        cfg = config_from_args(args)
        if args.dry_run:
            return _dry_run(cfg)
        from .experiment.runner import run

        result = run(cfg)
        scored = f", {result.scored} metric values scored on stored images" if result.scored else ""
        print(f"sinkattn run: {result.written} new records, {result.skipped} already there{scored} -> {result.out}"
              + ("" if result.report_written else " (report: run `sinkattn report` once every shard is done)"))
        return 0
    except (ValueError, OSError, ImportError, ModelUnavailable, MetricWeightsUnavailable, FolderBusy) as err:
        print(f"sinkattn: error: {err}", file=sys.stderr)
        return 2


def _dry_run(cfg) -> int:
    """Print what a run would do, after every check a run makes before loading the model:
    the config, the generation settings, and every condition with its resolved settings.
    The head count for select="shared" (top_k = k * H) comes from the model's config
    without its weights (the tiny config, a local folder, or the Hub cache), when found."""
    import json

    from .experiment.runner import plan

    p = plan(cfg)
    print(json.dumps(cfg.to_dict(), indent=2))
    skeleton, where = _skeleton(cfg)
    heads = None
    if skeleton is not None:
        from .experiment.models import heads_of

        def heads(layers):
            return heads_of(skeleton, layers)

    needs_heads = any(c.select == "shared" and not c.fixed for c in cfg.expand(heads=1))
    conditions = cfg.expand(heads=heads if skeleton is not None else 1)
    from .experiment.config import PRESET_INFO

    if cfg.preset in PRESET_INFO:
        print(f"preset {cfg.preset}: {PRESET_INFO[cfg.preset]}")
    for line in _generation_lines(cfg, p):
        print(line)
    if skeleton is not None:
        uniform = None
        try:
            uniform = heads(None)
        except ValueError:
            pass
        print(f"  heads per attention layer: {uniform if uniform is not None else 'by layer'} (from {where})")
    elif needs_heads:
        print(f"  heads per attention layer: unknown without the model ({where}); shared top_k shown as k x heads")
    print(f"{len(conditions)} conditions:")
    for c in conditions:
        print("  " + (c.name if c.control == "baseline" else f"{c.name}\n      " + _condition_text(
            c, skeleton, waits=skeleton is None and c.select == "shared" and not c.fixed, steps=cfg.steps)))
    mine = f", {len(p.mine)} in shard {p.shard[0]}/{p.shard[1]}" if p.shard[1] > 1 else ""
    print(f"{len(p.prompts)} prompts{mine}")
    return 0


def _skeleton(cfg):
    from .experiment.models import denoiser_skeleton

    try:
        return denoiser_skeleton(cfg.model, cfg.family, cfg.tiny_blocks)
    except (OSError, ValueError, TypeError) as err:  # an unreadable config: the run will say more
        return None, f"its config could not be read: {err}"


def _generation_lines(cfg, p) -> list[str]:
    ids = [pr.prompt_id for pr in p.prompts]
    if cfg.seed_scheme == "shared":
        seeds = (f"one generator seeded {cfg.seed_base} for every prompt, prompt i starting from its i-th draw "
                 "(the original's score/value sweeps)")
    else:
        seeds = f"seed {cfg.seed_base}+i for prompt i ({cfg.seed_base + ids[0]}..{cfg.seed_base + ids[-1]})"
    if cfg.seeds_per_prompt > 1:
        seeds += f", {cfg.seeds_per_prompt} replicates (+ r x 1000000)"
    latents = ("original: a torch.Generator on the pipeline's device, handed to the pipeline (the original's "
               "latents on CUDA only; a CPU draw cannot match them)" if cfg.latents == "original"
               else "cpu: drawn on the CPU from the seed and handed to the pipeline (the same on every device)")
    tiny = f" tiny_blocks={cfg.tiny_blocks}" if cfg.tiny_blocks else ""
    return [f"generation: model={cfg.model} family={cfg.family}{tiny} dtype={cfg.dtype} device={p.device}",
            f"  steps={cfg.steps} guidance={cfg.guidance:g} size={cfg.width}x{cfg.height} "
            f"max_sequence_length={cfg.max_sequence_length} scheduler={cfg.scheduler or 'default'}",
            f"  prompts={cfg.prompts}: {len(ids)} (ids {_ranges(ids)}); {seeds}",
            f"  latents={latents}",
            f"  metrics={','.join(cfg.metrics) or 'none'} trace={cfg.trace}"]


def _ranges(values) -> str:
    """0-9,20-29: sorted ints as runs."""
    values = sorted(values)
    runs, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            runs.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(runs)


def _condition_text(c, skeleton, waits: bool, steps: int) -> str:
    if c.fixed:
        what = f"keys={','.join(c.fixed)} (fixed, the same in every head; k={c.k} only switches it on)"
    elif c.select == "shared":
        top = "k x heads, known once the model loads" if waits else f"{c.top_k} = k x {c.top_k // c.k} heads"
        what = f"control={c.control} k={c.k} select=shared top_k={top}"
    else:
        what = f"control={c.control} k={c.k} select=head top_k={c.top_k} per head"
    if c.draw is not None:
        what += f" draw={c.draw}"
    how = f"path={c.path} eta={c.eta:g} eta_mode={c.eta_mode}"
    if c.path in ("value", "both") or c.control == "high_outgoing_query_ablate":
        how += f" value_target={c.value_target}"
    layers = "all" if c.layers is None else ",".join(str(x) for x in c.layers)
    if skeleton is not None:
        from .gating import _select_layers
        from .processors import attention_modules

        chosen = _select_layers(skeleton, list(c.layers) if c.layers is not None else None)
        n = len(attention_modules(skeleton)) if chosen is None else len(chosen)
        layers += f" ({n} attention module{'s' if n != 1 else ''})"
    step_text = "all" if c.steps is None else _ranges(c.steps)
    if c.phase is not None:
        step_text += f" (phase t in [{c.phase[0]:g}, {c.phase[1]:g}], t = step/{steps - 1})"
    if c.timesteps is not None:
        step_text += f" timesteps {c.timesteps[0]:g}..{c.timesteps[1]:g}"
    return (f"{what}; {how}; layers={layers}; steps={step_text} of 0-{steps - 1}; queries: mass={c.mass_queries} "
            f"apply={c.apply_queries} candidates={c.candidates}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
