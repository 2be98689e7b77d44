"""Every paper-* preset against the original study's settings, then every preset run end to
end on the tiny pipeline.

Expected values cite the original code (wfz666/ICML26-attention-sink, release commit
ab0e3fb2) as alias:line, with the aliases and line numbers of
sinkattn/experiment/ORIGINAL_STUDY.md (its header lists the files; section 2 the settings
per experiment). Where this project deliberately differs, the comment says "differs" and
the README section "Reproducing the original study" says why.
"""

import hashlib
import io
import json
import os

import pytest

from sinkattn.cli import main
from sinkattn.experiment.config import PRESET_INFO, PRESETS, expand_conditions, phase_steps, preset_config
from sinkattn.experiment.store import read_records

SD3M = "stabilityai/stable-diffusion-3-medium-diffusers"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SD3M_HEADS = 24  # SD3-medium: 24 heads in each of its 24 joint blocks (ORIGINAL_STUDY.md section 0)


def resolved(name, heads=SD3M_HEADS):
    """The preset's config and its conditions (no model, no generation), baseline dropped."""
    cfg = preset_config(name)
    return cfg, cfg.expand(heads=heads)[1:]


def assert_sd3_run(cfg):
    """What every SD3 run of the original shares (ORIGINAL_STUDY.md section 0)."""
    assert cfg.model == SD3M and cfg.family == "sd3"      # RDS:389-391, ACF:662-665
    assert cfg.dtype == "float16"                         # RDS:390, ACF:525,664 (torch_dtype=torch.float16)
    assert (cfg.height, cfg.width) == (1024, 1024)        # not passed: the pipeline default 1024 (RDS:8-15 comment)
    assert cfg.max_sequence_length == 256                 # not passed: pipeline default 256 T5 tokens (77 + 256 = 333)
    assert cfg.latents == "original"  # torch.Generator(device="cuda").manual_seed(seed) to the pipeline: ACF:539, RDS:410
    assert cfg.tiny_blocks is None


def only(conds):
    (c,) = conds
    return c


# --- Figure 2 / Table 1 -----------------------------------------------------------------------

def test_f2_dynamics():
    cfg, conds = resolved("paper-f2-dynamics")
    assert_sd3_run(cfg)
    assert cfg.prompts == "h1d" and cfg.limit is None    # the 8 hard-coded prompts, H1D:190-199; N=8 (pl:20)
    assert cfg.seed_base == 42 and cfg.seed_scheme == "prompt"  # seed + i, H1D:208
    assert cfg.steps == 20                                # pl:21 (--num_steps 20)
    assert cfg.guidance == 7.0                            # not passed (H1D pipe call): pipeline default
    assert conds == []                                    # measurement only, no intervention (H1D:185-188)
    assert cfg.trace is True                              # differs: traced at every layer, not only 6/12/18 (H1D:168)
    assert cfg.metrics == []


# --- Table 2 (and 3, 14: scores of its images) ------------------------------------------------

T2 = {  # sg:38-64: --layers / --top_k of A1, A2, A3
    "paper-t2-a1": ("sink_k1_score_head_L12", 1, (12,)),
    "paper-t2-a2": ("sink_k1_score_head_L6-12-18", 1, (6, 12, 18)),  # ONE condition: the three layers together
    "paper-t2-a3": ("sink_k5_score_head_L12", 5, (12,)),
}


def _assert_t2_condition(c, k, layers):
    assert c.control == "sink" and c.k == k and c.top_k == k
    assert c.select == "head"                  # topk per (b, h): RDS:176 (not shared across heads)
    assert c.mass_queries == "image"           # mass = mean over image queries: RDS:167-168,173
    assert c.candidates == "all"               # topk over all 4429 keys, image and text: RDS:135
    assert c.apply_queries == "all"            # masked for image queries (RDS:197-201) AND text queries (RDS:233-235)
    assert c.path == "score" and c.eta == 0.0 and c.eta_mode == "logit"  # logit bias -1e4 (fp32): RDS:197-201
    assert c.layers == layers and c.steps is None and c.timesteps is None  # every step, every CFG branch
    assert c.fixed is None


