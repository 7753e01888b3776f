"""Strategies: FedAvg and the `Strategy` interface to write others."""

from pollen.server.strategy.fedavg import FedAvg
from pollen.server.strategy.strategy import (
    EvaluateIns,
    FitAggregator,
    FitIns,
    Strategy,
)

__all__ = ["EvaluateIns", "FedAvg", "FitAggregator", "FitIns", "Strategy"]
