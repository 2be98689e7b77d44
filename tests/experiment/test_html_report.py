"""The static HTML report: built from whatever a run folder has, opened in a real headless
Chromium (Debian's chromium + chromedriver through selenium, installed by tests/install.sh):
no console errors, every image resolves, the condition and tag filters and the overlay
toggle work; nothing is fetched from outside the folder; missing parts degrade to notes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile

import pytest
import torch

from sinkattn.experiment import atlas
from sinkattn.experiment.html_report import write_html_report
from sinkattn.gating import StepClock
from sinkattn.processors import Tokens
from sinkattn.processors.core import CallRecord
from sinkattn.tracing import SinkTracer

CONDITIONS = ("baseline", "sink_k1", "random_k1_d0")
PROMPTS = [(0, "a red <b>cat</b> & \"dog\"", "color"), (1, "two cups", "counting"), (2, "a kite", "single_object")]


def _png(color, size=(32, 32)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _trace(prompt_id, seed):
    tracer = SinkTracer(top=3, map_layers="all", map_steps=[0])
    tracer.begin(prompt_id=prompt_id, seed=seed, cfg=True)
    clock = StepClock()
    g = torch.Generator().manual_seed(prompt_id)
    for step in range(2):
        clock.tick(900.0 - step, grid=(4, 4))
        for layer in range(2):
            mass = torch.rand(2, 2, 20, generator=g)
            mass[..., 5 + prompt_id] += 3
            call = CallRecord(mass=mass / mass.sum(-1, keepdim=True), sinks=None, keys=Tokens(20, 4),
                              mass_queries=(0, 16))
            tracer.record(layer=f"blocks.{layer}.attn", layer_index=layer, family="joint", call=call, clock=clock)
    return tracer.finish_image()


def make_run(root, with_atlas=True, with_summary=True) -> str:
    run = os.path.join(root, "run")
    os.makedirs(os.path.join(run, "plots"))
    records = []
    for pid, prompt, tag in PROMPTS:
        for i, cond in enumerate(CONDITIONS):
            rel = f"images/{cond}/p{pid:05d}_s0.png"
            os.makedirs(os.path.dirname(os.path.join(run, rel)), exist_ok=True)
            with open(os.path.join(run, rel), "wb") as fh:
                fh.write(_png((60 * i, 100, 40 * pid)))
            records.append({"prompt_id": pid, "seed": 0, "condition": cond, "prompt": prompt, "tag": tag,
                            "image": rel, "width": 32, "height": 32, "model": "tiny",
                            "metrics": {"clip_t": 0.3 + 0.01 * i},
                            "condition_spec": {"name": cond, "control": cond.split("_")[0], "k": i}})
    with open(os.path.join(run, "results.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(run, "plots", "dose_response.png"), "wb") as fh:
        fh.write(_png("blue", (120, 80)))
    if with_summary:
        test = {"n": 3, "mean": -0.01, "ci_low": -0.02, "ci_high": 0.0, "p_wilcoxon": 0.25, "p_wilcoxon_holm": 0.5,
                "p_t": 0.2, "p_t_holm": 0.4}
        summary = {"plots": ["plots/dose_response.png"], "random_weights": {"banner": "random weights: test"},
                   "conditions": [{"name": c, "control": c.split("_")[0], "k": i, "records": 3}
                                  for i, c in enumerate(CONDITIONS)],
                   "statistics": {"bootstrap": {"resamples": 100, "seed": 0},
                                  "vs_baseline": [{"condition": "sink_k1", "metric": "clip_t", "test": test}],
                                  "sink_minus_random": [], "by_tag": []},
                   "dose_response": [], "warnings": [], "config": {"model": "tiny", "steps": 2}}
        with open(os.path.join(run, "summary.json"), "w") as fh:
            json.dump(summary, fh)
    if with_atlas:
        store = atlas.TraceStore(run)
        traces = []
        for pid, _, tag in PROMPTS[:2]:              # prompt 2 has no trace: its row has no overlay
            image = _trace(pid, 0)
            store.append(image, condition="baseline", tag=tag)
            traces.append({"prompt_id": pid, "seed": 0, "condition": "baseline", "tag": tag,
                           "trace": atlas.trace_summary(image)})
        with open(os.path.join(run, "trace.jsonl"), "w") as fh:
            fh.writelines(json.dumps(t) + "\n" for t in traces)
        atlas.write_atlas_figures(run, banner="random weights: test")
    return run


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'sinkattn[test]')")
    if not chromium or not driver:
        pytest.skip("Chromium and chromedriver are not installed (tests/install.sh: apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="sinkattn-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options), profile


@pytest.fixture(scope="module")
def browser():
    driver, profile = _browser()
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


_LOADED = """
var done = arguments[arguments.length - 1];
var urls = [];
document.querySelectorAll('img').forEach(function(i){ urls.push(i.src); });
document.querySelectorAll('.heat').forEach(function(h){
  var m = getComputedStyle(h).backgroundImage.match(/url\\("?(.*?)"?\\)$/); urls.push(m ? m[1] : 'none'); });
