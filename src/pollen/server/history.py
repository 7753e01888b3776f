"""What a run measured, round by round, and what it was; written as ``metrics.json``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pollen.records.typing import Metrics, Scalar, UserConfig

RoundValues = list[tuple[int, Scalar]]


def now_iso() -> str:
    """The current time as ISO 8601 in UTC, to the millisecond (how metrics.json dates)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class NodeFit:
    """One node's fit result in a round."""

    node_id: int
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    seconds: float = 0.0
    """Seconds from the ServerApp sending the round's fit instructions to this node's
    reply arriving, as the ServerApp sees it (its own clock, before it downloads the
    result): the node's download, fit and upload, and any wait while the ServerApp
    took an earlier reply. 0.0 in runs recorded before it was kept."""


@dataclass
class NodeEvaluate:
    """One node's evaluation result in a round."""

    node_id: int
    num_examples: int
    loss: float
    metrics: Metrics = field(default_factory=dict)


@dataclass
class RoundRecord:
    round: int
    started_at: str = ""
    seconds: float = 0.0
    fit_results: int = 0
    fit_failures: list[str] = field(default_factory=list)
    fit_metrics: Metrics = field(default_factory=dict)
    fit_nodes: list[NodeFit] = field(default_factory=list)
    evaluate_results: int = 0
    evaluate_failures: list[str] = field(default_factory=list)
    evaluate_loss: float | None = None
    evaluate_metrics: Metrics = field(default_factory=dict)
    evaluate_nodes: list[NodeEvaluate] = field(default_factory=list)
    centralized_loss: float | None = None
    centralized_metrics: Metrics = field(default_factory=dict)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RoundRecord:
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        known["fit_nodes"] = [NodeFit(**n) for n in record.get("fit_nodes", [])]
        known["evaluate_nodes"] = [NodeEvaluate(**n) for n in record.get("evaluate_nodes", [])]
        return cls(**known)


@dataclass
class History:
    """A run as ``metrics.json`` holds it: what ran, where, when, and every round."""

    run_id: int
    rounds: list[RoundRecord] = field(default_factory=list)
    superlink_id: str = ""
    """The SuperLink's database: run ids are unique only within it."""
    app: str = ""
    run_config: UserConfig = field(default_factory=dict)
    started_at: str = ""
    finished_at: str | None = None
    array_names: list[str] | None = None
    """Names of the model's arrays (a state_dict's keys), when the app gave them."""

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> History:
        """What `to_json` wrote (bytes metrics come back as hex text)."""
        names = document.get("array_names")
        return cls(
            int(document["run_id"]),
            [RoundRecord.from_json(r) for r in document["rounds"]],
            superlink_id=str(document.get("superlink_id", "")),
            app=str(document.get("app", "")),
            run_config=dict(document.get("run_config", {})),
            started_at=str(document.get("started_at", "")),
            array_names=[str(n) for n in names] if isinstance(names, list) else None,
        )

    # Flower's History fields, computed from the rounds (metrics.json keeps its own form)
    @property
    def losses_distributed(self) -> list[tuple[int, float]]:
        """(round, loss aggregated over the nodes' evaluations), rounds that had one."""
        return [(r.round, r.evaluate_loss) for r in self.rounds if r.evaluate_loss is not None]

    @property
    def losses_centralized(self) -> list[tuple[int, float]]:
        """(round, the strategy's ``evaluate_fn`` loss), rounds that had one."""
        return [
            (r.round, r.centralized_loss) for r in self.rounds if r.centralized_loss is not None
        ]

    @property
    def metrics_distributed_fit(self) -> dict[str, RoundValues]:
        """{name: [(round, value)]} of the aggregated fit metrics."""
        return _by_name((r.round, r.fit_metrics) for r in self.rounds)

    @property
    def metrics_distributed(self) -> dict[str, RoundValues]:
        """{name: [(round, value)]} of the aggregated evaluation metrics."""
        return _by_name((r.round, r.evaluate_metrics) for r in self.rounds)

    @property
    def metrics_centralized(self) -> dict[str, RoundValues]:
        """{name: [(round, value)]} of the strategy's ``evaluate_fn`` metrics."""
        return _by_name((r.round, r.centralized_metrics) for r in self.rounds)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for record in out["rounds"]:
            for key in ("fit_metrics", "evaluate_metrics", "centralized_metrics"):
                record[key] = _plain(record[key])
            for node in (*record["fit_nodes"], *record["evaluate_nodes"]):
                node["metrics"] = _plain(node["metrics"])
        out["run_config"] = _plain(out["run_config"])
        return out


def _by_name(rounds: Iterable[tuple[int, Metrics]]) -> dict[str, RoundValues]:
    out: dict[str, RoundValues] = {}
    for round_, metrics in rounds:
        for name, value in metrics.items():
            out.setdefault(name, []).append((round_, value))
    return out


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in values.items()}
