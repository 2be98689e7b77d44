"""SDXL with the top-k attention sink suppressed (needs a GPU and the
weights: Hub access, or a local folder).

    python examples/sdxl.py --prompt "a photo of a cat" --k 1 --out sdxl_k1.png
    python examples/sdxl.py --model ./weights/stable-diffusion-xl-base-1.0 ...

Self-attention keys are image tokens, cross-attention keys the 77 CLIP tokens.
Saves the stock and the suppressed image side by side (same seed) and a CSV of the sinks.
"""

from __future__ import annotations

import argparse

import torch
from _hub import load, summarize

from sinkattn.gating import intervene
from sinkattn.processors import SinkSuppressProcessor
from sinkattn.tracing import SinkTracer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0")
    parser.add_argument("--prompt", default="a photo of a cat sitting next to a red umbrella")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", default=None, help="block indices (transformer blocks in registration order), e.g. 0-20 (default all)")
    parser.add_argument("--out", default="sdxl_sinks.png")
    parser.add_argument("--csv", default="sdxl_sinks.csv")
    args = parser.parse_args()
    from diffusers import StableDiffusionXLPipeline

    pipe = load(StableDiffusionXLPipeline, args.model, "Stable Diffusion XL base 1.0", torch_dtype=torch.float16)
    pipe.to("cuda")

    def generate():
        return pipe(args.prompt, num_inference_steps=args.steps,
                    generator=torch.Generator("cuda").manual_seed(args.seed)).images[0]

    stock = generate()
    tracer = SinkTracer(tokenizer=pipe.tokenizer)
    layers = None
    if args.layers:
        lo, hi = (int(x) for x in args.layers.split("-"))
        layers = range(lo, hi + 1)
    with intervene(pipe, SinkSuppressProcessor(k=args.k, tracer=tracer), layers=layers):
        tracer.begin(prompt_id=0, prompt=args.prompt, k=args.k, seed=args.seed)
        suppressed = generate()
    summarize(tracer.rows())
    print(f"appended {tracer.to_csv(args.csv)} rows to {args.csv}")
    _side_by_side(stock, suppressed).save(args.out)
    print(f"stock | k={args.k} suppressed -> {args.out}")


def _side_by_side(a, b):
    from PIL import Image

    canvas = Image.new("RGB", (a.width + b.width, max(a.height, b.height)))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    return canvas


if __name__ == "__main__":
    main()
