"""The FedOpt family: adaptive server optimizers (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021).

Each round the nodes' weighted mean gives the pseudo-gradient ``d = mean - x``
(``x``: the model the round started from); the server keeps a first moment
``m = beta_1 * m + (1 - beta_1) * d`` and a second moment ``v`` (per strategy) and
takes the step ``x <- x + eta * m / (sqrt(v) + tau)``. The rules are in
`pollen.aggregation.server_optimizers`; the numbers are Flower 1.42's
legacy strategies', quirks included: the legacy defaults (``tau=1e-9`` for
FedAdagrad and FedAdam, ``1e-3`` for FedYogi) and FedAdam's bias correction with
``server_round + 1``. ``eta_l`` (the nodes' learning rate) is kept, as in Flower,
for the ClientApp's configuration; the server does not use it.

``initial_parameters`` is required (Flower's signature has no default for it);
leaving it out is a ConfigurationError instead of a TypeError.

State: the moments ``m_t`` and ``v_t`` live in the strategy across rounds, in
the dtype the weighted mean accumulates in (float32 for float32 models). They
are not in the checkpoint: a resumed run restarts them at zero, while FedAdam's
bias correction goes on counting from the true round number.

Memory: the model, the running sum, and ``m`` and ``v`` (about 4 x the model),
whatever the number of nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

from pollen.aggregation.server_optimizers import (
    AdaptiveOptimizer,
    ServerAdagrad,
    ServerAdam,
    ServerYogi,
)
from pollen.records.typing import NDArray, NDArrays, Parameters
from pollen.server.strategy.arguments import check, initial_model, positive, unit_interval
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn
from pollen.server.strategy.server_step import ServerStepAggregator
from pollen.server.strategy.strategy import FitAggregator


class FedOpt(FedAvg):
    """Base of FedAdagrad, FedAdam and FedYogi; on its own it aggregates as FedAvg
    (as Flower's ``FedOpt`` does) and only keeps the hyperparameters."""

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
        eta: float = 1e-1,
        eta_l: float = 1e-1,
        beta_1: float = 0.0,
        beta_2: float = 0.0,
        tau: float = 1e-9,
    ) -> None:
        name = type(self).__name__
        initial_model(name, initial_parameters, "the server optimizer steps from the initial model")
        positive(name, "eta", eta)
        positive(name, "eta_l", eta_l)
        unit_interval(name, "beta_1", beta_1, closed=False)
        unit_interval(name, "beta_2", beta_2, closed=False)
        check(name, "tau", tau, tau > 0, "must be > 0 (it keeps the step finite where v is 0)")
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
        self.eta = eta
        self.eta_l = eta_l
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.tau = tau
        self.optimizer: AdaptiveOptimizer | None = self._optimizer()

    def _optimizer(self) -> AdaptiveOptimizer | None:
        """The server optimizer of this strategy; None: FedAvg's mean is the model."""
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eta={self.eta}, beta_1={self.beta_1}, "
            f"beta_2={self.beta_2}, tau={self.tau})"
        )

    @property
    def m_t(self) -> NDArrays | None:
        """First moment; None before the first round."""
        return self.optimizer.m_t if self.optimizer is not None else None

    @property
    def v_t(self) -> NDArrays | None:
        """Second moment; None before the first round."""
        return self.optimizer.v_t if self.optimizer is not None else None

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        mean = super().fit_aggregator(server_round, parameters)
        if self.optimizer is None:
            return mean
        return ServerStepAggregator(mean, parameters, self.optimizer, server_round)


class FedAdagrad(FedOpt):
    """Adagrad on the server: ``m = d`` (``beta_1`` is 0), ``v = v + d^2``."""

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
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        accept_failures: bool = True,
        initial_parameters: Parameters | NDArrays | Mapping[str, NDArray] | None = None,
        eta: float = 1e-1,
        eta_l: float = 1e-1,
        tau: float = 1e-9,
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
            eta=eta,
            eta_l=eta_l,
            beta_1=0.0,
            beta_2=0.0,
            tau=tau,
        )

    def _optimizer(self) -> AdaptiveOptimizer:
        return ServerAdagrad(self.eta, self.beta_1, self.beta_2, self.tau)


class FedAdam(FedOpt):
    """Adam on the server: ``v = beta_2 * v + (1 - beta_2) * d^2``; the step size is
    ``eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` in round ``t`` (Flower's
    bias correction, one round ahead of the textbook's)."""

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
        eta: float = 1e-1,
        eta_l: float = 1e-1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-9,
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
            eta=eta,
            eta_l=eta_l,
            beta_1=beta_1,
            beta_2=beta_2,
            tau=tau,
        )

    def _optimizer(self) -> AdaptiveOptimizer:
        return ServerAdam(self.eta, self.beta_1, self.beta_2, self.tau)


class FedYogi(FedOpt):
    """Yogi on the server: ``v = v - (1 - beta_2) * d^2 * sign(v - d^2)``."""

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
        eta: float = 1e-2,
        eta_l: float = 0.0316,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
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
            eta=eta,
            eta_l=eta_l,
            beta_1=beta_1,
            beta_2=beta_2,
            tau=tau,
        )

    def _optimizer(self) -> AdaptiveOptimizer:
        return ServerYogi(self.eta, self.beta_1, self.beta_2, self.tau)
