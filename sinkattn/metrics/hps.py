"""HPS-v2.1: Human Preference Score v2.1 on an open_clip ViT-H-14.

Checkpoint: `HPS_v2.1_compressed.pt` from the Hub repo `xswu/HPSv2`, a dict
{"state_dict": <open_clip ViT-H-14 state dict>} (fp16). It is loaded with
`torch.load(weights_only=True)` into open_clip 3.x's own ViT-H-14 (standard GELU): the
hpsv2 package is not imported. Its vendored open_clip fork has the same architecture and
key layout; tests/metrics check that against the package on random weights.

Score, as `hpsv2.score` computes it: the dot product of the L2-normalised image and text
features, i.e. a raw cosine (typically ~0.2-0.35 for HPS-v2.1), no logit scale. The image
goes through the package's eval transform ("light augmentation" branch): to tensor,
bicubic resize so that the LONGER side is 224 (on the tensor, antialiased as torchvision
>= 0.17 does by default), zero padding to 224x224 (centred), OpenAI mean/std.

Differences from the package on purpose: RGBA images are converted to RGB (the package
keeps the alpha channel and then fails in the 3-channel patch embedding); the package
scores under CUDA fp16 autocast on a GPU (fp32 on CPU), this scorer runs in fp32 on every
device. Pass `antialias=False` to
reproduce scores computed with torchvision < 0.17, whose tensor resize did not antialias.
"""

from __future__ import annotations

from sinkattn.metrics import _open_clip
from sinkattn.metrics.base import Scorer
from sinkattn.metrics.weights import WeightFile, load_state_dict, randomize_, resolve_files

ENV_VAR = "SINKATTN_HPS_WEIGHTS"
ARCH = "ViT-H-14"
FILES = [WeightFile("HPS_v2.1_compressed.pt", repo_id="xswu/HPSv2",
                    what="HPS-v2.1 open_clip ViT-H-14 checkpoint")]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def hps_preprocess(image, size: int = 224, antialias: bool = True):
    """hpsv2's eval transform: (3, size, size) float tensor from a PIL image."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    x = F.to_tensor(image.convert("RGB"))  # [3, H, W] in [0, 1]
    height, width = x.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = [round(height * scale), round(width * scale)]
        x = F.resize(x, new_size, InterpolationMode.BICUBIC, antialias=antialias)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        x = F.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(x, OPENAI_MEAN, OPENAI_STD)


class HpsV21Scorer(Scorer):
    name = "hps_v21"

    def __init__(self, model, *, device, untrained, weights_source, batch_size=8, antialias=True):
        super().__init__(device=device, untrained=untrained, weights_source=weights_source,
                         batch_size=batch_size)
        self.model = model.to(self.device).eval()
        self.tokenizer = _open_clip.tokenizer(model.context_length)
        self.antialias = antialias
        size = model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)

    def _score_batch(self, images, prompts, references):
        import torch

        pixels = torch.stack([hps_preprocess(im, self.image_size, self.antialias) for im in images])
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with torch.no_grad():
            out = self.model(pixels.to(self.device), tokens)
            img, txt = out["image_features"].float(), out["text_features"].float()
        return (img * txt).sum(-1).tolist()


def build(weights=None, device="cpu", untrained=False, *, arch=ARCH, seed=0, batch_size=8,
          antialias=True):
    """HPS-v2.1 scorer. `arch`: "ViT-H-14" (the only one with official weights), "tiny",
    or an open_clip config dict (random builds and tests)."""
    model = _open_clip.build_clip(arch, quick_gelu=False)
    if untrained:
        randomize_(model, seed)
        source = f"random(seed={seed})"
    else:
        paths, source = resolve_files("hps_v21", FILES, weights, ENV_VAR)
        ckpt = load_state_dict(paths[FILES[0].filename])
        state_dict = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        _open_clip.load_clip_state_dict(model, state_dict, source)
        model.float()  # the official file is fp16; score in fp32
    return HpsV21Scorer(model, device=device, untrained=untrained, weights_source=source,
                        batch_size=batch_size, antialias=antialias)
