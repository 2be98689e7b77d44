"""The benchmark scripts run end to end on a CPU machine (tiny configs), so they cannot rot
between device sessions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; the GPU runs the real sizes")
def test_whole_model_tiny_runs_every_shape_and_mode(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import whole_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "whole_model.json"
    child = subprocess.run([sys.executable, str(BENCHMARKS / "whole_model.py"), "--tiny", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["tiny"] and data["meta"]["torch"] and data["meta"]["diffusers"]
    rows = {(r["shape"], r["mode"]): r for r in data["rows"]}
    for shape in whole_model.SHAPES:
        for mode in whole_model.MODES:
            if shape == "sd3m_denoise_28" and mode in whole_model.TRACED_MODES:
                continue
            row = rows[(shape, mode)]
            assert "error" not in row, row
            assert row["ms"] > 0 and len(row["times_ms"]) == row["reps"]
            assert row["ratio"] == pytest.approx(row["ms"] / rows[(shape, "stock")]["ms"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; the GPU runs the real sizes")
def test_whole_model_tiny_runs_the_family_shapes(tmp_path):
    """Issue 17's rows (SD3.5-medium and -large, PixArt-Sigma, Qwen-Image, Wan), which the
    default run leaves out: every mode through --shapes, eager (the CPU has no graphs)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import whole_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "whole_model_families.json"
    child = subprocess.run([sys.executable, str(BENCHMARKS / "whole_model.py"), "--tiny", "--no-graphs", "--reps", "1",
                            "--shapes", ",".join(whole_model.FAMILY_SHAPES), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    rows = {(r["shape"], r["mode"]): r for r in json.loads(out.read_text())["rows"]}
    assert {shape for shape, _ in rows} == set(whole_model.FAMILY_SHAPES)
    for shape in whole_model.FAMILY_SHAPES:
        for mode in whole_model.MODES:
            row = rows[(shape, mode)]
            assert "error" not in row, row
            assert row["ms"] > 0 and len(row["times_ms"]) == row["reps"] == 1
            assert row["ratio"] == pytest.approx(row["ms"] / rows[(shape, "stock")]["ms"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="renders a stored result; no GPU needed")
def test_report_renders_whole_model_rows(tmp_path):
    """benchmarks/report.py turns a whole-model JSON into a RESULTS.md section and a plot."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import report
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = []
    for shape in ("sd3m_transformer_1024", "sdxl_unet_1024"):
        for mode, ms in (("stock", 50.0), ("sink_score", 58.0), ("stock_graph", 40.0), ("sink_score_graph", 44.0)):
            stock = 40.0 if mode.endswith("_graph") else 50.0
            rows.append({"shape": shape, "mode": mode, "ms": ms, "baseline_ms": stock, "ratio": ms / stock})
    rows.append({"shape": "sdxl_unet_1024", "mode": "random", "ms": float("nan"), "baseline_ms": 50.0, "ratio": None,
                 "error": "RuntimeError: boom"})
    path = tmp_path / "whole_model_h200.json"
    path.write_text(json.dumps({"meta": {"gpu": "G", "torch": "t", "triton": "tr", "diffusers": "d",
                                         "date": "today", "commit": "abc"}, "rows": rows}))
    lines = report.whole_model_section(path)
    text = "\n".join(lines)
    assert "| sd3m_transformer_1024 | sink_score | 58.000 | 1.16 | <= 1.15: missed |" in text
    assert "| sdxl_unet_1024 | sink_score | 58.000 | 1.16 | <= 1.3: met |" in text
    assert "| sdxl_unet_1024 | sink_score_graph | 44.000 | 1.10 | <= 1.12: met |" in text
    assert "RuntimeError: boom" in text
    assert (tmp_path / "whole_model_h200.png").exists()
