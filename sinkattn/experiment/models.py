"""Pipelines the runner drives: every model family of
:data:`sinkattn.processors.families.MODEL_FAMILIES` (SD3, SD3.5-medium/large, SDXL, Flux,
PixArt-Sigma, Qwen-Image, Wan text-to-video), as the tiny random pipeline (offline), from a
Hub id or from a local folder, with a plain message when the weights are not there.

Every family-specific decision (pipeline class, denoiser attribute, default weights, tiny
builder, latents' shape, call arguments, output attribute, token grid, text tokenizers) is
read from the family's row of that table; this module holds no per-family branches."""

from __future__ import annotations

import json
import os
import warnings

import torch

from ..metrics.weights import hub_endpoint, offline_reason
from ..processors.families import Grid, ModelFamily, model_family

__all__ = ["ModelUnavailable", "Generator", "load_pipeline", "download_instructions", "set_scheduler", "heads_of",
           "denoiser_skeleton"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

# The tiny pipelines whose denoiser ``tiny_blocks`` rebuilds with another number of joint
# blocks (tiny pipeline builder -> its transformer builder, both in sinkattn.tiny): the
# SD3-line transformers, whose block indices the paper presets' layers name.
_TINY_BLOCKS = {"tiny_sd3_pipeline": "tiny_sd3_transformer", "tiny_sd35_pipeline": "tiny_sd35_transformer",
                "tiny_sd35_large_pipeline": "tiny_sd35_large_transformer"}


class ModelUnavailable(RuntimeError):
    """The pipeline's weights are neither local nor downloadable."""


def download_instructions(repo: str) -> str:
    """How to get the Hub pipeline `repo` onto this machine and point at it (also used by examples/)."""
    folder = f"./weights/{repo.rstrip('/').split('/')[-1]}"
    return (f"On a machine with Hub access (if the repo is gated, accept its licence on "
            f"https://huggingface.co/{repo}, then log in: hf auth login), run\n"
            f"    hf download {repo} --local-dir {folder}\n"
            f"then copy {folder} here and pass --model {folder}.")


def _family(family: str | ModelFamily) -> ModelFamily:
    """The table row of ``family`` (a name of MODEL_FAMILIES; ValueError naming them otherwise)."""
    return family if isinstance(family, ModelFamily) else model_family(family)


def _tiny_pipeline(family: ModelFamily, tiny_blocks: int | None):
    """The family's tiny random pipeline (``sinkattn.tiny.<family.tiny>``); for the SD3-line
    families with ``tiny_blocks`` joint blocks (default 2; 24 gives SD3-medium's block
    indices, so that the paper presets' layers 6/12/18 exist)."""
    from .. import tiny

    if family.tiny is None:
        raise ValueError(f"family {family.name!r} has no tiny pipeline; pass --model (default {family.hub_id})")
    pipe = getattr(tiny, family.tiny)()
    if tiny_blocks is not None:
        if family.tiny not in _TINY_BLOCKS:
            raise ValueError(f"tiny_blocks applies to the tiny pipelines of the SD3-line families only, "
                             f"not to family {family.name!r}")
        denoiser = getattr(tiny, _TINY_BLOCKS[family.tiny])(num_layers=int(tiny_blocks))
        pipe = type(pipe)(**dict(pipe.components, **{family.denoiser: denoiser}))
        pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model: str, family: str, dtype: str, device: str, tiny_blocks: int | None = None):
    """A diffusers pipeline of ``family`` on ``device``: ``model`` is "tiny", a local folder
    or a Hub id (the family's class, ``diffusers.<family.pipeline>``)."""
    spec = _family(family)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if model == "tiny":
        pipe = _tiny_pipeline(spec, tiny_blocks).to(device)
        return pipe if dtype == "float32" else pipe.to(dtype=_DTYPES[dtype])  # built in float32
    if tiny_blocks is not None:
        raise ValueError("tiny_blocks applies to --model tiny only")
    import diffusers

    cls = getattr(diffusers, spec.pipeline)
    local = os.path.isdir(os.path.expanduser(model))
    why = "" if local else offline_reason(hub_endpoint())  # offline: no Hub retries, the message at once
    try:
        warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
        pipe = cls.from_pretrained(os.path.expanduser(model) if local else model, torch_dtype=_DTYPES[dtype],
                                   local_files_only=local or bool(why))
    except (OSError, ValueError, EnvironmentError) as err:
        cause = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        where = (f"the folder {model!r} does not hold a diffusers {spec.pipeline} (model_index.json, "
                 f"{spec.denoiser}/, vae/, text encoders, tokenizers; {cause})") if local else (
                 f"{model!r} is not in the local Hugging Face cache and cannot be downloaded ({why or cause})")
        raise ModelUnavailable(
            f"cannot load the {spec.name.upper()} pipeline ({spec.pipeline}; default weights {spec.hub_id}): {where}.\n"
            + download_instructions(spec.hub_id if local else model)
            + "\nOffline, `sinkattn run --preset tiny` needs no download.") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def set_scheduler(pipe, name: str | None) -> None:
    """Replace the pipeline's scheduler as the original's E2 and FID-calibration runs did:
    "euler" = EulerDiscreteScheduler, "dpm++" = DPMSolverMultistepScheduler, each built
    ``.from_config`` of the pipeline's own scheduler config (e2_paper_impl_multi_gpu.py:140,148;
    fid_calibration_experiment.py:141). For SD3 that config is a flow-matching one, so these are
    noise-prediction schedulers driving a rectified-flow model (defect D23): kept as the original
    ran them. None keeps the model's scheduler."""
    if name is None:
        return
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cls = {"euler": EulerDiscreteScheduler, "dpm++": DPMSolverMultistepScheduler}.get(name)
    if cls is None:
        raise ValueError(f"scheduler must be None, 'euler' or 'dpm++', got {name!r}")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def heads_of(denoiser, layers=None) -> int:
    """Heads per attention module in ``layers`` (as :func:`sinkattn.gating.intervene` takes
    them; None: every layer), for select="shared" (top_k = k * H). SDXL's U-Net has other
    head counts per level (its config's attention_head_dim is a list), so the count is read
    from the modules the condition intervenes in; it must be one number."""
    from ..gating import _select_layers
    from ..processors import attention_modules

    chosen = _select_layers(denoiser, list(layers) if layers is not None else None)
    counts = {name: int(m.heads) for name, m in attention_modules(denoiser) if chosen is None or name in chosen}
    values = sorted(set(counts.values()))
    if len(values) != 1:
        raise ValueError(f"select='shared' needs one head count in the intervened layers "
                         f"({'all' if layers is None else list(layers)}); they have {values or 'none'}")
    return values[0]