@pytest.mark.parametrize("name", list(T2))
def test_t2_single(name):
    cfg, conds = resolved(name)
    assert_sd3_run(cfg)
    assert cfg.prompts == "geneval" and cfg.limit is None  # prompts/generation_prompts.txt, all 553 (sg:16,18)
    assert cfg.seed_base == 42 and cfg.seed_scheme == "prompt"  # seed 42+i: RDS:410,439 (default seed RDS:536)
    assert cfg.steps == 20                                 # sg:19
    assert cfg.guidance == 7.0                             # not passed: pipeline default
    expected, k, layers = T2[name]
    c = only(conds)
    assert c.name == expected
    _assert_t2_condition(c, k, layers)


def test_t2_all_and_its_alias():
    cfg, conds = resolved("paper-t2")
    assert_sd3_run(cfg)
    assert [c.name for c in conds] == [v[0] for v in T2.values()]  # A1, A2, A3 on one shared baseline
    for c, (_, k, layers) in zip(conds, T2.values()):
        _assert_t2_condition(c, k, layers)
    # Table 3 (HPS v2.1 of A1-A3, eval/run_hpsv2_eval.py), ImageReward (RP:47-50, CI:50) and CLIP-T
    # (RDS:492-507) are scores of these images; Table 14 (E1) is the report's by-tag breakdown
    assert set(cfg.metrics) == {"clip_t", "image_reward", "hps_v21", "lpips"}
    alias = preset_config("paper-sd3")
    assert alias.preset == "paper-sd3"
    assert alias.generation_fingerprint() == cfg.generation_fingerprint()
    assert [c.name for c in alias.expand()] == ["baseline"] + [c.name for c in conds]
    # the four T2 presets can share one run folder: same generation settings
    assert all(preset_config(n).generation_fingerprint() == cfg.generation_fingerprint() for n in T2)


# --- Table 5: SDXL ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["paper-t5-sdxl", "paper-sdxl"])
def test_t5_sdxl(name):
    cfg, conds = resolved(name, heads=None)
    assert cfg.model == SDXL and cfg.family == "sdxl"     # SX:496-498
    assert cfg.dtype == "float16"                         # SX:496-498 (fp16 variant)
    assert cfg.guidance == 5.0                            # not passed: StableDiffusionXLPipeline default 5.0
    assert cfg.steps == 20                                # T5 (SX, SS): 20 steps
    assert (cfg.height, cfg.width) == (1024, 1024)        # pipeline default
    assert cfg.seed_base == 1000                          # seed 1000+i: SX:594
    assert cfg.prompts == "balanced100" and cfg.limit == 100  # RP:72-92 (rs:37,70 ran 32 GenEval prompts: D25)
    assert cfg.latents == "original"
    cross, self_ = conds
    assert cross.layers == ("mid_block.*.attn2",)         # names holding "mid" and "attn2": SX:307,331
    assert self_.layers == ("mid_block.*.attn1",)         # "mid" and "attn1": SS _should_patch
    for c in conds:
        assert c.control == "sink" and c.k == 1 and c.select == "head"  # per-head top-1: SX:175,182-183; SS:185,192-193
        assert c.mass_queries == "image"                  # mean over the (image) queries, fp32 probs: SX:175; SS:185
        assert c.candidates == "all" and c.apply_queries == "all"  # the 77 text keys (SX) / image keys (SS)
        assert c.path == "score" and c.eta == 0.0         # logit bias -1e4: SX:205,209
        assert c.steps is None
    assert set(cfg.metrics) == {"clip_t", "lpips"}        # CLIP-T and LPIPS alex (ORIGINAL_STUDY.md T5)


