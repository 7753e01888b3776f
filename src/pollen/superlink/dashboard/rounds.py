"""What a run's reported rounds say, read once for the run page's table and its charts.

A round's record is the JSON object ``metrics.json`` holds (sent by the ServerApp, so
any shape may arrive): its numeric metrics become named series, one value per round
(None where a round did not report it), its nodes' results and failures rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pollen.records.run_reports import RunDetails, omitted

MAX_SERIES = 12
"""The most metrics a run page shows (a ServerApp may report hundreds)."""

_LOSSES = (("evaluate_loss", "loss"), ("centralized_loss", "server loss"))
_METRIC_GROUPS = (
    ("evaluate_metrics", ""),
    ("fit_metrics", "fit "),
    ("centralized_metrics", "server "),
)


@dataclass(frozen=True)
class Round:
    number: int
    record: dict[str, Any]
    reported_at: float

    @property
    def seconds(self) -> float | None:
        return number(self.record.get("seconds"))

    def omitted(self, key: str) -> int:
        """How many entries of its list ``key`` (``fit_nodes``, ``fit_failures``…) the
        ServerApp left out of the report to fit it (``metrics.json`` holds them)."""
        return omitted(self.record, key)

    def failures(self) -> list[tuple[str, str]]:
        """(stage, reason) of each node that failed in this round."""
        return [
            (stage, str(reason))
            for stage in ("fit", "evaluate")
            for reason in _list(self.record.get(f"{stage}_failures"))
        ]


def rounds_of(details: RunDetails) -> list[Round]:
    return [Round(r.round, _parsed(r.record), r.reported_at) for r in details.rounds]


def series(rounds: Iterable[Round]) -> dict[str, list[float | None]]:
    """Each numeric metric the rounds report, by name: its value in each round."""
    rounds = list(rounds)
    values = [_numbers(r.record) for r in rounds]
    names: dict[str, None] = {}
    for found in values:
        for name in found:
            names.setdefault(name)
    return {name: [found.get(name) for found in values] for name in list(names)[:MAX_SERIES]}


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    for key, name in _LOSSES:
        value = number(record.get(key))
        if value is not None:
            found[name] = value
    for group, prefix in _METRIC_GROUPS:
        for key, raw in _object(record.get(group)).items():
            value = number(raw)
            if value is not None:
                found.setdefault(prefix + str(key), value)
    return found


@dataclass(frozen=True)
class NodeRow:
    """One node's fit result in a round."""

    node_id: int
    examples: int
    seconds: float | None
    """From the round's fit instructions to its reply (None: not recorded, as in runs
    from before it was kept)."""
    metrics: dict[str, float]


def node_rows(round_: Round) -> list[NodeRow]:
    """Each node's fit result in ``round_``, with its numeric metrics."""
    rows = []
    for node in _list(round_.record.get("fit_nodes")):
        entry = _object(node)
        node_id, examples = entry.get("node_id"), entry.get("num_examples")
        if isinstance(node_id, int) and isinstance(examples, int):
            metrics = {
                str(k): v
                for k, raw in _object(entry.get("metrics")).items()
                if (v := number(raw)) is not None
            }
            seconds = number(entry.get("seconds"))
            rows.append(NodeRow(node_id, examples, seconds if seconds else None, metrics))
    return rows


def number(value: Any) -> float | None:
    """``value`` if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def _parsed(record: str) -> dict[str, Any]:
    try:
        return _object(json.loads(record))
    except ValueError:
        return {}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
