"""The GPU counterpart of test_equivalence.py at the real sizes: every model family with its
published width (heads, head dim, hidden size; benchmarks/whole_model.py's configs), one or
two blocks of it, bf16 on CUDA, at its real token counts (1024px images; Wan an 81-frame
480x832 video, 32760 tokens), the processor on the Triton kernels against the stock processor
with its SDPA replaced by sinkattn.reference (float32) over hand-derived token ranges
(conftest's install_reference, test_equivalence's hand_ranges).

Random weights hold no attention sinks: every key draws about 1/N of the mass, and removing
one changes the output far below bf16's resolution, so a wrong selection could not be told
from a right one. :func:`plant_sinks` gives every attention layer sinks first: q and k are
RMS-normalised (in place of the family's QK-norm, or where it has none) and every query gets
one shared direction, so that the keys most aligned with it draw mass from every query, as
sinks do in trained models.

Two comparisons per family and setting:

* call by call (the bar that tells a wrong selection or intervention): every attention call
  runs the processor, the reference, the stock processor and float32 plain attention (the
  reference with top_k=0) on the same inputs, and the forward goes on with the reference's
  output, so that bf16 rounding in one layer cannot move the next one's selection:
  |ours - reference| <= CALL_BAR (5%) of |reference - stock| (the intervention's effect) +
  ROUNDING (3) x |stock - plain| (the call's bf16 rounding). Every call the reference
  intervenes in must change by MEANINGFUL (10) x its rounding, so that a call left alone, or
  a wrong key, path or row range (which move a call by about its whole effect), misses the bar;
* the whole forward, ours alone against the reference alone: finite, changed from stock by
  more than bf16 rounding changes it (FORWARD_CHANGE), and within FORWARD_BAR (25%) of the
  effect (+ ROUNDING x rounding) of the reference's output. These bars are loose: layers
  drift apart by bf16 rounding, and the residual stream and output layers dilute an attention
  layer's change. On the CPU (bf16, ours on its reference path, Wan with 3 latent frames),
  the intervened calls of the 21 cases changed by 47-510x their rounding, the whole forwards
  by 2.0-28x theirs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from sinkattn.processors import SinkSuppressProcessor

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="the GPU counterpart of test_equivalence.py: real-width models at their real token counts, "
           "bf16 on the Triton kernels (test_equivalence.py checks the same against the reference on the CPU)")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _whole_model():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import whole_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    return whole_model


def _hand_ranges():
    """test_equivalence.hand_ranges (its module is loaded by path: the suite imports in
    importlib mode, so test modules are not on sys.path)."""
    spec = importlib.util.spec_from_file_location("_equivalence_ranges", Path(__file__).parent / "test_equivalence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.hand_ranges


whole_model = _whole_model()
hand_ranges = _hand_ranges()

# One or two blocks of each family at its real width (the published depth is the benchmark's).
DEPTH = {
    "sd3": dict(num_layers=2),                       # a joint block, then the context_pre_only one
    "sd35": dict(num_layers=2),                      # both MMDiT-X blocks (joint + image-only attn2)
    "sd35-large": dict(num_layers=2),
    "flux": dict(num_layers=1, num_single_layers=1),  # a double-stream and a single-stream block
    "sdxl": dict(layers_per_block=1, transformer_layers_per_block=(1, 1, 1)),  # one per level (4096, 1024 tokens)
    "pixart": dict(num_layers=2),
    "qwen": dict(num_layers=2),
    "wan": dict(num_layers=1),                       # 32760-token self-attention + 512-token cross-attention
}
FLUX_TEXT_TOKENS = 512   # whole_model's Flux inputs: hand_ranges reads a single block's from tiny
QWEN_TEXT_KEEP = 40      # of whole_model.QWEN_TEXT_TOKENS: the second prompt's text mask

CASES = [
    pytest.param("sd3", {}, id="sd3-default"),
    pytest.param("sd3", dict(path="value", select="shared"), id="sd3-value-shared"),
    pytest.param("sd35", {}, id="sd35-default"),
    pytest.param("sd35", dict(candidates="text", mass_queries="text"), id="sd35-text-attn2-unintervened"),
    pytest.param("sd35-large", {}, id="sd35-large-default"),
    pytest.param("sd35-large", dict(path="value", select="shared"), id="sd35-large-value-shared"),
    pytest.param("flux", {}, id="flux-default"),
    pytest.param("flux", dict(path="value", select="shared"), id="flux-value-shared"),
    pytest.param("flux", dict(candidates="text", mass_queries="text", path="value"), id="flux-text-value-single-block"),
    pytest.param("sdxl", {}, id="sdxl-default"),
    pytest.param("sdxl", dict(path="value", select="shared"), id="sdxl-value-shared"),
    pytest.param("sdxl", dict(candidates="text"), id="sdxl-text-cross-only"),
    pytest.param("pixart", {}, id="pixart-default"),
    pytest.param("pixart", dict(path="value", select="shared"), id="pixart-value-shared"),
    pytest.param("pixart", dict(candidates="text"), id="pixart-text-masked-cross-only"),
    pytest.param("qwen", {}, id="qwen-default-masked"),
    pytest.param("qwen", dict(path="value", select="shared"), id="qwen-value-shared"),
    pytest.param("qwen", dict(candidates="text", mass_queries="all"), id="qwen-text-masked"),
    pytest.param("wan", {}, id="wan-default"),
    pytest.param("wan", dict(path="value", select="shared"), id="wan-value-shared"),
    pytest.param("wan", dict(candidates="text"), id="wan-text-cross-only"),
]
RANGE_NAMES = (("mass_queries", "image"), ("candidates", "all"), ("apply_queries", "all"))
OP_NAMES = ("path", "select", "control", "eta", "eta_mode", "value_target", "value_noise_std")

CALL_BAR = 0.05         # |ours - reference| per call, as a fraction of the intervention's effect...
ROUNDING = 3.0          # ... plus this many times the call's bf16 rounding (stock vs float32 plain)
MEANINGFUL = 10.0       # an intervened call's effect, in units of its bf16 rounding
FORWARD_BAR = 0.25      # the whole forward: |ours - reference| as a fraction of the effect
FORWARD_CHANGE = 1.0    # the whole forward's change from stock, in units of its bf16 rounding


# -- planted sinks ---------------------------------------------------------------------------

class PlantedNorm(torch.nn.Module):
    """q or k -> RMS-normalised over the last dim (a head, or all heads for Wan), plus
    ``shift`` times a fixed direction of RMS 1 for queries: the same direction for every token
    of every layer, so with shift s the keys' agreement with it moves their logits by s times a
    unit normal (the queries' own part moves them by one), and the best-aligned keys become
    sinks of every query."""

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        if self.shift:
            direction = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(x.shape[-1]))
            y = y + self.shift * (direction / direction.pow(2).mean().sqrt()).to(y.device)
        return y.to(x.dtype)


def plant_sinks(model, shift: float = 4.0):
    """Every attention module's norm_q / norm_k (and, where it has a text stream, norm_added_q /
    norm_added_k) become PlantedNorm: the stock processors, the reference's and ours all call
    them at the same place (ours follows the stock projections line for line)."""
    for module in model.modules():
        if hasattr(module, "set_processor") and hasattr(module, "to_q"):
            module.norm_q, module.norm_k = PlantedNorm(shift), PlantedNorm()
            if getattr(module, "add_q_proj", None) is not None:
                module.norm_added_q, module.norm_added_k = PlantedNorm(shift), PlantedNorm()
    return model


# -- one call, four ways -----------------------------------------------------------------------

def _tensors(out):
    return [t.float() for t in (out if isinstance(out, tuple) else (out,)) if t is not None]


def _distance(a, b):
    return sum((x - y).pow(2).sum().item() for x, y in zip(_tensors(a), _tensors(b))) ** 0.5


class Recorded:
    """A ranges function that remembers whether it intervened in the last call (not None)."""

    def __init__(self, ranges):
        self.ranges, self.intervened = ranges, False

    def __call__(self, *args):
        chosen = self.ranges(*args)
        self.intervened = chosen is not None
        return chosen


class Paired:
    """Runs, on one call's inputs, ours and three ReferenceProcessors (the reference op, stock
    SDPA, float32 plain attention), logs their distances and returns the reference's output.
    Its signature is SinkSuppressProcessor's, so diffusers hands it what it hands ours."""

    def __init__(self, name, ours, reference, stock, plain, recorded, log):
        self.name, self.ours, self.reference, self.stock, self.plain = name, ours, reference, stock, plain
        self.recorded, self.log = recorded, log

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 *args, temb=None, encoder_hidden_states_mask=None, **kwargs):
        assert not args and not kwargs, (args, kwargs)
        ours = self.ours(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, temb=temb,
                         encoder_hidden_states_mask=encoder_hidden_states_mask)
        call = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                    image_rotary_emb=image_rotary_emb, encoder_hidden_states_mask=encoder_hidden_states_mask,
                    **({} if temb is None else {"temb": temb}))
        reference = self.reference(attn, hidden_states, **call)
        intervened = self.recorded.intervened
        stock = self.stock(attn, hidden_states, **call)
        plain = self.plain(attn, hidden_states, **call)
        self.log.append(dict(layer=self.name, intervened=intervened, err=_distance(ours, reference),
                             effect=_distance(reference, stock), rounding=_distance(stock, plain),
                             finite=all(bool(t.isfinite().all()) for t in _tensors(ours))))
        return reference


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0].float()


