"""Prompt sources: the GenEval metadata JSONL (a path, or downloaded from GenEval's public
repository), the original study's own prompt lists (``balanced100``, ``h1d``: a path, or
downloaded from its repository at a pinned commit and checked against a SHA-256), a plain
text file (one prompt per line), or the built-in set.

A prompt's id is its 0-based index in its source (GenEval: the line number in
evaluation_metadata.jsonl; balanced100: the line of prompts_geneval_balanced_100.txt), so
ids stay stable under --limit and sharding. No prompt list of the original is stored in
this repository.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import urllib.request
import warnings
from dataclasses import dataclass, field

__all__ = ["BUILTIN_PROMPTS", "GENEVAL_URL", "ORIGINAL_SOURCES", "Prompt", "load_prompts", "original_prompts_path"]

GENEVAL_URL = "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl"
GENEVAL_FILE = "evaluation_metadata.jsonl"


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    text: str
    tag: str | None = None
    meta: dict = field(default_factory=dict, hash=False, compare=False)


# Written for this project, in GenEval's six categories (words the tiny tokenizer knows).
BUILTIN_PROMPTS: tuple[tuple[str, str], ...] = (
    ("single_object", "a photo of a red bicycle"),
    ("single_object", "a photo of an elephant"),
    ("two_object", "a photo of a dog and a kite"),
    ("two_object", "a photo of a cup and a book"),
    ("counting", "a photo of three apples"),
    ("colors", "a photo of a blue umbrella"),
    ("position", "a photo of a cat left of a vase"),
    ("color_attr", "a photo of a yellow bus and a green bench"),
)


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sinkattn")


def geneval_path(download: bool = True) -> str:
    """The GenEval metadata: $SINKATTN_GENEVAL, else the sinkattn cache, else a download
    (GenEval's repository, MIT licence) into that cache."""
    env = os.environ.get("SINKATTN_GENEVAL")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"SINKATTN_GENEVAL={env!r} is not a file")
        return env
    cached = os.path.join(_cache_dir(), GENEVAL_FILE)
    if os.path.isfile(cached):
        return cached
    if not download:
        raise FileNotFoundError(cached)
    os.makedirs(_cache_dir(), exist_ok=True)
    tmp = cached + f".tmp{os.getpid()}"
    try:
        with urllib.request.urlopen(GENEVAL_URL, timeout=30) as response, open(tmp, "wb") as fh:
            fh.write(response.read())
        os.replace(tmp, cached)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise FileNotFoundError(
            f"could not download the GenEval prompts from {GENEVAL_URL} ({err}). Download that file "
            f"(repository djghosh13/geneval, prompts/evaluation_metadata.jsonl) and pass its path as "
            f"--prompts PATH, or put it at {cached}, or set SINKATTN_GENEVAL=PATH.") from err
    return cached


# The original study's prompt lists (wfz666/ICML26-attention-sink, MIT licence), read from
# the release commit that ORIGINAL_STUDY.md cites. sha256: of the prompts joined by "\n"
# with a final "\n" (for balanced100 that is the file itself).
ORIGINAL_COMMIT = "ab0e3fb2c70dec7baab7a166fee37f5951528333"
_ORIGINAL_RAW = (f"https://raw.githubusercontent.com/wfz666/ICML26-attention-sink/{ORIGINAL_COMMIT}/"
                 "attention-sink-voodoo-release/")


@dataclass(frozen=True)
class OriginalSource:
    url: str
    sha256: str
    env: str
    cache_name: str
    count: int
    what: str
    extract: str = "lines"  # "lines": a text file; "h1d": the list literal of collect_h1_dynamic.py


ORIGINAL_SOURCES = {
    # 100 GenEval prompts, 20 single-object and 15 of each other tag: the appendix runs, T5, T9, T20
    "balanced100": OriginalSource(
        _ORIGINAL_RAW + "prompts/prompts_geneval_balanced_100.txt",
        "4066159c68a40c0c83fca569311159ef44c96bbecd4c55492252bc9c36f4ad8c", "SINKATTN_BALANCED100",
        "prompts_geneval_balanced_100.txt", 100, "prompts/prompts_geneval_balanced_100.txt"),
    # the 8 prompts hard-coded in collect_h1_dynamic.py (H1D:190-199): Figure 2 / Table 1
    "h1d": OriginalSource(
        _ORIGINAL_RAW + "experiments/collect_h1_dynamic.py",
        "43bb4c0e7030c616c0676cac090f3601ac416959f474b43da9ed3842a67b1393", "SINKATTN_H1D_PROMPTS",
        "h1d_prompts.txt", 8, "the prompts list of experiments/collect_h1_dynamic.py", extract="h1d"),
}


def _digest(prompts: list[str]) -> str:
    return hashlib.sha256(("\n".join(prompts) + "\n").encode("utf-8")).hexdigest()