def test_sdxl_shared_selection_counts_the_heads_of_the_intervened_layers(tmp_path, capsys):
    """SDXL's attention_head_dim is a list (heads per U-Net level): select="shared" takes H
    from the modules a condition intervenes in (the mid block: 20 heads in SDXL-base)."""
    from sinkattn.experiment.models import denoiser_skeleton, heads_of

    folder = tmp_path / "sdxl"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(SDXL_UNET_CONFIG))
    unet, where = denoiser_skeleton(str(folder), "sdxl")
    assert where.endswith("unet/config.json")
    assert heads_of(unet, ["mid_block.*.attn2"]) == 20 and heads_of(unet, ["down_blocks.1.*"]) == 10
    with pytest.raises(ValueError, match=r"one head count .* \[10, 20\]"):
        heads_of(unet, None)
    assert main(["run", "--preset", "paper-t5-sdxl", "--out", str(tmp_path / "o"), "--dry-run", "--model",
                 str(folder), "--select", "shared", "--k", "2", "--layers", "mid_block.*.attn2", "--prompts",
                 "builtin"]) == 0
    assert "top_k=40 = k x 20 heads" in capsys.readouterr().out


# --- Tables 6 / 7: perceptual sink vs random --------------------------------------------------

def _assert_acf(c, k):
    """The counterfactual patcher (ORIGINAL_STUDY.md 3.3)."""
    assert c.select == "shared"                # head-mean mass (ACF:197): one key set for every head
    assert c.top_k == k * SD3M_HEADS           # budget k_union = top_k * heads = 24 k: ACF:198
    assert c.mass_queries == "image"           # fp32 softmax of the image queries: ACF:192-194
    assert c.candidates == "all"               # every key (random: randperm over all keys, ACF:209-215)
    assert c.apply_queries == "all"            # mask [B,1,1,K] over all heads and ALL queries: ACF:286
    assert c.path == "score" and c.eta == 0.0  # additive -65000 mask: ACF:260-263
    assert c.layers == (12,) and c.steps is None


def test_t6_perceptual():
    cfg, conds = resolved("paper-t6-perceptual")
    assert_sd3_run(cfg)
    assert cfg.prompts == "geneval" and cfg.limit == 64   # generation_prompts.txt first 64: RP:101-103
    assert cfg.seed_base == 1000                          # seed 1000+i: PD:199-201
    assert cfg.steps == 20 and cfg.guidance == 7.0        # PD:199-201; CFG not passed
    assert [(c.control, c.k, c.draw) for c in conds] == [  # modes top_sink / random (PD:184-196), k 1,5 (RP:101-103)
        ("sink", 1, None), ("random", 1, 0), ("sink", 5, None), ("random", 5, 0)]  # one random draw per prompt-step
    for c in conds:
        _assert_acf(c, c.k)
    assert set(cfg.metrics) == {"clip_t", "lpips", "hps_v21"}  # ACF:410,420; PD:71,84-85; ACF:454-458


# --- Tables 9 / 18: FID calibration -----------------------------------------------------------

FID = {  # FC:108-122 (and FC:141 for euler)
    "base": dict(seed_base=1000, steps=20, guidance=7.5, scheduler=None),
    "seed": dict(seed_base=2000, steps=20, guidance=7.5, scheduler=None),
    "cfg6.5": dict(seed_base=1000, steps=20, guidance=6.5, scheduler=None),
    "cfg8.5": dict(seed_base=1000, steps=20, guidance=8.5, scheduler=None),
    "steps15": dict(seed_base=1000, steps=15, guidance=7.5, scheduler=None),
    "steps10": dict(seed_base=1000, steps=10, guidance=7.5, scheduler=None),
    # EulerDiscreteScheduler.from_config(default_scheduler.config): FC:141
    "euler": dict(seed_base=1000, steps=20, guidance=7.5, scheduler="euler"),
}


@pytest.mark.parametrize("which", list(FID))
def test_t9_fid_calibration_sets(which):
    cfg, conds = resolved(f"paper-t9-fid-{which}")
    assert_sd3_run(cfg)
    assert cfg.prompts == "balanced100" and cfg.limit == 100  # RP:114-117 (rs:37,95 used GenEval[:100]: D25)
    for key, value in FID[which].items():
        assert getattr(cfg, key) == value, key
    assert conds == []            # baseline sets only: FC generates no intervention set (despite FC:11)
    assert cfg.metrics == []      # FID is between run folders (FC:61-63), see the README


# --- Tables 10 / 11, H2: the fixed index-0 interventions (SA) ---------------------------------

