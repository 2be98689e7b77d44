"""FID (Frechet Inception Distance) between two sets of images, and the FID shift.

A set metric, not a :class:`~sinkattn.metrics.base.Scorer`: one number per pair of image sets,
not one per image, so the runner's per-image records cannot carry it; the report computes it
from the stored images (sinkattn/experiment/report.py).

    from sinkattn.metrics.fid import build, fid_shift
    fid = build()                                   # pytorch-fid's Inception, weights hash-checked
    a, b = fid.features(images_a), fid.features(images_b)
    fid.distance(a, b)

Package: pytorch-fid (0.3.0, the last release; `pip index versions pytorch-fid`). Why it and not
torchmetrics or clean-fid:
  - the original study computed its FID calibration with pytorch-fid, dims 2048, batch 50
    (ORIGINAL_STUDY.md, FC:61-63). The same package gives the same Inception weights (the TF FID
    graph of 2015-12-05, ported), the same preprocessing (ToTensor to [0, 1]; inside the model a
    bilinear resize to 299 x 299 and scaling to [-1, 1]) and the same Frechet formula, so a value
    here can be set next to the original's numbers;
  - torchmetrics' FID runs torch-fidelity's port of that graph (its own weights file and a
    TF-style resize): close to, not equal to, pytorch-fid's values, for two more packages;
  - clean-fid resizes with PIL bicubic anti-aliasing by design ("clean" mode), so its values
    differ from pytorch-fid's; the original used it only in its no-op check (NC:224) and in
    evaluate_all_experiments (EA), not for the calibration a FID shift is measured against.

Weights: pytorch-fid downloads `pt_inception-2015-12-05-6726825d.pth` from its GitHub release at
model construction, without a hash check. Here the file is found the way every metric's weights
are (weights.py): `weights=` (the file, or a folder holding it), SINKATTN_FID_WEIGHTS, the torch
hub cache ($TORCH_HOME/hub/checkpoints, where pytorch-fid itself caches it), then a download to
that cache unless offline; else `MetricWeightsUnavailable` naming the file, its URL and the flag
that points at a copy. A cached or downloaded copy must have the SHA-256 prefix its name carries
(6726825d, torch.hub's naming convention, which `check_hash` verifies; the same-named copy on
torch-fidelity's release, same state-dict layout, is reported with SHA-256 6726825d0af5f729...,
which fits); the file is read with
`torch.load(weights_only=True)` and handed to pytorch-fid's own model constructor.

`untrained=True`: random (seeded) weights in the same architecture, no file read: for tests and
the tiny preset, marked untrained in every output. Its numbers exercise the code only.

Frechet distance: pytorch-fid's `calculate_frechet_distance` when both sets have at least `dims`
images. With fewer, both covariances are rank-deficient (the original's N=100 << 2048, D24) and
scipy's sqrtm of the 2048 x 2048 product is slow (about 20 s per pair on 2 CPU cores) and inexact
on singular matrices; tr sqrtm(S1 S2) is then computed exactly as the nuclear norm of A1 A2^T,
A_i being the centred features / sqrt(n_i - 1) (S_i = A_i^T A_i, and the nonzero eigenvalues of
S1 S2 are the squared singular values of A1 A2^T). Tests check it against pytorch-fid's function.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Sequence

from sinkattn.metrics.weights import WeightFile, load_state_dict, randomize_, resolve_files

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

__all__ = ["ENV_VAR", "FILES", "FidFeatures", "build", "fid_shift", "frechet_distance"]

ENV_VAR = "SINKATTN_FID_WEIGHTS"
URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FILES = [WeightFile("pt_inception-2015-12-05-6726825d.pth", url=URL,
                    what="pytorch-fid's Inception-v3 (the TF FID graph of 2015-12-05)", sha256="6726825d")]
DIMS = (64, 192, 768, 2048)  # pytorch-fid's feature blocks (InceptionV3.BLOCK_INDEX_BY_DIM)


class FidFeatures:
    """Inception pool features of images, and the Frechet distance between two sets of them.

    Attributes: name ("fid"), untrained (random weights), weights_source, dims, device, batch_size.
    """

    name = "fid"

    def __init__(self, model, *, device, untrained: bool, weights_source: str, dims: int, batch_size: int = 50):
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.untrained, self.weights_source = bool(untrained), weights_source
        self.dims, self.batch_size = int(dims), int(batch_size)

    def features(self, images: "Sequence[Image.Image]") -> "np.ndarray":
        """(n, dims) float64 features, as pytorch-fid's get_activations computes them from image files:
        RGB -> ToTensor ([0, 1]) -> model (resize to 299, scale to [-1, 1]) -> pooled to 1 x 1."""
        import numpy as np
        import torch
        import torchvision.transforms.functional as TF

        tensors = [TF.to_tensor(im.convert("RGB")) for im in images]
        out = []
        for batch in _batches(tensors, self.batch_size):
            with torch.no_grad():
                pred = self.model(torch.stack(batch).to(self.device))[0]
            if pred.shape[2:] != (1, 1):
                pred = torch.nn.functional.adaptive_avg_pool2d(pred, output_size=(1, 1))
            out.append(pred.squeeze(3).squeeze(2).cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, self.dims))

    def distance(self, a: "np.ndarray", b: "np.ndarray") -> float:
        return frechet_distance(a, b)

    def __repr__(self) -> str:
        return (f"FidFeatures(dims={self.dims}, device={str(self.device)!r}, untrained={self.untrained}, "
                f"weights={self.weights_source!r})")


def _batches(tensors: list, size: int):
    """Consecutive runs of at most ``size`` tensors of one shape (torch.stack needs equal sizes)."""
    batch: list = []
    for t in tensors:
        if batch and (len(batch) == size or t.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(t)
    if batch:
        yield batch


def frechet_distance(a: "np.ndarray", b: "np.ndarray") -> float:
    """FID between feature sets ``a`` (n_a x d) and ``b`` (n_b x d); each needs 2 rows or more.

    Full-rank covariances (n >= d on both sides): pytorch-fid's calculate_frechet_distance, as it is.
    Otherwise the exact low-rank form (module docstring), free of sqrtm's failures on singular input."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"FID needs two sets of at least 2 feature rows of one width; got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    if min(len(a), len(b)) >= a.shape[1]:
        full = _pytorch_fid_distance(mu_a, np.cov(a, rowvar=False), mu_b, np.cov(b, rowvar=False))
        if full is not None:
            return full
    ca, cb = (a - mu_a) / np.sqrt(len(a) - 1), (b - mu_b) / np.sqrt(len(b) - 1)
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2.0 * trace_sqrt)


