"""The server-side app API: `ServerApp`, `ServerConfig`, strategies and the Driver client."""

from pollen.server import strategy
from pollen.server.driver import DriverClient
from pollen.server.history import History
from pollen.server.round_loop import RunOutcome
from pollen.server.server_app import ServerApp, ServerConfig

__all__ = ["DriverClient", "History", "RunOutcome", "ServerApp", "ServerConfig", "strategy"]
