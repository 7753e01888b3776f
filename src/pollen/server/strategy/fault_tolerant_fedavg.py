"""FedAvg that tolerates failed nodes up to a minimum completion rate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pollen.records.replies import EvaluateRes
from pollen.records.typing import Metrics, NDArray, NDArrays, Parameters
from pollen.server.strategy.arguments import unit_interval
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn


def _rate(results: int, failures: int) -> float:
    return results / (results + failures) if results + failures else 0.0


class FaultTolerantFedAvg(FedAvg):
    """FedAvg whose rounds count only when enough of the chosen nodes answered.

    A fit round whose completion rate ``results / (results + failures)`` is below
    ``min_completion_rate_fit``, or that has no usable result, keeps the model
    (the run goes on), as Flower 1.42's class does; otherwise failures are
    accepted (``accept_failures`` is always True). Likewise an evaluation round
    below ``min_completion_rate_evaluate`` reports no loss and no metrics.
    Failures are nodes that returned an error, a result that was rejected, or
    nothing within ``round_timeout``. Stateless across rounds.
    """

    def __init__(
        self,
        *,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int = 1,
        min_evaluate_clients: int = 1,
        min_available_clients: int = 1,
        evaluate_fn: EvaluateFn | None = None,
        on_fit_config_fn: ConfigFn | None = None,
        on_evaluate_config_fn: ConfigFn | None = None,
        min_completion_rate_fit: float = 0.5,
        min_completion_rate_evaluate: float = 0.5,
        initial_parameters: Parameters | NDArrays | Mapping[str, NDArray] | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = None,
    ) -> None:
        for name, rate in (
            ("min_completion_rate_fit", min_completion_rate_fit),
            ("min_completion_rate_evaluate", min_completion_rate_evaluate),
        ):
            unit_interval("FaultTolerantFedAvg", name, rate, closed=True)
        super().__init__(
            fraction_fit=fraction_fit,
            fraction_evaluate=fraction_evaluate,
            min_fit_clients=min_fit_clients,
            min_evaluate_clients=min_evaluate_clients,
            min_available_clients=min_available_clients,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=on_fit_config_fn,
            on_evaluate_config_fn=on_evaluate_config_fn,
            accept_failures=True,
            initial_parameters=initial_parameters,
            fit_metrics_aggregation_fn=fit_metrics_aggregation_fn,
            evaluate_metrics_aggregation_fn=evaluate_metrics_aggregation_fn,
        )
        self.completion_rate_fit = min_completion_rate_fit
        self.completion_rate_evaluate = min_completion_rate_evaluate

    def __repr__(self) -> str:
        return (
            f"FaultTolerantFedAvg(min_completion_rate_fit={self.completion_rate_fit}, "
            f"min_completion_rate_evaluate={self.completion_rate_evaluate})"
        )

    def fit_round_refusal(self, server_round: int, results: int, failures: int) -> str | None:
        if results == 0:
            return "no usable fit result"
        rate = _rate(results, failures)
        if rate < self.completion_rate_fit:
            return (
                f"completion rate {rate:.3g} ({results} of {results + failures} nodes) "
                f"below min_completion_rate_fit={self.completion_rate_fit}"
            )
        return None

    def aggregate_evaluate(
        self,
        server_round: int,
        results: Sequence[tuple[Any, EvaluateRes]],
        failures: Sequence[object] = (),
    ) -> tuple[float | None, Metrics]:
        if not results or _rate(len(results), len(failures)) < self.completion_rate_evaluate:
            return None, {}
        return super().aggregate_evaluate(server_round, results, failures)
