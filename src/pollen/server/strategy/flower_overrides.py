"""Strategy overrides written with Flower's signatures, which the round loop does not call.

Pollen's round loop calls a strategy through its own interface (`Strategy`):
results are folded in one at a time by a `FitAggregator`. An override of Flower's
``aggregate_fit(server_round, results, failures)`` is called, with the round's
results together (`overrides_aggregate_fit`). A subclass written for Flower that
overrides ``configure_fit(server_round, parameters, client_manager)`` or another
method with Flower's arguments would run to the end with its override never
called: it is refused when the ServerApp is built, naming the method and what to
write instead. An override is never ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from pollen.errors import ConfigurationError

_OWN_ARITY = {
    "initialize_parameters": 0,
    "configure_fit": 4,
    "configure_evaluate": 4,
    "aggregate_evaluate": 2,
    "evaluate": 2,
}
"""Pollen's methods of the same names as Flower's, and how many arguments they take."""

_FLOWER_ONLY = ("num_fit_clients", "num_evaluation_clients")
"""Flower's methods that Pollen's strategies do not have."""

_INSTEAD = {
    "num_fit_clients": "override configure_fit(server_round, parameters, node_ids, rng)",
    "num_evaluation_clients": "override configure_evaluate(server_round, parameters, "
    "node_ids, rng)",
}


def _arity(method: Callable[..., object]) -> int | None:
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return None  # takes anything: it may well serve both
    return len([p for p in parameters if p.name != "self"])


def _users_classes(strategy: object) -> list[type]:
    return [c for c in type(strategy).__mro__ if not c.__module__.startswith("pollen.")]


def overrides_aggregate_fit(strategy: object) -> bool:
    """Whether a class of the user's overrides Flower's ``aggregate_fit``: the round loop
    then hands it the round's results together, as that signature requires."""
    return any("aggregate_fit" in cls.__dict__ for cls in _users_classes(strategy))


def refuse_flower_overrides(strategy: object) -> None:
    """ConfigurationError when ``strategy`` overrides a method with Flower's signature."""
    for cls in _users_classes(strategy):
        for name in _FLOWER_ONLY:
            if name in cls.__dict__:
                raise _refusal(cls, name, _INSTEAD[name])
        for name, own in _OWN_ARITY.items():
            method = cls.__dict__.get(name)
            if method is not None and _arity(method) not in (None, own):
                raise _refusal(cls, name, f"write it with Pollen's signature ({_signature(name)})")


def _signature(name: str) -> str:
    from pollen.server.strategy.strategy import Strategy

    names = [p for p in inspect.signature(getattr(Strategy, name)).parameters if p != "self"]
    return f"{name}({', '.join(names)})"


def _refusal(cls: type, name: str, instead: str) -> ConfigurationError:
    return ConfigurationError(
        f"strategy {cls.__name__} overrides {name} with Flower's signature, which Pollen's "
        f"round loop does not call (it would be ignored); {instead} "
        "(see pollen/server/strategy/strategy.py)"
    )
