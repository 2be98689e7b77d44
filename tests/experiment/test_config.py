"""Conditions, presets and the precedence preset < config file < flags."""

import json

import pytest

from sinkattn.cli import build_parser, config_from_args
from sinkattn.experiment.config import (
    ConditionGroup, RunConfig, expand_conditions, parse_int_sets, preset_config,
)


def _names(groups, heads=None):
    return [c.name for c in expand_conditions(groups, heads=heads)]


def test_expansion_order_names_and_dedup():
    groups = [ConditionGroup(controls=["sink", "random"], k=[1, 5], layers=[[12]], random_draws=2),
              ConditionGroup(controls=["sink"], k=[1], layers=[[12]])]  # a repeat adds nothing
    assert _names(groups) == [
        "baseline",
        "sink_k1_score_head_L12", "random_k1_score_head_L12_d0", "random_k1_score_head_L12_d1",
        "sink_k5_score_head_L12", "random_k5_score_head_L12_d0", "random_k5_score_head_L12_d1",
    ]
    assert _names(groups) == _names(groups)


def test_names_carry_every_setting():
    g = ConditionGroup(controls=["bottom"], k=[2], path=["value"], select=["head"], eta=[0.5], layers=[[0, 1, 2, 3]],
                       steps=[[0, 1]], timesteps=[[100.0, 900.0]], mass_queries="all", apply_queries="image",
                       candidates="text")
    (c,) = expand_conditions([g])[1:]
    assert c.name == "bottom_k2_value_head_L0to3_S0-1_T100to900_eta0p5_mqall_aqimage_candtext"
    assert c.top_k == 2 and c.matched_key == "sink_k2_value_head_L0to3_S0-1_T100to900_eta0p5_mqall_aqimage_candtext"


def test_shared_selection_uses_k_times_heads():
    g = ConditionGroup(controls=["sink", "random"], k=[2], select=["shared"], random_draws=1)
    with pytest.raises(ValueError, match="heads"):
        expand_conditions([g])
    conds = expand_conditions([g], heads=24)[1:]
    assert [(c.k, c.top_k) for c in conds] == [(2, 48), (2, 48)]


@pytest.mark.parametrize("text, sets", [
    pytest.param("12", [[12]], id="one"),
    pytest.param("6;12;18", [[6], [12], [18]], id="three-sets"),
    pytest.param("0-3", [[0, 1, 2, 3]], id="range"),
    pytest.param("6,12", [[6, 12]], id="one-set-two-layers"),
    pytest.param("all;5", [None, [5]], id="all-and-one"),
    pytest.param("transformer_blocks.1*", [["transformer_blocks.1*"]], id="pattern"),
])
def test_parse_int_sets(text, sets):
    assert parse_int_sets(text) == sets


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="controls"):
        expand_conditions([ConditionGroup(controls=["top"])])
    with pytest.raises(ValueError, match="eta"):
        expand_conditions([ConditionGroup(eta=[2.0])])
    with pytest.raises(ValueError, match="unknown fields"):
        RunConfig.from_dict({"stepz": 3})


def test_paper_sd3_preset_is_the_study():
    cfg = preset_config("paper-sd3")
    assert (cfg.model, cfg.steps, cfg.guidance, cfg.height, cfg.width, cfg.seed_base, cfg.prompts) == (
        "stabilityai/stable-diffusion-3-medium-diffusers", 20, 7.0, 1024, 1024, 42, "geneval")
    assert cfg.seeds_for(7) == [49]
    names = _names(cfg.conditions)
    for expected in ("sink_k1_score_head_L12", "random_k1_score_head_L12_d0", "bottom_k1_score_head_L12",
                     "sink_k1_score_head_L6", "sink_k1_score_head_L18", "sink_k5_score_head_L12",
                     "sink_k50_score_head_L12", "random_k50_score_head_L12_d2"):
        assert expected in names
    assert len(names) == len(set(names))
    assert preset_config("paper-sdxl").family == "sdxl"


def test_flags_override_file_override_preset(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"preset": "paper-sd3", "steps": 9, "limit": 4, "guidance": 5.0}))
    args = build_parser().parse_args(["run", "--out", str(tmp_path / "o"), "--config", str(path), "--steps", "3",
                                      "--k", "1,10", "--layers", "6;18", "--metric-arch", "clip_t=tiny"])
    cfg = config_from_args(args)
    assert (cfg.preset, cfg.steps, cfg.limit, cfg.guidance, cfg.height) == ("paper-sd3", 3, 4, 5.0, 1024)
    assert cfg.metric_options["clip_t"] == {"arch": "tiny"}
    names = _names(cfg.conditions)
    # condition flags replace the groups by one, starting from the preset's first (main) group
    assert "sink_k10_score_head_L18" in names and "bottom_k1_score_head_L6" in names
    assert not any("L12" in n for n in names)


def test_yaml_config(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("preset: tiny\nsteps: 2\nconditions:\n  - controls: [sink]\n    k: [3]\n    layers: [[1]]\n")
    cfg = config_from_args(build_parser().parse_args(["run", "--out", "x", "--config", str(path)]))
    assert cfg.steps == 2 and _names(cfg.conditions) == ["baseline", "sink_k3_score_head_L1"]


@pytest.mark.parametrize("name, text", [
    pytest.param("study.json", '{"steps": 2,\n"limit": }\n', id="json"),
    pytest.param("study.yaml", "steps: 2\nlimit: [1\n", id="yaml"),
])
def test_malformed_config_file_names_the_file_and_its_line(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        config_from_args(build_parser().parse_args(["run", "--out", "x", "--config", str(path)]))
    assert str(err.value).startswith(f"{path}: line 2")
