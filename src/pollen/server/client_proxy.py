"""`ClientProxy`: a node as Flower's 1.8-era strategies name it."""

from __future__ import annotations


class ClientProxy:
    """A node of the federation; ``cid`` is its node id as a string (Flower's name)."""

    def __init__(self, cid: str) -> None:
        self.cid = cid

    @property
    def node_id(self) -> int:
        return int(self.cid)

    def __repr__(self) -> str:
        return f"ClientProxy(cid={self.cid!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientProxy) and other.cid == self.cid

    def __hash__(self) -> int:
        return hash(self.cid)
