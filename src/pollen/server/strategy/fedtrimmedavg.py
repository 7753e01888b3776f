"""FedTrimmedAvg: the coordinate-wise trimmed mean of the nodes' weights (Yin et al., 2018)."""

from __future__ import annotations

from collections.abc import Mapping

from pollen.aggregation.robust import TrimmedMean, check_beta
from pollen.records.typing import NDArray, NDArrays, Parameters
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn
from pollen.server.strategy.spilled import SpilledAggregator, spill_disk_needed
from pollen.server.strategy.strategy import FitAggregator


class FedTrimmedAvg(FedAvg):
    """Each weight of the new model is the mean of that weight across the results after
    dropping the ``int(beta * n)`` lowest and as many highest values, unweighted by
    examples (Flower's ``aggregate_trimmed_avg``); FedAvg's other arguments.

    ``beta`` in [0, 0.5): 0 is the plain unweighted mean. Memory: results are kept on
    disk as they arrive and trimmed a few MiB at a time (see `FedMedian`).
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
        beta: float = 0.2,
    ) -> None:
        self.beta = check_beta("FedTrimmedAvg", beta)
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

    def __repr__(self) -> str:
        return f"FedTrimmedAvg(accept_failures={self.accept_failures})"

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        rule = TrimmedMean(parameters, self.beta)
        return SpilledAggregator(rule, self.fit_metrics_aggregation_fn, server_round)

    def disk_needed(self, model_bytes: int, num_results: int) -> int:
        return spill_disk_needed(model_bytes, num_results)
