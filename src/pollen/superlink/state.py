"""The SuperLink's durable state behind one small interface.

`SqliteState` is the embedded default; another backend (PostgreSQL) implements
the same `State` protocol and runs the same test suite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pollen.records.messages import Message, RunInfo
from pollen.records.run_reports import NodeSummary, RoundReport, RunDetails, RunLogLine, RunSummary
from pollen.records.typing import UserConfig

NodeStatus = Literal["online", "offline", "left"]


@dataclass(frozen=True)
class NodeRecord:
    node_id: int
    status: NodeStatus
    registered_at: float
    last_seen: float


@dataclass(frozen=True)
class AuditEvent:
    """One security-relevant event: a join, a rejection, a revocation."""

    at: float
    api: str
    event: str
    fingerprint: str
    peer: str
    reason: str
    count: int = 1
    """How many times it happened: repeats within a minute share one row (see `Audit`)."""


def created_line(run_id: int, app: str) -> str:
    """The first line of a run's log."""
    return f"run {run_id} created ({app or 'unnamed app'})"


def resumed_line(run_id: int) -> str:
    return f"run {run_id} resumed by its ServerApp"


def ended_line(run_id: int, status: str, message: str) -> str:
    """The last line of a run's log: finished, or failed and why."""
    return f"run {run_id} {status}" + (f": {message}" if message else "")


class State(Protocol):
    """What the SuperLink stores: nodes, runs, messages (instructions and their replies)
    and known blobs."""

    def add_node(self, node_id: int, now: float, key_fingerprint: str | None = None) -> None: ...
    def node_for_key(self, key_fingerprint: str) -> int | None: ...
    def get_node(self, node_id: int) -> NodeRecord | None: ...
    def node_status(self, node_id: int) -> NodeStatus | None: ...
    def set_node_status(self, node_id: int, status: NodeStatus, now: float) -> None: ...
    def list_nodes(self, status: NodeStatus) -> list[int]: ...

    def superlink_id(self) -> str:
        """Made with the database: run ids are unique only within one SuperLink's state."""
        ...

    def create_run(self, app: str, run_config: UserConfig, now: float, owner: str = "") -> int:
        """A new running run; ``owner``: the operator key that created it ("" without
        operator keys)."""
        ...

    def get_run(self, run_id: int) -> RunInfo | None: ...
    def run_owner(self, run_id: int) -> str | None:
        """The operator key that created the run ("": none); None when there is no such run."""
        ...

    def prune_runs(self, finished_before: float, owner: str | None = None) -> list[int]: ...
    def idle_running_runs(self, idle_before: float, owner: str | None = None) -> list[int]: ...
    def abandon_run(self, run_id: int, message: str) -> None: ...
    def reopen_run(self, run_id: int, now: float) -> None: ...
    def finish_run(self, run_id: int, status: str, message: str, now: float) -> None:
        """End the run (and write its last log line)."""
        ...

    # what runs report, for operators (each change of a run also writes a line of its log)
    def list_runs(self, owner: str | None = None) -> list[RunSummary]:
        """The runs (of ``owner`` only, unless None), oldest first."""
        ...

    def run_details(self, run_id: int) -> RunDetails | None: ...
    def set_run_plan(self, run_id: int, num_rounds: int, output_dir: str) -> None:
        """How many rounds the run has and where its outputs go, as its ServerApp said."""
        ...

    def report_round(self, run_id: int, report: RoundReport, line: str) -> None:
        """Keep ``report`` (replacing an earlier report of that round) and log ``line``."""
        ...

    def run_log(self, run_id: int, after: int = 0) -> list[RunLogLine]:
        """The run's log lines after line id ``after``, oldest first."""
        ...

    def node_summaries(self) -> list[NodeSummary]: ...

    def add_messages(self, messages: Sequence[Message]) -> None:
        """Store instructions, pending delivery."""
        ...

    def get_message(self, message_id: str) -> Message | None: ...
    def pending_messages(self, node_id: int) -> list[Message]: ...
    def mark_delivered(self, message_id: str) -> bool: ...
    def requeue_delivered(self, node_id: int) -> None: ...
    def open_messages_of_run(self, run_id: int) -> list[Message]: ...
    def open_messages_created_before(self, created_before: float) -> list[Message]: ...
    def open_messages(self, node_id: int) -> list[Message]:
        """``node_id``'s instructions that have no reply yet."""
        ...

    def add_reply(self, reply: Message) -> bool:
        """Store ``reply``; False when its instruction already has one (the first wins)."""
        ...

    def get_replies(self, message_ids: Iterable[str]) -> list[Message]:
        """The stored replies to the instructions ``message_ids``."""
        ...

    def node_has_run(self, node_id: int, run_id: int) -> bool: ...
    def node_can_read_blob(self, node_id: int, digest: str) -> bool: ...

    def add_audit(self, event: AuditEvent) -> int:
        """Store ``event``; the id of its row."""
        ...

    def set_audit_count(self, row_id: int, count: int) -> None: ...
    def list_audit(self, limit: int = 1000) -> list[AuditEvent]: ...

    def add_blob(self, digest: str, size: int, now: float) -> None: ...
    def has_blob(self, digest: str) -> bool: ...
    def blob_size(self, digest: str) -> int | None:
        """The size the SuperLink stored ``digest`` with; None when it holds no such blob."""
        ...

    def add_upload(self, digest: str, node_id: int, run_id: int) -> None:
        """``node_id`` uploaded ``digest`` for ``run_id`` (the same bytes from two nodes:
        one blob, two uploads)."""
        ...

    def node_uploaded(self, node_id: int, run_id: int, digest: str) -> bool: ...
    def node_stored_bytes(self, node_id: int, run_id: int) -> int:
        """Bytes of the blobs ``node_id`` uploaded for ``run_id`` that the run still holds."""
        ...

    def node_has_open_message(self, node_id: int, run_id: int) -> bool: ...
    def model_size_for(self, node_id: int, run_id: int) -> int:
        """The largest stored blob an open instruction of ``node_id`` in ``run_id`` names
        (0: none)."""
        ...

    def hold_blobs(self, run_id: int, digests: Iterable[str]) -> None: ...
    def release_blobs(
        self, run_id: int, digests: Iterable[str] | None = None, keep: Iterable[str] = ()
    ) -> list[str]: ...
    def blob_owners(self, digest: str) -> set[str]:
        """The owners of the runs that hold ``digest`` (empty: no run holds it)."""
        ...

    def blob_in_use(self, digest: str) -> bool: ...
    def unheld_blobs(self, created_before: float) -> list[str]: ...
    def remove_blob(self, digest: str) -> None: ...

    def close(self) -> None: ...
