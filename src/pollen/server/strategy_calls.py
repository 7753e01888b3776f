"""The round loop's calls of a strategy, each made Pollen's way or Flower's way.

A method the user overrode with Flower's signature is called with a
`ClientManager`, `Parameters` and `ClientProxy` pairs (`flower_overrides`);
everything else with node ids and the round loop's seeded generator. The
round loop sees one shape either way: node ids, configs and arrays.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pollen.errors import RunError
from pollen.records.replies import EvaluateRes
from pollen.records.typing import (
    ArrayParameters,
    Config,
    Metrics,
    NDArrays,
    Parameters,
    parameters_to_ndarrays,
)
from pollen.server.client_manager import SimpleClientManager
from pollen.server.client_proxy import ClientProxy
from pollen.server.strategy.flower_overrides import flower_style, takes_failures
from pollen.server.strategy.strategy import Strategy


@dataclass
class Instruction:
    """One node's instructions for a round; ``model``: arrays of its own to start from
    (a Flower-style ``FitIns(parameters, config)`` naming other parameters), else None."""

    node_id: int
    config: Config
    model: NDArrays | None = None


class StrategyCalls:
    """Calls ``strategy`` for the round loop, in the signature each method is written in."""

    def __init__(self, strategy: Strategy, rng: random.Random) -> None:
        self.strategy = strategy
        self.rng = rng

    def _manager(self, nodes: Sequence[int]) -> SimpleClientManager:
        return SimpleClientManager(nodes, self.rng)

    @property
    def initialize_needs_nodes(self) -> bool:
        """Whether `initialize` wants the connected nodes (a ClientManager for an override
        with Flower's signature); Pollen's ``initialize_parameters()`` takes none."""
        return flower_style(self.strategy, "initialize_parameters")

    def initialize(self, nodes: Sequence[int]) -> NDArrays | None:
        strategy: Any = self.strategy
        if self.initialize_needs_nodes:
            initial = strategy.initialize_parameters(self._manager(nodes))
        else:
            initial = strategy.initialize_parameters()
        return None if initial is None else parameters_to_ndarrays(initial)

    def configure(
        self, method: str, server_round: int, parameters: NDArrays, nodes: Sequence[int]
    ) -> list[Instruction]:
        """``configure_fit`` or ``configure_evaluate``: who, with what config and model."""
        call: Any = getattr(self.strategy, method)
        if not flower_style(self.strategy, method):
            pairs = call(server_round, parameters, list(nodes), self.rng)
            return [Instruction(node, dict(ins.config)) for node, ins in pairs]
        model = ArrayParameters(parameters)
        pairs = call(server_round, model, self._manager(nodes))
        converted: dict[int, NDArrays] = {}  # one list per FitIns model, whoever gets it
        return [_instruction(method, proxy, ins, model, converted) for proxy, ins in pairs]

    def aggregate_evaluate(
        self, server_round: int, results: Sequence[tuple[int, EvaluateRes]], failures: list[str]
    ) -> tuple[float | None, Metrics]:
        paired = [(ClientProxy(str(node)), result) for node, result in results]
        strategy: Any = self.strategy
        if takes_failures(strategy):
            errors = [RuntimeError(failure) for failure in failures]
            return strategy.aggregate_evaluate(server_round, paired, errors)  # type: ignore[no-any-return]
        return strategy.aggregate_evaluate(server_round, paired)  # type: ignore[no-any-return]

    def evaluate(self, server_round: int, parameters: NDArrays) -> tuple[float, Metrics] | None:
        """Server-side evaluation, given arrays that are Flower's `Parameters` too."""
        return self.strategy.evaluate(server_round, ArrayParameters(parameters))


def _instruction(
    method: str, proxy: Any, ins: Any, model: ArrayParameters, converted: dict[int, NDArrays]
) -> Instruction:
    if not isinstance(proxy, ClientProxy):
        raise RunError(f"{method} returned {proxy!r:.60} where a ClientProxy belongs")
    given = ins.parameters
    if given is None or given is model or (isinstance(given, list) and _same(given, model)):
        return Instruction(proxy.node_id, dict(ins.config))
    if not isinstance(given, Parameters | list):
        raise RunError(f"{method} gave node {proxy.cid} parameters of type {type(given).__name__}")
    if id(given) not in converted:  # deserialised once, however many nodes get it
        converted[id(given)] = parameters_to_ndarrays(given)
    return Instruction(proxy.node_id, dict(ins.config), converted[id(given)])


def _same(arrays: list[Any], model: ArrayParameters) -> bool:
    return len(arrays) == len(model) and all(a is b for a, b in zip(arrays, model, strict=True))
