"""What the four differential-privacy wrappers share.

A wrapper runs any Pollen strategy (FedAvg, FedProx, FedAdam, a user's own) and
makes its rounds differentially private: it delegates sampling, configuration,
evaluation and aggregation to the wrapped strategy, passes each arriving update
through its clipping rule (or its check of the node's clipping) into the wrapped
strategy's aggregator, and adds Gaussian noise to the new model at the end of
the round. The rules live in `pollen.aggregation.dp_clipping`; the privacy
accounting in `pollen.aggregation.privacy_accountant`.
"""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pollen.aggregation.dp_clipping import add_gaussian_noise, noise_stddev
from pollen.aggregation.privacy_accountant import PrivacyAccountant
from pollen.errors import ConfigurationError
from pollen.records.replies import EvaluateIns, EvaluateRes, FitIns, FitRes
from pollen.records.typing import Metrics, NDArrays
from pollen.server.client_proxy import ClientProxy
from pollen.server.strategy.flower_overrides import refuse_flower_overrides
from pollen.server.strategy.strategy import FitAggregator, Strategy

logger = logging.getLogger(__name__)

EPSILON_METRIC = "dp_epsilon"
"""Fit metric of each round: the ε spent so far (with ``target_delta``)."""


@dataclass
class DPRound:
    """One round's clipping: the global model the updates are taken against, the bound,
    and how many updates were folded in and how many of them were left unclipped."""

    server_round: int
    reference: NDArrays
    clipping_norm: float
    count: int = 0
    unclipped: int = 0


class _PrivateAggregator(FitAggregator):
    """Each result through the wrapper's `admit` into the wrapped strategy's aggregator;
    at the end, the wrapper's noise. Memory: the global model (updates are taken
    against it), the wrapped aggregator's state and one result."""

    def __init__(self, wrapper: DPWrapper, inner: FitAggregator, state: DPRound) -> None:
        self._wrapper = wrapper
        self._inner = inner
        self._state = state

    def add(self, node_id: int, result: FitRes) -> None:
        admitted, unclipped = self._wrapper.admit(self._state, result)
        self._inner.add(node_id, admitted)
        self._state.count += 1
        self._state.unclipped += unclipped

    def finish(self) -> tuple[NDArrays | None, Metrics]:
        parameters, metrics = self._inner.finish()
        self._state.reference = []  # the global model is not needed any more
        return self._wrapper.release(self._state, parameters, metrics)


