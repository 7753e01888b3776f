"""A round's record trimmed to what the SuperLink takes of one round's report.

A round on a thousand nodes lists a thousand fit results; its record outgrows the
bound the SuperLink sets on a report. The ServerApp then sends the part that fits:
every aggregate, the slowest fits, the worst evaluations, the first failures, and how
many of each it left out (``metrics.json`` keeps them all).
"""

from __future__ import annotations

import json
from typing import Any

Entry = Any
"""One per-node entry of a record: a node's result (an object) or a failure (a string)."""


TRIMMED: dict[str, str | None] = {
    "fit_nodes": "seconds",  # the slowest fits first
    "evaluate_nodes": "loss",  # the highest losses first
    "fit_failures": None,  # in the order they happened
    "evaluate_failures": None,
}
"""The lists a record may be trimmed of, and the number in their entries by which the
largest are kept first (None: in their order)."""


def fitted(record: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """``record`` if its JSON is at most ``max_bytes``; else a copy whose per-node lists
    keep the entries that fit (taken in turn from each list, each in its own order: see
    `TRIMMED`) and say how many they left out (``"fit_nodes_omitted": N`` and alike, only
    where N > 0). Aggregates are never dropped; a record still too big without any
    per-node entry is returned as it is."""
    if _size(record) <= max_bytes:
        return record
    lists = {key: _ordered(record.get(key), order) for key, order in TRIMMED.items()}
    bare = {**record, **{key: [] for key, entries in lists.items() if entries}}
    # room for every "..._omitted": N that may be added (a few bytes to spare)
    notes = sum(
        len(f', "{key}_omitted": {len(entries)}') for key, entries in lists.items() if entries
    )
    room = max_bytes - _size(bare) - notes
    if room < 0:
        return record
    trimmed = dict(bare)
    for key, count in _kept_in_turn(lists, room).items():
        if lists[key]:
            trimmed[key] = lists[key][:count]
        if count < len(lists[key]):
            trimmed[f"{key}_omitted"] = len(lists[key]) - count
    return trimmed


def _ordered(value: Any, field: str | None) -> list[Entry]:
    entries = value if isinstance(value, list) else []
    if field is None:
        return entries
    return sorted(entries, key=lambda entry: _number(entry, field), reverse=True)


def _number(entry: Entry, field: str) -> float:
    """``entry[field]`` if it is a number (not a bool, not NaN), else 0."""
    value = entry.get(field) if isinstance(entry, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        return 0.0
    return float(value)


def _kept_in_turn(lists: dict[str, list[Entry]], room: int) -> dict[str, int]:
    """How many of each list's first entries fit in ``room`` bytes, one from each list
    in turn, a list closing at its first entry that does not fit. Each entry's JSON is
    measured once; in a list, entries after the first also take a ", "."""
    sizes = {key: [_size(entry) for entry in entries] for key, entries in lists.items()}
    kept = dict.fromkeys(lists, 0)
    open_lists = [key for key, entries in lists.items() if entries]
    while open_lists:
        for key in list(open_lists):
            count = kept[key]
            cost = sizes[key][count] + (2 if count else 0)
            if cost > room:
                open_lists.remove(key)
                continue
            room -= cost
            kept[key] = count + 1
            if kept[key] == len(sizes[key]):
                open_lists.remove(key)
    return kept


def _size(value: Any) -> int:
    """Bytes of ``value`` as ``json.dumps`` writes it (as the report carries it)."""
    return len(json.dumps(value).encode())
