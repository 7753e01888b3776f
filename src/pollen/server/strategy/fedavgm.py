"""FedAvgM: federated averaging with server momentum (Hsu et al., 2019, arXiv:1909.06335)."""

from __future__ import annotations

from collections.abc import Mapping

from pollen.aggregation.server_optimizers import ServerMomentum
from pollen.records.typing import NDArray, NDArrays, Parameters
from pollen.server.strategy.arguments import initial_model, positive, unit_interval
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn
from pollen.server.strategy.server_step import ServerStepAggregator
from pollen.server.strategy.strategy import FitAggregator


class FedAvgM(FedAvg):
    """FedAvg followed by a server SGD step with momentum on the pseudo-gradient.

    Each round: ``g = x - mean`` (the model the round started from minus the
    nodes' weighted mean); with ``server_momentum > 0``, ``m = server_momentum * m + g``
    (``m = g`` in the strategy's first round) and ``g = m``; then
    ``x <- x - server_learning_rate * g``. With the defaults (rate 1, momentum 0)
    it is FedAvg. Rule: `pollen.aggregation.server_optimizers.ServerMomentum`.

    ``initial_parameters`` is required as soon as the server step is on (a rate
    other than 1 or a momentum), as in Flower 1.42, where it fails on round 1 without.

    State: the momentum buffer (``momentum_vector``) lives in this object across
    rounds. It is not in the checkpoint: a resumed run starts it again from that
    round's pseudo-gradient. Memory: the model, the running sum and the buffer.
    """

    def __init__(
        self,
        *,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int = 2,
        min_evaluate_clients: int = 2,
        min_available_clients: int = 2,
        evaluate_fn: EvaluateFn | None = None,
        on_fit_config_fn: ConfigFn | None = None,
        on_evaluate_config_fn: ConfigFn | None = None,
        accept_failures: bool = True,
        initial_parameters: Parameters | NDArrays | Mapping[str, NDArray] | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
    ) -> None:
        positive("FedAvgM", "server_learning_rate", server_learning_rate)
        unit_interval("FedAvgM", "server_momentum", server_momentum, closed=False)
        self.server_opt = server_momentum != 0.0 or server_learning_rate != 1.0
        """Whether a server step follows the mean (Flower's name)."""
        if self.server_opt:
            initial_model(
                "FedAvgM",
                initial_parameters,
                "server_learning_rate or server_momentum step from the initial model",
            )
        super().__init__(
            fraction_fit=fraction_fit,
            fraction_evaluate=fraction_evaluate,
            min_fit_clients=min_fit_clients,
            min_evaluate_clients=min_evaluate_clients,
            min_available_clients=min_available_clients,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=on_fit_config_fn,
            on_evaluate_config_fn=on_evaluate_config_fn,
            accept_failures=accept_failures,
            initial_parameters=initial_parameters,
            fit_metrics_aggregation_fn=fit_metrics_aggregation_fn,
            evaluate_metrics_aggregation_fn=evaluate_metrics_aggregation_fn,
        )
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.optimizer = ServerMomentum(server_learning_rate, server_momentum)

    def __repr__(self) -> str:
        return (
            f"FedAvgM(server_learning_rate={self.server_learning_rate}, "
            f"server_momentum={self.server_momentum})"
        )

    @property
    def momentum_vector(self) -> NDArrays | None:
        """The server momentum buffer; None before the first round or without momentum."""
        return self.optimizer.momentum_vector

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        mean = super().fit_aggregator(server_round, parameters)
        if not self.server_opt:
            return mean
        return ServerStepAggregator(mean, parameters, self.optimizer, server_round)
