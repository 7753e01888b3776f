"""A round's mean turned into the new model by a server optimizer (FedAvgM, FedOpt family)."""

from __future__ import annotations

from pollen.aggregation.server_optimizers import ServerOptimizer
from pollen.records.replies import FitRes
from pollen.records.typing import Metrics, NDArrays
from pollen.server.strategy.strategy import FitAggregator


class ServerStepAggregator(FitAggregator):
    """Folds results with ``inner`` (FedAvg's weighted mean), then steps ``optimizer``
    from the model the round started from to that mean.

    Memory: ``inner``'s running sum, the round's model (kept for the step) and the
    optimizer's state; the step itself writes over the mean.
    """

    def __init__(
        self,
        inner: FitAggregator,
        current: NDArrays,
        optimizer: ServerOptimizer,
        server_round: int,
    ) -> None:
        self._inner = inner
        self._current = current
        self._optimizer = optimizer
        self._round = server_round

    def add(self, node_id: int, result: FitRes) -> None:
        self._inner.add(node_id, result)

    def finish(self) -> tuple[NDArrays | None, Metrics]:
        mean, metrics = self._inner.finish()
        if mean is None:
            return None, metrics
        new = self._optimizer.step(self._round, self._current, mean)
        self._current = []
        return new, metrics