def denoiser_skeleton(model: str, family: str, tiny_blocks: int | None = None):
    """(the denoiser's module tree without its weights, where its config came from), or
    (None, why not): "tiny" is the tiny pipeline's denoiser (small, built); a local folder's
    or the Hub cache's ``<family.denoiser>/config.json`` is built on the meta device as the
    diffusers class its ``_class_name`` names. Nothing is downloaded."""
    spec = _family(family)
    if model == "tiny":
        return getattr(_tiny_pipeline(spec, tiny_blocks), spec.denoiser), f"the tiny {spec.name} config"
    sub = spec.denoiser
    path = os.path.join(os.path.expanduser(model), sub, "config.json")
    where = path
    if not os.path.isdir(os.path.expanduser(model)):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json", subfolder=sub)
        except Exception:  # noqa: BLE001 - an odd id or cache: no config, say why below
            found = None
        if not isinstance(found, str):
            return None, f"{model}/{sub}/config.json is not in the local Hugging Face cache"
        path = where = found
    if not os.path.isfile(path):
        return None, f"{path} does not exist"
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    import diffusers

    cls = getattr(diffusers, str(config.get("_class_name", "")), None)
    if cls is None:
        return None, f"{where} names no diffusers model class (_class_name {config.get('_class_name')!r})"
    with torch.device("meta"):
        return cls.from_config(config), where


