"""What a study is: the run configuration, the presets (as data) and the deterministic
expansion of condition groups into named conditions.

What k means (the study used two meanings; here there is one)
---------------------------------------------------------------
``k`` is always the number of keys suppressed **per attention head** (per batch row and
head), the paper's main setting (``select="head"``): each head loses its own k
highest-mass keys. With ``select="shared"`` the same keys are removed from every head;
the paper's counterfactual runs then used ``top_k = k * H`` shared keys (H: heads per
attention layer), and so does this runner: the processor receives ``top_k = k * H``, and
every record carries both ``k`` and the ``top_k`` actually passed. The random and bottom
controls use the same ``top_k`` as the sink condition they control (equal budget); the
query controls pick ``top_k`` query rows. A condition with ``fixed`` keys ("text:0")
intervenes those keys instead of selecting any; its k only switches the processor on.

The ``paper-*`` presets reproduce the original study's experiments (one preset per table
or figure its code can produce); sinkattn/experiment/ORIGINAL_STUDY.md gives the
original's settings with file:line citations, and its section 5 what each preset
reproduces and what it changes.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction

from ..reference import ETA_MODES, PATHS, SELECTS, VALUE_TARGETS
from ..selection import CONTROLS

__all__ = [
    "CONTROLS", "PRESETS", "PRESET_INFO", "Condition", "ConditionGroup", "RunConfig", "expand_conditions",
    "load_config_file", "parse_int_sets", "phase_steps", "preset_config",
]

TOKEN_RANGES = ("image", "text", "all")
LATENTS = ("cpu", "original")
SEED_SCHEMES = ("prompt", "shared")
SCHEDULERS = (None, "euler", "dpm++")

# Fields of RunConfig that change what an image is: a run folder holds one value of each.
GENERATION_FIELDS = ("model", "family", "dtype", "steps", "guidance", "height", "width",
                     "max_sequence_length", "seed_base", "prompts", "latents", "seed_scheme", "scheduler",
                     "tiny_blocks", "num_frames")


def _fmt_num(x: float) -> str:
    return f"{x:g}".replace(".", "p").replace("-", "m")


def _fmt_set(prefix: str, values) -> str:
    """L12, L6-12-18, S0to9... ``values`` is a sorted tuple of ints / strings."""
    if values is None:
        return ""
    ints = [v for v in values if isinstance(v, int)]
    if ints and len(ints) == len(values) and len(ints) > 2 and ints == list(range(ints[0], ints[-1] + 1)):
        body = f"{ints[0]}to{ints[-1]}"
    else:
        body = "-".join(str(v).replace("*", "x").replace(".", "_").replace("/", "_") for v in values)
    return f"_{prefix}{body}"


def _reject_unknown_fields(cls, d: dict, what: str) -> None:
    """A ValueError naming the keys of ``d`` that are not fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{what}: unknown fields {sorted(unknown)}; known: {sorted(known)}")


