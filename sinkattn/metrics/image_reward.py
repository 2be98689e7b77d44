"""ImageReward-v1.0: BLIP ViT-L image encoder + BERT text encoder with cross-attention + MLP head.

Checkpoint: `ImageReward.pt` and `med_config.json` from the Hub repo `THUDM/ImageReward`;
the text tokenizer is BERT's (`vocab.txt` of `google-bert/bert-base-uncased`, which the
image-reward package fetches through `BertTokenizer.from_pretrained("bert-base-uncased")`)
plus the two tokens BLIP adds ([DEC] = 30522, [ENC] = 30523).

The image-reward package (1.5) is not imported: it pins timm 0.6.13 and fairscale,
imports helpers transformers 5 removed and OpenAI's `clip` module. The checkpoint is read
with `torch.load(weights_only=True)` and its keys are mapped into transformers'
maintained BLIP classes: `BlipVisionModel` (the same pre-norm ViT as BLIP's `vit.py`)
and `BlipTextModel` (a port of BLIP's `med.py`, module names unchanged). tests/metrics
check the mapping and the scores against the package's own modules on random weights.

Score, as `ImageReward.score` computes it: the prompt is tokenized to 35 tokens
(padded, truncated), the image is resized (bicubic, shorter side 224), center-cropped
and normalised with OpenAI's mean/std; the text encoder cross-attends to all image
tokens; the [CLS] state goes through the MLP head; reward = (mlp - 0.16717362830052426)
/ 1.0333394966054072. No sigmoid: raw standardised reward, typically in [-2, 2].
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from sinkattn.metrics.base import Scorer
from sinkattn.metrics.weights import WeightFile, load_state_dict, randomize_, resolve_files

ENV_VAR = "SINKATTN_IMAGEREWARD_WEIGHTS"
FILES = [
    WeightFile("ImageReward.pt", repo_id="THUDM/ImageReward", what="ImageReward-v1.0 checkpoint"),
    WeightFile("med_config.json", repo_id="THUDM/ImageReward", what="BLIP text encoder config"),
    WeightFile("vocab.txt", repo_id="google-bert/bert-base-uncased", what="BERT tokenizer vocabulary"),
]
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# BLIP's configs/med_config.json, which THUDM/ImageReward ships; used for random builds,
# the real file is read when weights are loaded.
MED_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
    "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768, "add_cross_attention": True,
}
TINY_MED_CONFIG: dict[str, Any] = {**MED_CONFIG, "hidden_size": 64, "intermediate_size": 128,
                                   "num_attention_heads": 4, "num_hidden_layers": 2}
# BLIP's ViT, as `create_vit` builds it: "large" is ImageReward's (image 224, patch 16).
VISION_ARCHS: dict[str, dict[str, Any]] = {
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
}


def vision_config(arch: str | dict):
    """BlipVisionConfig of BLIP's ViT: mlp ratio 4, exact GELU, LayerNorm eps 1e-6."""
    from transformers import BlipVisionConfig

    spec = dict(VISION_ARCHS[arch]) if isinstance(arch, str) else dict(arch)
    spec.setdefault("intermediate_size", 4 * spec["hidden_size"])
    spec.setdefault("image_size", 224)
    spec.setdefault("patch_size", 16)
    return BlipVisionConfig(hidden_act="gelu", layer_norm_eps=1e-6, attention_dropout=0.0, **spec)


def text_config(med_config: dict, encoder_width: int):
    """BlipTextConfig equivalent of a BLIP med_config.json (cross-attention to the ViT)."""
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
        encoder_hidden_size=encoder_width, intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        is_decoder=True,  # builds the cross-attention blocks; forward runs bidirectionally
    )


def _build_model(vision_arch, med_config: dict):
    import torch
    from transformers import BlipTextModel, BlipVisionModel

    class MLP(torch.nn.Module):
        # ImageReward's head; the Dropouts keep the checkpoint's layer indices (0, 2, 4, 6, 7).
        def __init__(self, width: int):
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    class ImageRewardModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            vcfg = vision_config(vision_arch)
            tcfg = text_config(med_config, vcfg.hidden_size)
            for cfg in (vcfg, tcfg):
                cfg._attn_implementation = "eager"
            self.vision = BlipVisionModel(vcfg)
            self.text = BlipTextModel(tcfg, add_pooling_layer=False)
            self.mlp = MLP(tcfg.hidden_size)

        def forward(self, pixel_values, input_ids, attention_mask):
            image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            text = self.text(input_ids=input_ids, attention_mask=attention_mask,
                             encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                             is_decoder=False)
            cls = text.last_hidden_state[:, 0, :].float()
            return ((self.mlp(cls) - REWARD_MEAN) / REWARD_STD).squeeze(-1)

    return ImageRewardModel()