def _pytorch_fid_distance(mu_a, cov_a, mu_b, cov_b) -> float | None:
    """pytorch-fid's formula; None where this SciPy no longer takes its sqrtm(disp=False) call
    (deprecated in SciPy 1.16, removed in 1.18), and the exact form above is used instead."""
    import warnings

    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return float(calculate_frechet_distance(mu_a, cov_a, mu_b, cov_b))
        except TypeError:
            return None


def fid_shift(fid: float | None, calibration: float | None) -> dict:
    """How far a condition's FID to the baseline lies beyond the calibration FID (two baseline
    sets that differ only in their seeds: what seed variation alone gives). ratio = FID /
    calibration (1 = no more than seed noise); excess = FID - calibration."""
    if fid is None or calibration is None:
        return {"ratio": None, "excess": None}
    return {"ratio": fid / calibration if calibration > 0 else None, "excess": fid - calibration}


@contextlib.contextmanager
def _weights_for_pytorch_fid(state: dict):
    """pytorch-fid's fid_inception_v3() fetches its weights itself (load_state_dict_from_url);
    while building, that call returns ``state`` instead, so the model is pytorch-fid's own."""
    from pytorch_fid import inception

    original = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        yield inception
    finally:
        inception.load_state_dict_from_url = original


def _random_state(seed: int) -> dict:
    """A random state dict of the FID Inception: torchvision's Inception-v3 with 1008 classes and no
    aux head has the same parameters (pytorch-fid's FIDInception* blocks change forward only)."""
    from pytorch_fid.inception import _inception_v3

    net = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    return randomize_(net, seed).state_dict()


def build(weights=None, device="cpu", untrained=False, *, seed=0, dims=2048, batch_size=50) -> FidFeatures:
    """FID feature extractor (pytorch-fid's InceptionV3, pool block of ``dims`` features).

    weights: the checkpoint file or a folder holding it (else SINKATTN_FID_WEIGHTS, the torch hub
    cache, then a hash-checked download); untrained: random weights seeded by ``seed``."""
    if dims not in DIMS:
        raise ValueError(f"fid: dims must be one of {DIMS} (pytorch-fid's feature blocks), got {dims}")
    try:
        import pytorch_fid  # noqa: F401
    except ImportError as err:
        raise ImportError(f"fid needs pytorch-fid ({err}): pip install 'sinkattn[metrics]' "
                          "(or pip install pytorch-fid==0.3.0)") from err
    if untrained:
        state, source = _random_state(seed), f"random(seed={seed})"
    else:
        paths, source = resolve_files("fid", FILES, weights, ENV_VAR)
        state = load_state_dict(paths[FILES[0].filename])
    with _weights_for_pytorch_fid(state) as inception:
        try:
            model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
        except RuntimeError as err:  # load_state_dict(strict=True) of another network's file
            raise RuntimeError(f"fid: {source} is not pytorch-fid's Inception state dict ({str(err)[:300]})") from err
    return FidFeatures(model, device=device, untrained=untrained, weights_source=source, dims=dims,
                       batch_size=batch_size)
