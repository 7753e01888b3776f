"""`ClientManager`: the nodes of a round as Flower's 1.8-era strategies sample them."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from pollen.server.client_proxy import ClientProxy


class Criterion(ABC):
    """Decides whether a node may be sampled (Flower's ``flwr.server.criterion.Criterion``)."""

    @abstractmethod
    def select(self, client: ClientProxy) -> bool: ...


class ClientManager(ABC):
    """The nodes a strategy samples from (Flower's ``flwr.server.ClientManager``)."""

    @abstractmethod
    def num_available(self) -> int: ...

    @abstractmethod
    def register(self, client: ClientProxy) -> bool: ...

    @abstractmethod
    def unregister(self, client: ClientProxy) -> None: ...

    @abstractmethod
    def all(self) -> dict[str, ClientProxy]: ...

    @abstractmethod
    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool: ...

    @abstractmethod
    def sample(
        self,
        num_clients: int,
        min_num_clients: int | None = None,
        criterion: Criterion | None = None,
    ) -> list[ClientProxy]: ...


class SimpleClientManager(ClientManager):
    """The nodes connected when a round starts, sampled with the round loop's seeded
    generator (`ServerConfig(seed=...)` makes a run's samples repeatable).

    The round loop has already waited for ``min_available_clients`` nodes, so
    ``wait_for`` does not wait; ``sample`` takes every node when asked for more than
    there are (Flower's returns none).
    """

    def __init__(self, node_ids: Sequence[int] = (), rng: random.Random | None = None) -> None:
        self._clients = {str(node): ClientProxy(str(node)) for node in sorted(node_ids)}
        self._rng = rng or random.Random()

    def num_available(self) -> int:
        return len(self._clients)

    def register(self, client: ClientProxy) -> bool:
        if client.cid in self._clients:
            return False
        self._clients[client.cid] = client
        return True

    def unregister(self, client: ClientProxy) -> None:
        self._clients.pop(client.cid, None)

    def all(self) -> dict[str, ClientProxy]:
        return dict(self._clients)

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        return self.num_available() >= num_clients

    def sample(
        self,
        num_clients: int,
        min_num_clients: int | None = None,
        criterion: Criterion | None = None,
    ) -> list[ClientProxy]:
        candidates = sorted(self._clients.values(), key=lambda c: c.node_id)
        if criterion is not None:
            candidates = [c for c in candidates if criterion.select(c)]
        return self._rng.sample(candidates, min(num_clients, len(candidates)))
