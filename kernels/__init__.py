"""Triton kernels of sinkattn, shipped as ``sinkattn.kernels`` (this folder is mapped there
by pyproject.toml; it is never importable as a top-level ``kernels``). Kernels only: host
launchers live in ``sinkattn.launch``, and the settings they read (interpreter or not,
autotuning, ...) in ``sinkattn.settings``. Importing this package does not import Triton."""