class _PromptTokenizer:
    """A tokenizer that first turns the prompt into the text the pipeline tokenizes
    (``family.prompt_text``: PixArt lower-cases, Wan cleans), for SinkTracer's token names;
    everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer, family: ModelFamily, pipe):
        self._tokenizer, self._family, self._pipe = tokenizer, family, pipe

    def __call__(self, text, *args, **kwargs):
        return self._tokenizer(self._family.prompt_text(self._pipe, text), *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


class Generator:
    """Calls one pipeline with paired inputs. latents="cpu": the initial latents of (prompt,
    seed) are drawn once on the CPU from ``seed``, at the shape the family's pipeline takes
    as ``latents=`` (``family.latent_shape``: packed for Flux and Qwen-Image, 5-D for Wan),
    and handed to every condition. latents="original": every condition's call gets a fresh
    ``torch.Generator(device).manual_seed(seed)`` and the pipeline draws the latents, as the
    original study did (on CUDA: its latents; on a CPU, a CPU draw, which cannot match
    them). ``draw`` > 0 skips that many latent draws of the generator first: the original's
    score/value sweeps consumed one generator prompt after prompt.

    ``num_frames``: video families (those whose call options include num_frames, Wan) make
    this many frames (None: 1, a single-frame video); the others ignore it. The image of a
    video call is its FIRST frame, as a PIL image (what records, metrics and the report see).
    """

    def __init__(self, pipe, family: str, steps: int, guidance: float, height: int, width: int,
                 max_sequence_length: int, device: str, latents: str = "cpu", num_frames: int | None = None):
        if latents not in ("cpu", "original"):
            raise ValueError(f"latents must be 'cpu' or 'original', got {latents!r}")
        self.spec = _family(family)
        self.pipe, self.family = pipe, self.spec.name
        self.steps, self.guidance, self.height, self.width = steps, guidance, height, width
        self.max_sequence_length = max_sequence_length
        self.num_frames = 1 if num_frames is None else int(num_frames)
        self.device = device
        self.mode = latents
        self.denoiser = getattr(pipe, self.spec.denoiser)
        self.dtype = self.denoiser.dtype

    def heads_for(self, layers=None) -> int:
        """Heads of the attention modules in ``layers`` (see :func:`heads_of`)."""
        return heads_of(self.denoiser, layers)

    @property
    def heads(self) -> int | None:
        """Heads per layer when every layer has the same count (SD3), else None (SDXL)."""
        try:
            return self.heads_for(None)
        except ValueError:
            return None

    def _options(self) -> dict:
        """The runner's settings a family may take as call arguments (family.call_options)."""
        return {"max_sequence_length": self.max_sequence_length, "num_frames": self.num_frames}

    def _shape(self) -> tuple[int, ...]:
        """The shape of the pipeline's ``latents=`` (family.latent_shape). Flux and Qwen-Image
        draw their latents unpacked and pack them: as many numbers, so skipping a draw of
        this shape advances a generator as far as the pipeline's own draw does."""
        return tuple(self.spec.latent_shape(self.pipe, self.height, self.width, num_frames=self.num_frames))

    def latents(self, seed: int, draw: int = 0) -> torch.Tensor | None:
        """The initial latents of ``seed`` (its ``draw``-th draw) for latents="cpu"; None for
        latents="original" (the pipeline draws them from the generator it is given)."""
        if self.mode == "original":
            return None
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        for _ in range(int(draw)):
            torch.randn(self._shape(), generator=g, dtype=torch.float32)
        return torch.randn(self._shape(), generator=g, dtype=torch.float32).to(self.device, self.dtype)

    def generator(self, seed: int, draw: int = 0) -> torch.Generator:
        """A generator on the pipeline's device seeded with ``seed``, past ``draw`` latent
        draws made the way the pipeline makes them (randn_tensor, the pipeline's dtype)."""
        from diffusers.utils.torch_utils import randn_tensor

        g = torch.Generator(device=self.device).manual_seed(int(seed))
        for _ in range(int(draw)):
            randn_tensor(self._shape(), generator=g, device=torch.device(self.device), dtype=self.dtype)
        return g

    def grid(self) -> Grid:
        """(frames, rows, cols) of the image tokens at full resolution (family.token_grid)."""
        return self.spec.token_grid(self.pipe, self.height, self.width, num_frames=self.num_frames)

    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of the image tokens at full resolution, for the tracer's positions
        (of one frame: a video's frames share the grid; see :meth:`grid`)."""
        grid = self.grid()
        return grid.rows, grid.cols

    def guidance_branches(self) -> dict:
        """SinkTracer.begin's description of the guidance branches of this family's calls: the
        negative prompt the pipeline is given (the family's, else ""), whether classifier-free
        guidance runs, and for pipelines that run its branches as separate forwards, their order."""
        guided = self.guidance > 1
        return {"negative_prompt": dict(self.spec.call_kwargs).get("negative_prompt", ""), "cfg": guided,
                "passes": self.spec.guidance_passes if guided else None}

    def tracer_tokenizers(self):
        """SinkTracer's ``tokenizer=``: the family's text segments in key order as
        [(tokenizer, padded length)], each tokenizing the text the pipeline tokenizes
        (family.prompt_text). None (text keys named by index only) when a segment's text
        cannot be given that way: unpadded text (its length is the prompt's) or a chat
        template whose leading tokens the pipeline drops (Qwen-Image)."""
        if self.spec.prompt_template is not None:
            return None
        options = self._options()
        segments = []
        for attribute, length in self.spec.tokenizers:
            if isinstance(length, str):
                length = options[length]
            if length is None:
                return None
            segments.append((_PromptTokenizer(getattr(self.pipe, attribute), self.spec, self.pipe), int(length)))
        return segments

    def __call__(self, prompt: str, seed: int, latents: torch.Tensor | None, draw: int = 0):
        """One image (a video: its first frame; ``last_frames`` then holds every frame), as a PIL image."""
        kwargs = dict(prompt=prompt, height=self.height, width=self.width, num_inference_steps=self.steps,
                      generator=self.generator(seed, draw if latents is None else 0), output_type="pil",
                      **self.spec.call_arguments(self.guidance, **self._options()))
        if latents is not None:
            kwargs["latents"] = latents.clone()
        with torch.inference_mode():
            first = getattr(self.pipe(**kwargs), self.spec.output)[0]
        if self.spec.output != "frames":
            self.last_frames = None
            return first
        self.last_frames = list(first)  # every frame of the video (the runner saves them as a GIF)
        return self.last_frames[0]
