"""FedMedian: the coordinate-wise median of the nodes' weights (Yin et al., 2018)."""

from __future__ import annotations

from pollen.aggregation.robust import CoordinateMedian
from pollen.records.typing import NDArrays
from pollen.server.strategy.fedavg import FedAvg
from pollen.server.strategy.spilled import SpilledAggregator, spill_disk_needed
from pollen.server.strategy.strategy import FitAggregator


class FedMedian(FedAvg):
    """Each weight of the new model is the median of that weight across the results,
    unweighted by examples; FedAvg's arguments and node sampling.

    Memory: every result is kept on disk in the run's folder as it arrives (model x
    nodes of disk, freed after the round) and the median is computed a few MiB at a
    time, so the ServerApp holds about one model whatever the number of nodes.
    """

    def __repr__(self) -> str:
        return f"FedMedian(accept_failures={self.accept_failures})"

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        rule = CoordinateMedian(parameters)
        return SpilledAggregator(rule, self.fit_metrics_aggregation_fn, server_round)

    def disk_needed(self, model_bytes: int, num_results: int) -> int:
        return spill_disk_needed(model_bytes, num_results)
