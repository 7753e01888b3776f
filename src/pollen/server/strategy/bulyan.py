"""Bulyan (El Mhamdi et al., 2018): repeated Krum, then a trimmed mean around the median."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pollen.aggregation.robust import (
    BulyanRule,
    aggregate_krum,
    bulyan_minimum,
    check_bulyan_rule,
)
from pollen.records.typing import NDArray, NDArrays, Parameters
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn
from pollen.server.strategy.spilled import (
    SpilledAggregator,
    check_enough_nodes,
    spill_disk_needed,
)
from pollen.server.strategy.strategy import FitAggregator


class Bulyan(FedAvg):
    """Krum picks ``theta = n - 2f`` updates one by one (f = ``num_malicious_clients``),
    each time among those not yet picked; then each weight of the new model is the mean
    of the ``theta - 2f`` picked values nearest their median. Unweighted by examples;
    FedAvg's other arguments.

    ``first_aggregation_rule`` and its arguments (``to_keep``) are Flower's: the rule is
    Krum (`pollen.aggregation.robust.aggregate_krum`), the only one Flower's
    Bulyan accepts, with ``to_keep`` 0, which is also the default here (Flower's has
    none and fails at the first round without it).

    Needs n >= 4f + 3 results: a configuration whose rounds may sample fewer is refused
    at construction, and a round that ends with fewer stops the run (Flower raises
    there). Memory: results are kept on disk as they arrive, with their pairwise
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
        evaluate_fn: EvaluateFn | None = None,
        on_fit_config_fn: ConfigFn | None = None,
        on_evaluate_config_fn: ConfigFn | None = None,
        accept_failures: bool = True,
        initial_parameters: Parameters | NDArrays | Mapping[str, NDArray] | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        first_aggregation_rule: Callable[..., NDArrays] = aggregate_krum,
        **aggregation_rule_kwargs: Any,
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
        check_bulyan_rule("Bulyan", first_aggregation_rule, aggregation_rule_kwargs)
        check_enough_nodes(
            "Bulyan",
            num_malicious_clients,
            bulyan_minimum(num_malicious_clients),
            "Bulyan (n >= 4f + 3)",
            fraction_fit,
            min_fit_clients,
            min_available_clients,
        )
        self.num_malicious_clients = num_malicious_clients
        self.first_aggregation_rule = first_aggregation_rule
        self.aggregation_rule_kwargs = aggregation_rule_kwargs

    def __repr__(self) -> str:
        return f"Bulyan(accept_failures={self.accept_failures})"

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        f = self.num_malicious_clients
        return SpilledAggregator(
            BulyanRule(parameters, f),
            self.fit_metrics_aggregation_fn,
            server_round,
            bulyan_minimum(f),
            f"Bulyan with num_malicious_clients={f} needs at least {bulyan_minimum(f)} "
            "(n >= 4f + 3); start more nodes or lower num_malicious_clients",
        )

    def disk_needed(self, model_bytes: int, num_results: int) -> int:
        return spill_disk_needed(model_bytes, num_results)
