"""Fixtures of the metric tests, and test-only shims that let the original hpsv2 1.2.0 and image-reward 1.5 code import on
today's stack, so that our scorers can be compared with the packages' own code paths.

sinkattn never imports these packages; only tests do, through these functions. Each shim
is the smallest one that gets the import through, applied with pytest's monkeypatch so it
is undone after the test, and none edits site-packages:

hpsv2 1.2.0
  - its wheel lacks `hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz`, which its tokenizer
    module opens at import: `gzip.open` is redirected, for that one missing path, to the
    identical file shipped in open_clip 3.x;
  - `hpsv2.utils` / `hpsv2.img_score` import `clint.textui.progress` (a download progress
    bar; not installed): an empty stand-in module.
image-reward 1.5
  - `ImageReward/__init__.py` and `ImageReward/models/__init__.py` import OpenAI's `clip`
    and the ReFL trainer (diffusers, datasets, accelerate): both packages are entered as
    bare namespace modules so those files do not run; the modules under test
    (ImageReward.ImageReward, models/BLIP/*) are imported unchanged;
  - `vit.py` imports fairscale's `checkpoint_wrapper`, used only for gradient checkpointing
    (off here): an identity stand-in;
  - `med.py` imports `apply_chunking_to_forward`, `prune_linear_layer` and
    `find_pruneable_heads_and_indices` from `transformers.modeling_utils`, which
    transformers 5 removed: the first two are re-exported from `transformers.pytorch_utils`,
    the last (used only by head pruning) raises;
  - `med.BertModel.__init__` calls `init_weights()`, which in transformers 5 reads
    `all_tied_weights_keys`, set only by `post_init()`: med's `init_weights` sets that
    attribute first, then runs the library's own;
  - `med.BertModel.forward` calls `invert_attention_mask` and `get_head_mask`, which
    transformers 5 removed: transformers 4's definitions are attached to med's base class;
  - `blip.init_tokenizer` downloads bert-base-uncased: the test substitutes a tokenizer
    built offline, and reads `additional_special_tokens_ids`, renamed in transformers 5
    (see `fake_bert_tokenizer_class`).
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch


def _require(module: str, package: str) -> None:
    """Skip on a developer machine without the package; fail in CI, which must install it."""
    if importlib.util.find_spec(module) is not None:
        return
    msg = (f"{package} is not installed; install it with the --no-deps line of "
           f"sinkattn/metrics/INSTALL.txt to compare against the package's own code")
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _purge(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def import_hpsv2(monkeypatch):
    """(hpsv2.src.open_clip, hpsv2.img_score), imported with the shims above."""
    _require("hpsv2", "hpsv2==1.2.0")
    import open_clip

    vocab = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    real_open = gzip.open

    def gzip_open(path, *args, **kwargs):
        if (isinstance(path, str) and path.endswith("bpe_simple_vocab_16e6.txt.gz")
                and not os.path.exists(path)):
            path = vocab
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(gzip, "open", gzip_open)
    if importlib.util.find_spec("clint") is None:
        clint, textui = types.ModuleType("clint"), types.ModuleType("clint.textui")
        textui.progress = None
        clint.textui = textui
        monkeypatch.setitem(sys.modules, "clint", clint)
        monkeypatch.setitem(sys.modules, "clint.textui", textui)
    _purge("hpsv2")
    oc = importlib.import_module("hpsv2.src.open_clip")
    img_score = importlib.import_module("hpsv2.img_score")
    return oc, img_score


def import_image_reward(monkeypatch):
    """The image-reward modules under test, imported with the shims above."""
    _require("ImageReward", "image-reward==1.5")
    spec = importlib.util.find_spec("ImageReward")
    root = list(spec.submodule_search_locations)[0]
    _purge("ImageReward")
    for name, path in [("ImageReward", root), ("ImageReward.models", os.path.join(root, "models"))]:
        module = types.ModuleType(name)
        module.__path__ = [path]
        monkeypatch.setitem(sys.modules, name, module)
    if importlib.util.find_spec("fairscale") is None:
        names = ["fairscale", "fairscale.nn", "fairscale.nn.checkpoint",
                 "fairscale.nn.checkpoint.checkpoint_activations"]
        for name in names:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        sys.modules[names[-1]].checkpoint_wrapper = lambda module, *a, **k: module
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    def find_pruneable_heads_and_indices(*args, **kwargs):
        raise NotImplementedError("head pruning is not shimmed")

    for name, value in [("apply_chunking_to_forward", getattr(pytorch_utils, "apply_chunking_to_forward", None)),
                        ("prune_linear_layer", getattr(pytorch_utils, "prune_linear_layer", None)),
                        ("find_pruneable_heads_and_indices", find_pruneable_heads_and_indices)]:
        if not hasattr(modeling_utils, name):
            assert value is not None, name
            monkeypatch.setattr(modeling_utils, name, value, raising=False)
    med = importlib.import_module("ImageReward.models.BLIP.med")
    base_init_weights = modeling_utils.PreTrainedModel.init_weights
    if hasattr(modeling_utils.PreTrainedModel, "get_expanded_tied_weights_keys"):  # transformers >= 5
        # med.BertModel calls init_weights() without post_init(), whose tied-weights
        # bookkeeping transformers 5's init_weights reads: set up that one attribute first.
        def init_weights(self):
            if "all_tied_weights_keys" not in self.__dict__:
                self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=False)
            base_init_weights(self)

        monkeypatch.setattr(med.BertPreTrainedModel, "init_weights", init_weights, raising=False)
    # transformers 5 dropped two ModuleUtilsMixin helpers that med.BertModel.forward calls;
    # these are transformers 4.x's own definitions (head masks are never used here).
    def invert_attention_mask(self, mask):
        ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
        ext = ext.to(dtype=self.dtype)
        return (1.0 - ext) * torch.finfo(self.dtype).min

    def get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
        if head_mask is not None:
            raise NotImplementedError("head masks are not shimmed")
        return [None] * num_hidden_layers

    for name, value in [("invert_attention_mask", invert_attention_mask), ("get_head_mask", get_head_mask)]:
        if not hasattr(med.BertPreTrainedModel, name):
            monkeypatch.setattr(med.BertPreTrainedModel, name, value, raising=False)
    modules = types.SimpleNamespace(
        image_reward=importlib.import_module("ImageReward.ImageReward"),
        blip=importlib.import_module("ImageReward.models.BLIP.blip"),
        blip_pretrain=importlib.import_module("ImageReward.models.BLIP.blip_pretrain"),
        vit=importlib.import_module("ImageReward.models.BLIP.vit"),
        med=importlib.import_module("ImageReward.models.BLIP.med"),
        fake_bert_tokenizer_class=fake_bert_tokenizer_class,
    )
    return modules


def fake_bert_tokenizer_class(vocab_words: list[str]):
    """A stand-in for `transformers.BertTokenizer` whose `from_pretrained` builds the
    tokenizer from `vocab_words` instead of downloading bert-base-uncased (same class,
    same lower-casing WordPiece; only the vocabulary differs). On transformers 5 it also
    answers `additional_special_tokens_ids`, which `init_tokenizer` reads and transformers 5
    renamed `extra_special_tokens_ids`."""
    import inspect
    import tempfile

    from transformers import BertTokenizer

    class CompatBertTokenizer(BertTokenizer):
        @property
        def additional_special_tokens_ids(self):
            return self.extra_special_tokens_ids

    class OfflineBertTokenizer:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            assert name == "bert-base-uncased", name
            if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:
                return CompatBertTokenizer(vocab={w: i for i, w in enumerate(vocab_words)}, do_lower_case=True)
            tmp = tempfile.mkdtemp()
            path = os.path.join(tmp, "vocab.txt")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(vocab_words) + "\n")
            return BertTokenizer(vocab_file=path, do_lower_case=True)

    return OfflineBertTokenizer


# ---------------------------------------------------------------------------------------
# fixtures

@pytest.fixture
def hpsv2_modules(monkeypatch):
    return import_hpsv2(monkeypatch)


@pytest.fixture
def image_reward_modules(monkeypatch):
    return import_image_reward(monkeypatch)


@pytest.fixture
def rng(request):
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    import numpy as np

    seed = int.from_bytes(os.urandom(4), "little")
    print(f"{request.node.nodeid}: numpy seed {seed}")
    return np.random.default_rng(seed)


def random_images(rng, n, sizes=((256, 256), (320, 200), (200, 288))):
    """n random RGB PIL images of mixed sizes (non-square ones exercise crop / padding)."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        # smooth-ish content plus noise, so resizing filters matter
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype="uint8")
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        noise = rng.integers(-20, 21, (h, w, 3))
        arr = (noise + np.asarray(img, dtype="int64")).clip(0, 255)
        out.append(Image.fromarray(arr.astype("uint8")))
    return out


WORDS = ["a", "red", "cube", "on", "top", "of", "blue", "sphere", "two", "dogs", "photo", "cat",
         "green", "bench", "under", "the", "tree", "an", "oil", "painting", "astronaut", "horse"]


def random_prompts(rng, n):
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 14)))) for _ in range(n)]


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    """No metric env vars, HF offline, empty HF and torch hub caches."""
    import huggingface_hub.constants as hf_constants

    for var in ["SINKATTN_CLIP_WEIGHTS", "SINKATTN_IMAGEREWARD_WEIGHTS", "SINKATTN_HPS_WEIGHTS",
                "SINKATTN_LPIPS_WEIGHTS", "SINKATTN_OFFLINE"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path


@pytest.fixture
def make_images(rng):
    return lambda n, **kw: random_images(rng, n, **kw)


@pytest.fixture
def make_prompts(rng):
    return lambda n: random_prompts(rng, n)
