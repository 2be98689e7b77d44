"""Any model family of sinkattn.processors.families.MODEL_FAMILIES with the top-k sink suppressed.

    python examples/families.py --family wan-t2v                 # tiny random pipeline, CPU, seconds
    python examples/families.py --family qwen-image --model Qwen/Qwen-Image --steps 50   # GPU, weights
    python examples/families.py --family sd35-large --model ./weights/stable-diffusion-3.5-large

Families: sd3, sd35-medium, sd35-large, sdxl, flux, pixart-sigma, qwen-image, wan-t2v. The
family's row gives the pipeline class, its call arguments (CFG under the family's name, fixed
options), the token grid and the text tokens. Prints, per layer, the key of largest attention
mass at the last step: a text token by name, an image token as (frame, row, col) on the
latent token grid (a video sink in the first latent frame says so), and how much the output
moved. Without --model the pipeline is the family's tiny random one (the mechanics are real,
the pictures noise).
"""

from __future__ import annotations

import argparse
import warnings

import torch

from sinkattn.processors import SinkSuppressProcessor
from sinkattn.processors.families import MODEL_FAMILIES, model_family


class StrongestKeys:
    """A tracer (the processor's record protocol) keeping, per layer, the key of largest
    mass averaged over batch and heads, at the latest step seen."""

    def __init__(self):
        self.calls = 0
        self.best = {}

    def record(self, layer, layer_index, family, call, clock=None, intervened=False):
        mass = call.mass.float().mean(dim=(0, 1))
        key = int(mass.argmax())
        self.best[layer] = (layer_index, family, key, float(mass[key]), call.keys)
        self.calls += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="wan-t2v", choices=list(MODEL_FAMILIES))
    parser.add_argument("--model", default=None, help="Hub id or local folder (default: the tiny random pipeline)")
    parser.add_argument("--prompt", default="a photo of a red cat on a table")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="default: 2 tiny, 28 real")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=None, help="height = width (default: 64 tiny, 1024 real)")
    parser.add_argument("--frames", type=int, default=None, help="video frames (default: 5 tiny, 33 real)")
    parser.add_argument("--max-sequence-length", type=int, default=None, help="default: 16 tiny, 256 real")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    family = model_family(args.family)
    tiny = args.model is None
    if tiny:
        warnings.filterwarnings("ignore", message="sinkattn: no Triton kernels")  # CPU: the reference runs
        from sinkattn import tiny as builders

        pipe, device = getattr(builders, family.tiny)(), "cpu"
    else:
        import diffusers
        from _hub import load

        pipe = load(getattr(diffusers, family.pipeline), args.model, family.hub_id, hub_id=family.hub_id,
                    torch_dtype=torch.bfloat16)
        device = "cuda"
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
    video = family.layout == "video"
    size = args.size or ((32 if video else 64) if tiny else (480 if video else 1024))
    options = dict(max_sequence_length=args.max_sequence_length or (16 if tiny else 256),
                   num_frames=args.frames or (5 if tiny else 33))

    def generate():
        out = pipe(args.prompt, height=size, width=size, num_inference_steps=args.steps or (2 if tiny else 28),
                   generator=torch.Generator(device).manual_seed(args.seed), output_type="pt",
                   **family.call_arguments(guidance=args.guidance, **options))
        return getattr(out, family.output).float()

    denoiser = getattr(pipe, family.denoiser)
    stock = generate()
    tracer = StrongestKeys()
    originals = dict(denoiser.attn_processors)
    denoiser.set_attn_processor(SinkSuppressProcessor(k=args.k, tracer=tracer).bind(denoiser))
    try:
        suppressed = generate()
    finally:
        denoiser.set_attn_processor(originals)

    grid = family.token_grid(pipe, size, size, num_frames=options["num_frames"])
    text = family.text_tokens(pipe, args.prompt, **options)
    print(f"{family.name}: {family.pipeline}, {len(text)} text tokens, image token grid "
          f"{grid.frames} x {grid.rows} x {grid.cols} (frames x rows x cols), {tracer.calls} attention calls")
    for layer, (_, kind, key, mass, keys) in sorted(tracer.best.items(), key=lambda kv: kv[1][0]):
        image_start, image_stop = keys.image
        if image_start <= key < image_stop and image_stop - image_start == grid.size:
            frame, row, col = grid.position(key - image_start)
            where = f"image (frame {frame}, row {row}, col {col})" + (" first frame" if video and frame == 0 else "")
        elif image_start <= key < image_stop:
            where = f"image token {key - image_start} (a downsampled UNet level)"
        else:
            index = key - keys.text[0]
            where = f"text token {index} {text[index]!r}" if keys.n_text == len(text) else f"text token {index}"
        print(f"  {layer:32s} [{kind:10s}] key {key:5d} mass {mass:.3f}  {where}")
    print(f"output {tuple(suppressed.shape)}: max |k={args.k} - stock| = {(suppressed - stock).abs().max():.4f}")


if __name__ == "__main__":
    main()
