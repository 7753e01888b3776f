"""What local training and evaluation return, on the node and on the server alike."""

from __future__ import annotations

from dataclasses import dataclass, field

from pollen.records.typing import Metrics, NDArrays


@dataclass
class FitRes:
    """What local training returns: new weights, examples used, metrics."""

    parameters: NDArrays
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass
class EvaluateRes:
    """What local evaluation returns: loss, examples used, metrics."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
