"""Strategies: FedAvg and the `Strategy` interface to write others."""

from pollen.server.strategy.bulyan import Bulyan
from pollen.server.strategy.fedavg import FedAvg
from pollen.server.strategy.fedmedian import FedMedian
from pollen.server.strategy.fedtrimmedavg import FedTrimmedAvg
from pollen.server.strategy.krum import Krum
from pollen.server.strategy.strategy import (
    EvaluateIns,
    FitAggregator,
    FitIns,
    Strategy,
)

__all__ = [
    "Bulyan",
    "EvaluateIns",
    "FedAvg",
    "FedMedian",
    "FedTrimmedAvg",
    "FitAggregator",
    "FitIns",
    "Krum",
    "Strategy",
]
