"""The `Strategy` interface: how a federated algorithm picks nodes and combines results."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pollen.records.replies import EvaluateRes, FitRes
from pollen.records.typing import Config, Metrics, NDArrays


@dataclass
class FitIns:
    """Instructions for one node's training: the global model goes along implicitly."""

    config: Config = field(default_factory=dict)


@dataclass
class EvaluateIns:
    """Instructions for one node's evaluation of the global model."""

    config: Config = field(default_factory=dict)


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

    @abstractmethod
    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        """A fresh aggregator for this round's fit results."""

    @abstractmethod
    def configure_evaluate(
        self, server_round: int, parameters: NDArrays, node_ids: list[int], rng: random.Random
    ) -> list[tuple[int, EvaluateIns]]:
        """Which nodes evaluate this round (none to skip), and with what config."""

    @abstractmethod
    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[int, EvaluateRes]]
    ) -> tuple[float | None, Metrics]:
        """Combine the nodes' evaluation results into one loss and metrics."""

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
