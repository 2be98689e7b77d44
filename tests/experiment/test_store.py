"""Append-only records: dedup, torn last lines, atomic files, shard merging."""

import json
import os

import pytest

from sinkattn.experiment.store import (
    RecordStore, atomic_write_bytes, merged_records, metric_key, read_records, results_files,
)


def _rec(pid, cond, seed=42, **extra):
    return dict(prompt_id=pid, seed=seed, condition=cond, metrics={}, **extra)


def test_append_is_idempotent(tmp_path):
    path = str(tmp_path / "results.jsonl")
    store = RecordStore(path)
    assert store.append(_rec(0, "baseline"))
    assert not store.append(_rec(0, "baseline", note="again"))
    assert store.append(_rec(0, "sink"))
    again = RecordStore(path)
    assert not again.append(_rec(0, "sink")) and len(again) == 2
    assert [r["condition"] for r in read_records(path)] == ["baseline", "sink"]


def test_torn_last_line_is_cut_before_appending(tmp_path):
    path = str(tmp_path / "results.jsonl")
    RecordStore(path).append(_rec(0, "baseline"))
    with open(path, "ab") as fh:
        fh.write(b'{"prompt_id": 0, "seed": 42, "condit')  # a write killed half-way
    assert len(read_records(path)) == 1
    store = RecordStore(path)
    assert (0, 42, "baseline") in store and (0, 42, "sink") not in store
    store.append(_rec(0, "sink"))
    lines = open(path, encoding="utf-8").read().splitlines()
    assert [json.loads(line)["condition"] for line in lines] == ["baseline", "sink"]


def test_other_shards_count_as_done_and_merge(tmp_path):
    a = RecordStore(str(tmp_path / "results.shard-0-of-2.jsonl"))
    b = RecordStore(str(tmp_path / "results.shard-1-of-2.jsonl"))
    a.append(_rec(0, "baseline"))
    b.append(_rec(1, "baseline"))
    b.append(_rec(0, "baseline"))  # a duplicate across files is merged once
    files = results_files(str(tmp_path))
    assert len(files) == 2
    c = RecordStore(str(tmp_path / "results.jsonl"), also=files)
    assert (1, 42, "baseline") in c and len(c) == 0
    assert [(r["prompt_id"], r["condition"]) for r in merged_records(str(tmp_path))] == [(0, "baseline"), (1, "baseline")]


def test_atomic_write_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "images" / "x.png")
    atomic_write_bytes(path, b"abc")
    atomic_write_bytes(path, b"abcd")
    assert open(path, "rb").read() == b"abcd"
    assert os.listdir(tmp_path / "images") == ["x.png"]


def _tear(path, index, keep=25):
    """Cut line ``index`` of ``path`` short, as a write torn in the middle of the file leaves it."""
    lines = open(path, "rb").read().split(b"\n")
    torn = lines[index][:keep]
    lines[index] = torn
    open(path, "wb").write(b"\n".join(lines))
    return torn


def test_unreadable_lines_inside_are_moved_aside_and_their_keys_made_again(tmp_path):
    path = str(tmp_path / "results.jsonl")
    store = RecordStore(path)
    for cond in ("baseline", "sink", "random", "bottom"):
        store.append(_rec(0, cond))
    torn = _tear(path, 1)
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    lines[2] = b"[1, 2]"  # JSON, but not a record: no key
    with open(path, "wb") as fh:
        fh.write(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 2"):
        read_records(path)  # the strict reader still says where
    with pytest.warns(UserWarning, match=r"2 unreadable line\(s\).*results.jsonl.corrupt"):
        store = RecordStore(path)
    assert [(0, 42, c) in store for c in ("baseline", "sink", "random", "bottom")] == [True, False, False, True]
    assert open(path + ".corrupt", "rb").read() == torn + b"\n[1, 2]\n"
    assert [r["condition"] for r in read_records(path)] == ["baseline", "bottom"]
    assert store.append(_rec(0, "sink")) and store.append(_rec(0, "random"))
    assert [r["condition"] for r in RecordStore(path).records] == ["baseline", "bottom", "sink", "random"]
    # a second repair appends to the side file: nothing is ever lost
    _tear(path, 0)
    with pytest.warns(UserWarning, match="1 unreadable"):
        RecordStore(path)
    assert open(path + ".corrupt", "rb").read().count(b"\n") == 3


def test_readers_of_a_run_folder_skip_unreadable_lines_with_a_warning(tmp_path):
    a = RecordStore(str(tmp_path / "results.shard-0-of-2.jsonl"))
    for pid in (0, 2, 4):
        a.append(_rec(pid, "baseline"))
    _tear(a.path, 1)
    before = open(a.path, "rb").read()
    with pytest.warns(UserWarning, match="1 unreadable line"):
        merged = merged_records(str(tmp_path))
    assert [r["prompt_id"] for r in merged] == [0, 4]
    with pytest.warns(UserWarning, match="1 unreadable line"):
        other = RecordStore(str(tmp_path / "results.shard-1-of-2.jsonl"), also=results_files(str(tmp_path)))
    assert (0, 42, "baseline") in other and (2, 42, "baseline") not in other
    assert open(a.path, "rb").read() == before  # another writer's file is read, never rewritten


def test_metric_values_added_later_fold_into_their_records_first_wins(tmp_path):
    results = RecordStore(str(tmp_path / "results.jsonl"))
    results.append(dict(_rec(0, "baseline"), metrics={"lpips": 0.0}))
    results.append(dict(_rec(0, "sink"), metrics={"lpips": 0.5}))
    updates = RecordStore(str(tmp_path / "metrics.jsonl"), key=metric_key)
    info = {"untrained": True, "weights": None}
    for cond, metric, value in (("sink", "clip_t", 0.25), ("sink", "lpips", 9.0), ("baseline", "clip_t", None),
                                ("ghost", "clip_t", 1.0)):
        error = "scorer exploded" if value is None else None
        assert updates.append(dict(_rec(0, cond), metric=metric, value=value, error=error, info=info))
    assert not updates.append(dict(_rec(0, "sink"), metric="clip_t", value=7.0, error=None, info=info))
    shard = RecordStore(str(tmp_path / "metrics.shard-1-of-2.jsonl"), key=metric_key)
    shard.append(dict(_rec(0, "sink"), metric="clip_t", value=7.0, error=None, info=info))  # a later value
    merged = {r["condition"]: r for r in merged_records(str(tmp_path))}
    assert set(merged) == {"baseline", "sink"}
    assert merged["sink"]["metrics"] == {"lpips": 0.5, "clip_t": 0.25}  # the record's own lpips wins
    assert merged["baseline"]["metrics"] == {"lpips": 0.0, "clip_t": None}
    assert merged["baseline"]["metric_errors"] == {"clip_t": "scorer exploded"}
    assert merged["sink"]["metric_info"] == {"clip_t": info} and merged["sink"]["untrained_metrics"] is True
    assert len(read_records(str(tmp_path / "results.jsonl"))) == 2  # records themselves are never rewritten
