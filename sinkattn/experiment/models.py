"""Pipelines the runner drives: the tiny random SD3 pipeline (offline), SD3/SD3.5 and SDXL
from a Hub id or a local folder, with a plain message when the weights are not there."""

from __future__ import annotations

import os
import warnings

import torch

from ..metrics.weights import hub_endpoint, offline_reason

__all__ = ["ModelUnavailable", "Generator", "load_pipeline", "download_instructions"]

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


def load_pipeline(model: str, family: str, dtype: str, device: str):
    """A diffusers pipeline on ``device``: ``model`` is "tiny", a local folder or a Hub id."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if model == "tiny":
        from ..tiny import tiny_sd3_pipeline, tiny_sdxl_pipeline

        pipe = tiny_sd3_pipeline(t5_tokens=16) if family == "sd3" else tiny_sdxl_pipeline()
        pipe = pipe.to(device)
        return pipe if dtype == "float32" else pipe.to(dtype=_DTYPES[dtype])  # built in float32
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


class Generator:
    """Calls one pipeline with paired inputs: the initial latents of (prompt, seed) are drawn
    once on the CPU from ``seed`` and handed to every condition as ``latents=``."""

    def __init__(self, pipe, family: str, steps: int, guidance: float, height: int, width: int,
                 max_sequence_length: int, device: str):
        self.pipe, self.family = pipe, family
        self.steps, self.guidance, self.height, self.width = steps, guidance, height, width
        self.max_sequence_length = max_sequence_length
        self.device = device
        denoiser = pipe.transformer if family == "sd3" else pipe.unet
        self.denoiser = denoiser
        self.channels = denoiser.config.in_channels
        self.dtype = denoiser.dtype
        heads = getattr(denoiser.config, "num_attention_heads", None)
        if family == "sdxl":  # diffusers' UNet keeps the head count in attention_head_dim
            heads = denoiser.config.attention_head_dim
        self.heads = heads if isinstance(heads, int) else None

    def latents(self, seed: int) -> torch.Tensor:
        scale = self.pipe.vae_scale_factor
        shape = (1, self.channels, self.height // scale, self.width // scale)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)

    def tracer_tokenizers(self):
        if self.family == "sd3":
            return [(self.pipe.tokenizer, 77), (self.pipe.tokenizer_3, self.max_sequence_length)]
        return self.pipe.tokenizer

    def __call__(self, prompt: str, seed: int, latents: torch.Tensor):
        kwargs = dict(prompt=prompt, height=self.height, width=self.width, num_inference_steps=self.steps,
                      guidance_scale=self.guidance, latents=latents.clone(),
                      generator=torch.Generator(device=self.device).manual_seed(int(seed)))
        if self.family == "sd3":
            kwargs["max_sequence_length"] = self.max_sequence_length
        with torch.inference_mode():
            return self.pipe(**kwargs).images[0]
