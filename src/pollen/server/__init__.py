"""The server-side app API: `ServerApp`, `ServerConfig`, strategies and the Driver client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pollen.server import strategy
from pollen.server.client_manager import ClientManager, SimpleClientManager
from pollen.server.client_proxy import ClientProxy
from pollen.server.grid import Grid
from pollen.server.history import History
from pollen.server.round_loop import RunOutcome
from pollen.server.server_app import ServerApp, ServerAppComponents, ServerConfig

if TYPE_CHECKING:
    from pollen.server.driver import DriverClient

__all__ = [
    "ClientManager",
    "ClientProxy",
    "DriverClient",
    "Grid",
    "History",
    "RunOutcome",
    "ServerApp",
    "ServerAppComponents",
    "ServerConfig",
    "SimpleClientManager",
    "strategy",
]


def __getattr__(name: str) -> Any:
    # The Driver API client loads gRPC: only a deployment needs it (an in-process Grid
    # runs without), and the `pollen` command sets gRPC's logging before loading it.
    if name == "DriverClient":
        from pollen.server.driver import DriverClient

        return DriverClient
    raise AttributeError(f"module 'pollen.server' has no attribute {name!r}")
