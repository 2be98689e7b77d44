"""Append-only records: one JSON line per generated image, written atomically.

A record's key is (prompt_id, seed, condition). Each process appends to its own file
(``results.jsonl``, or ``results.shard-I-of-N.jsonl`` for a shard) and never rewrites a
line. Atomicity:

* a line is written with a single write() followed by flush + fsync; a process killed in
  the middle of it leaves a torn last line without its newline, which the next opening of
  that file cuts off (truncates to the last newline) before appending;
* the image a record points to is written first, to a temporary file in the same folder
  and renamed into place (os.replace), so a record never points at a missing or partial
  image; an image without a record (killed in between) is simply regenerated, with the
  same bytes;
* keys already present in any results file of the run folder are skipped, so rerunning a
  finished command adds nothing, and a resumed run ends with the same set of records as
  an uninterrupted one.
"""

from __future__ import annotations

import glob
import json
import os
import re

__all__ = ["RecordStore", "atomic_write_bytes", "atomic_write_text", "merged_records", "read_records",
           "record_key", "results_files", "shard_suffix"]

_RESULTS_GLOB = "results*.jsonl"


def record_key(record: dict) -> tuple:
    return (record["prompt_id"], record["seed"], record["condition"])


def shard_suffix(shard: tuple[int, int]) -> str:
    index, count = shard
    return "" if count == 1 else f".shard-{index}-of-{count}"


def results_files(run_dir: str, stem: str = "results") -> list[str]:
    files = sorted(glob.glob(os.path.join(run_dir, f"{stem}*.jsonl")))
    pattern = re.compile(rf"^{stem}(\.shard-\d+-of-\d+)?\.jsonl$")
    return [f for f in files if pattern.match(os.path.basename(f))]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_records(path: str) -> list[dict]:
    """Complete lines of a JSONL file; a torn last line (no newline, or not JSON) is ignored."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        data = fh.read()
    out = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines[:-1]):  # the part after the last newline is torn (or empty)
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {i + 1} is not JSON ({err}); this file was edited by hand?") from err
    return out


def _repair(path: str) -> None:
    """Cut a torn last line (a write interrupted by a kill) off ``path``."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())


class RecordStore:
    """The records of one writer (one file) plus the keys of every results file in the folder.

    Args:
        path: the file this process appends to.
        also: other files whose keys count as done (other shards); read, never written.
    """

    def __init__(self, path: str, also: list[str] = ()):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _repair(path)
        self.records = read_records(path)
        self._keys = {record_key(r) for r in self.records}
        for other in also:
            if os.path.abspath(other) != os.path.abspath(path):
                self._keys.update(record_key(r) for r in read_records(other))

    def __contains__(self, key) -> bool:
        return tuple(key) in self._keys

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict) -> bool:
        """Append one record unless its key is already there; True when written."""
        key = record_key(record)
        if key in self._keys:
            return False
        line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            while written < len(line):  # os.write may write less on some filesystems
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self._keys.add(key)
        self.records.append(record)
        return True


def merged_records(run_dir: str, stem: str = "results") -> list[dict]:
    """Every record of the folder's results files (all shards), one per key (first wins),
    sorted by (prompt_id, seed, condition order of appearance)."""
    seen: dict[tuple, dict] = {}
    for path in results_files(run_dir, stem):
        for record in read_records(path):
            seen.setdefault(record_key(record), record)
    return sorted(seen.values(), key=lambda r: (r["prompt_id"], r["seed"]))
