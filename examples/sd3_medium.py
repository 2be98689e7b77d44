"""Stable Diffusion 3 medium with the top-k attention sink suppressed (needs a GPU and the
weights: Hub access, or a local folder).

    python examples/sd3_medium.py --prompt "a photo of a cat" --k 1 --out sd3_k1.png
    python examples/sd3_medium.py --model ./weights/stable-diffusion-3-medium-diffusers ...

Saves the stock and the suppressed image side by side (same seed) and a CSV of the sinks.
"""

from __future__ import annotations

import torch
from _hub import example_parser, load, stock_vs_suppressed


def main():
    args = example_parser(__doc__, "stabilityai/stable-diffusion-3-medium-diffusers", 28, "sd3",
                          "block indices, e.g. 0-11 (default all)").parse_args()
    from diffusers import StableDiffusion3Pipeline

    pipe = load(StableDiffusion3Pipeline, args.model, "Stable Diffusion 3 medium",
                hub_id=args.hub_id, torch_dtype=torch.float16)
    pipe.to("cuda")
    max_seq = 256
    stock_vs_suppressed(pipe, args, [(pipe.tokenizer, 77), (pipe.tokenizer_3, max_seq)], max_sequence_length=max_seq)


if __name__ == "__main__":
    main()
