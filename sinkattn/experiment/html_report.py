"""A static, self-contained HTML report of a run folder: ``report.html`` beside summary.json.

    write_html_report("runs/tiny")   # -> "runs/tiny/report.html"

No server and no network: the page has its CSS and script inline and loads nothing from
outside the run folder; open it from disk (file://). Images are embedded (data: URIs) when
all of them together are small (``embed=None``: under ``EMBED_LIMIT`` bytes, e.g. the tiny
preset), so the one file can be shared; otherwise they are linked by their path inside the
run folder, so the folder is what one copies.

What it shows, from what the folder has (each part is left out, with a note, when its
source is missing): the random-weights warning; the run's overview and conditions
(summary.json, else the records); the statistics tables (summary.json); every figure the
report drew (plots/); and a gallery, one row per (prompt, seed), with the image of every
condition side by side, the baseline's sink heat map laid over each of them (toggle), and
the baseline's text sinks as tokens (start, end and padding tokens marked). The gallery
filters by condition (checkboxes hide columns) and by GenEval tag (a select hides rows).

Sources: results*.jsonl and metrics*.jsonl (merged_records), summary.json, plots/*.png,
images/, trace*.jsonl (per-image summaries) and atlas/ (per-head traces: the heat maps; else
the top-key positions of trace*.jsonl). Image paths from records are used only when they
resolve inside the run folder (as in report.py).
"""

from __future__ import annotations

import base64
import html
import json
import os
import time

__all__ = ["write_html_report", "EMBED_LIMIT"]

