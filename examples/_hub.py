"""Loading a real pipeline from the Hub or a local folder, with a plain message offline."""

from __future__ import annotations

import argparse
import os
import sys

from sinkattn.experiment.models import download_instructions
from sinkattn.metrics.weights import hub_endpoint, offline_reason


def load(pipeline_cls, model: str, what: str, hub_id: str | None = None, **kwargs):
    """``pipeline_cls.from_pretrained(model)`` (a Hub id or a local folder; ``hub_id``: the Hub id
    of the example's default model); on failure, say what to download and where."""
    local = os.path.isdir(model)
    why = "" if local else offline_reason(hub_endpoint())  # offline: no Hub retries, the message at once
    try:
        return pipeline_cls.from_pretrained(model, local_files_only=local or bool(why), **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        cause = why or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        sys.exit(f"Could not load {model!r} ({cause}).\nThis example needs the {what} weights. "
                 + download_instructions((hub_id or model) if local else model)
                 + "\nFor a run without any download: python examples/tiny_offline.py")


def summarize(rows, per_layer: int = 1) -> None:
    """Print the strongest sink of each layer at the last step (rows from SinkTracer.rows())."""
    last = max(r["step"] for r in rows)
    best: dict[str, dict] = {}
    for r in rows:
        if r["step"] == last and r["role"] == "top" and r["rank"] == 0:
            if r["layer"] not in best or r["mass"] > best[r["layer"]]["mass"]:
                best[r["layer"]] = r
    for layer, r in sorted(best.items(), key=lambda kv: kv[1]["layer_index"]):
        where = f"token {r['token']!r}" if r["kind"] == "text" else f"row {r['row']} col {r['col']}"
        print(f"{layer:45s} key {r['key']:5d} ({r['kind']}, {where})  mass {r['mass']:.3f}  "
              f"text share {r['text_share']:.2f}")


def example_parser(doc: str, model: str, steps: int, name: str, layers_help: str) -> argparse.ArgumentParser:
    """The options every real-model example takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=model, help="Hub id or local folder")
    parser.set_defaults(hub_id=model)
    parser.add_argument("--prompt", default="a photo of a cat sitting next to a red umbrella")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", default=None, help=layers_help)
    parser.add_argument("--out", default=f"{name}_sinks.png")
    parser.add_argument("--csv", default=f"{name}_sinks.csv")
    return parser


def stock_vs_suppressed(pipe, args, tokenizer, **call_kwargs) -> None:
    """Generate ``args.prompt`` with the stock processors and with the top-k sink suppressed
    (same seed), trace the sinks of the suppressed run, print the strongest per layer, append
    the table to ``args.csv`` and save both images side by side to ``args.out``."""
    import torch
    from PIL import Image

    from sinkattn.gating import intervene
    from sinkattn.processors import SinkSuppressProcessor
    from sinkattn.tracing import SinkTracer

    def generate():
        return pipe(args.prompt, num_inference_steps=args.steps,
                    generator=torch.Generator("cuda").manual_seed(args.seed), **call_kwargs).images[0]

    stock = generate()
    tracer = SinkTracer(tokenizer=tokenizer)
    layers = None
    if args.layers:
        lo, hi = (int(x) for x in args.layers.split("-"))
        layers = range(lo, hi + 1)
    with intervene(pipe, SinkSuppressProcessor(k=args.k, tracer=tracer), layers=layers):
        tracer.begin(prompt_id=0, prompt=args.prompt, k=args.k, seed=args.seed)
        suppressed = generate()
    summarize(tracer.rows())
    print(f"appended {tracer.to_csv(args.csv)} rows to {args.csv}")
    canvas = Image.new("RGB", (stock.width + suppressed.width, max(stock.height, suppressed.height)))
    canvas.paste(stock, (0, 0))
    canvas.paste(suppressed, (stock.width, 0))
    canvas.save(args.out)
    print(f"stock | k={args.k} suppressed -> {args.out}")
