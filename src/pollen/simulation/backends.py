"""Which backend runs a simulation's virtual nodes, and the settings it takes."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from typing import Any

from pollen.errors import ConfigurationError

IN_PROCESS = "in-process"
PROCESS_POOL = "process-pool"
RAY = "ray"
BACKENDS = (IN_PROCESS, PROCESS_POOL, RAY)
"""``in-process`` runs every virtual node in a thread of the simulation's own
process; ``process-pool`` runs them in a pool of forked worker processes;
``ray`` on Ray actors (``pip install 'pollen[ray]'``), on this machine or a
cluster. The last two run as many at once as ``client_resources`` allow."""

_CONFIG_KEYS: dict[str, set[str] | None] = {
    "client_resources": {"num_cpus", "num_gpus"},
    "init_args": None,
}


def check_backend(name: str, option: str = "backend_name") -> str:
    """``name`` when this version has that backend; ConfigurationError otherwise."""
    if name == RAY:
        require_ray(option)
    if name in BACKENDS:
        return name
    known = ", ".join(BACKENDS)
    raise ConfigurationError(f"{option} {name!r}: no such backend; use one of: {known}")


def require_ray(option: str = "backend_name") -> None:
    """ConfigurationError naming the extra to install when Ray is not importable."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigurationError(
            f"{option} ray: Ray is not installed here; install it with pip install 'pollen[ray]'"
        )


def parse_backend_config(
    text: str, option: str = "--backend-config", backend: str = IN_PROCESS
) -> dict[str, Any]:
    """The JSON object of ``--backend-config``, checked (`check_backend_config`)."""
    try:
        config = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{option}: not JSON ({exc.msg} at character {exc.pos}); "
            'write e.g. \'{"client_resources": {"num_cpus": 1}}\''
        ) from None
    return check_backend_config(config, option, backend)


def check_backend_config(
    config: Any, option: str = "backend_config", backend: str = IN_PROCESS
) -> dict[str, Any]:
    """``config`` when it is a mapping of known keys (``client_resources``: ``num_cpus``,
    ``num_gpus``, numbers >= 0; ``init_args``: ``ray.init``'s arguments, for the ray
    backend only), else ConfigurationError naming the known ones."""
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
    if "init_args" in config and backend != RAY:
        raise ConfigurationError(
            f"{option}: init_args are ray.init's arguments, for the ray backend only; "
            "leave them out or use the ray backend"
        )
    return dict(config)


def _check_section(key: str, value: Any, known: set[str] | None, option: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{option}: {key} must be an object, got {value!r}")
    if known is None:  # passed on as they are
        return
    for name, amount in value.items():
        if name not in known:
            raise ConfigurationError(
                f"{option}: unknown key {key}.{name}; known keys: {', '.join(sorted(known))}"
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ConfigurationError(f"{option}: {key}.{name}={amount!r}; expected a number >= 0")
