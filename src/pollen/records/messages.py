"""Messages of records: what travels between ServerApps, the SuperLink and SuperNodes.

A ServerApp sends an *instruction* to one node; the node answers with a *reply*
whose ``reply_to`` names the instruction. A message's content is named
records: arrays (references to content-addressed blobs, streamed and
deduplicated apart from the message), metrics and configs. The message type
says what the node is asked to do; apps register a handler per type.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pollen.errors import RecordError
from pollen.records.typing import Config, Metrics, UserConfig

TRAIN = "train"
EVALUATE = "evaluate"
QUERY = "query"
MESSAGE_TYPES: tuple[str, ...] = (TRAIN, EVALUATE, QUERY)
"""The kinds of work a node can be asked for. A type may name an action of its kind
after a dot (``query.get_parameters``); a new kind is one more entry here."""

_ACTION = re.compile(r"[a-z0-9_][a-z0-9_-]{0,62}")


def check_message_type(text: str) -> str:
    """``text`` if it is a message type (`MESSAGE_TYPES`, optionally ``.action``)."""
    kind, dot, action = text.partition(".")
    if kind in MESSAGE_TYPES and (not dot or _ACTION.fullmatch(action)):
        return text
    raise RecordError(
        f"unknown message type {text[:80]!r}; expected one of {', '.join(MESSAGE_TYPES)}, "
        "optionally followed by .action (lowercase letters, digits, _ or -)"
    )


def base_type(message_type: str) -> str:
    """The kind of a message type: ``query`` for ``query.get_parameters``."""
    return message_type.partition(".")[0]


@dataclass(frozen=True)
class BlobRef:
    """A content-addressed blob: BLAKE3 hex digest and size in bytes."""

    digest: str
    size: int


A = TypeVar("A")


@dataclass
class Records(Generic[A]):
    """A message's content: named array, metric and config records.

    On the wire an array record is a `BlobRef` to its blob; inside an app it is
    the decoded arrays (``Records[NDArrays]``).
    """

    arrays: dict[str, A] = field(default_factory=dict)
    metrics: dict[str, Metrics] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)

    def blobs(self: Records[BlobRef]) -> list[BlobRef]:
        """The blobs this content names."""
        return list(self.arrays.values())


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Message:
    """An instruction to one node, or that node's reply to it.

    ``node_id`` is the node the instruction goes to, and the node a reply comes
    from. A reply's ``error`` is non-empty when the node could not do the work.
    """

    run_id: int
    node_id: int
    message_type: str
    content: Records[BlobRef] = field(default_factory=Records)
    reply_to: str = ""
    error: str = ""
    message_id: str = field(default_factory=_new_id)
    created_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def is_reply(self) -> bool:
        return bool(self.reply_to)

    def reply(self, content: Records[BlobRef] | None = None, error: str = "") -> Message:
        """A reply to this instruction, from the node it went to."""
        return Message(
            self.run_id,
            self.node_id,
            self.message_type,
            content if content is not None else Records(),
            reply_to=self.message_id,
            error=error,
        )


@dataclass
class RunInfo:
    """A run as the SuperLink knows it."""

    run_id: int
    app: str
    run_config: UserConfig
    status: str = "running"
