"""Pipelines the runner drives: the tiny random SD3 pipeline (offline), SD3/SD3.5 and SDXL
from a Hub id or a local folder, with a plain message when the weights are not there."""

from __future__ import annotations

import json
import os
import warnings

import torch

from ..metrics.weights import hub_endpoint, offline_reason

__all__ = ["ModelUnavailable", "Generator", "load_pipeline", "download_instructions", "set_scheduler", "heads_of",
           "denoiser_skeleton"]

DEFAULT_MODELS = {"sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
                  "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ModelUnavailable(RuntimeError):
    """The pipeline's weights are neither local nor downloadable."""


def download_instructions(repo: str) -> str:
    """How to get the Hub pipeline `repo` onto this machine and point at it (also used by examples/)."""
    folder = f"./weights/{repo.rstrip('/').split('/')[-1]}"
    return (f"On a machine with Hub access (if the repo is gated, accept its licence on "
            f"https://huggingface.co/{repo}, then log in: hf auth login), run\n"
            f"    hf download {repo} --local-dir {folder}\n"
            f"then copy {folder} here and pass --model {folder}.")


def _tiny_pipeline(family: str, tiny_blocks: int | None):
    """The tiny random pipeline; for SD3 with ``tiny_blocks`` joint blocks (default 2; 24
    gives SD3-medium's block indices, so that the paper presets' layers 6/12/18 exist)."""
    from ..tiny import tiny_sd3_pipeline, tiny_sd3_transformer, tiny_sdxl_pipeline

    if family == "sdxl":
        if tiny_blocks is not None:
            raise ValueError("tiny_blocks applies to the tiny SD3 pipeline only (family sd3)")
        return tiny_sdxl_pipeline()
    if family != "sd3":
        raise ValueError(f"family must be 'sd3' or 'sdxl', got {family!r}")
    pipe = tiny_sd3_pipeline(t5_tokens=16)
    if tiny_blocks is not None:
        pipe = type(pipe)(**dict(pipe.components, transformer=tiny_sd3_transformer(num_layers=int(tiny_blocks))))
        pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model: str, family: str, dtype: str, device: str, tiny_blocks: int | None = None):
    """A diffusers pipeline on ``device``: ``model`` is "tiny", a local folder or a Hub id."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if model == "tiny":
        pipe = _tiny_pipeline(family, tiny_blocks).to(device)
        return pipe if dtype == "float32" else pipe.to(dtype=_DTYPES[dtype])  # built in float32
    if tiny_blocks is not None:
        raise ValueError("tiny_blocks applies to --model tiny only")
    if family == "sd3":
        from diffusers import StableDiffusion3Pipeline as cls
    elif family == "sdxl":
        from diffusers import StableDiffusionXLPipeline as cls
    else:
        raise ValueError(f"family must be 'sd3' or 'sdxl', got {family!r}")
    local = os.path.isdir(os.path.expanduser(model))
    why = "" if local else offline_reason(hub_endpoint())  # offline: no Hub retries, the message at once
    try:
        warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
        pipe = cls.from_pretrained(os.path.expanduser(model) if local else model, torch_dtype=_DTYPES[dtype],
                                   local_files_only=local or bool(why))
    except (OSError, ValueError, EnvironmentError) as err:
        cause = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        where = (f"the folder {model!r} does not hold a diffusers {family} pipeline (model_index.json, "
                 f"transformer/ or unet/, vae/, text encoders, tokenizers; {cause})") if local else (
                 f"{model!r} is not in the local Hugging Face cache and cannot be downloaded ({why or cause})")
        raise ModelUnavailable(
            f"cannot load the {family.upper()} pipeline: {where}.\n"
            + download_instructions(DEFAULT_MODELS[family] if local else model)
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
    (None, why not): "tiny" is built (small); a local folder's or the Hub cache's
    transformer/unet config.json is built on the meta device. Nothing is downloaded."""
    if model == "tiny":
        from ..tiny import tiny_sd3_transformer, tiny_sdxl_unet

        if family == "sdxl":
            return tiny_sdxl_unet(), "the tiny SDXL U-Net"
        return tiny_sd3_transformer(num_layers=tiny_blocks or 2), "the tiny SD3 config"
    sub = "transformer" if family == "sd3" else "unet"
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
    if family == "sd3":
        from diffusers import SD3Transformer2DModel as cls
    else:
        from diffusers import UNet2DConditionModel as cls
    with torch.device("meta"):
        return cls.from_config(config), where


class Generator:
    """Calls one pipeline with paired inputs. latents="cpu": the initial latents of (prompt,
    seed) are drawn once on the CPU from ``seed`` and handed to every condition as
    ``latents=``. latents="original": every condition's call gets a fresh
    ``torch.Generator(device).manual_seed(seed)`` and the pipeline draws the latents, as the
    original study did (on CUDA: its latents; on a CPU, a CPU draw, which cannot match
    them). ``draw`` > 0 skips that many latent draws of the generator first: the original's
    score/value sweeps consumed one generator prompt after prompt."""

    def __init__(self, pipe, family: str, steps: int, guidance: float, height: int, width: int,
                 max_sequence_length: int, device: str, latents: str = "cpu"):
        if latents not in ("cpu", "original"):
            raise ValueError(f"latents must be 'cpu' or 'original', got {latents!r}")
        self.pipe, self.family = pipe, family
        self.steps, self.guidance, self.height, self.width = steps, guidance, height, width
        self.max_sequence_length = max_sequence_length
        self.device = device
        self.mode = latents
        denoiser = pipe.transformer if family == "sd3" else pipe.unet
        self.denoiser = denoiser
        self.channels = denoiser.config.in_channels
        self.dtype = denoiser.dtype

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

    def _shape(self):
        scale = self.pipe.vae_scale_factor
        return (1, self.channels, self.height // scale, self.width // scale)

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

    def tracer_tokenizers(self):
        if self.family == "sd3":
            return [(self.pipe.tokenizer, 77), (self.pipe.tokenizer_3, self.max_sequence_length)]
        return self.pipe.tokenizer

    def __call__(self, prompt: str, seed: int, latents: torch.Tensor | None, draw: int = 0):
        kwargs = dict(prompt=prompt, height=self.height, width=self.width, num_inference_steps=self.steps,
                      guidance_scale=self.guidance, generator=self.generator(seed, draw if latents is None else 0))
        if latents is not None:
            kwargs["latents"] = latents.clone()
        if self.family == "sd3":
            kwargs["max_sequence_length"] = self.max_sequence_length
        with torch.inference_mode():
            return self.pipe(**kwargs).images[0]