var bad = [], left = urls.length;
if (!left) { done([0, bad]); }
urls.forEach(function(u){
  var im = new Image();
  im.onload = function(){ if (!im.naturalWidth) bad.push(u.slice(0, 80)); if (--left === 0) done([urls.length, bad]); };
  im.onerror = function(){ bad.push(u.slice(0, 80)); if (--left === 0) done([urls.length, bad]); };
  im.src = u;
});
"""


@pytest.mark.parametrize("embed", [False, True], ids=["linked", "embedded"])
def test_report_in_chromium(tmp_path, browser, embed):
    from selenium.webdriver.support.ui import Select

    run = make_run(str(tmp_path))
    path = write_html_report(run, embed=embed)
    assert path == os.path.join(run, "report.html")
    page = open(path, encoding="utf-8").read()
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\(['"]?(https?:)?//""", page)   # nothing from outside
    assert ("data:image/png;base64," in page) == embed
    assert "<b>cat</b>" not in page and "&lt;b&gt;cat&lt;/b&gt;" in page            # prompts are escaped
    browser.get_log("browser")                                                   # drop earlier messages
    browser.get("file://" + path)
    browser.set_script_timeout(30)
    n, bad = browser.execute_async_script(_LOADED)
    assert bad == [] and n >= 9 + 2 * 3 + 1                 # 9 images, 2 traced rows x 3 overlays, the figures
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    js = browser.execute_script

    def visible(selector):
        return js(f"return Array.from(document.querySelectorAll({selector!r})).filter("
                  "function(e){return e.offsetParent !== null;}).length")

    assert visible(".gallery .row") == 3 and visible(".cell") == 9
    assert js("return document.getElementById('random-weights').textContent").startswith("Warning: random weights")
    assert visible("#vs-baseline tr") == 2 and visible(".plots img") >= 2
    # condition filter: hide a column
    browser.find_element("css selector", '.cond-filter[data-condition="sink_k1"]').click()
    assert visible(".cell") == 6 and visible('.cell[data-condition="sink_k1"]') == 0
    # tag filter: one row left
    Select(browser.find_element("id", "tag-filter")).select_by_value("counting")
    assert visible(".gallery .row") == 1 and js("return document.getElementById('rows-shown').textContent") == "1"
    assert js("return document.querySelector('.gallery .row:not(.hidden)').getAttribute('data-prompt')") == "1"
    Select(browser.find_element("id", "tag-filter")).select_by_value("*")
    assert visible(".gallery .row") == 3
    # the overlay toggle shows the baseline's sink heat map over every condition's image
    assert js("return getComputedStyle(document.querySelector('.heat')).opacity") == "0"
    browser.find_element("id", "overlay-toggle").click()
    import time

    time.sleep(0.3)
    assert js("return getComputedStyle(document.querySelector('.heat')).opacity") == "1"
    assert js("return document.querySelectorAll('.row[data-prompt=\"2\"] .heat').length") == 0
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []


def test_degrades_without_summary_atlas_or_plots(tmp_path):
    run = make_run(str(tmp_path), with_atlas=False, with_summary=False)
    shutil.rmtree(os.path.join(run, "plots"))
    # a record naming an image outside the folder, and one naming a missing image
    lines = open(os.path.join(run, "results.jsonl")).read().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["image"], second["image"] = "../../etc/passwd", "images/none.png"
    lines[0], lines[1] = json.dumps(first), json.dumps(second)
    open(os.path.join(run, "results.jsonl"), "w").write("\n".join(lines) + "\n")
    page = open(write_html_report(run), encoding="utf-8").read()
    assert "No summary.json" in page and "No figures in plots/" in page
    assert "etc/passwd" in page and "outside the run folder" in page and page.count("no image") == 2
    assert 'id="overlay-toggle" disabled' in page and "random weights" in page    # model "tiny" in the records


def test_a_folder_without_records(tmp_path):
    os.makedirs(tmp_path / "run")
    page = open(write_html_report(str(tmp_path / "run")), encoding="utf-8").read()
    assert "No records." in page
