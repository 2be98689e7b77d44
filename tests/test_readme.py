"""Every code block of README.md works as written.

```python blocks are executed, each in a fresh namespace and in a temporary working
directory, with tracebacks pointing at README.md lines. A snippet should define what it
uses; the only names this file provides are those in ``PROVIDED`` (a real pipeline, which
a README cannot build offline), and a snippet that uses any other undefined name fails
before it runs. After a snippet ran, ``check_namespace`` checks what the README says about
what it left behind (the op's result, the tracer's table).

```bash blocks are not run (they download models and take GPU hours): every ``sinkattn``
command in them, alone, after ``&&`` or as ``torchrun ... -m sinkattn``, must parse with
the CLI's parser and, for ``run``, resolve into a run configuration and its conditions as
``sinkattn run`` does before loading a model.
"""

from __future__ import annotations

import ast
import builtins
import csv
import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def code_blocks(lang: str, text: str | None = None) -> list[tuple[int, str]]:
    """(first line number of the code, code) of every ```lang block of the README."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in _FENCE.finditer(text) if m.group(1) == lang]


PYTHON = code_blocks("python")
BASH = code_blocks("bash")


# -- python blocks ----------------------------------------------------------------------------
def _tiny_sd3_medium_pipeline(tmp_path):
    """``pipe``: a real StableDiffusion3Pipeline from ``sinkattn.tiny`` (random weights, built
    from config, offline) whose transformer has SD3-medium's 24 joint blocks, so block
    indices written for SD3-medium (``layers=[12]``) exist. Its calls default to 2 denoising
    steps instead of 28 to keep the test short; every other default (64x64 images, T5
    max_sequence_length=256, guidance) is the pipeline's own."""
    from diffusers import StableDiffusion3Pipeline

    from sinkattn import tiny

    class ShortPipeline(StableDiffusion3Pipeline):
        def __call__(self, *args, num_inference_steps: int = 2, **kwargs):
            return super().__call__(*args, num_inference_steps=num_inference_steps, **kwargs)

    base = tiny.tiny_sd3_pipeline()
    pipe = ShortPipeline(**dict(base.components, transformer=tiny.tiny_sd3_transformer(num_layers=24)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


PROVIDED = {"pipe": _tiny_sd3_medium_pipeline}


def undefined_names(source: str) -> set[str]:
    """Names a snippet reads without binding them (assignments, imports, defs) or being builtins."""
    tree = ast.parse(source)
    loaded, bound = set(), set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound


def run_snippet(line: int, source: str, tmp_path) -> dict:
    """Execute one README snippet (code starting at README line ``line``) in a namespace
    holding only the PROVIDED names it uses; returns the namespace."""
    missing = undefined_names(source) - set(PROVIDED)
    if missing:
        raise NameError(f"README.md:{line}: the snippet uses {sorted(missing)} without defining them; "
                        f"define them in the snippet (or add a documented provider to PROVIDED)")
    namespace = {"__name__": "__readme__"}
    for name in undefined_names(source) & set(PROVIDED):
        namespace[name] = PROVIDED[name](tmp_path)
    code = compile("\n" * (line - 1) + source, str(README), "exec")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="sinkattn: no Triton kernels", category=RuntimeWarning)
        exec(code, namespace)
    return namespace


def check_namespace(namespace: dict, tmp_path) -> None:
    """What the README's prose promises about the results its snippets leave behind."""
    from sinkattn import SinkAttentionResult

    res = namespace.get("res")
    if isinstance(res, SinkAttentionResult):
        q = namespace["q"]
        batch, heads, n_q = q.shape[:3]
        assert res.out.shape[:3] == (batch, heads, n_q) and res.out.dtype == q.dtype
        assert res.mass.dtype == torch.float32 and res.mass.shape == namespace["k"].shape[:3]
        # "the mean over the mass queries of the unintervened attention probabilities":
        # it sums to 1 over the keys of each (b, h).
        torch.testing.assert_close(res.mass.sum(-1), torch.ones(batch, heads), rtol=1e-5, atol=1e-5)
        assert res.sinks.shape == (batch, heads, 1) and res.sinks.dtype == torch.int64
    if "tracer" in namespace:
        with open(tmp_path / "sinks.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows, "the tracer snippet wrote no rows"
        # Every row carries the prompt id given to tracer.begin, every text key its token.
        assert all(r["prompt_id"] != "" for r in rows)
        text = [r for r in rows if r["kind"] == "text"]
        assert text and all(r["token"] != "" for r in text), (
            f"{sum(r['token'] == '' for r in text)} of {len(text)} text rows have no token")
        # Intervened only where the snippet's intervene(...) says: block 12, steps 0-9.
        intervened = {(r["layer_index"], r["layer"], int(r["step"])) for r in rows if r["intervened"] == "True"}
        assert intervened and all(".12." in layer and step < 10 for _, layer, step in intervened)


def test_readme_has_code_blocks():
    assert len(PYTHON) >= 2 and len(BASH) >= 2


@pytest.mark.parametrize("line, source", PYTHON, ids=[f"README.md:{line}" for line, _ in PYTHON])
def test_python_block_runs(line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = run_snippet(line, source, tmp_path)
    check_namespace(namespace, tmp_path)


def test_a_broken_snippet_fails(tmp_path):
    """The harness itself: an undefined name, a failing call and a bad README range fail."""
    with pytest.raises(NameError, match=r"\['q'\]"):
        run_snippet(1, "from sinkattn import sink_attention\nsink_attention(q, q, q)\n", tmp_path)
    with pytest.raises(ValueError, match="mass_queries"):
        run_snippet(1, "import torch\nfrom sinkattn import sink_attention\nq = torch.randn(1, 1, 8, 16)\n"
                       "sink_attention(q, q, q, mass_queries=(0, 4096))\n", tmp_path)
    with pytest.raises(ZeroDivisionError) as info:
        run_snippet(7, "x = 1\n1 / 0\n", tmp_path)
    assert info.traceback[-1].lineno + 1 == 8 and str(info.traceback[-1].path) == str(README)


# -- bash blocks ------------------------------------------------------------------------------
def sinkattn_commands(source: str) -> list[list[str]]:
    """The argument lists of the ``sinkattn`` commands in a bash block: backslash
    continuations joined, comments dropped, ``&&`` chains split, ``torchrun ... -m sinkattn``
    and ``python -m sinkattn`` unwrapped; other commands (pip, pytest, ...) skipped."""
    commands = []
    for line in source.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        segments, current = [], []
        for word in words + ["&&"]:
            if word in ("&&", "||", ";"):
                segments.append(current)
                current = []
            else:
                current.append(word)
        for seg in segments:
            if seg[:1] == ["sinkattn"]:
                commands.append(seg[1:])
            elif "-m" in seg and seg[seg.index("-m") + 1: seg.index("-m") + 2] == ["sinkattn"]:
                commands.append(seg[seg.index("-m") + 2:])
    return commands


def check_command(argv: list[str]) -> None:
    from sinkattn.cli import build_parser, config_from_args
    from sinkattn.experiment.config import expand_conditions

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"`sinkattn {shlex.join(argv)}` does not parse (exit {e.code})") from None
    if args.command == "run":
        # What `sinkattn run` does before loading anything (heads: any count will do here).
        expand_conditions(config_from_args(args).conditions, heads=24)


BASH_COMMANDS = [(line, argv) for line, source in BASH for argv in sinkattn_commands(source)]


def test_bash_blocks_hold_sinkattn_commands():
    assert len(BASH_COMMANDS) >= 5
    assert all(sinkattn_commands(source) for _, source in BASH)


@pytest.mark.parametrize("line, argv", BASH_COMMANDS,
                         ids=[f"README.md:{line}:{' '.join(argv[:3])}" for line, argv in BASH_COMMANDS])
def test_bash_command_parses(line, argv):
    check_command(argv)


def test_a_broken_command_fails():
    assert sinkattn_commands("pip install -e . && sinkattn run --out x   # c\ntorchrun --nproc-per-node 8 -m "
                             "sinkattn report d \\\n  --bootstrap 5 && sinkattn report e") == [
        ["run", "--out", "x"], ["report", "d", "--bootstrap", "5"], ["report", "e"]]
    with pytest.raises(AssertionError, match="does not parse"):
        check_command(["run", "--out", "x", "--no-such-flag"])
    with pytest.raises(ValueError):
        check_command(["run", "--out", "x", "--controls", "sink,nonsense"])
