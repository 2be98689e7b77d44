"""Prompt sources: the GenEval metadata JSONL (a path, or downloaded from GenEval's public
repository), a plain text file (one prompt per line), or the built-in set.

A prompt's id is its 0-based index in its source (GenEval: the line number in
evaluation_metadata.jsonl), so ids stay stable under --limit and sharding.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field

__all__ = ["BUILTIN_PROMPTS", "GENEVAL_URL", "Prompt", "load_prompts"]

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


def load_prompts(source: str = "builtin", limit: int | None = None) -> list[Prompt]:
    """``source``: "builtin", "geneval" (cached or downloaded), a .jsonl path (GenEval's
    format: one object per line with "prompt" and "tag"), or any other path (a text file,
    one prompt per line; blank lines and lines starting with # are skipped).
    ``limit``: the first N prompts."""
    if source == "builtin":
        prompts = [Prompt(i, text, tag) for i, (tag, text) in enumerate(BUILTIN_PROMPTS)]
    else:
        path = geneval_path() if source == "geneval" else source
        if not os.path.isfile(path):
            raise FileNotFoundError(f"prompts: {path!r} is not a file (use 'builtin', 'geneval' or a path)")
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
