"""Sink suppression on a tiny random SD3 pipeline: no GPU, no download, a few seconds.

    python examples/tiny_offline.py [--k 1] [--steps 3] [--csv sinks.csv]

Builds the pipeline from config (random weights: the picture is noise, the mechanics are
real), traces the attention mass in every layer and step, suppresses the top-k sink, and
prints the strongest key of each layer.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _hub import summarize

from sinkattn.gating import intervene
from sinkattn.processors import SinkSuppressProcessor
from sinkattn.tiny import tiny_sd3_pipeline
from sinkattn.tracing import SinkTracer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a photo of a red cat on a table")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=None, help="append the tidy sink table to this CSV")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="sinkattn: no Triton kernels")  # CPU: the reference runs

    t5_tokens = 16
    pipe = tiny_sd3_pipeline(t5_tokens=t5_tokens)
    tracer = SinkTracer(tokenizer=[(pipe.tokenizer, 77), (pipe.tokenizer_3, t5_tokens)])
    processor = SinkSuppressProcessor(k=args.k, tracer=tracer)
    with intervene(pipe, processor):
        tracer.begin(prompt_id=0, prompt=args.prompt, k=args.k)
        image = pipe(args.prompt, height=64, width=64, num_inference_steps=args.steps,
                     max_sequence_length=t5_tokens, generator=torch.Generator().manual_seed(args.seed)).images[0]
    rows = tracer.rows()
    print(f"{processor}: {len(rows)} trace rows; strongest key per layer at the last step:")
    summarize(rows)
    suppressed = [r for r in rows if r["role"] == "selected"]
    print(f"{len(suppressed)} suppressed (layer, step, batch, head) keys; "
          f"{sum(r['kind'] == 'text' for r in suppressed)} of them text tokens")
    if args.csv:
        print(f"appended {tracer.to_csv(args.csv)} rows to {args.csv}")
    print(f"image: {image.size}")


if __name__ == "__main__":
    main()
