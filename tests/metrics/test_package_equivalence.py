"""Our loaders against the packages' own code paths (hpsv2 1.2.0, image-reward 1.5).

Same random weights, saved in the official checkpoint format, scored by the package's
code (imported through the test-only shims of conftest.py) and by our scorer loading
that file. Small configs of the same architectures keep this fast on a CPU; the
full-size architectures are compared structurally (every checkpoint key and shape) on the
meta device, which allocates nothing.
"""

import json

import pytest
import torch

from sinkattn.metrics import build_scorer
from sinkattn.metrics._open_clip import TINY_CLIP_CFG
from sinkattn.metrics.image_reward import (MED_CONFIG, TINY_MED_CONFIG, _build_model, convert_state_dict,
                                           synthetic_vocab)
from sinkattn.metrics.weights import randomize_

# HPS's tiny twin keeps ViT-H-14's patch size 14 (and so its padding/resize path).
HPS_TINY_CFG = {**TINY_CLIP_CFG, "vision_cfg": {**TINY_CLIP_CFG["vision_cfg"], "patch_size": 14}}


def _seed():
    return int(torch.randint(0, 2**31, ()))


# --------------------------------------------------------------------------------- HPS

def test_hps_matches_hpsv2_score(hpsv2_modules, monkeypatch, tmp_path, make_images, make_prompts):
    oc, img_score = hpsv2_modules
    monkeypatch.setitem(oc.factory._MODEL_CONFIGS, "sinkattn-tiny", HPS_TINY_CFG)
    # hpsv2.img_score.initialize_model's arguments, with the tiny config and no download
    model, _, preprocess_val = oc.create_model_and_transforms(
        "sinkattn-tiny", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None,
        pretrained_image=False, image_mean=None, image_std=None, light_augmentation=True,
        aug_cfg={}, output_dict=True, with_score_predictor=False, with_region_predictor=False)
    randomize_(model, _seed())
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    monkeypatch.setattr(img_score, "root_path", str(tmp_path))
    monkeypatch.setitem(img_score.model_dict, "model", model)
    monkeypatch.setitem(img_score.model_dict, "preprocess_val", preprocess_val)

    images, prompts = make_images(3), make_prompts(3)  # square and non-square (padded) inputs
    expected = [float(img_score.score(im, p, cp=str(path), hps_version="v2.1")[0])
                for im, p in zip(images, prompts)]
    scorer = build_scorer("hps_v21", weights=str(path), arch=HPS_TINY_CFG)
    assert scorer.score(images, prompts) == pytest.approx(expected, abs=2e-5)
    assert len({round(e, 4) for e in expected}) == 3


def test_hps_full_size_architecture_matches_hpsv2(hpsv2_modules):
    oc, _ = hpsv2_modules
    with torch.device("meta"):
        theirs = oc.create_model("ViT-H-14", None, device="meta", output_dict=True)
        ours = build_scorer_model_meta_hps()
    assert _shapes(theirs.state_dict()) == _shapes(ours.state_dict())


def build_scorer_model_meta_hps():
    from sinkattn.metrics._open_clip import build_clip

    return build_clip("ViT-H-14", quick_gelu=False)


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("attn_mask")}


# ------------------------------------------------------------------------- ImageReward

def _package_image_reward(mods, monkeypatch, tmp_path, vision, med_config):
    """image-reward's own ImageReward model: its BLIP_Pretrain, ViT, med BertModel and MLP,
    with BLIP's ViT of size `vision` and an offline tokenizer (bert-base-uncased layout)."""
    monkeypatch.setattr(mods.blip, "BertTokenizer", mods.fake_bert_tokenizer_class(synthetic_vocab()))
    real_create_vit = mods.blip.create_vit

    def create_vit(vit, image_size, *args, **kwargs):
        if vision == "large":
            return real_create_vit(vit, image_size, *args, **kwargs)
        return (mods.vit.VisionTransformer(img_size=image_size, patch_size=16, embed_dim=64, depth=2,
                                           num_heads=4), 64)

    monkeypatch.setattr(mods.blip_pretrain, "create_vit", create_vit)
    med_path = tmp_path / "med_config.json"
    med_path.write_text(json.dumps(med_config))
    model = mods.image_reward.ImageReward(med_config=str(med_path), device="cpu")
    if med_config["hidden_size"] != 768:
        model.mlp = mods.image_reward.MLP(med_config["hidden_size"])  # the package's head, narrower
    return model


def test_image_reward_matches_package_score(image_reward_modules, monkeypatch, tmp_path,
                                            make_images, make_prompts):
    package = _package_image_reward(image_reward_modules, monkeypatch, tmp_path, "tiny", TINY_MED_CONFIG)
    randomize_(package, _seed()).eval()
    torch.save(package.state_dict(), tmp_path / "ImageReward.pt")
    (tmp_path / "vocab.txt").write_text("\n".join(synthetic_vocab()) + "\n")

    # long prompts get truncated at 35 tokens, short ones padded: both paths exercised
    images, prompts = make_images(3), make_prompts(3)
    prompts[0] = " ".join([prompts[0]] * 8)
    with torch.no_grad():
        expected = [package.score(p, im) for im, p in zip(images, prompts)]
    scorer = build_scorer("image_reward", weights=str(tmp_path), arch="tiny")  # the folder form
    assert scorer.untrained is False
    assert scorer.score(images, prompts) == pytest.approx(expected, abs=1e-4)
    assert len({round(e, 3) for e in expected}) == 3
    # the tokenizers agree token for token (ids and mask), incl. BLIP's two added tokens
    ours = scorer.tokenizer(prompts, padding="max_length", truncation=True, max_length=35)
    theirs = package.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35)
    assert ours["input_ids"] == theirs["input_ids"] and ours["attention_mask"] == theirs["attention_mask"]
    assert scorer.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]


def test_image_reward_full_size_checkpoint_layout(image_reward_modules, monkeypatch, tmp_path):
    # Every key of a full-size ImageReward state dict (BLIP ViT-L + 12-layer BERT with
    # cross-attention + MLP) maps onto our model with the same shape, and nothing is left over
    # but the two projections the reward does not use.
    # BLIP's ViT turns a linspace into Python floats (drop-path rates): keep that one on the CPU.
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{"device": "cpu", **k}))
    with torch.device("meta"):
        package = _package_image_reward(image_reward_modules, monkeypatch, tmp_path, "large", MED_CONFIG)
        ours = _build_model("large", MED_CONFIG)
    official = package.state_dict()
    converted = convert_state_dict(official)
    dropped = {k for k in official if k.startswith("blip.") and "position_ids" not in k} - {
        k for k in official if convert_state_dict({k: official[k]})}
    assert dropped == {"blip.vision_proj.weight", "blip.vision_proj.bias",
                       "blip.text_proj.weight", "blip.text_proj.bias"}
    assert _shapes(converted) == _shapes(ours.state_dict())
    assert ours.vision.config.num_hidden_layers == 24 and ours.vision.config.hidden_size == 1024
