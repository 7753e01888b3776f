"""Which backend runs a simulation's virtual nodes, and the settings it takes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pollen.errors import ConfigurationError

IN_PROCESS = "in-process"
PROCESS_POOL = "process-pool"
BACKENDS = (IN_PROCESS, PROCESS_POOL)
"""The backends of this version: ``in-process`` runs every virtual node in a thread
of the simulation's own process; ``process-pool`` runs them in a pool of forked
worker processes (available CPUs / ``client_resources.num_cpus`` of them)."""

_PLANNED = {"ray": "not available yet in this version"}
_CONFIG_KEYS = {"client_resources": {"num_cpus", "num_gpus"}}


def check_backend(name: str, option: str = "backend_name") -> str:
    """``name`` when this version has that backend; ConfigurationError otherwise."""
    if name in BACKENDS:
        return name
    known = ", ".join(BACKENDS)
    if name in _PLANNED:
        raise ConfigurationError(f"{option} {name!r}: {_PLANNED[name]}; use one of: {known}")
    raise ConfigurationError(f"{option} {name!r}: no such backend; use one of: {known}")


def parse_backend_config(text: str, option: str = "--backend-config") -> dict[str, Any]:
    """The JSON object of ``--backend-config``, checked (`check_backend_config`)."""
    try:
        config = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{option}: not JSON ({exc.msg} at character {exc.pos}); "
            'write e.g. \'{"client_resources": {"num_cpus": 1}}\''
        ) from None
    return check_backend_config(config, option)


def check_backend_config(config: Any, option: str = "backend_config") -> dict[str, Any]:
    """``config`` when it is a mapping of known keys (``client_resources``: ``num_cpus``,
    ``num_gpus``, numbers >= 0), else ConfigurationError naming the known ones."""
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            f'{option}: expected a JSON object such as {{"client_resources": {{...}}}}, '
            f"got {type(config).__name__}"
        )
    for key, value in config.items():
        if key not in _CONFIG_KEYS:
            raise ConfigurationError(
                f"{option}: unknown key {key!r}; known keys: {', '.join(sorted(_CONFIG_KEYS))}"
            )
        _check_section(key, value, _CONFIG_KEYS[key], option)
    return dict(config)


def _check_section(key: str, value: Any, known: set[str], option: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{option}: {key} must be an object, got {value!r}")
    for name, amount in value.items():
        if name not in known:
            raise ConfigurationError(
                f"{option}: unknown key {key}.{name}; known keys: {', '.join(sorted(known))}"
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ConfigurationError(f"{option}: {key}.{name}={amount!r}; expected a number >= 0")
