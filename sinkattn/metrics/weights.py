"""Where metric weights come from, how they are read, and how random ones are made.

Resolution order for every metric (first hit wins, per file):
  1. `weights=` given to the builder: a local file (the metric's main checkpoint; its
     companion files are looked for in the same folder), a local folder holding the
     files under their official names, or a Hugging Face Hub repo id ("org/name") that
     replaces the official repo (of the main checkpoint and of its companions from the same
     repo; e.g. ImageReward's med_config.json, not BERT's vocab.txt);
  2. the metric's environment variable (same forms), e.g. SINKATTN_HPS_WEIGHTS;
  3. the official location: the Hugging Face Hub (`hf_hub_download`, which also finds
     files already in the local HF cache), or, for torchvision's AlexNet, the torch hub
     cache ($TORCH_HOME/hub/checkpoints) then download.pytorch.org.
Offline (HF_HUB_OFFLINE=1 or SINKATTN_OFFLINE=1, or a host that did not answer one quick
request, asked once per process) only local files and caches are used, with no retries.
Anything still missing raises `MetricWeightsUnavailable` naming every file, its origin, the
`hf download` command that fetches it, and the flag that points the scorer at the copy.

Every file taken from an official location (downloaded, or found in the HF or torch hub
cache) is hashed before it is read and must match its published hash, else
`WeightsHashMismatch`: `WeightFile.sha256` when the publisher states one (for torchvision's
AlexNet, the first 8 hex digits of the SHA-256 in its file name, which is all torchvision
publishes and what torch.hub's check_hash verifies), otherwise the hash the Hub lists for
the file, which the HF cache names the file's blob after (SHA-256 for LFS files, the git
blob SHA-1 for small ones). A download is hashed before it is moved into the cache. Files
given by `weights=` / the environment variable are the user's and are used as they are.

Checkpoints are read as data only: safetensors, or `torch.load(weights_only=True)`,
which refuses any pickled object other than tensors and plain containers. Nothing
executes code shipped with a checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sinkattn.metrics.base import UNTRAINED_HINT, MetricWeightsUnavailable, WeightsHashMismatch

if TYPE_CHECKING:  # pragma: no cover
    import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HEX = re.compile(r"[0-9a-f]+")
_TRUE = {"1", "true", "yes", "on"}
_PROBE_TIMEOUT_S = 3


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs: its official name and origin."""

    filename: str
    repo_id: str | None = None  # Hugging Face Hub repo
    url: str | None = None  # direct URL, for files not on the Hub (torchvision's AlexNet)
    what: str = ""  # one-line description for error messages
    alternatives: tuple[str, ...] = ()  # other official names of the same content, tried after
    sha256: str = ""  # SHA-256 hex digest, or its prefix, as the publisher states it (never guessed)

    def names(self) -> tuple[str, ...]:
        return (self.filename, *self.alternatives)

    def origin(self, repo_id: str | None = None) -> str:
        repo_id = repo_id or self.repo_id
        if repo_id:
            return f"Hub repo {repo_id} (https://huggingface.co/{repo_id}/blob/main/{self.filename})"
        return str(self.url)