def _assert_appendix(cfg):
    assert_sd3_run(cfg)
    assert cfg.prompts == "balanced100" and cfg.limit == 32  # rf:33,36,42 / ri:62-66,93-97
    assert cfg.steps == 50                                   # rf:34; ML:36; EP:72
    assert cfg.guidance == 7.0 and cfg.seed_base == 42       # CFG not passed; rf:35


def _assert_index0(c):
    # sink_token_indices=[0] (RE:530) in SA's [text, image] order (SA:255-257): the first text token, CLIP BOS
    assert c.fixed == ("text:0",)
    assert c.layers == (12,)          # intervention layer [24 // 2] = [12]: RE:521-522
    assert c.apply_queries == "all"   # the whole [B,H,N,M] matrix, every query: SA:261,274


def test_t10_eta_sweep():
    cfg, conds = resolved("paper-t10-eta-sweep")
    _assert_appendix(cfg)
    assert cfg.seed_scheme == "shared"  # ONE generator seeded 42 per condition, consumed across prompts: RE:360,420
    assert [c.eta for c in conds] == [0.0, 0.01, 0.1, 0.25, 0.5, 1.0]  # the score sweep's values (RE:360)
    for c in conds:
        _assert_index0(c)
        assert c.path == "score" and c.eta_mode == "prob"  # score_only = _apply_prob_scale: SA:434-468
        assert c.steps is None
    assert set(cfg.metrics) == {"clip_t", "image_reward"}  # QM (HF CLIP) via rf:166,171; EI


def test_t10_value_sweep():
    cfg, conds = resolved("paper-t10-value-sweep")
    _assert_appendix(cfg)
    assert cfg.seed_scheme == "shared"  # as the score sweep: RE:364,420
    # zero (SA:483), mean (SA:486-487), lerp alpha=0.5 (SA:495-498): v <- a v + (1 - a) mean; lerp 0.0 is
    # mean itself (D13), so it is one condition; "noise" (SA:490-492) is not reproduced (unseeded: D17)
    assert [(c.value_target, c.eta) for c in conds] == [("zero", 0.0), ("mean", 0.0), ("mean", 0.5)]
    for c in conds:
        _assert_index0(c)
        assert c.path == "value"


def test_h2():
    cfg, conds = resolved("paper-h2")
    _assert_appendix(cfg)
    assert cfg.seed_scheme == "prompt"  # seed 42+i: RE:250-252
    score, value = conds                # none / score_only eta=0.01 / value_only zero: RE:250-252, rf:84-85
    assert (score.path, score.eta_mode, score.eta) == ("score", "prob", 0.01)
    assert (value.path, value.value_target, value.eta) == ("value", "zero", 0.0)
    for c in conds:
        _assert_index0(c)


# --- Tables 12 / 13 ---------------------------------------------------------------------------

def _assert_both_index0(c):
    _assert_index0_except_layers(c)
    assert c.path == "both" and c.eta == 0.0 and c.eta_mode == "prob"  # prob_scale eta=0 ...
    assert c.value_target == "zero"                                     # ... plus value zero: ML:95-105,122; EP:149-153


def _assert_index0_except_layers(c):
    assert c.fixed == ("text:0",) and c.apply_queries == "all"


def test_t12_multilayer():
    cfg, conds = resolved("paper-t12-multilayer")
    _assert_appendix(cfg)
    assert cfg.seed_scheme == "prompt"  # seed 42+i: ML:155
    assert [c.layers for c in conds] == [(12,), (6, 12, 18)]  # single_layer_12, multi_layer_6_12_18 (together): ML:122
    for c in conds:
        _assert_both_index0(c)
        assert c.steps is None          # all steps


def test_t13_phase():
    cfg, conds = resolved("paper-t13-phase")
    _assert_appendix(cfg)
    assert cfg.seed_scheme == "prompt"  # seed 42+i: EP:194
    # full [0,1], early [0,0.2], mid [0.4,0.6], late [0.8,1.0] (EP:96-99) on t = step/(N-1) (EP:202-203), counted
    # here from step 0: differs from the original, whose t lagged one step (D6/D7: early = steps 1-10, ...)
    assert [c.phase for c in conds] == [None, (0.0, 0.2), (0.4, 0.6), (0.8, 1.0)]
    assert [c.steps for c in conds] == [None, tuple(range(0, 10)), tuple(range(20, 30)), tuple(range(40, 50))]
    for c in conds:
        _assert_both_index0(c)
        assert c.layers == (12,)        # EP: layer 12
    # the full phase is Table 12's single-layer condition: one folder may hold both presets
    assert conds[0].name == resolved("paper-t12-multilayer")[1][0].name
    assert preset_config("paper-t13-phase").generation_fingerprint() == \
        preset_config("paper-t12-multilayer").generation_fingerprint()