def real_size(family):
    """The family's model at real width, DEPTH blocks, planted sinks, bf16 on CUDA, with the
    benchmark's inputs (Qwen-Image: two prompts, the second's text mask keeping QWEN_TEXT_KEEP)."""
    model, inputs, _ = whole_model.FAMILY_BUILDERS[family](torch.device("cuda"), torch.bfloat16, False,
                                                            **DEPTH[family])
    if family == "qwen":
        like = dict(device="cuda", dtype=torch.bfloat16)
        n_img, n_txt, width = inputs["hidden_states"].shape[1], *inputs["encoder_hidden_states"].shape[1:]
        mask = torch.ones(2, n_txt, dtype=torch.long, device="cuda")
        mask[1, QWEN_TEXT_KEEP:] = 0
        inputs = dict(inputs, hidden_states=torch.randn(2, n_img, inputs["hidden_states"].shape[2], **like),
                      encoder_hidden_states=torch.randn(2, n_txt, width, **like), encoder_hidden_states_mask=mask,
                      timestep=inputs["timestep"].repeat(2), img_shapes=inputs["img_shapes"] * 2)
    return plant_sinks(model), inputs


@pytest.mark.parametrize("family, kwargs", CASES)
def test_real_size_matches_reference(family, kwargs, install_reference, monkeypatch):
    from sinkattn import tiny

    monkeypatch.setattr(tiny, "FLUX_TEXT_TOKENS", FLUX_TEXT_TOKENS)  # hand_ranges' single-block text length
    model, inputs = real_size(family)
    judge(*measure(model, inputs, family, kwargs, install_reference))


