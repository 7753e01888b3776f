"""Federated Averaging (McMahan et al., 2017), with results folded in as they arrive."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pollen.aggregation.weighted_mean import (
    RunningWeightedMean,
    weighted_loss_avg,
    weighted_metrics_avg,
)
from pollen.errors import ConfigurationError
from pollen.records.replies import EvaluateIns, EvaluateRes, FitIns, FitRes
from pollen.records.typing import (
    ArrayParameters,
    Config,
    Metrics,
    NDArray,
    NDArrays,
    Parameters,
    parameters_to_ndarrays,
)
from pollen.server.client_manager import ClientManager, SimpleClientManager
from pollen.server.client_proxy import ClientProxy
from pollen.server.strategy.strategy import FitAggregator, Strategy

MetricsAggregationFn = Callable[[list[tuple[int, Metrics]]], Metrics]
ConfigFn = Callable[[int], Config]
EvaluateFn = Callable[[int, NDArrays, Config], tuple[float, Metrics] | None]


def _fraction(strategy: str, name: str, value: float, allow_zero: bool) -> float:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigurationError(f"{strategy}({name}={value}): must be in {interval}")
    return value


class _FedAvgAggregator(FitAggregator):
    def __init__(self, parameters: NDArrays, metrics_fn: MetricsAggregationFn) -> None:
        self._mean = RunningWeightedMean(parameters)
        self._metrics: list[tuple[int, Metrics]] = []
        self._metrics_fn = metrics_fn

    def add(self, node_id: int, result: FitRes) -> None:
        self._mean.add(result.parameters, result.num_examples)
        self._metrics.append((result.num_examples, result.metrics))

    def finish(self) -> tuple[NDArrays | None, Metrics]:
        return self._mean.result(), self._metrics_fn(self._metrics) if self._metrics else {}


class FedAvg(Strategy):
    """Average the nodes' weights, each weighted by its number of training examples.

    Node sampling: ``max(int(fraction_fit * available), min_fit_clients)`` nodes,
    drawn at random with the round loop's seeded generator. Without an
    aggregation function, numeric metrics are averaged weighted by examples.
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
        inplace: bool = True,
    ) -> None:
        # ``inplace`` is Flower's switch for in-place aggregation; Pollen always
        # folds results into one running sum, so it is accepted and has no effect.
        del inplace
        strategy = type(self).__name__  # a subclass's errors name the subclass
        self.fraction_fit = _fraction(strategy, "fraction_fit", fraction_fit, allow_zero=False)
        self.fraction_evaluate = _fraction(strategy, "fraction_evaluate", fraction_evaluate, True)
        for name, value in (
            ("min_fit_clients", min_fit_clients),
            ("min_evaluate_clients", min_evaluate_clients),
            ("min_available_clients", min_available_clients),
        ):
            if value < 1:
                raise ConfigurationError(f"{strategy}({name}={value}): must be at least 1")
        self.min_fit_clients = min_fit_clients
        self.min_evaluate_clients = min_evaluate_clients
        self.min_available_clients = min_available_clients
        self.evaluate_fn = evaluate_fn
        self.on_fit_config_fn = on_fit_config_fn
        self.on_evaluate_config_fn = on_evaluate_config_fn
        self.accept_failures = accept_failures
        self._array_names: list[str] | None = None
        if isinstance(initial_parameters, Mapping):  # a state_dict: its keys name the arrays
            self._array_names = [str(name) for name in initial_parameters]
            initial_parameters = list(initial_parameters.values())
        self.initial_parameters = initial_parameters
        self.fit_metrics_aggregation_fn = fit_metrics_aggregation_fn or weighted_metrics_avg
        self.evaluate_metrics_aggregation_fn = (
            evaluate_metrics_aggregation_fn or weighted_metrics_avg
        )

    def __repr__(self) -> str:
        return (
            f"FedAvg(fraction_fit={self.fraction_fit}, fraction_evaluate={self.fraction_evaluate})"
        )

    def initialize_parameters(self, client_manager: ClientManager | None = None) -> Any:
        """The initial model (None: ask a node), as `ArrayParameters`: arrays that are
        Flower's `Parameters` too, for an override calling it with a ``client_manager``."""
        initial = self.initial_parameters
        self.initial_parameters = None  # do not keep a second copy of the model alive
        if initial is None:
            return None
        return ArrayParameters(parameters_to_ndarrays(initial))

    def array_names(self) -> list[str] | None:
        return self._array_names

    def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
        """How many nodes train (Flower's rule): ``fraction_fit`` of the available, at
        least ``min_fit_clients``; and how many must be available."""
        sample = int(num_available_clients * self.fraction_fit)
        return max(sample, self.min_fit_clients), self.min_available_clients

    def num_evaluation_clients(self, num_available_clients: int) -> tuple[int, int]:
        """How many nodes evaluate: as `num_fit_clients`, with ``fraction_evaluate``."""
        sample = int(num_available_clients * self.fraction_evaluate)
        return max(sample, self.min_evaluate_clients), self.min_available_clients

    def fit_config(self, server_round: int) -> Config:
        """The config every node trains with this round: ``on_fit_config_fn``'s.
        A strategy that sends more (FedProx's ``proximal_mu``) extends it."""
        return dict(self.on_fit_config_fn(server_round)) if self.on_fit_config_fn else {}

    def configure_fit(
        self,
        server_round: int,
        parameters: Any,
        node_ids: Any,
        rng: random.Random | None = None,
    ) -> Any:
        """Which nodes train, and with what config. Called as Pollen's round loop does
        (node ids and its seeded generator: ``[(node_id, FitIns)]``) or, from an override
        with Flower's signature, with a `ClientManager` (``[(ClientProxy, FitIns)]``)."""
        manager = _manager(node_ids, rng)
        size, minimum = self.num_fit_clients(manager.num_available())
        chosen = manager.sample(size, minimum)
        config = self.fit_config(server_round)
        return _paired(node_ids, chosen, lambda: FitIns(parameters, dict(config)))

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        return _FedAvgAggregator(parameters, self.fit_metrics_aggregation_fn)

    def configure_evaluate(
        self,
        server_round: int,
        parameters: Any,
        node_ids: Any,
        rng: random.Random | None = None,
    ) -> Any:
        """Which nodes evaluate this round (none to skip): called as `configure_fit`."""
        if self.fraction_evaluate == 0.0:
            return []
        manager = _manager(node_ids, rng)
        size, minimum = self.num_evaluation_clients(manager.num_available())
        chosen = manager.sample(size, minimum)
        config = self.on_evaluate_config_fn(server_round) if self.on_evaluate_config_fn else {}
        return _paired(node_ids, chosen, lambda: EvaluateIns(parameters, dict(config)))

    def aggregate_evaluate(
        self,
        server_round: int,
        results: Sequence[tuple[Any, EvaluateRes]],
        failures: Sequence[object] = (),
    ) -> tuple[float | None, Metrics]:
        """The loss averaged by examples, and the metrics by the aggregation function;
        ``results`` pair a node id (or, from Flower's signature, a `ClientProxy`) with
        its result."""
        if not results:
            return None, {}
        loss = weighted_loss_avg([(r.num_examples, r.loss) for _, r in results])
        metrics = self.evaluate_metrics_aggregation_fn(
            [(r.num_examples, r.metrics) for _, r in results]
        )
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Any) -> tuple[float, Metrics] | None:
        if self.evaluate_fn is None:
            return None
        return self.evaluate_fn(server_round, parameters_to_ndarrays(parameters), {})

    def evaluates_on_server(self) -> bool:
        return self.evaluate_fn is not None or type(self).evaluate is not FedAvg.evaluate


def _manager(node_ids: Any, rng: random.Random | None) -> ClientManager:
    """The nodes to sample from: a Flower-style caller's `ClientManager`, or Pollen's node
    ids sampled with the round loop's seeded generator (the same draws either way)."""
    if isinstance(node_ids, ClientManager):
        return node_ids
    return SimpleClientManager(node_ids, rng)


def _paired(node_ids: Any, chosen: list[ClientProxy], instructions: Callable[[], Any]) -> Any:
    """``[(ClientProxy, ins)]`` sharing one instructions object, as Flower's strategies
    return them, for a `ClientManager` caller; ``[(node_id, ins)]`` for the round loop."""
    if isinstance(node_ids, ClientManager):
        shared = instructions()
        return [(proxy, shared) for proxy in chosen]
    return [(proxy.node_id, instructions()) for proxy in chosen]
