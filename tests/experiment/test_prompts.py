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