def _h1d_prompts(source: str) -> list[str]:
    """The list assigned to ``prompts`` in collect_h1_dynamics() (``[...][:num_samples]``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "prompts" for t in node.targets):
            value = node.value.value if isinstance(node.value, ast.Subscript) else node.value
            if isinstance(value, ast.List) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                   for e in value.elts):
                return [e.value for e in value.elts]
    raise ValueError("no prompts list in collect_h1_dynamic.py")


def original_prompts_path(name: str, download: bool = True) -> str:
    """A text file (one prompt per line) of the original's prompt list ``name``: $ENV (a
    text file, used as given; a warning when it is not the original's list), else the
    sinkattn cache, else a download from the original repository at its release commit,
    checked against the list's SHA-256 before it is cached."""
    src = ORIGINAL_SOURCES[name]
    env = os.environ.get(src.env)
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"{src.env}={env!r} is not a file")
        digest = _digest(_plain_lines(env))
        if digest != src.sha256:
            warnings.warn(f"sinkattn: {src.env}={env} is not the original's {name} list (sha256 {digest[:12]}..., "
                          f"expected {src.sha256[:12]}...); using it as given", stacklevel=3)
        return env
    cached = os.path.join(_cache_dir(), src.cache_name)
    if os.path.isfile(cached):
        return cached
    if not download:
        raise FileNotFoundError(cached)
    how = (f"Download {src.url} (the original repository wfz666/ICML26-attention-sink at commit "
           f"{ORIGINAL_COMMIT[:10]}, {src.what}), "
           + ("keep its prompts as a text file, one per line, " if src.extract == "h1d" else "")
           + f"and set {src.env}=PATH, or put it at {cached}.")
    try:
        with urllib.request.urlopen(src.url, timeout=30) as response:
            text = response.read().decode("utf-8")
    except OSError as err:
        raise FileNotFoundError(f"could not download the original's {name} prompts ({err}). {how}") from err
    prompts = _h1d_prompts(text) if src.extract == "h1d" else [t.strip() for t in text.splitlines() if t.strip()]
    if _digest(prompts) != src.sha256:
        raise ValueError(f"the downloaded {name} prompts are not the ones this release of sinkattn knows "
                         f"(sha256 {_digest(prompts)[:12]}..., expected {src.sha256[:12]}...). {how}")
    os.makedirs(_cache_dir(), exist_ok=True)
    tmp = cached + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(prompts) + "\n")
    os.replace(tmp, cached)
    return cached


def _plain_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _geneval_tags() -> dict[str, tuple[str, int]]:
    """prompt -> (GenEval tag, GenEval line) when the GenEval metadata is on this machine
    ($SINKATTN_GENEVAL or the cache; never downloaded for this), else {}."""
    try:
        path = geneval_path(download=False)
        return {p.text: (p.tag, p.prompt_id) for p in _read_jsonl(path)}
    except (OSError, ValueError):
        return {}


def load_prompts(source: str = "builtin", limit: int | None = None) -> list[Prompt]:
    """``source``: "builtin", "geneval" (cached or downloaded), "balanced100" / "h1d" (the
    original study's lists, see :func:`original_prompts_path`), a .jsonl path (GenEval's
    format: one object per line with "prompt" and "tag"), or any other path (a text file,
    one prompt per line; blank lines and lines starting with # are skipped).
    ``limit``: the first N prompts. balanced100 prompts are GenEval prompts: their tag is
    GenEval's when its metadata is on this machine (SINKATTN_GENEVAL or the cache)."""
    if source == "builtin":
        prompts = [Prompt(i, text, tag) for i, (tag, text) in enumerate(BUILTIN_PROMPTS)]
    elif source in ORIGINAL_SOURCES:
        texts = _plain_lines(original_prompts_path(source))
        tags = _geneval_tags() if source == "balanced100" else {}
        prompts = [Prompt(i, t, tags.get(t, (None,))[0], {"geneval_id": tags[t][1]} if t in tags else {})
                   for i, t in enumerate(texts)]
    else:
        path = geneval_path() if source == "geneval" else source
        if not os.path.isfile(path):
            raise FileNotFoundError(f"prompts: {path!r} is not a file (use 'builtin', 'geneval', "
                                    f"{', '.join(repr(n) for n in ORIGINAL_SOURCES)} or a path)")
        prompts = _read_jsonl(path) if path.endswith(".jsonl") else _read_text(path)
    if not prompts:
        raise ValueError(f"prompts: {source!r} holds no prompts")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def _read_jsonl(path: str) -> list[Prompt]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh):
            if not line.strip():
                continue
            obj = _json_line(path, line_no + 1, line)
            if "prompt" not in obj:
                raise ValueError(f"{path}:{line_no + 1}: no 'prompt' field")
            meta = {k: v for k, v in obj.items() if k not in ("prompt", "tag")}
            out.append(Prompt(len(out), obj["prompt"], obj.get("tag"), meta))
    return out


def _json_line(path: str, line_no: int, line: str) -> dict:
    """One line of a .jsonl file as a dict; errors name the file and its line (json's own
    "line 2 column 1" counts inside the line, which points nowhere in the file)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        at = "the end of the line" if err.pos >= len(line.rstrip()) else f"character {err.pos + 1} of the line"
        raise ValueError(f"{path}:{line_no}: not JSON ({err.msg} at {at})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{line_no}: not a JSON object (one object per line: "
                         f'{{"prompt": ..., "tag": ...}}), got {type(obj).__name__}')
    return obj


def _read_text(path: str) -> list[Prompt]:
    with open(path, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh]
    return [Prompt(i, text) for i, text in enumerate(t for t in lines if t and not t.startswith("#"))]
