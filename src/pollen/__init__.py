"""Pollen: federated learning across organisations, with authenticated long-running nodes."""

from pollen import client, common, server
from pollen.client import ClientApp, NumPyClient
from pollen.errors import PollenError
from pollen.records.context import Context
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
]
