"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020)."""

from __future__ import annotations

from collections.abc import Mapping

from pollen.records.typing import Config, NDArray, NDArrays, Parameters
from pollen.server.strategy.arguments import check
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn


class FedProx(FedAvg):
    """FedAvg whose nodes add a proximal term ``proximal_mu / 2 * |w - w_global|^2`` to
    their local loss, which keeps heterogeneous nodes from drifting apart.

    The server aggregates as FedAvg does; the term is the ClientApp's to apply:
    every node gets ``proximal_mu`` in its fit config (key ``"proximal_mu"``, over
    any value ``on_fit_config_fn`` gives it), as with Flower's FedProx. With
    ``proximal_mu=0`` it is FedAvg.
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
        proximal_mu: float,
    ) -> None:
        check("FedProx", "proximal_mu", proximal_mu, proximal_mu >= 0, "must be >= 0")
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
        self.proximal_mu = proximal_mu

    def __repr__(self) -> str:
        return f"FedProx(proximal_mu={self.proximal_mu}, fraction_fit={self.fraction_fit})"

    def fit_config(self, server_round: int) -> Config:
        return {**super().fit_config(server_round), "proximal_mu": self.proximal_mu}