# --- Tables 15 / 16: E2 / E3 ------------------------------------------------------------------

T15 = {  # E2:26-32 (cfg, steps, scheduler); schedulers .from_config of the flow-matching config: E2:140,148
    "cfg3": (3.0, 20, None), "cfg7.5": (7.5, 20, None), "cfg12": (12.0, 20, None), "steps8": (7.5, 8, None),
    "steps50": (7.5, 50, None), "euler": (7.5, 20, "euler"), "dpmpp": (7.5, 20, "dpm++"),
}


def _assert_dsp(c):
    """DynamicSinkPatcher(intervention_layers=[12], top_k=1): E2:164,194; E3:277."""
    assert c.control == "sink" and c.k == 1 and c.top_k == 1 and c.select == "head"
    assert c.layers == (12,) and c.mass_queries == "image"
    assert c.apply_queries == "image"    # only image queries are masked: DSP:208,272 (D14)
    assert c.path == "score" and c.eta == 0.0 and c.steps is None


@pytest.mark.parametrize("which", list(T15))
def test_t15_e2_sampler_sensitivity(which):
    cfg, conds = resolved(f"paper-t15-{which}")
    assert_sd3_run(cfg)
    assert cfg.prompts == "geneval" and cfg.limit == 32  # first 32 of A1's prompts.txt: r4:95-97
    assert cfg.seed_base == 1000                         # seed 1000+i: E2:188
    assert (cfg.guidance, cfg.steps, cfg.scheduler) == T15[which]
    _assert_dsp(only(conds))
    assert set(cfg.metrics) == {"clip_t", "lpips"}       # open_clip CLIP-T, LPIPS alex


def test_t16_e3_ablation():
    cfg, conds = resolved("paper-t16-e3-ablation")
    assert_sd3_run(cfg)
    assert cfg.prompts == "geneval" and cfg.limit == 32  # ablation: 32 prompts, E3:334
    assert cfg.seed_base == 1000 and cfg.steps == 20 and cfg.guidance == 7.5  # E3:284 (CFG 7.5, 20 steps)
    for c in conds:
        _assert_dsp(c)
    # mode "all" (E3:359) is faithful; text_only / image_only masked a head's top-1 key only when it lay in that
    # range (DSP:575-586): differs, ours masks each head's top key among those keys
    assert [c.candidates for c in conds] == ["all", "text", "image"]
    assert cfg.trace is True  # the attribution part: the baseline trace, every layer (D3/D4 fixed)


# --- Table 17: no-op ---------------------------------------------------------------------------

def test_t17_noop():
    cfg, conds = resolved("paper-t17-noop")
    assert_sd3_run(cfg)
    assert cfg.steps == 28 and cfg.guidance == 7.0       # NC:28-30
    assert cfg.seed_base == 42                           # seed 42+i: NC:167
    assert cfg.prompts == "balanced100" and cfg.limit == 100  # RP:171-176; --num_prompts default 100 (NC main)
    c = only(conds)
    # differs: the original's wrappers only called the stock processor (NC:69,108-110, D22); here our whole
    # intervention path runs in every layer with a zero change (logits + log 1)
    assert (c.control, c.k, c.eta, c.eta_mode, c.layers, c.path) == ("sink", 1, 1.0, "logit", None, "score")
    assert cfg.metrics == ["lpips"]                      # LPIPS alex (FID and pixel diff from the folder)


# --- Table 19: the k sweep --------------------------------------------------------------------

