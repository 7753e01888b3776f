"""Pollen: federated learning across organisations, with authenticated long-running nodes."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pollen import client, common
from pollen.client import ClientApp, NumPyClient
from pollen.errors import PollenError
from pollen.records.context import Context

if TYPE_CHECKING:
    from pollen import server, simulation
    from pollen.server import ServerApp, ServerConfig
    from pollen.server.strategy import FedAvg

__version__ = "0.1.0"

__all__ = [
    "ClientApp",
    "Context",
    "FedAvg",
    "NumPyClient",
    "PollenError",
    "ServerApp",
    "ServerConfig",
    "__version__",
    "client",
    "common",
    "server",
    "simulation",
]

# The server side loads gRPC, which reads its logging settings once, when it is
# imported: it is imported on first use, so that the `pollen` command can set
# them before (see pollen.cli).
_LAZY = {
    "server": ("pollen.server", None),
    "simulation": ("pollen.simulation", None),
    "ServerApp": ("pollen.server", "ServerApp"),
    "ServerConfig": ("pollen.server", "ServerConfig"),
    "FedAvg": ("pollen.server.strategy", "FedAvg"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pollen' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
