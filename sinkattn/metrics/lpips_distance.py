"""LPIPS (AlexNet, v0.1): perceptual distance of each image to its reference image.

The reference is the condition's own baseline image (same prompt and seed, no
intervention). Lower is closer; LPIPS(x, x) = 0.

Uses the `lpips` package itself. Its linear calibration layers (`weights/v0.1/alex.pth`)
ship inside the lpips wheel and are read with `torch.load(weights_only=True)`. The AlexNet
backbone does not ship: lpips would download torchvision's ImageNet AlexNet
(`alexnet-owt-7be5be79.pth`, from https://download.pytorch.org/models/) at construction.
Here the backbone is built empty and filled from a local copy instead, looked up in this
order: `weights=` (the file, or a folder holding it), SINKATTN_LPIPS_WEIGHTS, the torch hub
cache ($TORCH_HOME/hub/checkpoints/, where torchvision itself caches it), then a download
to that cache unless offline; else `MetricWeightsUnavailable` naming the file. A cached or
downloaded copy must have the SHA-256 prefix in its name (7be5be79), as torch.hub checks.

Images are compared at their own resolution (no resize): each image must have the size
of its reference. Pixels map to [-1, 1] as `lpips.im2tensor` does (x / 127.5 - 1).
"""

from __future__ import annotations

import os
import warnings

from sinkattn.metrics.base import Scorer
from sinkattn.metrics.weights import WeightFile, load_state_dict, randomize_, resolve_files

ENV_VAR = "SINKATTN_LPIPS_WEIGHTS"
# torchvision publishes the first 8 hex digits of the file's SHA-256 in its name (AlexNet_Weights
# .IMAGENET1K_V1 in torchvision/models/alexnet.py, loaded with check_hash=True); no full digest is published.
FILES = [WeightFile("alexnet-owt-7be5be79.pth", url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                    what="torchvision ImageNet AlexNet (LPIPS backbone)", sha256="7be5be79")]
# lpips' AlexNet slices keep torchvision's `features` indices: features.{i} -> net.slice{s}.{i}.
_SLICE_OF_FEATURE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def _empty_lpips():
    import lpips

    with warnings.catch_warnings():
        # lpips passes the deprecated `pretrained=False` to torchvision: random AlexNet, no download.
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True, verbose=False)


def linear_weights_path() -> str:
    """The LPIPS v0.1 AlexNet calibration weights that ship inside the lpips wheel."""
    import lpips

    return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")


def backbone_state_dict(alexnet_state_dict: dict) -> dict:
    """torchvision AlexNet keys (features.{i}.*) -> lpips keys (net.slice{s}.{i}.*)."""
    out = {}
    for key, value in alexnet_state_dict.items():
        if not key.startswith("features."):
            continue  # the classifier is not part of LPIPS
        idx = int(key.split(".")[1])
        out[f"net.slice{_SLICE_OF_FEATURE[idx]}.{key[len('features.'):]}"] = value
    return out


def to_lpips_tensor(image):
    """PIL image -> (1, 3, H, W) float tensor in [-1, 1], as lpips.im2tensor."""
    import numpy as np
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


class LpipsScorer(Scorer):
    name = "lpips"
    needs_prompts = False
    needs_references = True
    higher_is_better = False

    def __init__(self, model, *, device, untrained, weights_source, batch_size=8):
        super().__init__(device=device, untrained=untrained, weights_source=weights_source,
                         batch_size=batch_size)
        self.model = model.to(self.device).eval()

    def _score_batch(self, images, prompts, references):
        import torch

        out = []
        for im, ref in zip(images, references):
            if im.size != ref.size:
                raise ValueError(f"lpips: image size {im.size} differs from its reference's {ref.size}")
            with torch.no_grad():
                d = self.model(to_lpips_tensor(im).to(self.device), to_lpips_tensor(ref).to(self.device))
            out.append(d.reshape(-1)[0].item())
        return out


def build(weights=None, device="cpu", untrained=False, *, seed=0, batch_size=8):
    """LPIPS-alex scorer (needs `references`; prompts are ignored)."""
    import torch

    model = _empty_lpips()
    if untrained:
        randomize_(model, seed)
        with torch.no_grad():  # LPIPS constrains its linear weights to be >= 0
            for lin in model.lins:
                lin.model[1].weight.abs_()
        return LpipsScorer(model, device=device, untrained=True, weights_source=f"random(seed={seed})",
                           batch_size=batch_size)
    paths, source = resolve_files("lpips", FILES, weights, ENV_VAR)
    state = backbone_state_dict(load_state_dict(paths[FILES[0].filename]))
    state.update(load_state_dict(linear_weights_path()))
    result = model.load_state_dict(state, strict=False)
    # scaling_layer's shift/scale are constants set by lpips itself; `lins.{i}` aliases `lin{i}`.
    missing = [k for k in result.missing_keys if not k.startswith(("scaling_layer.", "lins."))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{source}: not an AlexNet + LPIPS state dict "
                           f"(missing {missing[:8]}, unexpected {result.unexpected_keys[:8]})")
    return LpipsScorer(model, device=device, untrained=False, weights_source=source,
                       batch_size=batch_size)