def test_t19_ksweep():
    cfg, conds = resolved("paper-t19-ksweep")
    assert_sd3_run(cfg)
    assert cfg.prompts == "geneval" and cfg.limit == 64  # generation_prompts.txt first 64: ks:28,31
    assert cfg.seed_base == 1000                         # seed 1000+i: ACF:538-540,730-732
    assert cfg.steps == 20 and cfg.guidance == 7.0       # ACF:538-540; CFG not passed
    controls = ["sink", "random", "bottom", "high_outgoing_query", "high_outgoing_query_ablate"]
    # modes top_sink / random / bottom_sink / high_outgoing_query: ACF:673; k 1,5,10,20,50: ks:43; plus the
    # acting query-side control (ours: the original's adds a row constant, a no-op by construction, D2)
    assert [(c.k, c.control) for c in conds] == [(k, m) for k in (1, 5, 10, 20, 50) for m in controls]
    for c in conds:
        _assert_acf(c, c.k)  # layer 12: ks:57
        assert c.draw == (0 if c.control == "random" else None)  # one draw per call and batch element (ACF:209-215)
    hoq = [c for c in conds if c.control.startswith("high_outgoing_query")]
    assert all(c.top_k == 24 * c.k for c in hoq)         # min(n_img, 24 k) image queries: ACF:216-226
    assert cfg.metrics == ["clip_t"]                     # OpenAI clip ViT-B/32: ACF:410,420


# --- Table 20: HPS sink vs random over k -----------------------------------------------------

def test_t20_hps_k():
    cfg, conds = resolved("paper-t20-hps-k")
    assert_sd3_run(cfg)
    assert cfg.prompts == "balanced100" and cfg.limit == 64  # RP:195-199 (--num_prompts 64)
    assert cfg.seed_base == 1000 and cfg.steps == 20         # HV:275-277
    assert cfg.guidance == 7.0
    assert [(c.k, c.control) for c in conds] == [  # modes none/top_sink/random: HV:262; k 1, 10, 50: RP:190-219
        (k, m) for k in (1, 10, 50) for m in ("sink", "random")]
    for c in conds:
        _assert_acf(c, c.k)
    assert set(cfg.metrics) == {"clip_t", "hps_v21", "image_reward"}  # HV:108, HV:59, HV:80


def test_every_preset_is_checked_here_and_described():
    tested = {"tiny", "paper-f2-dynamics", "paper-t2", "paper-sd3", *T2, "paper-t5-sdxl", "paper-sdxl",
              "paper-t6-perceptual", *(f"paper-t9-fid-{w}" for w in FID), "paper-t10-eta-sweep",
              "paper-t10-value-sweep", "paper-h2", "paper-t12-multilayer", "paper-t13-phase",
              *(f"paper-t15-{w}" for w in T15), "paper-t16-e3-ablation", "paper-t17-noop", "paper-t19-ksweep",
              "paper-t20-hps-k"}
    assert set(PRESETS) == tested
    assert set(PRESET_INFO) == set(PRESETS)


# --- dry run: resolved settings, H from the model config without weights ----------------------

