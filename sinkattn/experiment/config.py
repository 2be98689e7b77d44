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
controls use the same ``top_k`` as the sink condition they control (equal budget).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field

__all__ = [
    "CONTROLS", "PRESETS", "Condition", "ConditionGroup", "RunConfig", "expand_conditions",
    "load_config_file", "parse_int_sets", "preset_config",
]

CONTROLS = ("sink", "random", "bottom")
TOKEN_RANGES = ("image", "text", "all")

# Fields of RunConfig that change what an image is: a run folder holds one value of each.
GENERATION_FIELDS = ("model", "family", "dtype", "steps", "guidance", "height", "width",
                     "max_sequence_length", "seed_base", "prompts")


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
    (None: every step); timesteps: (lo, hi) or None; draw: index of the random draw.
    """

    control: str = "baseline"      # baseline | sink | random | bottom
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

    @property
    def name(self) -> str:
        if self.control == "baseline":
            return "baseline"
        name = f"{self.control}_k{self.k}_{self.path}_{self.select}"
        name += _fmt_set("L", self.layers) if self.layers is not None else "_Lall"
        name += _fmt_set("S", self.steps)
        if self.timesteps is not None:
            name += f"_T{_fmt_num(self.timesteps[0])}to{_fmt_num(self.timesteps[1])}"
        if self.eta != 0.0:
            name += f"_eta{_fmt_num(self.eta)}"
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
        for key in ("layers", "steps", "timesteps"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["name"] = self.name
        return d


@dataclass
class ConditionGroup:
    """A cartesian product of intervention settings; lists are expanded, scalars apply to all.

    layers / steps: a list of sets, each set a list of ints / name patterns, or None (all);
    e.g. ``layers=[[6], [12], [18]]`` gives three conditions, ``layers=[[6, 12, 18]]`` one.
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

    @classmethod
    def from_dict(cls, d: dict) -> "ConditionGroup":
        _reject_unknown_fields(cls, d, "condition group")
        d = dict(d)
        for key in ("controls", "k", "path", "select", "eta"):
            if key in d and not isinstance(d[key], (list, tuple)):
                d[key] = [d[key]]
        for key in ("layers", "steps"):
            if key in d:
                d[key] = _norm_sets(d[key], key)
        if "timesteps" in d:
            t = d["timesteps"]
            d["timesteps"] = [None] if t is None else ([t] if t and not isinstance(t[0], (list, tuple, type(None))) else list(t))
        return cls(**d)


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


def expand_conditions(groups: list[ConditionGroup], heads: int | None = None) -> list[Condition]:
    """Baseline first, then every group's product in a fixed order (control, k, path, select,
    eta, layers, steps, timesteps, draw); a condition already produced keeps its first place.
    ``heads`` is needed for select="shared" (top_k = k * heads)."""
    out: dict[str, Condition] = {"baseline": Condition()}
    for g in groups:
        for control in g.controls:
            if control not in CONTROLS:
                raise ValueError(f"controls: {control!r} is not one of {CONTROLS}")
        for name, value in (("mass_queries", g.mass_queries), ("apply_queries", g.apply_queries),
                            ("candidates", g.candidates)):
            if value not in TOKEN_RANGES:
                raise ValueError(f"{name}: {value!r} is not one of {TOKEN_RANGES}")
        for k, control, path, select, eta, layers, steps, timesteps in itertools.product(
                g.k, g.controls, g.path, g.select, g.eta, g.layers, g.steps, g.timesteps):
            k = int(k)
            if k < 1:
                raise ValueError(f"k must be >= 1 (the baseline is always included), got {k}")
            if not 0.0 <= float(eta) <= 1.0:
                raise ValueError(f"eta must be in [0, 1], got {eta}")
            if select == "shared":
                if heads is None:
                    raise ValueError("select='shared' needs the model's heads per layer (top_k = k * H)")
                top_k = k * heads
            else:
                top_k = k
            draws = range(g.random_draws) if control == "random" else [None]
            for draw in draws:
                c = Condition(control=control, k=k, top_k=top_k, path=path, select=select, eta=float(eta),
                              layers=_tuple(layers), steps=_tuple(steps),
                              timesteps=None if timesteps is None else (float(timesteps[0]), float(timesteps[1])),
                              mass_queries=g.mass_queries, apply_queries=g.apply_queries,
                              candidates=g.candidates, draw=draw, group=g.label)
                out.setdefault(c.name, c)
    return list(out.values())


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
    family: str = "sd3"                 # sd3 | sdxl
    dtype: str = "float32"
    device: str | None = None           # default: cuda (cuda:LOCAL_RANK) if available, else cpu
    steps: int = 4
    guidance: float = 7.0
    height: int = 64
    width: int = 64
    max_sequence_length: int = 16
    # prompts and seeds: prompt i (its index in the source) uses seed seed_base + i, and its
    # extra replicates seed_base + i + r * 1_000_000
    prompts: str = "builtin"            # builtin | geneval | a .jsonl / .txt path
    limit: int | None = None
    seed_base: int = 42
    seeds_per_prompt: int = 1
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
        return [self.seed_base + prompt_index + r * 1_000_000 for r in range(self.seeds_per_prompt)]


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


def _paper_sd3() -> dict:
    return dict(
        preset="paper-sd3", model="stabilityai/stable-diffusion-3-medium-diffusers", family="sd3",
        dtype="float16", steps=20, guidance=7.0, height=1024, width=1024, max_sequence_length=256,
        prompts="geneval", seed_base=42,
        conditions=[
            # main result: the top sink per head, layer 12, score path, vs equal-budget controls
            dict(label="main", controls=["sink", "random", "bottom"], k=[1], layers=[[12]]),
            dict(label="A2-layers", controls=["sink"], k=[1], layers=[[6], [12], [18]]),
            dict(label="A3-k5", controls=["sink"], k=[5], layers=[[12]]),
            dict(label="k-sweep", controls=["sink", "random"], k=[1, 5, 10, 20, 50], layers=[[12]]),
        ],
        metrics=["clip_t", "image_reward", "hps_v21", "lpips"], bootstrap=10000,
    )


def _paper_sdxl() -> dict:
    return dict(
        preset="paper-sdxl", model="stabilityai/stable-diffusion-xl-base-1.0", family="sdxl",
        dtype="float16", steps=20, guidance=7.0, height=1024, width=1024, max_sequence_length=77,
        prompts="geneval", seed_base=42,
        conditions=[
            dict(label="main", controls=["sink", "random"], k=[1], layers=[None]),
            dict(label="k-sweep", controls=["sink", "random"], k=[1, 5, 10], layers=[None]),
        ],
        metrics=["clip_t", "image_reward", "hps_v21", "lpips"], bootstrap=10000,
    )


PRESETS = {"tiny": _tiny, "paper-sd3": _paper_sd3, "paper-sdxl": _paper_sdxl}


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
