"""CLIP-T: text-image alignment as the cosine similarity of CLIP embeddings.

Model: open_clip ViT-B-32 with OpenAI's weights (QuickGELU), taken from the Hub repo
`timm/vit_base_patch32_clip_224.openai` (`open_clip_model.safetensors`, the safetensors
copy of the `open_clip_pytorch_model.bin` that `open_clip.create_model("ViT-B-32",
pretrained="openai")` loads).

Score: the RAW cosine similarity cos(E_img(image), E_txt(prompt)) in [-1, 1], no logit
scale, no clipping at 0. Papers usually print CLIP-T (and "CLIPScore") as 100 x this
value, sometimes clipped at 0 (CLIPScore uses 2.5 x max(cos, 0)); multiply by 100 when
comparing with such tables. Preprocessing is open_clip's eval transform for this model:
bicubic resize of the shorter side to 224, center crop, OpenAI mean/std.

Weights: `weights=` / SINKATTN_CLIP_WEIGHTS as a file (.safetensors, or a .bin/.pt
plain state dict in open_clip's key layout), a folder holding `open_clip_model.safetensors`,
or a Hub repo id with that file.
"""

from __future__ import annotations

from sinkattn.metrics import _open_clip
from sinkattn.metrics.base import Scorer
from sinkattn.metrics.weights import WeightFile, load_state_dict, randomize_, resolve_files

ENV_VAR = "SINKATTN_CLIP_WEIGHTS"
ARCH = "ViT-B-32"
FILES = [WeightFile("open_clip_model.safetensors", repo_id="timm/vit_base_patch32_clip_224.openai",
                    what="open_clip ViT-B-32 OpenAI weights",
                    alternatives=("open_clip_pytorch_model.bin",))]


class ClipTScorer(Scorer):
    name = "clip_t"

    def __init__(self, model, *, device, untrained, weights_source, batch_size=8):
        import open_clip

        super().__init__(device=device, untrained=untrained, weights_source=weights_source,
                         batch_size=batch_size)
        self.model = model.to(self.device).eval()
        self.tokenizer = _open_clip.tokenizer(model.context_length)
        self.preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)

    def _score_batch(self, images, prompts, references):
        import torch

        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with torch.no_grad():
            img = self.model.encode_image(pixels, normalize=True).float()
            txt = self.model.encode_text(tokens, normalize=True).float()
        return (img * txt).sum(-1).tolist()


def build(weights=None, device="cpu", untrained=False, *, arch=ARCH, seed=0, batch_size=8):
    """CLIP-T scorer. `arch`: an open_clip name, "tiny", or a config dict (OpenAI weights
    exist only for ViT-B-32; other archs are for random builds and tests)."""
    model = _open_clip.build_clip(arch, quick_gelu=True)
    if untrained:
        randomize_(model, seed)
        source = f"random(seed={seed})"
    else:
        paths, source = resolve_files("clip_t", FILES, weights, ENV_VAR)
        _open_clip.load_clip_state_dict(model, load_state_dict(paths[FILES[0].filename]), source)
    return ClipTScorer(model, device=device, untrained=untrained, weights_source=source,
                       batch_size=batch_size)
