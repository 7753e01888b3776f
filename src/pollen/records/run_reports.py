"""What a SuperLink tells operators of its runs and nodes: the rows of ``pollen runs``
and ``pollen nodes``, as the state keeps them and the Driver API hands them over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pollen.records.typing import UserConfig

MAX_RECORD_BYTES = 64 * 1024
"""The most a ServerApp may report of one round (its record, as JSON): the SuperLink
refuses more, the ServerApp trims a bigger record to fit."""


def omitted(record: Mapping[str, Any], key: str) -> int:
    """How many entries of a reported round's list ``key`` (``fit_nodes``,
    ``fit_failures``...) its ServerApp left out to fit the report (``metrics.json``
    holds them): its ``KEY_omitted`` count, 0 when absent."""
    count = record.get(f"{key}_omitted")
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


@dataclass(frozen=True)
class RunSummary:
    """A run as ``pollen runs ls`` lists it."""

    run_id: int
    app: str
    status: str
    owner: str
    """The fingerprint of the operator key that created it ("": none)."""
    created_at: float
    finished_at: float | None
    rounds_done: int
    """The last round its ServerApp reported (0: none yet)."""
    num_rounds: int
    """How many rounds the ServerApp said the run has (0: not said yet)."""
    message: str = ""


@dataclass(frozen=True)
class RoundReport:
    """One round as the ServerApp reported it: ``record`` is its JSON object, as
    ``metrics.json`` holds it."""

    round: int
    record: str
    reported_at: float


@dataclass(frozen=True)
class RunDetails:
    summary: RunSummary
    run_config: UserConfig
    output_dir: str
    """Where the ServerApp writes the run's outputs ("": it did not say)."""
    rounds: list[RoundReport]


@dataclass(frozen=True)
class RunLogLine:
    line_id: int
    """Increasing within a database: a follower asks for the lines after the last it saw."""
    at: float
    text: str


@dataclass(frozen=True)
class NodeSummary:
    """A node as ``pollen nodes ls`` lists it."""

    node_id: int
    fingerprint: str
    """Of the node's key ("": it joined without one)."""
    status: str
    """online, offline or left."""
    last_seen: float
    tasks_done: int
    tasks_failed: int
    address: str = ""
    """Of its current or last connection, as the SuperLink saw it ("": unknown)."""
