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
  an uninterrupted one;
* a line inside a file that is not a record (a hand edit, a bad disk) never stops a run:
  the writer of that file moves such lines to ``<file>.corrupt`` (appended, never lost),
  rewrites the file without them (atomically) and makes their records again; readers of
  the folder (:func:`merged_records`, the report) skip them with a warning that counts them.

One writer per file: a run holds an exclusive lock on its folder (:class:`FolderLock` on
``.lock``, or ``.lock.shard-I-of-N`` for a shard) for its whole length, so a second
process on the same folder (or shard) stops at once instead of making everything twice.

Metrics added later: a rerun with more ``--metrics`` scores the records that lack them on
their stored images and appends each value as one line of ``metrics.jsonl`` (or
``metrics.shard-I-of-N.jsonl``), keyed by (prompt_id, seed, condition, metric). Results
lines are never rewritten; :func:`merged_records` folds the values into their records,
and a record's own value, or the first value written, wins. These files follow the rules
above (torn last line cut, unreadable lines set aside, keys skipped when present), so a
rescoring killed at any moment resumes to the same values, each once.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import signal
import socket
import threading
import time
import warnings

__all__ = ["FolderBusy", "FolderLock", "RecordStore", "atomic_write_bytes", "atomic_write_text", "merged_records",
           "metric_key", "read_records", "record_key", "results_files", "shard_suffix"]

_RESULTS_GLOB = "results*.jsonl"


def record_key(record: dict) -> tuple:
    return (record["prompt_id"], record["seed"], record["condition"])


def metric_key(update: dict) -> tuple:
    """The key of a metric value scored after its record was written (metrics*.jsonl)."""
    return (update["prompt_id"], update["seed"], update["condition"], update["metric"])


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


def _scan(path: str, key=record_key) -> tuple[list[tuple[bytes, dict]], list[tuple[int, bytes, Exception]]]:
    """The complete lines of a JSONL file, split into records ((raw line, record)) and
    unreadable lines ((line number, raw line, why)). A line is unreadable when it is not
    JSON or has no key; the part after the last newline (a torn last write) is left out."""
    if not os.path.exists(path):
        return [], []
    with open(path, "rb") as fh:
        data = fh.read()
    good, bad = [], []
    for i, line in enumerate(data.split(b"\n")[:-1]):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key(record)
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            bad.append((i + 1, line, err))
            continue
        good.append((line, record))
    return good, bad


def _line_numbers(bad) -> str:
    numbers = [str(n) for n, _, _ in bad]
    return ", ".join(numbers[:10]) + (", ..." if len(numbers) > 10 else "")


def read_records(path: str, strict: bool = True, key=record_key) -> list[dict]:
    """Complete lines of a JSONL file; a torn last line (no newline) is ignored.

    An unreadable line inside the file raises a ValueError naming it (``strict``), or is
    skipped with a warning that counts such lines (``strict=False``: what the report uses,
    so that one damaged line does not stop it)."""
    good, bad = _scan(path, key)
    if bad and strict:
        n, _, err = bad[0]
        raise ValueError(f"{path}: line {n} is not a record ({err}); opening the file for writing "
                         f"(rerunning the run) moves such lines to {path}.corrupt")
    if bad:
        warnings.warn(f"sinkattn: {path}: {len(bad)} unreadable line(s) skipped (line {_line_numbers(bad)})",
                      stacklevel=2)
    return [record for _, record in good]


