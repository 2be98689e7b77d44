"""Flux.1 with the top-k attention sink suppressed (needs a GPU and the
weights: Hub access, or a local folder).

    python examples/flux.py --prompt "a photo of a cat" --k 1 --out flux_k1.png
    python examples/flux.py --model ./weights/FLUX.1-dev ...

Flux orders text first; single-stream blocks get the joined sequence, whose text length
the processor takes from the double-stream blocks of the same forward.
Saves the stock and the suppressed image side by side (same seed) and a CSV of the sinks.
"""

from __future__ import annotations

import torch
from _hub import example_parser, load, stock_vs_suppressed


def main():
    args = example_parser(__doc__, "black-forest-labs/FLUX.1-dev", 28, "flux",
                          "block indices, e.g. 0-18 = the double-stream blocks (default all)").parse_args()
    from diffusers import FluxPipeline

    pipe = load(FluxPipeline, args.model, "FLUX.1-dev (gated: accept its licence)",
                hub_id=args.hub_id, torch_dtype=torch.bfloat16)
    pipe.to("cuda")
    max_seq = 512
    stock_vs_suppressed(pipe, args, [(pipe.tokenizer_2, max_seq)], max_sequence_length=max_seq)


if __name__ == "__main__":
    main()
