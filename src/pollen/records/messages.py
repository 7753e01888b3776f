"""Tasks, results and runs as plain data: what travels between the processes."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from pollen.records.typing import Config, Metrics, UserConfig

TaskKind = Literal["get_parameters", "fit", "evaluate"]
TASK_KINDS: tuple[TaskKind, ...] = ("get_parameters", "fit", "evaluate")


@dataclass(frozen=True)
class BlobRef:
    """A content-addressed blob: BLAKE3 hex digest and size in bytes."""

    digest: str
    size: int


@dataclass
class Task:
    """One instruction to one node."""

    run_id: int
    node_id: int
    kind: TaskKind
    parameters: BlobRef | None = None
    config: Config = field(default_factory=dict)
    task_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)


@dataclass
class Result:
    """A node's reply to one task; ``error`` is non-empty when the task failed."""

    task_id: str
    run_id: int
    node_id: int
    kind: TaskKind
    parameters: BlobRef | None = None
    num_examples: int = 0
    loss: float = 0.0
    metrics: Metrics = field(default_factory=dict)
    error: str = ""
    created_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class RunInfo:
    """A run as the SuperLink knows it."""

    run_id: int
    app: str
    run_config: UserConfig
    status: str = "running"