def _positive_int(owner: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{owner}({name}={value!r}): must be an int of at least 1")
    return value


def _check_interval(owner: str, name: str, value: float | None, upper_closed: bool) -> None:
    if value is None:
        return
    if not (0 < value < 1 or (upper_closed and value == 1)):
        interval = "(0, 1]" if upper_closed else "(0, 1)"
        raise ConfigurationError(f"{owner}({name}={value}): must be in {interval}")


class DPWrapper(Strategy):
    """Base of the DP wrappers: delegation, checks, noise and privacy accounting.

    Subclasses say how a result is admitted (`admit`: clipped on the server, or its
    node's clipping checked) and may adapt the bound after a round (`adapt`).
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        num_sampled_clients: int,
        clipping_norm: float,
        *,
        target_delta: float | None,
        sampling_rate: float | None,
        noise_generator: np.random.Generator | None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(strategy, Strategy):
            raise ConfigurationError(
                f"{owner}(strategy={type(strategy).__name__}): wrap a Pollen strategy "
                "(FedAvg, or a subclass of pollen.server.strategy.Strategy)"
            )
        refuse_flower_overrides(strategy, f"{owner}, which calls it Pollen's way,")
        if noise_multiplier < 0:
            raise ConfigurationError(
                f"{owner}(noise_multiplier={noise_multiplier}): must be >= 0 "
                "(1.0 or more for strong privacy)"
            )
        if clipping_norm <= 0:
            raise ConfigurationError(
                f"{owner}(clipping_norm={clipping_norm}): must be > 0 (the L2 norm each "
                "node's update is clipped to)"
            )
        num_sampled_clients = _positive_int(owner, "num_sampled_clients", num_sampled_clients)
        if strategy.min_fit_clients > num_sampled_clients:
            raise ConfigurationError(
                f"{owner}(num_sampled_clients={num_sampled_clients}): the wrapped "
                f"{type(strategy).__name__} needs min_fit_clients={strategy.min_fit_clients} "
                "results a round, so it samples more; set num_sampled_clients to the number "
                "of nodes it samples"
            )
        _check_interval(owner, "target_delta", target_delta, upper_closed=False)
        _check_interval(owner, "sampling_rate", sampling_rate, upper_closed=True)
        self.strategy = strategy
        self.noise_multiplier = noise_multiplier
        self.num_sampled_clients = num_sampled_clients
        self.clipping_norm = clipping_norm
        self.target_delta = target_delta
        self._stated_sampling_rate = sampling_rate
        self.sampling_rate = sampling_rate or num_sampled_clients / max(
            num_sampled_clients, strategy.min_available_clients
        )
        """The probability of a node taking part in a round, for the accountant: as given,
        else ``num_sampled_clients / min_available_clients`` (the round loop waits for that
        many nodes, so no node's chance is higher; exact when no more are connected)."""
        self.min_available_clients = strategy.min_available_clients
        self.min_fit_clients = strategy.min_fit_clients
        self.accept_failures = False
        """As Flower's wrappers: a round with a failed or rejected result keeps the model,
        since the noise is calibrated to ``num_sampled_clients`` results."""
        self._noise = noise_generator if noise_generator is not None else np.random.default_rng()
        self.accountant: PrivacyAccountant | None = None
        if target_delta is not None and noise_multiplier > 0:
            self.accountant = PrivacyAccountant(noise_multiplier, self.sampling_rate, target_delta)
        elif target_delta is not None:
            logger.warning("%s: noise_multiplier=0 adds no noise, so no ε is reported", owner)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.strategy!r}, noise_multiplier={self.noise_multiplier}, "
            f"num_sampled_clients={self.num_sampled_clients})"
        )

    # what a subclass says
    @abstractmethod
    def admit(self, state: DPRound, result: FitRes) -> tuple[FitRes, bool]:
        """The result to fold into the wrapped aggregator, and whether its update was left
        unclipped; `pollen.errors.RecordError` rejects it."""

    def adapt(self, state: DPRound) -> None:
        """Move the bound after a round (adaptive clipping); fixed clipping keeps it."""

    def update_noise_multiplier(self) -> float:
        """The multiplier of the noise added to the model (adaptive clipping's is larger:
        part of the budget goes to the count of unclipped updates)."""
        return self.noise_multiplier

    def fit_config_extra(self) -> dict[str, float]:
        """What the nodes must know (client-side clipping: the bound)."""
        return {}

    # the Strategy interface, delegated
    def initialize_parameters(self) -> NDArrays | None:
        return self.strategy.initialize_parameters()

    def array_names(self) -> list[str] | None:
        return self.strategy.array_names()

    def configure_fit(
        self, server_round: int, parameters: NDArrays, node_ids: list[int], rng: random.Random
    ) -> list[tuple[int, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, node_ids, rng)
        if instructions and len(instructions) != self.num_sampled_clients:
            raise ConfigurationError(
                f"{type(self).__name__}(num_sampled_clients={self.num_sampled_clients}): the "
                f"wrapped {type(self.strategy).__name__} sampled {len(instructions)} of "
                f"{len(node_ids)} nodes in round {server_round}; the noise is calibrated to "
                "num_sampled_clients results: make the two agree (fraction_fit, "
                "min_fit_clients, min_available_clients)"
            )
        rate = len(instructions) / max(len(node_ids), 1)
        if self._stated_sampling_rate is not None and rate > self._stated_sampling_rate:
            logger.warning(
                "round %d: %d of %d nodes sampled (rate %.4g), above sampling_rate=%g: the "
                "ε reported understates the privacy spent",
                server_round,
                len(instructions),
                len(node_ids),
                rate,
                self._stated_sampling_rate,
            )
        extra = self.fit_config_extra()
        for _, ins in instructions:
            ins.config.update(extra)
        return instructions

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        inner = self.strategy.fit_aggregator(server_round, parameters)
        return _PrivateAggregator(
            self, inner, DPRound(server_round, parameters, self.clipping_norm)
        )

    def release(
        self, state: DPRound, parameters: NDArrays | None, metrics: Metrics
    ) -> tuple[NDArrays | None, Metrics]:
        """The round's model with its noise, and the round's metrics with the ε spent."""
        if parameters is None:
            return None, metrics
        self.adapt(state)
        stddev = noise_stddev(
            self.update_noise_multiplier(), state.clipping_norm, self.num_sampled_clients
        )
        parameters = add_gaussian_noise(parameters, stddev, self._noise)
        logger.info("round %d: central DP noise of stddev %.4g added", state.server_round, stddev)
        return parameters, {**metrics, **self.privacy_metrics(state)}

    def privacy_metrics(self, state: DPRound) -> Metrics:
        """The ε spent after this round (recomputed from the round number: a resumed run
        goes on counting), logged and recorded in the round's fit metrics."""
        if self.accountant is None:
            return {}
        epsilon = self.accountant.epsilon(state.server_round)
        logger.info(
            "round %d: privacy spent so far: ε = %.4g for δ = %g (noise multiplier %g, "
            "sampling rate %.4g)",
            state.server_round,
            epsilon,
            self.accountant.target_delta,
            self.accountant.noise_multiplier,
            self.accountant.sampling_rate,
        )
        return {EPSILON_METRIC: epsilon}

    def configure_evaluate(
        self, server_round: int, parameters: NDArrays, node_ids: list[int], rng: random.Random
    ) -> list[tuple[int, EvaluateIns]]:
        return self.strategy.configure_evaluate(server_round, parameters, node_ids, rng)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: Sequence[tuple[ClientProxy, EvaluateRes]],
        failures: Sequence[BaseException] = (),
    ) -> tuple[float | None, Metrics]:
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: NDArrays) -> tuple[float, Metrics] | None:
        return self.strategy.evaluate(server_round, parameters)

    def evaluates_on_server(self) -> bool:
        return self.strategy.evaluates_on_server()

    def disk_needed(self, model_bytes: int, num_results: int) -> int:
        return self.strategy.disk_needed(model_bytes, num_results)
