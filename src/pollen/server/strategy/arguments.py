"""Checks of strategy arguments: one line naming the strategy, the argument and the rule."""

from __future__ import annotations

from pollen.errors import ConfigurationError


def check(strategy: str, name: str, value: object, valid: bool, rule: str) -> None:
    """ConfigurationError ``Strategy(name=value): rule`` unless ``valid``."""
    if not valid:
        raise ConfigurationError(f"{strategy}({name}={value!r}): {rule}")


def positive(strategy: str, name: str, value: float) -> None:
    check(strategy, name, value, value > 0, "must be > 0")


def unit_interval(strategy: str, name: str, value: float, closed: bool) -> None:
    """``value`` in [0, 1] (``closed``) or [0, 1)."""
    valid = 0 <= value <= 1 if closed else 0 <= value < 1
    check(strategy, name, value, valid, f"must be in [0, {'1]' if closed else '1)'}")


def initial_model(strategy: str, initial_parameters: object, why: str) -> None:
    """The strategy needs an initial model: ``initial_parameters`` must be given."""
    check(
        strategy,
        "initial_parameters",
        initial_parameters,
        initial_parameters is not None,
        f"{why}; pass initial_parameters (Parameters, a list of arrays or a state_dict)",
    )