@dataclass(frozen=True)
class Condition:
    """One intervention (or the baseline), with a stable name used in file names and records.

    k: keys per head (see the module docstring); top_k: what the processor receives.
    layers: denoiser block indices / name patterns (None: every layer); steps: step indices
    (None: every step); phase: the (lo, hi) window of t = step / (steps - 1) that ``steps``
    was resolved from, or None; timesteps: (lo, hi) or None; draw: index of the random draw;
    fixed: "RANGE:INDEX" keys intervened instead of selected ones, or None.
    """

    control: str = "baseline"      # baseline | a name of sinkattn.selection.CONTROLS
    k: int = 0
    top_k: int = 0
    path: str = "score"
    select: str = "head"
    eta: float = 0.0
    layers: tuple | None = None
    steps: tuple | None = None
    timesteps: tuple | None = None
    mass_queries: str = "image"
    apply_queries: str = "all"
    candidates: str = "all"
    draw: int | None = None
    group: str = ""
    eta_mode: str = "logit"
    value_target: str = "zero"
    fixed: tuple | None = None
    phase: tuple | None = None

    @property
    def name(self) -> str:
        if self.control == "baseline":
            return "baseline"
        if self.fixed:
            name = "fix-" + "-".join(s.replace(":", "") for s in self.fixed) + f"_{self.path}"
        else:
            name = f"{self.control}_k{self.k}_{self.path}_{self.select}"
        name += _fmt_set("L", self.layers) if self.layers is not None else "_Lall"
        name += _fmt_set("S", self.steps)
        if self.timesteps is not None:
            name += f"_T{_fmt_num(self.timesteps[0])}to{_fmt_num(self.timesteps[1])}"
        if self.eta != 0.0 or self.eta_mode != "logit":
            name += f"_eta{_fmt_num(self.eta)}" + ("" if self.eta_mode == "logit" else self.eta_mode)
        if self.value_target != "zero":
            name += f"_v{self.value_target}"
        for label, value, default in (("mq", self.mass_queries, "image"), ("aq", self.apply_queries, "all"),
                                      ("cand", self.candidates, "all")):
            if value != default:
                name += f"_{label}{value}"
        if self.draw is not None:
            name += f"_d{self.draw}"
        return name

    @property
    def matched_key(self) -> str:
        """The name of the sink condition that this condition controls (its own, for a sink)."""
        return dataclasses.replace(self, control="sink", draw=None, group="").name

    def spec(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("layers", "steps", "timesteps", "fixed", "phase"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["name"] = self.name
        return d


@dataclass
class ConditionGroup:
    """A cartesian product of intervention settings; lists are expanded, scalars apply to all.

    layers / steps / fixed: a list of sets, each set a list of ints / name patterns (fixed:
    "RANGE:INDEX" strings), or None (all layers / steps; no fixed keys); e.g.
    ``layers=[[6], [12], [18]]`` gives three conditions, ``layers=[[6, 12, 18]]`` one
    condition intervening in the three layers together.
    phases: a list of (lo, hi) windows of t = step / (steps - 1), t counted from 0 at the
    first step, each resolved to the step indices it holds (:func:`phase_steps`), or None
    (every step); give steps or phases, not both.
    """

    controls: list = field(default_factory=lambda: ["sink"])
    k: list = field(default_factory=lambda: [1])
    path: list = field(default_factory=lambda: ["score"])
    select: list = field(default_factory=lambda: ["head"])
    eta: list = field(default_factory=lambda: [0.0])
    layers: list = field(default_factory=lambda: [None])
    steps: list = field(default_factory=lambda: [None])
    timesteps: list = field(default_factory=lambda: [None])
    mass_queries: str = "image"
    apply_queries: str = "all"
    candidates: str = "all"
    random_draws: int = 3
    label: str = ""
    eta_mode: list = field(default_factory=lambda: ["logit"])
    value_target: list = field(default_factory=lambda: ["zero"])
    fixed: list = field(default_factory=lambda: [None])
    phases: list = field(default_factory=lambda: [None])

    @classmethod
    def from_dict(cls, d: dict) -> "ConditionGroup":
        _reject_unknown_fields(cls, d, "condition group")
        d = dict(d)
        for key in ("controls", "k", "path", "select", "eta", "eta_mode", "value_target"):
            if key in d and not isinstance(d[key], (list, tuple)):
                d[key] = [d[key]]
        for key in ("layers", "steps"):
            if key in d:
                d[key] = _norm_sets(d[key], key)
        if "fixed" in d:
            d["fixed"] = _norm_fixed(d["fixed"])
        for key in ("timesteps", "phases"):
            if key in d:
                d[key] = _norm_windows(d[key])
        return cls(**d)


def _norm_windows(t):
    """None -> [None]; (lo, hi) -> [(lo, hi)]; a list of pairs (or None) as is."""
    if t is None:
        return [None]
    return [t] if t and not isinstance(t[0], (list, tuple, type(None))) else list(t)


def _norm_sets(value, what):
    """Layer / step sets from data: None or "all" -> [None]; 12 -> [[12]]; a string as in
    :func:`parse_int_sets`; a list holding lists (or None) is a list of sets; a flat list
    is ONE set (``[6, 12, 18]`` intervenes in three layers at once)."""
    if value is None or value == "all":
        return [None]
    if isinstance(value, str):
        return parse_int_sets(value)
    if isinstance(value, (int,)):
        return [[value]]
    value = list(value)
    if any(isinstance(v, (list, tuple)) or v is None for v in value):
        return [None if v is None or v == "all" else list(v) for v in value]
    return [value]


def _norm_fixed(value):
    """Fixed-key sets: None -> [None]; "text:0" -> [["text:0"]]; "text:0;image:0" -> two
    sets; a flat list is one set; a list of lists (or None) is a list of sets."""
    if value is None:
        return [None]
    if isinstance(value, str):
        return [None if part.strip() in ("", "none") else [s.strip() for s in part.split(",") if s.strip()]
                for part in value.split(";")]
    value = list(value)
    if any(isinstance(v, (list, tuple)) or v is None for v in value):
        return [None if not v else list(v) for v in value]
    return [value]


def parse_int_sets(text: str) -> list:
    """``"12"`` -> [[12]]; ``"6;12;18"`` -> [[6], [12], [18]]; ``"0-11"`` -> [[0..11]];
    ``"6,12"`` -> [[6, 12]]; ``"all"`` -> [None]; name patterns pass through as strings."""
    sets = []
    for part in str(text).split(";"):
        part = part.strip()
        if part in ("", "all", "none", "None"):
            sets.append(None)
            continue
        members: list = []
        for item in part.split(","):
            item = item.strip()
            if "-" in item and all(x.strip().lstrip("-").isdigit() for x in item.split("-", 1)) and not item.startswith("-"):
                lo, hi = (int(x) for x in item.split("-", 1))
                members.extend(range(lo, hi + 1))
            elif item.lstrip("-").isdigit():
                members.append(int(item))
            elif item:
                members.append(item)
        sets.append(members)
    return sets


def phase_steps(lo: float, hi: float, steps: int) -> tuple[int, ...]:
    """The step indices s of a ``steps``-step generation with lo <= s / (steps - 1) <= hi:
    the original study's phase windows (run_early_phase.py:96-99) on its t = step/(N-1),
    counted here from step 0 (the original set t after each step, so every step ran with
    the previous step's t: defect D7 of ORIGINAL_STUDY.md). Exact (rational) comparisons:
    with 50 steps, [0, 0.2] holds steps 0-9, [0.4, 0.6] steps 20-29, [0.8, 1] steps 40-49."""
    lo_f, hi_f = Fraction(str(lo)), Fraction(str(hi))
    if lo_f > hi_f:
        raise ValueError(f"phase ({lo}, {hi}): lo > hi")
    if steps < 1:
        raise ValueError(f"phase ({lo}, {hi}): needs steps >= 1, got {steps}")
    span = steps - 1
    return tuple(s for s in range(steps) if lo_f <= (Fraction(s, span) if span else Fraction(0)) <= hi_f)


def _heads_for(heads, layers, control: str) -> int:
    """H for select="shared" (top_k = k * H): ``heads`` is an int or a function of the
    condition's layers (the head count of the intervened attention modules)."""
    h = heads(layers) if callable(heads) else heads
    if h is None:
        raise ValueError(f"select='shared' ({control}) needs the model's heads per layer (top_k = k * H)")
    return int(h)


def expand_conditions(groups: list[ConditionGroup], heads=None, steps: int | None = None) -> list[Condition]:
    """Baseline first, then every group's product in a fixed order (control, k, path, select,
    eta, eta_mode, value_target, fixed, layers, steps or phases, timesteps, draw); a
    condition already produced keeps its first place.

    ``heads`` is needed for select="shared" (top_k = k * heads): an int, or a function of a
    condition's layers (None: every layer) giving the head count of those layers.
    ``steps`` (denoising steps per image) is needed for groups with phases."""
    out: dict[str, Condition] = {"baseline": Condition()}
    for g in groups:
        _check_group(g)
        if g.phases != [None] and g.steps != [None]:
            raise ValueError("a condition group takes steps or phases, not both")
        windows = []
        for phase in g.phases:
            if phase is None:
                windows.extend((s, None) for s in g.steps)
                continue
            if steps is None:
                raise ValueError("phases need the number of denoising steps")
            lo, hi = float(phase[0]), float(phase[1])
            held = phase_steps(lo, hi, steps)
            if not held:
                raise ValueError(f"phase [{lo:g}, {hi:g}] holds no step of a {steps}-step generation "
                                 "(t = step / (steps - 1)); use more --steps")
            windows.append((list(held), (lo, hi)))
        for k, control, path, select, eta, eta_mode, value_target, fixed, layers, (step_set, phase), timesteps in \
                itertools.product(g.k, g.controls, g.path, g.select, g.eta, g.eta_mode, g.value_target, g.fixed,
                                  g.layers, windows, g.timesteps):
            k = int(k)
            if k < 1:
                raise ValueError(f"k must be >= 1 (the baseline is always included), got {k}")
            if not 0.0 <= float(eta) <= 1.0:
                raise ValueError(f"eta must be in [0, 1], got {eta}")
            for name, value, choices in (("path", path, PATHS), ("select", select, SELECTS),
                                         ("eta_mode", eta_mode, ETA_MODES),
                                         ("value_target", value_target, VALUE_TARGETS)):
                if value not in choices:
                    raise ValueError(f"{name}: {value!r} is not one of {choices}")
            if fixed:
                if control != "sink" or select != "head":
                    raise ValueError(f"fixed keys {list(fixed)} replace the selection: they take control 'sink' "
                                     f"and select 'head', got {control!r}, {select!r}")
                top_k = k
            elif select == "shared":
                top_k = k * _heads_for(heads, _tuple(layers), control)
            else:
                top_k = k
            draws = range(g.random_draws) if control == "random" and not fixed else [None]
            for draw in draws:
                c = Condition(control=control, k=k, top_k=top_k, path=path, select=select, eta=float(eta),
                              layers=_tuple(layers), steps=_tuple(step_set),
                              timesteps=None if timesteps is None else (float(timesteps[0]), float(timesteps[1])),
                              mass_queries=g.mass_queries, apply_queries=g.apply_queries,
                              candidates=g.candidates, draw=draw, group=g.label, eta_mode=eta_mode,
                              value_target=value_target, fixed=tuple(fixed) if fixed else None, phase=phase)
                out.setdefault(c.name, c)
    return list(out.values())


def _check_group(g: ConditionGroup) -> None:
    for control in g.controls:
        if control not in CONTROLS:
            raise ValueError(f"controls: {control!r} is not one of {tuple(CONTROLS)}")
    for name, value in (("mass_queries", g.mass_queries), ("apply_queries", g.apply_queries),
                        ("candidates", g.candidates)):
        if value not in TOKEN_RANGES:
            raise ValueError(f"{name}: {value!r} is not one of {TOKEN_RANGES}")
    for fixed in g.fixed:
        for spec in fixed or ():
            name, _, index = str(spec).partition(":")
            if name not in TOKEN_RANGES or not index.lstrip("-").isdigit():
                raise ValueError(f"fixed: keys are 'RANGE:INDEX' with RANGE one of {TOKEN_RANGES}, got {spec!r}")


def _tuple(values):
    if values is None:
        return None
    return tuple(sorted(set(values), key=lambda v: (isinstance(v, str), v)))


@dataclass
class RunConfig:
    """Everything a run needs. Flags override a config file, which overrides the preset."""

    preset: str | None = None
    out: str | None = None
    # model and generation
    model: str = "tiny"                 # "tiny", a Hub id or a local folder
    family: str = "sd3"                 # a name of sinkattn.processors.families.MODEL_FAMILIES
    dtype: str = "float32"
    device: str | None = None           # default: cuda (cuda:LOCAL_RANK) if available, else cpu
    steps: int = 4
    guidance: float = 7.0
    height: int = 64
    width: int = 64
    max_sequence_length: int = 16
    scheduler: str | None = None        # None: the model's own; "euler" / "dpm++": as the original's E2/FID runs
    tiny_blocks: int | None = None      # model "tiny", SD3/SD3.5: joint blocks (None: 2; 24 = SD3-medium's count)
    num_frames: int | None = None       # video families (wan-t2v): frames per video (None: 1); others ignore it
    # prompts and seeds: prompt i (its index in the source) uses seed seed_base + i, and its
    # extra replicates seed_base + i + r * 1_000_000 (seed_scheme "prompt"); with
    # seed_scheme "shared" every prompt uses seed_base and prompt i starts from the i-th
    # draw of one generator (the original's score/value sweeps)
    prompts: str = "builtin"            # builtin | geneval | balanced100 | h1d | a .jsonl / .txt path
    limit: int | None = None
    seed_base: int = 42
    seeds_per_prompt: int = 1
    seed_scheme: str = "prompt"
    # latents: "cpu" draws them on the CPU (the same image on every device); "original"
    # hands the pipeline a torch.Generator on its device, as the original did (on CUDA the
    # original's latents; a CPU run cannot match them)
    latents: str = "cpu"
    # conditions
    conditions: list = field(default_factory=list)   # of ConditionGroup
    # metrics
    metrics: list = field(default_factory=lambda: ["clip_t", "image_reward", "hps_v21", "lpips"])
    untrained_metrics: bool = False
    metric_weights: dict = field(default_factory=dict)   # name -> path / Hub id
    metric_options: dict = field(default_factory=dict)   # name -> build options (e.g. arch)
    metric_batch_size: int = 8
    # tracing (the sink atlas): baseline images only, or none
    trace: bool = True
    trace_top: int = 5
    # statistics
    bootstrap: int = 10000
    stats_seed: int = 0
    # execution
    shard: tuple | None = None          # (index, count); None: from RANK/WORLD_SIZE or (0, 1)
    report: bool = True
    progress: bool = True
    # Replay the denoiser's forward from CUDA graphs (sinkattn.graphs) on CUDA: the same
    # kernels, launched from a graph instead of by the host. Traced conditions run eagerly.
    # The random control and value noise draw on a generator on the run's device, seeded per
    # (image seed, condition) and registered with the condition's graphs, so graphed and
    # eager runs draw the same numbers. Not part of the generation fingerprint: it changes
    # the launching, not the arithmetic.
    cuda_graphs: bool = True

    def __post_init__(self):
        for name, value, choices in (("latents", self.latents, LATENTS),
                                     ("seed_scheme", self.seed_scheme, SEED_SCHEMES),
                                     ("scheduler", self.scheduler, SCHEDULERS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        from ..processors.families import model_family

        model_family(self.family)  # ValueError naming the families (sd3, sdxl, flux, ...)
        if self.tiny_blocks is not None and (isinstance(self.tiny_blocks, bool) or int(self.tiny_blocks) < 1):
            raise ValueError(f"tiny_blocks must be >= 1, got {self.tiny_blocks!r}")
        if self.num_frames is not None and (isinstance(self.num_frames, bool) or int(self.num_frames) < 1):
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["conditions"] = [dataclasses.asdict(g) if not isinstance(g, dict) else g for g in self.conditions]
        d["shard"] = list(self.shard) if self.shard else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        _reject_unknown_fields(cls, d, "config")
        d = dict(d)
        if "conditions" in d:
            d["conditions"] = [g if isinstance(g, ConditionGroup) else ConditionGroup.from_dict(g)
                               for g in d["conditions"]]
        if d.get("shard") is not None:
            d["shard"] = tuple(d["shard"])
        return cls(**d)

    def merged(self, overrides: dict) -> "RunConfig":
        d = self.to_dict()
        d.update({k: copy.deepcopy(v) for k, v in overrides.items()})
        return RunConfig.from_dict(d)

    def generation_fingerprint(self) -> dict:
        return {k: getattr(self, k) for k in GENERATION_FIELDS}

    def seeds_for(self, prompt_index: int) -> list[int]:
        first = self.seed_base if self.seed_scheme == "shared" else self.seed_base + prompt_index
        return [first + r * 1_000_000 for r in range(self.seeds_per_prompt)]

    def draw_index(self, prompt_index: int) -> int:
        """Which draw of the seed's generator starts prompt ``prompt_index``: its index for
        seed_scheme "shared" (one generator consumed prompt after prompt), else 0."""
        return prompt_index if self.seed_scheme == "shared" else 0

    def expand(self, heads=None) -> list[Condition]:
        """The run's conditions (:func:`expand_conditions` with this run's steps)."""
        return expand_conditions(self.conditions, heads=heads, steps=self.steps)


# --- presets ----------------------------------------------------------------------------------
# Citations are to the original code (alias:line, aliases in ORIGINAL_STUDY.md's header).

SD3_MEDIUM = "stabilityai/stable-diffusion-3-medium-diffusers"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
ALL_METRICS = ["clip_t", "image_reward", "hps_v21", "lpips"]


def _tiny() -> dict:
    return dict(
        preset="tiny", model="tiny", family="sd3", dtype="float32", steps=4, guidance=7.0, height=64, width=64,
        max_sequence_length=16, prompts="builtin", seed_base=42,
        conditions=[dict(label="dose", controls=["sink", "random", "bottom"], k=[1, 4], layers=[None],
                         random_draws=2)],
        metrics=["clip_t", "image_reward", "hps_v21", "lpips"], untrained_metrics=True,
        metric_options={"clip_t": {"arch": "tiny"}, "image_reward": {"arch": "tiny"}, "hps_v21": {"arch": "tiny"}},
        bootstrap=2000,
    )


def _sd3(**kw) -> dict:
    """What every SD3 run of the original shares (ORIGINAL_STUDY.md section 0): SD3-medium
    in fp16, 1024 px, 256 T5 tokens, the repo's flow-matching scheduler, CFG 7.0 (the
    pipeline default; the original never passed it), latents from a CUDA generator."""
    d = dict(model=SD3_MEDIUM, family="sd3", dtype="float16", steps=20, guidance=7.0, height=1024, width=1024,
             max_sequence_length=256, scheduler=None, latents="original", seed_scheme="prompt", prompts="geneval",
             seed_base=42, conditions=[], metrics=list(ALL_METRICS), bootstrap=10000)
    d.update(kw)
    return d


# T2 (run_dynamic_sink.py via run_geneval_experiments.sh): per-head top-k keys by the mean
# mass over image queries, among all keys, masked for image AND text queries, every step.
def _t2_group(label: str, k: int, layers: list) -> dict:
    return dict(label=label, controls=["sink"], k=[k], select=["head"], layers=[layers], mass_queries="image",
                candidates="all", apply_queries="all")


_T2_GROUPS = {"a1": ("A1", 1, [12]), "a2": ("A2", 1, [6, 12, 18]), "a3": ("A3", 5, [12])}


def _paper_t2(which=("a1", "a2", "a3")) -> dict:
    return _sd3(prompts="geneval", seed_base=42,
                conditions=[_t2_group(*_T2_GROUPS[w]) for w in which])


def _paper_f2() -> dict:
    # H1D: the 8 prompts of collect_h1_dynamic.py, seed 42+i, 20 steps; measurement only
    return _sd3(prompts="h1d", seed_base=42, conditions=[], metrics=[], trace=True)


def _paper_t5_sdxl() -> dict:
    # SX (cross, attn2) and SS (self, attn1) in the U-Net mid block, per-head top-1
    return dict(model=SDXL_BASE, family="sdxl", dtype="float16", steps=20, guidance=5.0, height=1024, width=1024,
                max_sequence_length=77, scheduler=None, latents="original", seed_scheme="prompt",
                prompts="balanced100", limit=100, seed_base=1000,
                conditions=[dict(label="cross", controls=["sink"], k=[1], select=["head"],
                                 layers=[["mid_block.*.attn2"]], mass_queries="image", candidates="all",
                                 apply_queries="all"),
                            dict(label="self", controls=["sink"], k=[1], select=["head"],
                                 layers=[["mid_block.*.attn1"]], mass_queries="image", candidates="all",
                                 apply_queries="all")],
                metrics=["clip_t", "lpips"], bootstrap=10000)


def _acf(label, controls, ks) -> dict:
    """The counterfactual patcher (ACF): keys chosen by head-mean mass over image queries,
    top k*H shared by every head, masked for all queries; one random draw per call."""
    return dict(label=label, controls=list(controls), k=list(ks), select=["shared"], layers=[[12]],
                mass_queries="image", candidates="all", apply_queries="all", random_draws=1)


def _paper_t6() -> dict:
    return _sd3(prompts="geneval", limit=64, seed_base=1000,
                conditions=[_acf("perceptual", ["sink", "random"], [1, 5])],
                metrics=["clip_t", "lpips", "hps_v21"])


def _paper_t19() -> dict:
    return _sd3(prompts="geneval", limit=64, seed_base=1000,
                conditions=[_acf("k-sweep", ["sink", "random", "bottom", "high_outgoing_query",
                                             "high_outgoing_query_ablate"], [1, 5, 10, 20, 50])],
                metrics=["clip_t"])


def _paper_t20() -> dict:
    return _sd3(prompts="balanced100", limit=64, seed_base=1000,
                conditions=[_acf("hps-k", ["sink", "random"], [1, 10, 50])],
                metrics=["clip_t", "hps_v21", "image_reward"])


_FID = {"base": {}, "seed": dict(seed_base=2000), "cfg6.5": dict(guidance=6.5), "cfg8.5": dict(guidance=8.5),
        "steps15": dict(steps=15), "steps10": dict(steps=10), "euler": dict(scheduler="euler")}


def _paper_t9_fid(which: str) -> dict:
    # FC: baseline image sets only, 100 balanced prompts, seeds 1000+i, 20 steps, CFG 7.5
    d = _sd3(prompts="balanced100", limit=100, seed_base=1000, guidance=7.5, conditions=[], metrics=[])
    d.update(_FID[which])
    return d


def _index0(label, **kw) -> dict:
    """The SA processor's fixed index-0 intervention (CLIP BOS = the first text token) at
    layer 12, for every query."""
    g = dict(label=label, controls=["sink"], k=[1], select=["head"], fixed=[["text:0"]], layers=[[12]],
             mass_queries="image", candidates="all", apply_queries="all")
    g.update(kw)
    return g


def _appendix(**kw) -> dict:
    # RE / ML / EP: balanced_100 first 32, 50 steps
    return _sd3(prompts="balanced100", limit=32, steps=50, seed_base=42, **kw)


def _paper_t10_eta() -> dict:
    return _appendix(seed_scheme="shared", metrics=["clip_t", "image_reward"], conditions=[
        _index0("eta-sweep", path=["score"], eta_mode=["prob"], eta=[0.0, 0.01, 0.1, 0.25, 0.5, 1.0])])


def _paper_t10_value() -> dict:
    return _appendix(seed_scheme="shared", metrics=["clip_t", "image_reward"], conditions=[
        _index0("value-zero", path=["value"], value_target=["zero"], eta=[0.0]),
        _index0("value-mean-lerp", path=["value"], value_target=["mean"], eta=[0.0, 0.5])])


def _paper_h2() -> dict:
    return _appendix(metrics=["clip_t", "image_reward"], conditions=[
        _index0("H2-score", path=["score"], eta_mode=["prob"], eta=[0.01]),
        _index0("H2-value", path=["value"], value_target=["zero"], eta=[0.0])])


def _paper_t12() -> dict:
    return _appendix(metrics=["clip_t"], conditions=[
        _index0("multilayer", path=["both"], eta_mode=["prob"], value_target=["zero"], eta=[0.0],
                layers=[[12], [6, 12, 18]])])


def _paper_t13() -> dict:
    return _appendix(metrics=["clip_t"], conditions=[
        _index0("phase", path=["both"], eta_mode=["prob"], value_target=["zero"], eta=[0.0],
                phases=[None, [0.0, 0.2], [0.4, 0.6], [0.8, 1.0]])])


_T15 = {"cfg3": dict(guidance=3.0), "cfg7.5": dict(guidance=7.5), "cfg12": dict(guidance=12.0),
        "steps8": dict(guidance=7.5, steps=8), "steps50": dict(guidance=7.5, steps=50),
        "euler": dict(guidance=7.5, scheduler="euler"), "dpmpp": dict(guidance=7.5, scheduler="dpm++")}


def _dsp_group(label, **kw) -> dict:
    """DynamicSinkPatcher (E2/E3): per-head top-1 at layer 12, image queries only."""
    g = dict(label=label, controls=["sink"], k=[1], select=["head"], layers=[[12]], mass_queries="image",
             candidates="all", apply_queries="image")
    g.update(kw)
    return g


def _paper_t15(which: str) -> dict:
    return _sd3(prompts="geneval", limit=32, seed_base=1000, metrics=["clip_t", "lpips"],
                conditions=[_dsp_group("E2")], **_T15[which])


def _paper_t16() -> dict:
    return _sd3(prompts="geneval", limit=32, seed_base=1000, guidance=7.5, metrics=["clip_t", "lpips"],
                conditions=[_dsp_group("E3-all"), _dsp_group("E3-text-keys", candidates="text"),
                            _dsp_group("E3-image-keys", candidates="image")])


def _paper_t17() -> dict:
    # NC: 28 steps, seeds 42+i; here our processor with a zero change (logits += log 1) everywhere
    return _sd3(prompts="balanced100", limit=100, steps=28, seed_base=42, metrics=["lpips"],
                conditions=[dict(label="noop", controls=["sink"], k=[1], select=["head"], eta=[1.0],
                                 layers=[None])])


def _named(name: str, make, *args):
    def build():
        d = make(*args)
        d["preset"] = name
        return d
    return build


PRESETS = {"tiny": _tiny}
# (name, builder, what it reproduces; what differs) -- the README table is written from these
PRESET_INFO: dict[str, str] = {"tiny": "a tiny random-weight SD3 pipeline: exercises the machinery, offline"}


def _add(name: str, info: str, make, *args) -> None:
    PRESETS[name] = _named(name, make, *args)
    PRESET_INFO[name] = info


_add("paper-f2-dynamics", "Figure 2 / Table 1 (collect_h1_dynamic.py): the baseline images of its 8 prompts, "
     "traced at every layer and step", _paper_f2)
_add("paper-t2", "Table 2 A1+A2+A3 (run_dynamic_sink.py), one shared baseline; Table 3 (HPS) and Table 14 "
     "(by tag) are scores of the same images", _paper_t2)
_add("paper-sd3", "alias of paper-t2, the main result", _paper_t2)
for _w in ("a1", "a2", "a3"):
    _add(f"paper-t2-{_w}", f"Table 2 {_w.upper()} alone (same generation settings as paper-t2)", _paper_t2, (_w,))
_add("paper-t5-sdxl", "Table 5 (sdxl_sink_experiment.py cross-attention, sdxl_selfattn_sink_experiment.py "
     "self-attention), U-Net mid block", _paper_t5_sdxl)
_add("paper-sdxl", "alias of paper-t5-sdxl", _paper_t5_sdxl)
_add("paper-t6-perceptual", "Tables 6/7 (run_perceptual_delta_delta.py): sink vs random, shared k*H keys, "
     "k=1,5, LPIPS/CLIP-T/HPS", _paper_t6)
for _w in _FID:
    _add(f"paper-t9-fid-{_w}", f"Tables 9/18 (fid_calibration_experiment.py) image set {_w}: baseline images only; "
         "FID between run folders", _paper_t9_fid, _w)
_add("paper-t10-eta-sweep", "Tables 10/11 score sweep (run_experiment.py): prob-scale of the first text token "
     "at layer 12, eta 0..1", _paper_t10_eta)
_add("paper-t10-value-sweep", "value sweep (run_experiment.py): first text token's value zeroed, mean-filled, "
     "lerp 0.5", _paper_t10_value)
_add("paper-h2", "H2 (run_experiment.py): score eta=0.01 and value zero on the first text token", _paper_h2)
_add("paper-t12-multilayer", "Table 12 (run_multilayer.py): both paths on the first text token at layer 12 "
     "and at layers 6+12+18 together", _paper_t12)
_add("paper-t13-phase", "Table 13 (run_early_phase.py): both paths on the first text token at layer 12 in "
     "the full/early/mid/late phase", _paper_t13)
for _w in _T15:
    _add(f"paper-t15-{_w}", f"Table 15 (e2_paper_impl_multi_gpu.py) config {_w}: per-head top-1, image queries",
         _paper_t15, _w)
_add("paper-t16-e3-ablation", "Table 16 (e3_paper_impl_multi_gpu.py) ablation: per-head top-1 at layer 12, "
     "image queries; text/image-key variants differ from the original's", _paper_t16)
_add("paper-t17-noop", "Table 17 (noop_sanity_check.py): a no-op through our whole intervention path "
     "(eta=1 in every layer) against the stock baseline", _paper_t17)
_add("paper-t19-ksweep", "Table 19 (ablation_counterfactual_v3.py via run_k_sweep.sh): shared k*H keys, "
     "k=1..50, sink/random/bottom/high_outgoing_query (+ the acting ablate variant)", _paper_t19)
_add("paper-t20-hps-k", "Table 20 (hps_v2_k50_validation.py): sink vs random, shared k*H keys, k=1,10,50, "
     "HPS/CLIP-T/ImageReward", _paper_t20)


def preset_config(name: str | None) -> RunConfig:
    if name is None:
        name = "tiny"
    try:
        return RunConfig.from_dict(PRESETS[name]())
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def load_config_file(path: str) -> dict:
    """A JSON or YAML mapping of RunConfig fields."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if os.path.splitext(path)[1].lower() in (".yaml", ".yml"):
        data = _parse_yaml(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def _parse_yaml(path: str, text: str):
    """yaml.safe_load, its errors as a ValueError naming the file and the line (the line
    where the broken construct starts, when YAML says)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        why = ": ".join(x for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) or str(err)
        raise ValueError(f"{path}:{where} not valid YAML ({why})") from None
