"""What a run measured, round by round; written as ``metrics.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pollen.records.typing import Metrics


@dataclass
class RoundRecord:
    round: int
    seconds: float = 0.0
    fit_results: int = 0
    fit_failures: list[str] = field(default_factory=list)
    fit_metrics: Metrics = field(default_factory=dict)
    evaluate_results: int = 0
    evaluate_failures: list[str] = field(default_factory=list)
    evaluate_loss: float | None = None
    evaluate_metrics: Metrics = field(default_factory=dict)
    centralized_loss: float | None = None
    centralized_metrics: Metrics = field(default_factory=dict)


@dataclass
class History:
    run_id: int
    rounds: list[RoundRecord] = field(default_factory=list)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> History:
        """What `to_json` wrote (bytes metrics come back as hex text)."""
        fields = set(RoundRecord.__dataclass_fields__)
        rounds = [
            RoundRecord(**{k: v for k, v in r.items() if k in fields}) for r in document["rounds"]
        ]
        return cls(int(document["run_id"]), rounds)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return value.hex() if isinstance(value, bytes) else value

        out = asdict(self)
        for record in out["rounds"]:
            for key in ("fit_metrics", "evaluate_metrics", "centralized_metrics"):
                record[key] = {k: plain(v) for k, v in record[key].items()}
        return out