EMBED_LIMIT = 24 * 1024 * 1024   # bytes of images below which they are embedded
_HEAT_DIR = "html"
_KIND_CLASS = {"start": "k-start", "end": "k-end", "pad": "k-pad"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:0 24px 48px;color:#222;background:#fafafa}
h1{font-size:22px;margin:18px 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.banner{background:#c62828;color:#fff;font-weight:bold;padding:10px 14px;border-radius:6px;margin:12px 0}
.note{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px;border-radius:6px;margin:8px 0}
table.data{border-collapse:collapse;font-size:13px;margin:6px 0 14px;background:#fff}
table.data th,table.data td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.data th{background:#f0f0f0}table.data td.l,table.data th.l{text-align:left}
.plots figure{display:inline-block;margin:6px;vertical-align:top;background:#fff;border:1px solid #ddd;padding:6px}
.plots img{max-width:min(100%,1100px);height:auto;display:block}
.plots figcaption{font-size:12px;color:#555}
.controls{position:sticky;top:0;background:#fafafa;padding:8px 0;z-index:5;border-bottom:1px solid #ddd;font-size:13px}
.controls label{margin-right:10px;white-space:nowrap}
.gallery .row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;padding:8px 0;border-bottom:1px solid #e4e4e4}
.gallery .meta{width:220px;flex:none;font-size:12px}
.gallery .meta .prompt{font-weight:600;font-size:13px}
.cell{margin:0;width:160px;flex:none;font-size:11px;text-align:center}
.frame{position:relative;width:160px;height:160px;background:#eee}
.frame img{position:absolute;left:0;top:0;width:100%;height:100%;object-fit:contain}
.frame .heat{position:absolute;left:0;top:0;width:100%;height:100%;background-size:100% 100%;opacity:0;
transition:opacity .15s;pointer-events:none}
body.overlays .frame .heat{opacity:1}
.cell figcaption{margin-top:2px;word-break:break-all}
.tok{display:inline-block;border-radius:3px;padding:0 4px;margin:1px;background:#ede7f6;font-family:monospace}
.tok.k-start{background:#ffe0b2}.tok.k-end{background:#ffcdd2}.tok.k-pad{background:#e0e0e0}
.hidden{display:none!important}
.missing{color:#999;font-size:11px;padding-top:60px}
"""

_JS = """
(function(){
  function apply(){
    var tag=document.getElementById('tag-filter').value;
    var shown=0;
    document.querySelectorAll('.gallery .row').forEach(function(row){
      var hide=(tag!=='*'&&row.getAttribute('data-tag')!==tag);
      row.classList.toggle('hidden',hide);
      if(!hide){shown++;}
    });
    document.querySelectorAll('.cond-filter').forEach(function(box){
      var name=box.getAttribute('data-condition');
      document.querySelectorAll('.cell').forEach(function(cell){
        if(cell.getAttribute('data-condition')===name){cell.classList.toggle('hidden',!box.checked);}
      });
    });
    var counter=document.getElementById('rows-shown');
    if(counter){counter.textContent=String(shown);}
  }
  document.addEventListener('DOMContentLoaded',function(){
    document.querySelectorAll('.cond-filter').forEach(function(b){b.addEventListener('change',apply);});
    document.getElementById('tag-filter').addEventListener('change',apply);
    var ov=document.getElementById('overlay-toggle');
    ov.addEventListener('change',function(){document.body.classList.toggle('overlays',ov.checked);});
    apply();
  });
})();
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(x, digits=4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x != x:
            return "—"
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def _inside(run_dir: str, rel) -> str | None:
    """The real path of ``rel`` when it is a path inside the run folder, else None."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or os.path.isabs(rel):
        return None
    root = os.path.realpath(run_dir)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    return path


class _Sources:
    """What the page references: links relative to the run folder, or data: URIs."""

    def __init__(self, run_dir: str, embed: bool):
        self.run_dir = run_dir
        self.embed = embed

    def src(self, path: str) -> str:
        if self.embed:
            with open(path, "rb") as fh:
                data = base64.b64encode(fh.read()).decode("ascii")
            kind = "gif" if path.lower().endswith(".gif") else "png"
            return f"data:image/{kind};base64,{data}"
        rel = os.path.relpath(path, self.run_dir).replace(os.sep, "/")
        return "/".join(_url_quote(p) for p in rel.split("/"))


def _url_quote(part: str) -> str:
    from urllib.parse import quote

    return quote(part)


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_html_report(run_dir: str, embed: bool | None = None, out: str | None = None,
                      max_rows: int | None = None) -> str:
    """Write ``RUN/report.html`` (or ``out``) from what the run folder has; returns its path.

    embed: True embeds every image in the page, False links them, None decides by size
    (:data:`EMBED_LIMIT`). max_rows: at most this many gallery rows (None: all)."""
    import warnings

    from .store import merged_records

    run_dir = os.path.abspath(run_dir)
    out = out or os.path.join(run_dir, "report.html")
    summary = _read_json(os.path.join(run_dir, "summary.json")) or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            records = merged_records(run_dir)
        except (OSError, ValueError):
            records = []
        try:
            traces = merged_records(run_dir, "trace")
        except (OSError, ValueError):
            traces = []
    notes: list[str] = []
    pairs = sorted({(r["prompt_id"], r["seed"]) for r in records})
    if max_rows is not None:
        pairs = pairs[:max_rows]
    summaries: dict = {}
    heat = _heat_maps(run_dir, pairs, traces, records, notes, summaries)
    plots = _plot_files(run_dir, summary)
    images = {}
    for r in records:
        if (r["prompt_id"], r["seed"]) in pairs:
            # A video's animated GIF where there is one (Wan), else the image.
            path = (_inside(run_dir, r.get("video")) if r.get("video") else None) or _inside(run_dir, r.get("image"))
            if path is None:
                notes.append(f"image {r.get('image')!r} of {r['condition']} (prompt {r['prompt_id']}, seed "
                             f"{r['seed']}): missing or outside the run folder, not shown")
            images[(r["prompt_id"], r["seed"], r["condition"])] = path
    files = [p for p in images.values() if p] + list(heat.values()) + plots
    if embed is None:
        embed = sum(os.path.getsize(p) for p in files) < EMBED_LIMIT
    src = _Sources(run_dir, embed)
    body = []
    body += _header(run_dir, summary, records)
    body += _overview(summary, records, notes)
    body += _statistics(summary)
    body += _plots_section(plots, src)
    body += _gallery(records, pairs, images, heat, traces, summaries, src, lazy=not embed and len(pairs) > 50)
    # each heat map is one CSS rule, used by every condition's cell of its row
    heat_css = "".join(f".heat-{i}{{background-image:url('{src.src(path)}')}}\n"
                       for i, path in enumerate(heat.values()))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>sinkattn report: {_e(os.path.basename(run_dir))}</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<style>{_CSS}{heat_css}</style></head><body>\n" + "\n".join(body) +
            f"\n<script>{_JS}</script>\n</body></html>\n")
    from .store import atomic_write_text

    atomic_write_text(out, page)
    return out


# -- parts ------------------------------------------------------------------------------------------

def _header(run_dir, summary, records) -> list[str]:
    out = [f"<h1>sinkattn study: {_e(os.path.basename(run_dir))}</h1>",
           f"<div class=\"note\" style=\"background:#eef;border-color:#99c\">generated "
           f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}; static page, no network</div>"]
    banner = (summary.get("random_weights") or {}).get("banner")
    if banner is None and any(r.get("model") == "tiny" for r in records):
        banner = "random weights: numbers exercise the machinery, not the science"
    if banner:
        out.append(f"<div class=\"banner\" id=\"random-weights\">Warning: {_e(banner)}</div>")
    return out


def _overview(summary, records, notes) -> list[str]:
    out = ["<h2 id=\"overview\">Overview</h2>"]
    cfg = summary.get("config") or {}
    if cfg:
        out.append(f"<p>model <code>{_e(cfg.get('model'))}</code> ({_e(cfg.get('family'))}, {_e(cfg.get('dtype'))}), "
                   f"{_e(cfg.get('steps'))} steps, CFG {_e(cfg.get('guidance'))}, {_e(cfg.get('width'))}x"
                   f"{_e(cfg.get('height'))}</p>")
    n_prompts = len({r["prompt_id"] for r in records})
    out.append(f"<p>{len(records)} images, {n_prompts} prompts, "
               f"{len({(r['prompt_id'], r['seed']) for r in records})} (prompt, seed) pairs</p>")
    if not summary:
        out.append("<div class=\"note\">No summary.json: run <code>sinkattn report DIR</code> for the statistics "
                   "and figures.</div>")
    if summary.get("metrics_note"):
        out.append(f"<div class=\"note\">{_e(summary['metrics_note'])}</div>")
    conds = summary.get("conditions")
    if not conds:
        seen = {}
        for r in records:
            seen.setdefault(r["condition"], dict(r.get("condition_spec") or {"name": r["condition"]}, records=0))
            seen[r["condition"]]["records"] += 1
        conds = list(seen.values())
    if conds:
        out.append("<table class=\"data\" id=\"conditions\"><tr><th class=\"l\">condition</th><th class=\"l\">"
                   "control</th><th>k</th><th>layers</th><th>steps</th><th>records</th></tr>")
        for c in conds:
            out.append(f"<tr><td class=\"l\">{_e(c.get('name'))}</td><td class=\"l\">{_e(c.get('control'))}</td>"
                       f"<td>{_e(c.get('k'))}</td><td>{_e(_short(c.get('layers')))}</td>"
                       f"<td>{_e(_short(c.get('steps')))}</td><td>{_e(c.get('records'))}</td></tr>")
        out.append("</table>")
    warn = list(summary.get("warnings") or []) + notes
    if warn:
        out.append("<h2 id=\"warnings\">Warnings</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warn[:200]) +
                   (f"<li>... {len(warn) - 200} more</li>" if len(warn) > 200 else "") + "</ul>")
    return out


def _short(x) -> str:
    if x is None:
        return "all"
    if isinstance(x, (list, tuple)):
        return ",".join(str(v) for v in x[:12]) + ("..." if len(x) > 12 else "")
    return str(x)


def _statistics(summary) -> list[str]:
    st = summary.get("statistics") or {}
    if not st:
        return []
    out = ["<h2 id=\"statistics\">Statistics</h2>"]
    boot = st.get("bootstrap") or {}
    if boot:
        out.append(f"<p>paired deltas (condition − baseline, same prompt, seed and latents); bootstrap "
                   f"{_e(boot.get('resamples'))} resamples (seed {_e(boot.get('seed'))}); Holm-adjusted p in "
                   "parentheses</p>")
    rows = st.get("vs_baseline") or []
    if rows:
        out.append("<h3>Conditions vs baseline</h3><table class=\"data\" id=\"vs-baseline\"><tr><th class=\"l\">"
                   "condition</th><th class=\"l\">metric</th><th>n</th><th>mean delta</th><th>95% CI</th>"
                   "<th>p Wilcoxon</th><th>p t</th></tr>")
        for row in rows:
            t = row.get("test") or {}
            out.append(f"<tr><td class=\"l\">{_e(row.get('condition'))}</td><td class=\"l\">{_e(row.get('metric'))}"
                       f"</td><td>{_e(t.get('n'))}</td><td>{_fmt(t.get('mean'))}</td><td>[{_fmt(t.get('ci_low'))}, "
                       f"{_fmt(t.get('ci_high'))}]</td><td>{_fmt(t.get('p_wilcoxon'), 3)} "
                       f"({_fmt(t.get('p_wilcoxon_holm'), 3)})</td><td>{_fmt(t.get('p_t'), 3)} "
                       f"({_fmt(t.get('p_t_holm'), 3)})</td></tr>")
        out.append("</table>")
    rows = st.get("sink_minus_random") or []
    if rows:
        out.append("<h3>Sink minus equal-budget random</h3><table class=\"data\" id=\"sink-minus-random\"><tr>"
                   "<th class=\"l\">sink condition</th><th class=\"l\">metric</th><th>n</th><th>sink delta</th>"
                   "<th>random delta</th><th>dd mean</th><th>95% CI</th></tr>")
        for row in rows:
            t = row.get("test") or {}
            out.append(f"<tr><td class=\"l\">{_e(row.get('condition'))}</td><td class=\"l\">{_e(row.get('metric'))}"
                       f"</td><td>{_e(t.get('n'))}</td><td>{_fmt(row.get('sink_mean'))}</td>"
                       f"<td>{_fmt(row.get('random_mean'))}</td><td>{_fmt(t.get('mean'))}</td>"
                       f"<td>[{_fmt(t.get('ci_low'))}, {_fmt(t.get('ci_high'))}]</td></tr>")
        out.append("</table>")
    rows = st.get("by_tag") or []
    if rows:
        out.append("<h3>By GenEval tag</h3><table class=\"data\" id=\"by-tag\"><tr><th class=\"l\">tag</th>"
                   "<th class=\"l\">condition</th><th class=\"l\">metric</th><th>n</th><th>mean</th><th>95% CI</th></tr>")
        for row in rows:
            t = row.get("test") or {}
            out.append(f"<tr><td class=\"l\">{_e(row.get('tag'))}</td><td class=\"l\">{_e(row.get('condition'))}</td>"
                       f"<td class=\"l\">{_e(row.get('metric'))}</td><td>{_e(t.get('n'))}</td>"
                       f"<td>{_fmt(t.get('mean'))}</td><td>[{_fmt(t.get('ci_low'))}, {_fmt(t.get('ci_high'))}]</td></tr>")
        out.append("</table>")
    rows = summary.get("dose_response") or []
    if rows:
        out.append("<h3>Dose-response</h3><table class=\"data\" id=\"dose\"><tr><th class=\"l\">metric</th>"
                   "<th class=\"l\">control</th><th class=\"l\">series</th><th>k</th><th>n</th><th>mean</th>"
                   "<th>95% CI</th></tr>")
        for row in rows:
            out.append(f"<tr><td class=\"l\">{_e(row.get('metric'))}</td><td class=\"l\">{_e(row.get('control'))}</td>"
                       f"<td class=\"l\">{_e(row.get('series'))}</td><td>{_e(row.get('k'))}</td><td>{_e(row.get('n'))}"
                       f"</td><td>{_fmt(row.get('mean'))}</td><td>[{_fmt(row.get('ci_low'))}, "
                       f"{_fmt(row.get('ci_high'))}]</td></tr>")
        out.append("</table>")
    return out


def _plot_files(run_dir, summary) -> list[str]:
    """The figures to show: summary.json's list, plus the atlas figures; every PNG of
    plots/ when there is no summary."""
    plot_dir = os.path.join(run_dir, "plots")
    if not os.path.isdir(plot_dir):
        return []
    names = sorted(f for f in os.listdir(plot_dir) if f.endswith(".png") and ".tmp" not in f)
    if summary.get("plots") is not None:
        listed = [os.path.basename(p) for p in summary["plots"]]
        atlas = [f for f in names if f.startswith(("atlas_", "overlay_", "tokens_")) and f not in listed]
        names = [f for f in listed if f in names] + atlas
    out = []
    for f in names:
        path = _inside(run_dir, f"plots/{f}")
        if path:
            out.append(path)
    return out


def _plots_section(plots, src) -> list[str]:
    if not plots:
        return ["<h2 id=\"plots\">Figures</h2><p class=\"note\">No figures in plots/.</p>"]
    out = ["<h2 id=\"plots\">Figures</h2><div class=\"plots\">"]
    for p in plots:
        name = os.path.basename(p)
        out.append(f"<figure><img src=\"{_e(src.src(p))}\" alt=\"{_e(name)}\"><figcaption>{_e(name)}</figcaption>"
                   "</figure>")
    return out + ["</div>"]


def _heat_maps(run_dir, pairs, traces, records, notes, summaries: dict) -> dict:
    """{(prompt_id, seed): path of a transparent heat-map PNG} of the baseline's sinks:
    from the atlas (maps, else the heads' top keys), else from trace*.jsonl's top-key
    positions; written to RUN/html/. Fills ``summaries`` with the atlas images' summaries."""
    import numpy as np

    from . import atlas

    wanted = set(pairs)
    sizes = {}
    for r in records:
        if r["condition"] == "baseline" and r.get("width"):
            sizes[(r["prompt_id"], r["seed"])] = (int(r["width"]), int(r["height"]))
    heats = {}
    try:
        for e, image in atlas.iter_images(run_dir, conditions=["baseline"], maps=True):
            key = (e["prompt_id"], e["seed"])
            if key in wanted and key not in heats:
                h, _ = atlas.image_heat(image)
                if h is not None:
                    heats[key] = h
                summaries[key] = atlas.trace_summary(image)
    except (OSError, ValueError) as err:
        notes.append(f"atlas: cannot be read ({err}); heat maps from trace.jsonl where there")
    for t in traces:
        key = (t.get("prompt_id"), t.get("seed"))
        tr = t.get("trace") or {}
        if key in wanted and key not in heats and tr.get("grid") and tr.get("image_top_positions"):
            rows, cols = tr["grid"]
            h = np.zeros((rows, cols))
            for pos, n in tr["image_top_positions"].items():
                r, c = (int(x) for x in pos.split(","))
                if r < rows and c < cols:
                    h[r, c] += n
            heats[key] = h
    out = {}
    folder = os.path.join(run_dir, _HEAT_DIR)
    for key, h in heats.items():
        size = sizes.get(key, (256, 256))
        scale = max(1, 256 // max(size))
        size = (min(size[0] * scale, 512), min(size[1] * scale, 512))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"heat_p{key[0]:05d}_s{key[1]}.png")
        atlas.heat_rgba(h, size).save(path)
        out[key] = path
    return out


def _gallery(records, pairs, images, heat, traces, summaries, src, lazy: bool) -> list[str]:
    out = ["<h2 id=\"gallery\">Gallery</h2>"]
    if not pairs:
        return out + ["<p class=\"note\">No records.</p>"]
    conditions = []
    for r in records:
        if r["condition"] not in conditions:
            conditions.append(r["condition"])
    conditions.sort(key=lambda c: c != "baseline")
    tags = sorted({str(r.get("tag")) for r in records if r.get("tag") is not None})
    by_key = {(r["prompt_id"], r["seed"], r["condition"]): r for r in records}
    trace_of = {(t.get("prompt_id"), t.get("seed")): t.get("trace") or {} for t in traces}
    trace_of.update(summaries)     # the atlas's own summary (tokens with their kinds) first
    heat_index = {key: i for i, key in enumerate(heat)}
    out.append("<div class=\"controls\" id=\"controls\"><strong>conditions:</strong> ")
    for c in conditions:
        out.append(f"<label><input type=\"checkbox\" class=\"cond-filter\" data-condition=\"{_e(c)}\" checked> "
                   f"{_e(c)}</label>")
    out.append("<br><label><strong>GenEval tag:</strong> <select id=\"tag-filter\"><option value=\"*\">all</option>" +
               "".join(f"<option value=\"{_e(t)}\">{_e(t)}</option>" for t in tags) + "</select></label>")
    out.append(f"<label><input type=\"checkbox\" id=\"overlay-toggle\"{'' if heat else ' disabled'}> "
               "overlay the baseline's sink heat map</label>")
    out.append(f"<span><span id=\"rows-shown\">{len(pairs)}</span> of {len(pairs)} rows</span></div>")
    out.append("<div class=\"gallery\" id=\"gallery-rows\">")
    loading = " loading=\"lazy\"" if lazy else ""
    for pid, seed in pairs:
        first = next((by_key[(pid, seed, c)] for c in conditions if (pid, seed, c) in by_key), {})
        tag = first.get("tag")
        out.append(f"<div class=\"row\" data-tag=\"{_e(tag)}\" data-prompt=\"{_e(pid)}\" data-seed=\"{_e(seed)}\">")
        out.append(f"<div class=\"meta\"><div class=\"prompt\">{_e(pid)}: {_e(first.get('prompt'))}</div>"
                   f"<div>seed {_e(seed)} · tag {_e(tag)}</div>{_token_chips(trace_of.get((pid, seed)))}</div>")
        heat_class = f"heat-{heat_index[(pid, seed)]}" if (pid, seed) in heat_index else None
        for c in conditions:
            r = by_key.get((pid, seed, c))
            path = images.get((pid, seed, c))
            inner = ""
            if r is not None and path:
                inner = f"<img class=\"gen\" src=\"{_e(src.src(path))}\" alt=\"{_e(c)}\"{loading}>"
                if heat_class:
                    inner += f"<div class=\"heat {heat_class}\" title=\"the baseline's sinks\"></div>"
            else:
                inner = "<div class=\"missing\">no image</div>"
            metrics = " · ".join(f"{_e(m)} {_fmt(v, 3)}" for m, v in sorted(((r or {}).get("metrics") or {}).items()))
            out.append(f"<figure class=\"cell\" data-condition=\"{_e(c)}\"><div class=\"frame\">{inner}</div>"
                       f"<figcaption>{_e(c)}<br>{metrics}</figcaption></figure>")
        out.append("</div>")
    return out + ["</div>"]


def _token_chips(trace: dict | None, n: int = 6) -> str:
    """The baseline's most frequent text sinks (share of top keys), start/end/pad marked."""
    if not trace or not trace.get("text_top_tokens"):
        return ""
    total = trace.get("heads_counted") or 1
    kinds = trace.get("text_top_kinds") or {}
    best = sorted(trace["text_top_tokens"].items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    chips = "".join(f"<span class=\"tok {_KIND_CLASS.get(kinds.get(t), '')}\" title=\"{_e(kinds.get(t, 'token'))}\">"
                    f"{_e(t)} {n_ / total:.0%}</span>" for t, n_ in best)
    return f"<div class=\"sinks\">text sinks: {chips}</div>"
