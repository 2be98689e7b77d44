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


def test_paper_sd3_is_the_main_result_table_2():
    cfg = preset_config("paper-sd3")
    assert (cfg.model, cfg.steps, cfg.guidance, cfg.height, cfg.width, cfg.seed_base, cfg.prompts) == (
        "stabilityai/stable-diffusion-3-medium-diffusers", 20, 7.0, 1024, 1024, 42, "geneval")
    assert cfg.seeds_for(7) == [49]
    # A1, A2 (layers 6, 12 and 18 together: one condition) and A3; tests/experiment/test_presets.py has the rest
    assert _names(cfg.conditions) == ["baseline", "sink_k1_score_head_L12", "sink_k1_score_head_L6-12-18",
                                      "sink_k5_score_head_L12"]
    assert preset_config("paper-sdxl").family == "sdxl"


def test_new_intervention_settings_expand_and_name():
    g = ConditionGroup.from_dict({"controls": "sink", "k": 1, "path": "both", "eta": [0.0, 0.5], "eta_mode": "prob",
                                  "value_target": "mean", "fixed": "text:0", "layers": [[12]]})
    conds = expand_conditions([g])[1:]
    assert [c.name for c in conds] == ["fix-text0_both_L12_eta0prob_vmean", "fix-text0_both_L12_eta0p5prob_vmean"]
    assert conds[0].fixed == ("text:0",) and conds[0].top_k == 1 and conds[0].spec()["fixed"] == ["text:0"]
    with pytest.raises(ValueError, match="fixed keys"):
        expand_conditions([ConditionGroup(controls=["random"], fixed=[["text:0"]])])
    with pytest.raises(ValueError, match="RANGE:INDEX"):
        expand_conditions([ConditionGroup(fixed=[["bos"]])])
    with pytest.raises(ValueError, match="eta_mode"):
        expand_conditions([ConditionGroup(eta_mode=["log"])])
    with pytest.raises(ValueError, match="path"):
        expand_conditions([ConditionGroup(path=["keys"])])
    # every control of the registry (sinkattn.selection.CONTROLS) is accepted, and only those
    from sinkattn.selection import CONTROLS
    assert len(expand_conditions([ConditionGroup(controls=list(CONTROLS), random_draws=1)])) == 1 + len(CONTROLS)


def test_phases_resolve_to_step_indices_counted_from_step_0():
    from sinkattn.experiment.config import phase_steps

    assert phase_steps(0.0, 0.2, 50) == tuple(range(0, 10))
    assert phase_steps(0.4, 0.6, 50) == tuple(range(20, 30))
    assert phase_steps(0.8, 1.0, 50) == tuple(range(40, 50))
    assert phase_steps(0.0, 0.2, 6) == (0, 1)  # 1/5 == 0.2 exactly: rational comparison
    g = ConditionGroup(phases=[None, [0.0, 0.2]], layers=[[12]])
    with pytest.raises(ValueError, match="number of denoising steps"):
        expand_conditions([g])
    assert [c.steps for c in expand_conditions([g], steps=50)[1:]] == [None, tuple(range(10))]
    with pytest.raises(ValueError, match="holds no step"):
        expand_conditions([ConditionGroup(phases=[[0.4, 0.6]])], steps=2)
    with pytest.raises(ValueError, match="steps or phases"):
        expand_conditions([ConditionGroup(phases=[[0, 1]], steps=[[0]])], steps=4)


def test_shared_heads_may_depend_on_the_layers():
    g = ConditionGroup(controls=["sink"], k=[2], select=["shared"], layers=[["mid_block.*"], [0]])
    conds = expand_conditions([g], heads=lambda layers: 20 if layers == ("mid_block.*",) else 10)[1:]
    assert [(c.layers, c.top_k) for c in conds] == [(("mid_block.*",), 40), ((0,), 20)]


def test_generation_settings_of_the_original():
    cfg = RunConfig(seed_scheme="shared", seed_base=42, seeds_per_prompt=2)
    assert cfg.seeds_for(5) == [42, 1_000_042] and cfg.draw_index(5) == 5
    assert RunConfig().draw_index(5) == 0 and RunConfig().seeds_for(5) == [47]
    for bad in ({"latents": "gpu"}, {"seed_scheme": "one"}, {"scheduler": "ddim"}, {"tiny_blocks": 0}):
        with pytest.raises(ValueError):
            RunConfig.from_dict(bad)


def test_flags_override_file_override_preset(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"preset": "paper-sd3", "steps": 9, "limit": 4, "guidance": 5.0}))
    args = build_parser().parse_args(["run", "--out", str(tmp_path / "o"), "--config", str(path), "--steps", "3",
                                      "--k", "1,10", "--layers", "6;18", "--metric-arch", "clip_t=tiny",
                                      "--scheduler", "euler", "--latents", "cpu"])
    cfg = config_from_args(args)
    assert (cfg.preset, cfg.steps, cfg.limit, cfg.guidance, cfg.height) == ("paper-sd3", 3, 4, 5.0, 1024)
    assert cfg.metric_options["clip_t"] == {"arch": "tiny"}
    assert (cfg.scheduler, cfg.latents) == ("euler", "cpu")
    names = _names(cfg.conditions)
    # condition flags replace the groups by one, starting from the preset's first (main) group
    assert "sink_k10_score_head_L18" in names and "sink_k1_score_head_L6" in names
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
