"""Every model family of MODEL_FAMILIES through the runner on its tiny pipeline (CPU): load,
call, trace. One prompt, one seed, 2 steps, baseline + sink k=1, no metrics: the records,
the image files and the traced atlas (RUN/atlas/index.jsonl holds the baseline's line)."""

import json
import os

import av
import pytest
from PIL import Image

from sinkattn.experiment import preset_config, run
from sinkattn.experiment.models import Generator, load_pipeline
from sinkattn.experiment.store import read_records
from sinkattn.processors.families import MODEL_FAMILIES, model_family

SIZE = 32  # pixels: every tiny VAE downsamples by 2 and every patch/packing is 2, so 8x8 tokens


def _config(name, out):
    return preset_config("tiny").merged({
        "out": str(out), "model": "tiny", "family": name, "steps": 2, "height": SIZE, "width": SIZE,
        "max_sequence_length": 16, "limit": 1, "seeds_per_prompt": 1, "metrics": [], "trace": True,
        "conditions": [{"label": "sink", "controls": ["sink"], "k": [1], "layers": [None]}],
        "report": False, "progress": False, "device": "cpu"})


@pytest.mark.parametrize("name", list(MODEL_FAMILIES))
def test_family_runs_and_traces_on_its_tiny_pipeline(tmp_path, name):
    out = tmp_path / "run"
    result = run(_config(name, out))
    assert result.written == 2 and result.skipped == 0
    records = read_records(str(out / "results.jsonl"))
    assert sorted(r["condition"] for r in records) == ["baseline", "sink_k1_score_head_Lall"]
    for r in records:
        assert r["family"] == name and r["k"] == (0 if r["condition"] == "baseline" else 1)
        assert (r["width"], r["height"]) == (SIZE, SIZE)
        with Image.open(out / r["image"]) as im:
            assert im.size == (SIZE, SIZE)
    # the atlas: the baseline image traced
    with open(out / "atlas" / "index.jsonl") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    assert any(line["condition"] == "baseline" for line in lines), lines
    assert os.path.getsize(out / "trace.jsonl") > 0


@pytest.mark.parametrize("name", list(MODEL_FAMILIES))
def test_generator_reads_the_table(name):
    """Latents at the shape of the pipeline's latents= (packed, 5-D), the token grid, the
    tracer's text segments, all from the family's row."""
    family = model_family(name)
    pipe = load_pipeline("tiny", name, "float32", "cpu")
    gen = Generator(pipe, name, 1, 1.0, SIZE, SIZE, 16, "cpu")
    assert type(pipe).__name__ == family.pipeline and gen.denoiser is getattr(pipe, family.denoiser)
    assert tuple(gen.latents(0).shape) == family.latent_shape(pipe, SIZE, SIZE, num_frames=1)
    grid = family.token_grid(pipe, SIZE, SIZE, num_frames=1)
    assert gen.token_grid() == (grid.rows, grid.cols)
    segments = gen.tracer_tokenizers()
    if family.prompt_template is not None or any(length is None for _, length in family.tokenizers):
        assert segments is None
    else:
        lengths = [16 if isinstance(length, str) else length for _, length in family.tokenizers]
        assert [length for _, length in segments] == lengths


def test_unknown_family_and_tiny_blocks_are_refused():
    with pytest.raises(ValueError, match="family must be one of"):
        preset_config("tiny").merged({"family": "sd4"})
    with pytest.raises(ValueError, match="tiny_blocks .* not to family 'flux'"):
        load_pipeline("tiny", "flux", "float32", "cpu", tiny_blocks=4)
    pipe = load_pipeline("tiny", "sd35-medium", "float32", "cpu", tiny_blocks=3)
    assert len(pipe.transformer.transformer_blocks) == 3


def test_video_family_saves_every_frame(tmp_path):
    """--num-frames on a video family (wan-t2v): the first frame is the scored PNG, every
    frame goes to a GIF beside it, named in the record, and to an MP4 of the same name; 5 frames are 2 latent frames."""
    out = tmp_path / "video"
    cfg = _config("wan-t2v", out).merged({"num_frames": 5, "trace": False})
    assert run(cfg).written == 2
    for r in read_records(str(out / "results.jsonl")):
        assert r["video"] == r["image"][:-len(".png")] + ".gif"
        with Image.open(out / r["video"]) as gif, Image.open(out / r["image"]) as png:
            assert gif.n_frames == 5 and gif.size == png.size == (SIZE, SIZE)
        with av.open(str(out / r["video"])[:-len(".gif")] + ".mp4") as mp4:  # the "video" extra: in the test extra
            frames = list(mp4.decode(video=0))
            assert len(frames) == 5 and (frames[0].width, frames[0].height) == (SIZE // 2 * 2, SIZE // 2 * 2)
    from sinkattn.experiment.html_report import write_html_report

    page = open(write_html_report(str(out), embed=False), encoding="utf-8").read()
    assert page.count('.gif"') == 2 and "data:image" not in page  # the gallery animates the videos
    page = open(write_html_report(str(out), embed=True), encoding="utf-8").read()
    assert page.count("data:image/gif;base64,") == 2
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        _config("wan-t2v", out).merged({"num_frames": 0})
    image_run = tmp_path / "image"
    run(_config("sd3", image_run).merged({"num_frames": 5}))  # an image family ignores it
    assert all(r["video"] is None for r in read_records(str(image_run / "results.jsonl")))


@pytest.mark.parametrize("name", [n for n, f in MODEL_FAMILIES.items() if f.guidance_passes])
def test_separate_guidance_forwards_are_labelled(tmp_path, name):
    """Wan and Qwen-Image run the guidance branches as separate forwards of a step (cond,
    then uncond): the atlas labels each forward's rows with its branch, not both "cond"."""
    from sinkattn.experiment.atlas import read_atlas

    out = tmp_path / "run"
    run(_config(name, out))
    heads = read_atlas(str(out))
    by_branch = heads.groupby("branch")["forward"].unique()
    assert set(by_branch.index) == {"cond", "uncond"}
    assert list(by_branch["cond"]) == [0] and list(by_branch["uncond"]) == [1]
