"""Shared open_clip plumbing for the two CLIP-family metrics (CLIP-T and HPS-v2.1)."""

from __future__ import annotations

import copy
from typing import Any

# A small ViT CLIP of the same family, for the offline tiny preset and tests: same
# tokenizer (77-token context, 49408-entry BPE vocabulary) and input size, tiny towers.
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


def model_config(arch: str | dict) -> dict:
    """The open_clip model config for a registered name, "tiny", or a config dict."""
    import open_clip

    if isinstance(arch, dict):
        return copy.deepcopy(arch)
    if arch == "tiny":
        return copy.deepcopy(TINY_CLIP_CFG)
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}")
    return copy.deepcopy(cfg)


def build_clip(arch: str | dict, quick_gelu: bool):
    """An open_clip CLIP with dict outputs (library init; weights are loaded or randomized after)."""
    import open_clip

    cfg = model_config(arch)
    cfg.pop("quick_gelu", None)
    return open_clip.CLIP(**cfg, quick_gelu=quick_gelu, output_dict=True)


def tokenizer(context_length: int = 77):
    """open_clip's BPE tokenizer (its vocabulary ships inside the open_clip wheel)."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


def load_clip_state_dict(model, state_dict: dict, source: str) -> None:
    """Strict load, tolerating only keys that carry no weights in open_clip 3.x."""
    state_dict = dict(state_dict)
    own = model.state_dict()
    # Older open_clip forks save the causal mask buffer and position ids; they are not weights.
    for key in [k for k in state_dict if k not in own and k.endswith(("attn_mask", "position_ids"))]:
        del state_dict[key]
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"{source}: checkpoint does not match the open_clip architecture "
            f"(missing {result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}, "
            f"unexpected {result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''})")
