"""Values remembered per live object: the one mechanism behind the op's declared key-padding
masks (``ops.reuse_key_padding_plans``) and the processors' masks built once per diffusers
mask object (``processors.families._memoized_masks``).

An entry is found by the object's identity and a key, and is a hit only while that very
object lives: a weak reference tells it apart from a later object given the same id. Like
validation's memo, the store is emptied when full rather than evicted entry by entry."""

from __future__ import annotations

import weakref
from typing import Any, Hashable


class ObjectMemo:
    def __init__(self, max_entries: int):
        self._entries: dict = {}
        self._max_entries = max_entries

    def get(self, obj, key: Hashable = None) -> Any:
        """The value put for ``obj`` (this object, still alive) and ``key``, else None."""
        hit = self._entries.get((id(obj), key))
        return hit[1] if hit is not None and hit[0]() is obj else None

    def put(self, obj, value, key: Hashable = None):
        """Remember ``value`` (not None) for ``obj`` and ``key``; returns it."""
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[(id(obj), key)] = (weakref.ref(obj), value)
        return value

    def values(self) -> list:
        """Every value held, its object alive or not."""
        return [value for _, value in self._entries.values()]