def test_dry_run_resolves_heads_from_a_config_and_phases_to_steps(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "sd3m"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(SD3M_TRANSFORMER_CONFIG))
    out = str(tmp_path / "o")
    assert main(["run", "--preset", "paper-t19-ksweep", "--out", out, "--dry-run", "--model", str(folder),
                 "--prompts", "builtin"]) == 0
    text = capsys.readouterr().out
    assert "heads per attention layer: 24 (from" in text
    assert "top_k=1200 = k x 24 heads" in text and "layers=12 (1 attention module)" in text
    assert "26 conditions:" in text and "seed 1000+i for prompt i" in text and "latents=original" in text
    # no config on this machine: the count waits for the model and says so
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert main(["run", "--preset", "paper-t19-ksweep", "--out", out, "--dry-run", "--prompts", "builtin"]) == 0
    text = capsys.readouterr().out
    assert "top_k=k x heads, known once the model loads" in text and "unknown without the model" in text
    assert main(["run", "--preset", "paper-t13-phase", "--out", out, "--dry-run", "--prompts", "builtin"]) == 0
    text = capsys.readouterr().out
    assert "steps=20-29 (phase t in [0.4, 0.6], t = step/49) of 0-49" in text
    assert "keys=text:0 (fixed" in text and "eta_mode=prob value_target=zero" in text
    assert "one generator" not in text and "seed 42+i" in text
    # a layer the tiny model does not have is refused as a run would refuse it
    assert main(["run", "--preset", "paper-t2-a1", "--out", out, "--dry-run", "--model", "tiny", "--dtype",
                 "float32", "--prompts", "builtin"]) == 2
    assert "block index 12 is outside [0, 2)" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_cli_flags_for_the_new_settings(tmp_path):
    from sinkattn.cli import build_parser, config_from_args

    args = build_parser().parse_args([
        "run", "--out", "x", "--preset", "paper-t13-phase", "--path", "both", "--eta-mode", "prob",
        "--value-target", "mean", "--fixed", "text:0;image:0", "--phases", "0,0.5;all", "--controls", "sink",
        "--latents", "cpu", "--seed-scheme", "shared", "--scheduler", "dpm++", "--tiny-blocks", "24"])
    cfg = config_from_args(args)
    assert (cfg.latents, cfg.seed_scheme, cfg.scheduler, cfg.tiny_blocks) == ("cpu", "shared", "dpm++", 24)
    names = [c.name for c in cfg.expand()[1:]]
    assert names == ["fix-text0_both_L12_S0to24_eta0prob_vmean", "fix-text0_both_L12_eta0prob_vmean",
                     "fix-image0_both_L12_S0to24_eta0prob_vmean", "fix-image0_both_L12_eta0prob_vmean"]
    # steps given: the preset's phases give way
    cfg = config_from_args(build_parser().parse_args(["run", "--out", "x", "--preset", "paper-t13-phase",
                                                      "--intervene-steps", "0-4"]))
    assert [c.steps for c in cfg.expand()[1:]] == [(0, 1, 2, 3, 4)]
    cfg = config_from_args(build_parser().parse_args(["run", "--out", "x", "--preset", "paper-t13-phase",
                                                      "--scheduler", "default", "--fixed", "none"]))
    assert cfg.scheduler is None and all(c.fixed is None for c in cfg.expand()[1:])


# --- latents as the original drew them ----------------------------------------------------------

TINY = ["--model", "tiny", "--tiny-blocks", "24", "--dtype", "float32", "--height", "64", "--width", "64",
        "--max-sequence-length", "16", "--metrics", "none", "--no-progress", "--no-report", "--no-trace",
        "--prompts", "builtin"]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("preset, original_loop", [
    # run_dynamic_sink.py: a fresh generator per prompt, seeded 42+i (RDS:410,439)
    pytest.param("paper-t2-a1", "per-prompt", id="seed-per-prompt"),
    # run_experiment.py sweeps: one generator seeded 42, consumed prompt after prompt (RE:360,420)
    pytest.param("paper-t10-eta-sweep", "shared", id="one-shared-generator"),
])
def test_original_latents_are_the_original_loops(tmp_path, preset, original_loop):
    """latents="original" gives the images of the original's own loop (a generator handed to
    the pipeline; here a CPU one, since there is no GPU: on CUDA the same code uses CUDA's)."""
    import torch

    from sinkattn.experiment.models import load_pipeline

    out = tmp_path / "run"
    assert main(["run", "--preset", preset, "--out", str(out), *TINY, "--steps", "2", "--limit", "3",
                 "--k", "1", "--controls", "sink", "--layers", "12", "--eta", "0"]) == 0
    records = {r["prompt_id"]: r for r in read_records(str(out / "results.jsonl")) if r["condition"] == "baseline"}
    pipe = load_pipeline("tiny", "sd3", "float32", "cpu", tiny_blocks=24)
    from sinkattn.experiment.prompts import load_prompts

    shared = torch.Generator(device="cpu").manual_seed(42)
    for p in load_prompts("builtin", limit=3):
        g = shared if original_loop == "shared" else torch.Generator(device="cpu").manual_seed(42 + p.prompt_id)
        image = pipe(p.text, height=64, width=64, num_inference_steps=2, guidance_scale=7.0,
                     max_sequence_length=16, generator=g).images[0]
        assert hashlib.sha256(_png(image)).hexdigest() == records[p.prompt_id]["image_sha256"], p.prompt_id
        assert records[p.prompt_id]["seed"] == (42 if original_loop == "shared" else 42 + p.prompt_id)


