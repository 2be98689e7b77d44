"""sinkattn.memo.ObjectMemo: values per live object and key, emptied when full."""

import torch

from sinkattn.memo import ObjectMemo


def test_a_value_is_found_only_for_its_object_and_key():
    memo = ObjectMemo(max_entries=8)
    a, b = torch.zeros(2), torch.zeros(2)
    memo.put(a, "a", key=1)
    assert memo.get(a, 1) == "a"
    assert memo.get(a, 2) is None and memo.get(b, 1) is None  # another key, an equal but other object
    memo.put(a, "a again", key=1)
    assert memo.get(a, 1) == "a again" and memo.values() == ["a again"]


def test_a_dead_objects_entry_is_not_found_by_its_id():
    memo = ObjectMemo(max_entries=8)
    a = torch.zeros(2)
    memo.put(a, "a")
    entry_id = id(a)
    del a
    # Whatever now holds that id (or a stand-in claiming it) is not the object the value was put for.
    stand_in = torch.zeros(2)
    memo._entries[(id(stand_in), None)] = memo._entries.pop((entry_id, None))
    assert memo.get(stand_in) is None


def test_the_store_is_emptied_when_full():
    memo = ObjectMemo(max_entries=2)
    keep = [torch.zeros(1) for _ in range(3)]
    memo.put(keep[0], 0)
    memo.put(keep[1], 1)
    memo.put(keep[2], 2)  # full: emptied first
    assert memo.get(keep[0]) is None and memo.get(keep[1]) is None and memo.get(keep[2]) == 2
