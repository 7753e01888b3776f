"""Strategy methods overridden with Flower's signatures: how the round loop calls them.

Pollen's strategies answer two ways of calling. The round loop calls them with
node ids and its seeded generator, and folds results in as they arrive. A
subclass written for Flower overrides ``configure_fit(server_round, parameters,
client_manager)``, ``initialize_parameters(client_manager)``,
``aggregate_fit(server_round, results, failures)`` and so on; the round loop
calls each such override Flower's way (`flower_style`, `overrides_aggregate_fit`),
and Pollen's implementations answer the ``super()`` calls these make.

A wrapper that calls the strategy it wraps Pollen's way (the DifferentialPrivacy
wrappers) refuses a wrapped strategy with such overrides when it is built
(`refuse_flower_overrides`): an override is never silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from pollen.errors import ConfigurationError

FLOWER_ARITY = {
    "initialize_parameters": 1,
    "configure_fit": 3,
    "configure_evaluate": 3,
}
"""Flower's methods whose arguments differ from Pollen's, and how many Flower's take."""


def _arity(method: Callable[..., object]) -> int | None:
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return None  # takes anything: call it Pollen's way
    return len([p for p in parameters if p.name != "self"])


def _users_classes(strategy: object) -> list[type]:
    return [c for c in type(strategy).__mro__ if not c.__module__.startswith("pollen.")]


def _defined(strategy: object, name: str) -> Callable[..., object] | None:
    """The user's override of ``name`` nearest ``strategy``'s class, if any."""
    for cls in _users_classes(strategy):
        if name in cls.__dict__:
            method: Callable[..., object] = cls.__dict__[name]
            return method
    return None


def flower_style(strategy: object, name: str) -> bool:
    """Whether the user's override of ``name`` takes Flower's arguments."""
    method = _defined(strategy, name)
    return method is not None and _arity(method) == FLOWER_ARITY[name]


def overrides_aggregate_fit(strategy: object) -> bool:
    """Whether a class of the user's overrides Flower's ``aggregate_fit``: the round loop
    then hands it the round's results together, as that signature requires."""
    return _defined(strategy, "aggregate_fit") is not None


def takes_failures(strategy: object) -> bool:
    """Whether ``aggregate_evaluate`` takes Flower's ``failures`` (Pollen's own do; an
    override may be written with Pollen's two arguments)."""
    arity = _arity(type(strategy).aggregate_evaluate)  # type: ignore[attr-defined]
    return arity is None or arity >= 3


def refuse_flower_overrides(strategy: object, caller: str) -> None:
    """ConfigurationError when ``strategy`` overrides a method with Flower's signature,
    which ``caller`` (calling it Pollen's way) would not call."""
    overridden = [n for n in FLOWER_ARITY if flower_style(strategy, n)]
    if overrides_aggregate_fit(strategy):
        overridden.append("aggregate_fit")
    if overridden:
        raise ConfigurationError(
            f"strategy {type(strategy).__name__} overrides {', '.join(overridden)} with "
            f"Flower's signature, which {caller} does not call (it would be ignored); pass it "
            "to the ServerApp unwrapped, or write the override with Pollen's signature "
            "(see pollen/server/strategy/strategy.py)"
        )