# --- every preset runs, on the tiny pipeline ---------------------------------------------------

# Presets whose run would repeat another's: the same condition list, and generation settings that
# differ at most in CFG or step count, which the tiny runs below override anyway. Each is checked
# to be its stand-in's conditions (no generation) in test_covered_presets_run_as_their_stand_in.
COVERED = {
    "paper-sd3": "paper-t2", "paper-t2-a1": "paper-t2", "paper-t2-a2": "paper-t2", "paper-t2-a3": "paper-t2",
    "paper-sdxl": "paper-t5-sdxl",
    **{f"paper-t9-fid-{w}": "paper-t9-fid-base" for w in ("seed", "cfg6.5", "cfg8.5", "steps15", "steps10")},
    **{f"paper-t15-{w}": "paper-t15-cfg7.5" for w in ("cfg3", "cfg12", "steps8", "steps50")},
}
RUN = [name for name in PRESETS if name not in COVERED]


def _run_args(name):
    sdxl = preset_config(name).family == "sdxl"
    args = ["--model", "tiny", "--dtype", "float32", "--height", "64", "--width", "64", "--metrics", "none",
            "--no-progress", "--no-report", "--prompts", "builtin", "--limit", "1",
            "--steps", "3" if "phase" in name else "2"]  # 3 steps: t = 0, 0.5, 1, one step in each phase
    if not sdxl and name != "tiny":
        args += ["--tiny-blocks", "24", "--max-sequence-length", "16"]  # SD3-medium's block indices
    if name != "paper-f2-dynamics":
        args += ["--no-trace"]  # F2 is the trace itself
    return args


def test_covered_presets_run_as_their_stand_in():
    for name, stand_in in COVERED.items():
        a, b = preset_config(name), preset_config(stand_in)
        assert {c.name for c in a.expand(heads=2)} <= {c.name for c in b.expand(heads=2)}, name
        differ = {k for k, v in a.generation_fingerprint().items() if b.generation_fingerprint()[k] != v}
        assert differ <= {"guidance", "steps", "seed_base"}, (name, differ)


@pytest.mark.parametrize("name", RUN)
def test_preset_runs_on_the_tiny_pipeline(tmp_path, name):
    """The whole condition list of the preset executes (tiny random weights, one prompt, few
    steps, no metrics): every condition makes its image."""
    from sinkattn.cli import build_parser, config_from_args

    out = tmp_path / "run"
    args = _run_args(name)
    assert main(["run", "--preset", name, "--out", str(out), *args]) == 0
    cfg = config_from_args(build_parser().parse_args(["run", "--preset", name, "--out", str(out), *args]))
    heads = 2  # the tiny SD3 transformer and the tiny SDXL U-Net's attention layers: 2 heads
    by_name = {c.name: c for c in cfg.expand(heads=heads)}
    records = read_records(str(out / "results.jsonl"))
    assert sorted(r["condition"] for r in records) == sorted(by_name)
    for r in records:
        assert r["top_k"] == by_name[r["condition"]].top_k
        assert r["scheduler"] == cfg.scheduler and r["latents"] == cfg.latents
        assert os.path.exists(out / r["image"])
    if name == "paper-f2-dynamics":
        (trace,) = read_records(str(out / "trace.jsonl"))
        assert len(trace["trace"]["layer_index"]) == 24 and trace["trace"]["steps"] == [0, 1]


def test_phase_conditions_intervene_only_in_their_steps():
    """With the preset's 50 steps the windows are 10 steps each; on 3 steps (the run test) one."""
    assert [phase_steps(*w, 3) for w in ((0, 0.2), (0.4, 0.6), (0.8, 1.0))] == [(0,), (1,), (2,)]
    groups = preset_config("paper-t13-phase").conditions
    assert [c.steps for c in expand_conditions(groups, steps=3)[1:]] == [None, (0,), (1,), (2,)]


SD3M_TRANSFORMER_CONFIG = {  # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
    "_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16,
    "num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192}

SDXL_UNET_CONFIG = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that shape it)
    "_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "in_channels": 4,
    "layers_per_block": 2, "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True}
