"""`ServerApp` and `ServerConfig`: what ``pollen serverapp MODULE:ATTR`` runs."""

from __future__ import annotations

from dataclasses import dataclass

from pollen.errors import ConfigurationError
from pollen.server.strategy.fedavg import FedAvg
from pollen.server.strategy.strategy import Strategy


@dataclass
class ServerConfig:
    """How a run proceeds.

    ``round_timeout``: seconds a round waits for results (None: until every
    sampled node answers or fails). ``node_wait_timeout``: seconds to wait for
    ``min_available_clients`` nodes before giving up. ``seed``: makes node
    sampling repeatable.
    """

    num_rounds: int = 1
    round_timeout: float | None = None
    node_wait_timeout: float = 120.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_rounds, int) or self.num_rounds < 1:
            raise ConfigurationError(
                f"ServerConfig(num_rounds={self.num_rounds!r}): must be an int of at least 1"
            )
        if self.round_timeout is not None and self.round_timeout <= 0:
            raise ConfigurationError(
                f"ServerConfig(round_timeout={self.round_timeout}): must be > 0 or None"
            )


class ServerApp:
    """A federated algorithm: a strategy (FedAvg by default) and a number of rounds."""

    def __init__(
        self, *, config: ServerConfig | None = None, strategy: Strategy | None = None
    ) -> None:
        self.config = config or ServerConfig()
        self.strategy = strategy or FedAvg()
