"""What the Driver API takes from a ServerApp's round reports (their bounds, the log
line of a round), and the feed that wakes the followers of a run's log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pollen.proto import driver_pb2 as dpb
from pollen.records.run_reports import MAX_RECORD_BYTES

MAX_SUMMARY_CHARS = 1000
MAX_OUTPUT_DIR_CHARS = 4096
MAX_ROUNDS = 1_000_000


def report_problem(request: dpb.ReportRoundRequest) -> str:
    """Why the Driver API refuses this report ("" when it takes it)."""
    size = len(request.record_json.encode())
    if size > MAX_RECORD_BYTES:
        return (
            f"round {request.round}'s record is {size} bytes, over the {MAX_RECORD_BYTES // 1024} "
            "KiB a round may report; report fewer or shorter metrics"
        )
    if not 0 < request.num_rounds <= MAX_ROUNDS:
        return f"num_rounds {request.num_rounds} is not between 1 and {MAX_ROUNDS}"
    if request.round > request.num_rounds:
        return f"round {request.round} is past the run's {request.num_rounds} rounds"
    if len(request.output_dir) > MAX_OUTPUT_DIR_CHARS or len(request.summary) > MAX_SUMMARY_CHARS:
        return f"output_dir or summary is longer than {MAX_OUTPUT_DIR_CHARS} characters"
    if request.round and not isinstance(_decoded(request.record_json), dict):
        return f"round {request.round}'s record is not a JSON object"
    return ""


def _decoded(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def round_seconds(record_json: str) -> float:
    """How long the reported round took, by its record (0: it does not say)."""
    seconds = _decoded(record_json)
    value = seconds.get("seconds") if isinstance(seconds, dict) else None
    return float(value) if isinstance(value, int | float) else 0.0


def round_line(request: dpb.ReportRoundRequest) -> str:
    """The run's log line of a reported round: the ServerApp's own summary of it."""
    summary = " ".join(request.summary.split())  # one line, whatever the ServerApp sent
    return summary or f"round {request.round}/{request.num_rounds} reported"


class RunLogFeed:
    """Wakes the streams that follow a run's log when it gains a line; ends those of a
    revoked operator key. A follower also looks again every second (a run can change
    where nobody tells the feed: pruned, abandoned)."""

    def __init__(self) -> None:
        self._by_run: dict[int, set[asyncio.Queue[bool]]] = {}
        self._by_key: dict[str, set[asyncio.Queue[bool]]] = {}

    def listen(self, run_id: int, fingerprint: str) -> asyncio.Queue[bool]:
        """A queue that gets True when the run's log grows, False when the key is revoked."""
        queue: asyncio.Queue[bool] = asyncio.Queue()
        self._by_run.setdefault(run_id, set()).add(queue)
        if fingerprint:
            self._by_key.setdefault(fingerprint, set()).add(queue)
        return queue

    def unlisten(self, run_id: int, fingerprint: str, queue: asyncio.Queue[bool]) -> None:
        _discard(self._by_run, run_id, queue)
        _discard(self._by_key, fingerprint, queue)

    def notify(self, run_id: int) -> None:
        for queue in self._by_run.get(run_id, ()):
            queue.put_nowait(True)

    def revoke(self, fingerprint: str) -> None:
        for queue in self._by_key.get(fingerprint, ()):
            queue.put_nowait(False)


def _discard(
    registry: dict[Any, set[asyncio.Queue[bool]]], key: object, queue: asyncio.Queue[bool]
) -> None:
    listeners = registry.get(key)
    if listeners is not None:
        listeners.discard(queue)
        if not listeners:
            del registry[key]