def offline() -> bool:
    """True when downloads must not be attempted."""
    return (os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
            or os.environ.get("SINKATTN_OFFLINE", "").strip().lower() in _TRUE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def online(url: str) -> bool:
    """False when offline(), or when the host of `url` did not answer one quick request
    (asked once per host and process: an offline run fails at once instead of retrying)."""
    if offline():
        return False
    return not url.startswith(("http://", "https://")) or _answers(_origin(url))


def offline_reason(url: str) -> str:
    """'' when the host of `url` can be used, else why not (for messages)."""
    if offline():
        return "offline: HF_HUB_OFFLINE/SINKATTN_OFFLINE is set"
    return "" if online(url) else f"offline: {_origin(url)} cannot be reached"


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@functools.lru_cache(maxsize=None)
def _answers(origin: str) -> bool:
    try:  # urllib honours the *_PROXY variables, as the downloads do
        urllib.request.urlopen(urllib.request.Request(origin + "/", method="HEAD"), timeout=_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def resolve_files(metric: str, files: list[WeightFile], weights: str | None, env_var: str,
                  ) -> tuple[dict[str, str], str]:
    """Find every file of `files` (files[0] is the main checkpoint).

    Returns ({filename: local path}, a short description of the source).
    Raises MetricWeightsUnavailable listing what could not be found.
    """
    source = weights if weights is not None else os.environ.get(env_var) or None
    local_dir: str | None = None
    main_path: str | None = None
    main_repo = files[0].repo_id
    if source is not None:
        source = os.path.expanduser(str(source))
        if os.path.isdir(source):
            local_dir = source
        elif os.path.isfile(source):
            main_path = source
            local_dir = os.path.dirname(os.path.abspath(source))
        elif _HUB_ID.match(source) and files[0].repo_id is not None:
            main_repo = source
        else:
            given = "weights=" if weights is not None else f"{env_var}="
            raise MetricWeightsUnavailable(
                f"{metric}: {given}{source!r} is neither an existing file or folder nor a Hub repo id "
                f"('org/name').\n" + _instructions(metric, files, env_var, main_repo) + "\n" + UNTRAINED_HINT)

    found: dict[str, str] = {}
    errors: dict[str, str] = {}
    for i, wf in enumerate(files):
        if i == 0 and main_path is not None:
            found[wf.filename] = main_path
            continue
        if local_dir is not None:
            local = [os.path.join(local_dir, n) for n in wf.names() if os.path.isfile(os.path.join(local_dir, n))]
            if local:
                found[wf.filename] = local[0]
                continue
        for name in wf.names():
            try:
                if wf.repo_id is not None:
                    repo = _repo_of(wf, files, main_repo)
                    found[wf.filename] = _verify(metric, env_var, wf, _hub_download(repo, name), fix=(
                        f"Delete it and fetch it again: hf download {repo} {name} --force-download"))
                else:
                    found[wf.filename] = _url_download(metric, env_var, wf)
                errors.pop(wf.filename, None)
                break
            except MetricWeightsUnavailable:  # a file that fails its hash check
                raise
            except Exception as err:  # noqa: BLE001 - every failure becomes one clear error below
                errors.setdefault(wf.filename, f"{type(err).__name__}: {_first_line(err)}")
    if errors:
        reasons = {offline_reason(hub_endpoint() if wf.repo_id else wf.url) for wf in files if wf.filename in errors}
        why = "; ".join(sorted(reasons - {""})) or "download failed"
        lines = [f"{metric}: weights not found ({why}). Missing:"]
        for wf in files:
            if wf.filename not in errors:
                continue
            alt = f" (or {' / '.join(wf.alternatives)})" if wf.alternatives else ""
            lines.append(f"  - {wf.filename}{alt}: {wf.what + ', ' if wf.what else ''}"
                         f"from {wf.origin(_repo_of(wf, files, main_repo))}"
                         + ("" if why.startswith("offline") else f"\n      ({errors[wf.filename]})"))
        raise MetricWeightsUnavailable(
            "\n".join([*lines, _instructions(metric, files, env_var, main_repo), UNTRAINED_HINT]))
    if main_path is not None:
        desc = main_path
    elif local_dir is not None:
        desc = local_dir
    else:
        desc = f"hub:{main_repo}/{files[0].filename}" if files[0].repo_id else found[files[0].filename]
    return found, desc


def _repo_of(wf: WeightFile, files: list[WeightFile], main_repo: str | None) -> str | None:
    # a Hub id given for the metric replaces the official repo of every file that lives there
    return main_repo if wf.repo_id is not None and wf.repo_id == files[0].repo_id else wf.repo_id


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _instructions(metric: str, files: list[WeightFile], env_var: str, main_repo: str | None) -> str:
    """How a CLI user gets every file of `metric` into one folder and points the scorer at it."""
    folder = f"./weights/{metric}"
    repos: dict[str, list[str]] = {}
    for wf in files:
        if wf.repo_id:
            repos.setdefault(_repo_of(wf, files, main_repo), []).append(wf.filename)
    cmds = [f"hf download {r} {' '.join(fs)} --local-dir {folder}" for r, fs in repos.items()]
    cmds += [f"curl -L --create-dirs -o {folder}/{wf.filename} {wf.url}   (sha256sum must start with "
             f"{wf.sha256}; or put it in {_torch_hub_checkpoints()}, where torchvision caches it)"
             for wf in files if wf.url and not wf.repo_id]
    return (f"  Get them on a machine with access:\n" + "".join(f"    {c}\n" for c in cmds)
            + f"  copy {folder} here and run with --metric-weights {metric}={folder} "
              f"(or set {env_var}={folder}; Python: build_scorer('{metric}', weights='{folder}')).")


def _hub_download(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    # local_files_only keeps an offline run from trying the network at all, and from the hub
    # library's retries (about 23 s a file); it reads HF_HUB_OFFLINE once, at import, we at every call.
    return hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=not online(hub_endpoint()))


def _torch_hub_checkpoints() -> str:
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _url_download(metric: str, env_var: str, wf: WeightFile) -> str:
    path = os.path.join(_torch_hub_checkpoints(), wf.filename)
    if os.path.isfile(path):
        return _verify(metric, env_var, wf, path, fix=f"Delete it and download it again from {wf.url}")
    if not online(wf.url):
        raise FileNotFoundError(f"{path} does not exist")
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".unverified"
    try:
        torch.hub.download_url_to_file(wf.url, tmp, progress=False)
        _verify(metric, env_var, wf, tmp, shown=f"{wf.filename} downloaded from {wf.url}",
                fix="The download was deleted; check where that URL leads from this network (a proxy or mirror?)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _verify(metric: str, env_var: str, wf: WeightFile, path: str, fix: str, shown: str | None = None) -> str:
    """`path` if its hash is the published one (see the module docstring), else WeightsHashMismatch."""
    expected, algo, basis = wf.sha256, "SHA-256", "published"
    if not expected:  # a Hub file: the HF cache names the blob after the hash the Hub lists
        expected, basis = os.path.basename(os.path.realpath(path)), "as the Hub lists it"
        algo = {64: "SHA-256", 40: "git blob SHA-1"}.get(len(expected)) if _HEX.fullmatch(expected) else None
        if algo is None:
            raise MetricWeightsUnavailable(
                f"{metric}: {path} has no published hash to check it against (not a Hugging Face cache "
                f"blob). Point --metric-weights {metric}=PATH or {env_var} at a copy you trust instead.")
    with open(path, "rb") as fh:
        if algo == "SHA-256":
            actual = hashlib.file_digest(fh, "sha256").hexdigest()
        else:
            actual = hashlib.file_digest(fh, lambda: hashlib.sha1(b"blob %d\0" % os.path.getsize(path))).hexdigest()
    if actual.startswith(expected):
        return path
    starting = " starting with" if len(expected) < len(actual) else ""
    raise WeightsHashMismatch(
        f"{metric}: {shown or path} does not match its published hash: expected {algo}{starting} "
        f"{expected} ({basis}), got {actual}. It is corrupt, truncated or not the official "
        f"{wf.filename}. {fix}; or pass a copy you trust with --metric-weights {metric}=PATH "
        f"(or {env_var}=PATH), which is used as it is.")


def load_state_dict(path: str) -> dict[str, "torch.Tensor"]:
    """Read a checkpoint as data: safetensors, or torch.load with weights_only=True."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        if "weights_only" in str(err) or "Unpickl" in type(err).__name__:
            raise RuntimeError(
                f"{path}: refused to unpickle it with weights_only=True (it holds objects other than "
                f"tensors and plain containers). Convert it to a plain state dict or safetensors on a "
                f"trusted machine; sinkattn does not run code shipped inside checkpoints.\n{err}") from err
        raise


def randomize_(module: "torch.nn.Module", seed: int) -> "torch.nn.Module":
    """Overwrite every parameter with seeded random values, independent of library inits.

    Normalisation layers get weight 1 / bias 0; other tensors of rank >= 2 get
    N(0, 1/fan_in) so activations keep their scale through deep stacks; the remaining
    rank-1/0 parameters get N(0, 0.02^2). The order is the module's parameter order, so
    the same architecture and seed give the same weights on every machine.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase)
    norm_params = set()
    for mod in module.modules():
        if isinstance(mod, norm_types):
            norm_params.update(id(p) for p in mod.parameters(recurse=False))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if id(p) in norm_params:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
                continue
            if p.dim() >= 2:
                fan_in = max(1, p[0].numel())
                vals = torch.randn(p.shape, generator=gen) * fan_in ** -0.5
            else:
                vals = torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(vals.to(dtype=p.dtype, device=p.device))
    return module