def _set_aside(path: str, key=record_key) -> list[dict]:
    """The records of ``path``, after moving its unreadable lines to ``path.corrupt``.

    Why: a damaged line inside the file (a hand edit, a bad disk, two writers at once) must
    not stop a run for good; its record is simply made again. The side file is appended and
    synced first, then the file is replaced atomically by its readable lines (bytes
    unchanged), so a kill in between at worst repeats lines in the side file, never loses one.
    """
    good, bad = _scan(path, key)
    if bad:
        side = f"{path}.corrupt"
        _append_bytes(side, b"".join(line + b"\n" for _, line, _ in bad))
        atomic_write_bytes(path, b"".join(line + b"\n" for line, _ in good))
        warnings.warn(f"sinkattn: {path}: {len(bad)} unreadable line(s) (line {_line_numbers(bad)}) moved to "
                      f"{side}; their records will be made again", stacklevel=3)
    return [record for _, record in good]


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold SIGINT until the block ends, then deliver it to the handler that was there (in
    the main thread; elsewhere signals cannot arrive and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def _append_bytes(path: str, data: bytes) -> None:
    """One write() (repeated if the OS writes less) then fsync: an append that a kill can only tear at the end."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # os.write may write less on some filesystems
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def __init__(self, path: str, also: list[str] = (), key=record_key):
        self.path = path
        self.key = key
        self.appended = 0  # lines this object wrote
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _repair(path)
        self.records = _set_aside(path, key)
        self._keys = {key(r) for r in self.records}
        for other in also:
            if os.path.abspath(other) != os.path.abspath(path):
                self._keys.update(key(r) for r in read_records(other, strict=False, key=key))

    def __contains__(self, key) -> bool:
        return tuple(key) in self._keys

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict) -> bool:
        """Append one record unless its key is already there; True when written."""
        key = self.key(record)
        if key in self._keys:
            return False
        line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        with _interrupts_deferred():  # a Ctrl-C lands after the line and its count, never between
            _append_bytes(self.path, line)
            self._keys.add(key)
            self.records.append(record)
            self.appended += 1
        return True


def merged_records(run_dir: str, stem: str = "results") -> list[dict]:
    """Every record of the folder's results files (all shards), one per key (first wins),
    sorted by (prompt_id, seed, condition order of appearance); for results, with the
    metric values of metrics*.jsonl folded in. Unreadable lines are skipped with a warning."""
    seen: dict[tuple, dict] = {}
    for path in results_files(run_dir, stem):
        for record in read_records(path, strict=False):
            seen.setdefault(record_key(record), record)
    if stem == "results":
        for path in results_files(run_dir, "metrics"):
            _fold_metrics(seen, read_records(path, strict=False, key=metric_key))
    return sorted(seen.values(), key=lambda r: (r["prompt_id"], r["seed"]))


def _fold_metrics(records: dict, updates: list[dict]) -> None:
    """Put each metric value of ``updates`` into its record (by key) unless the record has
    that metric already: the value written first wins, as for records."""
    for u in updates:
        record = records.get(record_key(u))
        if record is None or u["metric"] in record["metrics"]:
            continue
        record["metrics"][u["metric"]] = u["value"]
        if u.get("error"):
            record.setdefault("metric_errors", {})[u["metric"]] = u["error"]
        record.setdefault("metric_info", {})[u["metric"]] = u["info"]
        record["untrained_metrics"] = bool(record.get("untrained_metrics")) or bool(u["info"].get("untrained"))


class FolderBusy(RuntimeError):
    """Another process holds the lock of this run folder (or of this shard of it)."""


class FolderLock:
    """An exclusive flock on ``path`` (non-blocking unless ``blocking``), held until :meth:`release` (or the
    process ends: the kernel drops a dead holder's lock, so a killed run never leaves a
    stale lock). Why: two processes appending to one results file would make every image
    twice; the second one must stop at once and say who holds the folder. The file keeps
    the holder's pid, host and start time for that message; it is left in place on release
    (removing it would let a third process lock a different file of the same name).
    """

    def __init__(self, path: str, blocking: bool = False):
        self.path = path
        self.blocking = blocking  # wait for the holder instead of raising FolderBusy
        self._fd = None

    def acquire(self) -> "FolderLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.read(fd, 4096))
            os.close(fd)
            raise FolderBusy(f"{os.path.dirname(self.path)} is in use by another sinkattn run ({holder}; lock "
                             f"{os.path.basename(self.path)}); wait for it to end, or use another --out") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(data: bytes) -> str:
    try:
        info = json.loads(data)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written its line yet
        return "holder not yet known"
