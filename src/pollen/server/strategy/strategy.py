"""The `Strategy` interface: how a federated algorithm picks nodes and combines results."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextvars import ContextVar

from pollen.records.replies import EvaluateIns, EvaluateRes, FitIns, FitRes
from pollen.records.typing import (
    ArrayParameters,
    Metrics,
    NDArrays,
    Parameters,
    parameters_to_ndarrays,
)
from pollen.server.client_proxy import ClientProxy

round_model: ContextVar[NDArrays | None] = ContextVar("round_model", default=None)
"""The global model a fit round started from, while the round loop aggregates it: what
`Strategy.aggregate_fit` hands to `fit_aggregator` (Flower's signature has no model)."""


class FitAggregator(ABC):
    """Folds fit results in one at a time, so memory stays O(model) whatever the nodes."""

    @abstractmethod
    def add(self, node_id: int, result: FitRes) -> None:
        """Fold one result in; raise `pollen.errors.RecordError` to reject it with a reason."""

    @abstractmethod
    def finish(self) -> tuple[NDArrays | None, Metrics]:
        """The new global model (None when no result was folded in) and fit metrics."""


class Strategy(ABC):
    """Base of FedAvg and friends: everything the round loop asks of an algorithm."""

    min_available_clients: int = 1
    """Nodes that must be connected before a round starts."""
    min_fit_clients: int = 1
    """Usable fit results a round needs; with fewer the run stops."""
    accept_failures: bool = True
    """Whether a round in which some node failed still replaces the model."""

    @abstractmethod
    def initialize_parameters(self) -> NDArrays | None:
        """The initial global model, or None to ask one node for its weights."""

    @abstractmethod
    def configure_fit(
        self, server_round: int, parameters: NDArrays, node_ids: list[int], rng: random.Random
    ) -> list[tuple[int, FitIns]]:
        """Which nodes train this round, and with what config."""

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        """A fresh aggregator for this round's fit results. A strategy implements this
        (results folded in as they arrive) or Flower's `aggregate_fit` (all at once)."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither fit_aggregator nor aggregate_fit"
        )

    @abstractmethod
    def configure_evaluate(
        self, server_round: int, parameters: NDArrays, node_ids: list[int], rng: random.Random
    ) -> list[tuple[int, EvaluateIns]]:
        """Which nodes evaluate this round (none to skip), and with what config."""

    @abstractmethod
    def aggregate_evaluate(
        self,
        server_round: int,
        results: Sequence[tuple[ClientProxy, EvaluateRes]],
        failures: Sequence[BaseException] = (),
    ) -> tuple[float | None, Metrics]:
        """Combine the nodes' evaluation results into one loss and metrics (Flower's
        signature: ``failures`` are the nodes that did not evaluate, each saying why)."""

    def aggregate_fit(
        self,
        server_round: int,
        results: Sequence[tuple[ClientProxy, FitRes]],
        failures: Sequence[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, Metrics]:
        """Flower's ``aggregate_fit``: all of a round's results at once.

        The round loop calls it only when a subclass overrides it (the results are
        then gathered: memory O(model x nodes)); otherwise it folds each result in
        as it arrives through `fit_aggregator`. This implementation, which an
        override reaches through ``super().aggregate_fit(...)``, feeds the same
        aggregator, so both give the same model.
        """
        if not results:
            return None, {}
        if self.fit_round_refusal(server_round, len(results), len(failures)) is not None:
            return None, {}
        start = round_model.get()
        first = parameters_to_ndarrays(results[0][1].parameters)
        aggregator = self.fit_aggregator(server_round, first if start is None else start)
        for proxy, result in results:
            arrays = parameters_to_ndarrays(result.parameters)
            update = FitRes(arrays, result.num_examples, result.metrics, result.status)
            aggregator.add(proxy.node_id, update)
        merged, metrics = aggregator.finish()
        return (None if merged is None else ArrayParameters(merged)), metrics

    def fit_round_refusal(self, server_round: int, results: int, failures: int) -> str | None:
        """Why a fit round with ``results`` usable results and ``failures`` failed nodes
        keeps the previous model (the run goes on), or None to aggregate it.
        Default: failures refuse the round unless ``accept_failures``."""
        if failures and not self.accept_failures:
            return "failures and accept_failures=False"
        return None

    def evaluate(self, server_round: int, parameters: NDArrays) -> tuple[float, Metrics] | None:
        """Evaluate the global model on the server; None when there is no server-side data."""
        return None

    def evaluates_on_server(self) -> bool:
        """Whether `evaluate` may do real work (the loop frees memory for it first)."""
        return type(self).evaluate is not Strategy.evaluate

    def disk_needed(self, model_bytes: int, num_results: int) -> int:
        """Bytes of disk a fit round of ``num_results`` results of ``model_bytes`` each
        needs (rules that keep every update on disk); the round loop checks there is
        room before it asks any node. 0: none."""
        return 0

    def array_names(self) -> list[str] | None:
        """Names of the model's arrays (a state_dict's keys), for the saved models;
        None: ``layer_0``, ``layer_1``, ..."""
        return None
