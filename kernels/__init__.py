"""Triton kernels of sinkattn, shipped as ``sinkattn.kernels`` (this folder is mapped there
by pyproject.toml; it is never importable as a top-level ``kernels``). Kernels only: host
launchers live in ``sinkattn.launch``. Importing this package does not import Triton, so
``interpreting`` serves callers that must work without it (sinkattn.ops)."""

import os


def interpreting() -> bool:
    """True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
