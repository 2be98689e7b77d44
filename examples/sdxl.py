"""SDXL with the top-k attention sink suppressed (needs a GPU and the
weights: Hub access, or a local folder).

    python examples/sdxl.py --prompt "a photo of a cat" --k 1 --out sdxl_k1.png
    python examples/sdxl.py --model ./weights/stable-diffusion-xl-base-1.0 ...

Self-attention keys are image tokens, cross-attention keys the 77 CLIP tokens.
Saves the stock and the suppressed image side by side (same seed) and a CSV of the sinks.
"""

from __future__ import annotations

import torch
from _hub import example_parser, load, stock_vs_suppressed


def main():
    args = example_parser(__doc__, "stabilityai/stable-diffusion-xl-base-1.0", 30, "sdxl",
                          "block indices (transformer blocks in registration order), e.g. 0-20 (default all)").parse_args()
    from diffusers import StableDiffusionXLPipeline

    pipe = load(StableDiffusionXLPipeline, args.model, "Stable Diffusion XL base 1.0",
                hub_id=args.hub_id, torch_dtype=torch.float16)
    pipe.to("cuda")
    stock_vs_suppressed(pipe, args, pipe.tokenizer)


if __name__ == "__main__":
    main()
