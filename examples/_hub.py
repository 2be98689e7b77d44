"""Loading a real pipeline from the Hub or a local folder, with a plain message offline."""

from __future__ import annotations

import sys


def load(pipeline_cls, model: str, what: str, **kwargs):
    """``pipeline_cls.from_pretrained(model)``; on failure, say what to download and where."""
    try:
        return pipeline_cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        sys.exit(
            f"Could not load {model!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).\n"
            f"This example needs the {what} weights. Either\n"
            f"  * log in with Hub access (huggingface-cli login; accept the licence on "
            f"https://huggingface.co/{model} if gated) and run it again, or\n"
            f"  * download them elsewhere: huggingface-cli download {model} --local-dir ./weights/{model.split('/')[-1]}\n"
            f"    copy that folder here and pass --model ./weights/{model.split('/')[-1]}\n"
            f"For a run without any download: python examples/tiny_offline.py"
        )


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