def measure(model, inputs, family, kwargs, install_reference):
    """(per-call log, whole-forward distances) of the processor with ``kwargs`` against the
    reference, the stock processor and float32 plain attention on ``model``."""
    kwargs = dict(kwargs)
    stock_procs = dict(model.attn_processors)

    def installed(ranges, **op):
        model.set_attn_processor(dict(stock_procs))  # diffusers pops the dict it is given
        install_reference(model, ranges, **op)
        return dict(model.attn_processors)

    recorded = Recorded(hand_ranges(family, **{n: kwargs.get(n, d) for n, d in RANGE_NAMES}))
    reference = installed(recorded, top_k=kwargs.get("k", 1), **{n: kwargs[n] for n in OP_NAMES if n in kwargs})
    stock = installed(lambda *_: None)                 # the stock processor's own SDPA
    plain = installed(lambda *_: {}, top_k=0)          # float32 attention, nothing intervened
    ours = SinkSuppressProcessor(**kwargs)

    outs = {}
    for name, procs in (("stock", stock_procs), ("plain", plain), ("reference", reference), ("ours", ours)):
        model.set_attn_processor(dict(procs) if isinstance(procs, dict) else procs)
        outs[name] = forward(model, inputs)
    log = []
    model.set_attn_processor({name: Paired(name, ours, reference[name], stock[name], plain[name], recorded, log)
                              for name in stock_procs})
    paired = forward(model, inputs)
    norms = dict(rounding=(outs["plain"] - outs["stock"]).norm().item(),
                 effect=(outs["reference"] - outs["stock"]).norm().item(),
                 changed=(outs["ours"] - outs["stock"]).norm().item(),
                 err=(outs["ours"] - outs["reference"]).norm().item(),
                 paired=(paired - outs["reference"]).norm().item(), finite=bool(outs["ours"].isfinite().all()))
    return log, norms


def judge(log, norms):
    """The bars of the module docstring."""
    # Call by call, on the same inputs.
    assert log and all(c["finite"] for c in log), [c["layer"] for c in log if not c["finite"]]
    assert any(c["intervened"] for c in log), "the reference intervened in no call"
    for c in log:
        bar = CALL_BAR * c["effect"] + ROUNDING * c["rounding"] + 1e-6
        assert c["err"] <= bar, f"{c} (bar {bar:.4g})"
        if c["intervened"]:
            assert c["effect"] >= MEANINGFUL * c["rounding"], f"the intervention hardly shows in {c}"
    # The paired forward went on with the reference's outputs: it is the reference's forward
    # (up to the run-to-run noise of the GPU's float32 reductions).
    assert norms["paired"] <= norms["rounding"], norms

    # The whole forward.
    assert norms["finite"], norms
    assert norms["changed"] >= FORWARD_CHANGE * norms["rounding"], f"the intervention should change the output: {norms}"
    assert norms["err"] <= FORWARD_BAR * norms["effect"] + ROUNDING * norms["rounding"], norms
