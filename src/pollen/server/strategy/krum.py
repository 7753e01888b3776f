"""Krum and multi-Krum (Blanchard et al., 2017): keep the update closest to its neighbours."""

from __future__ import annotations

from collections.abc import Mapping

from pollen.aggregation.robust import KrumRule
from pollen.errors import ConfigurationError
from pollen.records.typing import NDArray, NDArrays, Parameters
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn
from pollen.server.strategy.spilled import (
    SpilledAggregator,
    check_enough_nodes,
    spill_disk_needed,
)
from pollen.server.strategy.strategy import FitAggregator


def krum_minimum(num_malicious_clients: int) -> int:
    """Results Krum's guarantee needs with f Byzantine nodes: n > 2f + 2 (none for f = 0)."""
    return 2 * num_malicious_clients + 3 if num_malicious_clients > 0 else 1


class Krum(FedAvg):
    """Each update is scored by the sum of its squared distances to its ``n - f - 2``
    nearest others (f = ``num_malicious_clients``); the best-scored update becomes the
    model. With ``num_clients_to_keep`` > 0 (multi-Krum), the mean of that many
    best-scored updates, weighted by examples. FedAvg's other arguments.

    Unlike Flower's, it refuses a configuration whose rounds may have ``n <= 2f + 2``
    results (where Krum's guarantee does not hold) and stops the run when a round ends
    with that few. Memory: results are kept on disk as they arrive and their pairwise
    distances computed then, a few MiB at a time; the ServerApp holds about one model.
    """

    def __init__(
        self,
        *,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int = 2,
        min_evaluate_clients: int = 2,
        min_available_clients: int = 2,
        num_malicious_clients: int = 0,
        num_clients_to_keep: int = 0,
        evaluate_fn: EvaluateFn | None = None,
        on_fit_config_fn: ConfigFn | None = None,
        on_evaluate_config_fn: ConfigFn | None = None,
        accept_failures: bool = True,
        initial_parameters: Parameters | NDArrays | Mapping[str, NDArray] | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = None,
    ) -> None:
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
        check_enough_nodes(
            "Krum",
            num_malicious_clients,
            krum_minimum(num_malicious_clients),
            "Krum (n > 2f + 2)",
            fraction_fit,
            min_fit_clients,
            min_available_clients,
        )
        if num_clients_to_keep < 0:
            raise ConfigurationError(
                f"Krum(num_clients_to_keep={num_clients_to_keep}): must be 0 (Krum) "
                "or the number of best-scored updates to average (multi-Krum)"
            )
        self.num_malicious_clients = num_malicious_clients
        self.num_clients_to_keep = num_clients_to_keep

    def __repr__(self) -> str:
        return f"Krum(accept_failures={self.accept_failures})"

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        f = self.num_malicious_clients
        rule = KrumRule(parameters, f, self.num_clients_to_keep)
        return SpilledAggregator(
            rule,
            self.fit_metrics_aggregation_fn,
            server_round,
            krum_minimum(f),
            f"Krum with num_malicious_clients={f} needs at least {krum_minimum(f)} "
            "(n > 2f + 2); start more nodes or lower num_malicious_clients",
        )

    def disk_needed(self, model_bytes: int, num_results: int) -> int:
        return spill_disk_needed(model_bytes, num_results)