_VIT_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]
# Keys of the official checkpoint that the reward does not use.
_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj)\.|position_ids$|^blip\.text_encoder\.pooler\.")


def convert_state_dict(official: dict) -> dict:
    """ImageReward.pt keys (package layout) -> this module's keys. Unused keys are dropped."""
    out = {}
    for key, value in official.items():
        if _UNUSED.search(key):
            continue
        if key.startswith("blip.visual_encoder."):
            sub = key[len("blip.visual_encoder."):]
            for pattern, repl in _VIT_RENAMES:
                new, n = re.subn(pattern, repl, sub)
                if n:
                    out["vision." + new] = value
                    break
            else:
                out["vision." + sub] = value  # unknown: reported by the strict load
        elif key.startswith("blip.text_encoder."):
            out["text." + key[len("blip.text_encoder."):]] = value
        else:
            out[key] = value  # mlp.layers.*
    return out


def synthetic_vocab(size: int = 30522) -> list[str]:
    """A BERT-layout vocabulary for random builds: special ids as in bert-base-uncased
    ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), then characters and their
    '##' continuations, so that any prompt tokenizes; padded to bert-base-uncased's size."""
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + ["##" + c for c in chars]
    vocab += [f"[unused{i}]" for i in range(99, 99 + size - len(vocab))]
    return vocab


def build_tokenizer(vocab_path: str | None = None):
    """bert-base-uncased's tokenizer from its vocab.txt (synthetic vocab when None), plus
    BLIP's [DEC] and [ENC] tokens, as ImageReward's `init_tokenizer` sets it up."""
    import inspect
    import tempfile

    from transformers import BertTokenizer

    if vocab_path is None:
        words = synthetic_vocab()
    else:
        with open(vocab_path, encoding="utf-8") as fh:
            words = [line.rstrip("\n") for line in fh]
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers >= 5
        tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    else:  # transformers 4: slow tokenizer from a file
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "vocab.txt")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(words) + "\n")
            tok = BertTokenizer(vocab_file=path, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def preprocess(image, size: int = 224):
    """ImageReward's transform: bicubic resize (shorter side), center crop, OpenAI mean/std."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([
        Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
        lambda im: im.convert("RGB"), ToTensor(), Normalize(OPENAI_MEAN, OPENAI_STD),
    ])(image)


class ImageRewardScorer(Scorer):
    name = "image_reward"

    def __init__(self, model, tokenizer, *, device, untrained, weights_source, batch_size=8):
        super().__init__(device=device, untrained=untrained, weights_source=weights_source,
                         batch_size=batch_size)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.image_size = model.vision.config.image_size

    def _score_batch(self, images, prompts, references):
        import torch

        pixels = torch.stack([preprocess(im, self.image_size) for im in images]).to(self.device)
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                              max_length=MAX_PROMPT_TOKENS, return_tensors="pt")
        with torch.no_grad():
            reward = self.model(pixels, text["input_ids"].to(self.device),
                                text["attention_mask"].to(self.device))
        return reward.tolist()


def build(weights=None, device="cpu", untrained=False, *, arch="large", seed=0, batch_size=8):
    """ImageReward scorer. `arch`: the ViT ("large" is ImageReward-v1.0's; "tiny" or a dict
    of BlipVisionConfig fields for random builds and tests). With `arch="tiny"` and
    `untrained=True` the text encoder is tiny as well."""
    if untrained:
        med = TINY_MED_CONFIG if arch == "tiny" else MED_CONFIG
        model = randomize_(_build_model(arch, med), seed)
        return ImageRewardScorer(model, build_tokenizer(None), device=device, untrained=True,
                                 weights_source=f"random(seed={seed})", batch_size=batch_size)
    paths, source = resolve_files("image_reward", FILES, weights, ENV_VAR)
    with open(paths["med_config.json"], encoding="utf-8") as fh:
        med = json.load(fh)
    model = _build_model(arch, med)
    state_dict = convert_state_dict(load_state_dict(paths["ImageReward.pt"]))
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"{source}: checkpoint does not match ImageReward's architecture "
                           f"(missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]})")
    return ImageRewardScorer(model.float(), build_tokenizer(paths["vocab.txt"]), device=device,
                             untrained=False, weights_source=source, batch_size=batch_size)
