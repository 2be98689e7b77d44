"""Prompt sources."""

import os

import pytest

from sinkattn.experiment.prompts import BUILTIN_PROMPTS, load_prompts

GENEVAL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "geneval",
                       "evaluation_metadata.jsonl")


@pytest.mark.skipif(not os.path.exists(GENEVAL), reason="GenEval metadata not at ../shared/data/geneval")
def test_geneval_file():
    prompts = load_prompts(GENEVAL)
    assert len(prompts) == 553
    assert prompts[0].prompt_id == 0 and prompts[0].text == "a photo of a bench" and prompts[0].tag == "single_object"
    assert prompts[0].meta["include"] == [{"class": "bench", "count": 1}]
    assert {p.tag for p in prompts} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert [p.prompt_id for p in load_prompts(GENEVAL, limit=5)] == [0, 1, 2, 3, 4]


def test_text_file_and_builtin(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# comment\na cat\n\na dog\n")
    assert [(p.prompt_id, p.text, p.tag) for p in load_prompts(str(path))] == [(0, "a cat", None), (1, "a dog", None)]
    builtin = load_prompts("builtin")
    assert len(builtin) == len(BUILTIN_PROMPTS) and all(p.tag for p in builtin)
    with pytest.raises(FileNotFoundError):
        load_prompts(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError):
        load_prompts("builtin", limit=0)


@pytest.mark.parametrize("bad, why", [
    pytest.param("{", "not JSON", id="torn"),
    pytest.param('["a cat"]', "not a JSON object", id="list"),
])
def test_malformed_jsonl_names_the_file_and_its_line(tmp_path, bad, why):
    path = tmp_path / "prompts.jsonl"
    path.write_text(f'{{"prompt": "a cat", "tag": "single_object"}}\n\n{bad}\n{{"prompt": "a dog"}}\n')
    with pytest.raises(ValueError) as err:
        load_prompts(str(path))
    assert str(err.value).startswith(f"{path}:3: {why}")


# --- the original study's own lists (never stored here: a path, the cache or a download) -------

def test_balanced100_from_a_path_warns_unless_it_is_the_original(tmp_path, monkeypatch):
    from sinkattn.experiment import prompts as P

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "mine.txt"
    path.write_text("a photo of a bench\n\na photo of a cow\n")
    monkeypatch.setenv("SINKATTN_BALANCED100", str(path))
    if os.path.exists(GENEVAL):
        monkeypatch.setenv("SINKATTN_GENEVAL", GENEVAL)
    with pytest.warns(UserWarning, match="is not the original's balanced100 list"):
        got = load_prompts("balanced100")
    assert [(p.prompt_id, p.text) for p in got] == [(0, "a photo of a bench"), (1, "a photo of a cow")]
    if os.path.exists(GENEVAL):  # GenEval prompts: GenEval's tag and line, when its metadata is here
        assert got[0].tag == "single_object" and got[0].meta == {"geneval_id": 0}
    monkeypatch.setenv("SINKATTN_BALANCED100", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="SINKATTN_BALANCED100"):
        load_prompts("balanced100")


def test_a_download_is_checked_before_it_is_cached(tmp_path, monkeypatch):
    """No network here: urlopen is replaced. A list that is not the original's (by SHA-256)
    is refused and nothing is cached; h1d prompts come out of the script's list literal."""
    import io
    import urllib.request

    from sinkattn.experiment import prompts as P

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SINKATTN_H1D_PROMPTS", raising=False)
    monkeypatch.delenv("SINKATTN_BALANCED100", raising=False)
    script = 'def collect_h1_dynamics():\n    prompts = [\n        "a red cube",\n        "a blue ball",\n    ][:8]\n'
    assert P._h1d_prompts(script) == ["a red cube", "a blue ball"]
    seen = []

    def fake_urlopen(url, timeout):
        seen.append(url)
        return io.BytesIO(script.encode() if url.endswith(".py") else b"a red cube\n")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    for name in ("h1d", "balanced100"):
        with pytest.raises(ValueError, match=f"downloaded {name} prompts are not the ones"):
            load_prompts(name)
    assert seen == [P.ORIGINAL_SOURCES["h1d"].url, P.ORIGINAL_SOURCES["balanced100"].url]
    assert all(P.ORIGINAL_COMMIT in url for url in seen)
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache" / "sinkattn")

    def offline(url, timeout):
        raise OSError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="SINKATTN_BALANCED100=PATH"):
        load_prompts("balanced100")
    # a cached list is used as is (it was checked when it was cached)
    os.makedirs(tmp_path / "cache" / "sinkattn", exist_ok=True)
    (tmp_path / "cache" / "sinkattn" / "h1d_prompts.txt").write_text("p one\np two\n")
    assert [p.text for p in load_prompts("h1d", limit=1)] == ["p one"]
