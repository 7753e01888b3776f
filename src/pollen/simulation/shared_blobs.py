"""`SharedBlobGrid`: an `InProcessGrid` whose workers read each blob from one shared copy.

A backend whose virtual nodes run outside the simulation's threads (forked
processes, Ray actors) must hand them the model. Each blob an instruction names
is published once, keyed by its digest (a file in shared memory, an object in
Ray's object store), however many nodes it goes to; it is withdrawn when no open
instruction names it any more, and at `withdraw_all`. The backend says only how
to publish and withdraw.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

from pollen.client.client_app import ClientApp
from pollen.records.messages import BlobRef, Message
from pollen.simulation.in_process_grid import (
    InProcessGrid,
    NodeConfigFn,
    _Run,
    partition_config,
)

Handle = TypeVar("Handle")


class SharedBlobGrid(InProcessGrid, Generic[Handle]):
    """Bookkeeping of published blobs by the open instructions that name them."""

    def __init__(
        self,
        app: ClientApp,
        num_nodes: int,
        node_config: NodeConfigFn = partition_config,
        threads: int | None = None,
    ) -> None:
        super().__init__(app, num_nodes, node_config, threads)
        self._shared: dict[str, Handle] = {}
        self._named: dict[str, list[str]] = {}  # open instruction -> digests it names
        self._naming: dict[str, int] = {}  # digest -> open instructions naming it
        self._shared_lock = threading.Lock()

    @abstractmethod
    def _publish(self, digest: str, blob: bytes) -> Handle:
        """Make ``blob`` readable by every worker; what a worker is given to read it."""

    @abstractmethod
    def _withdraw(self, handle: Handle) -> None:
        """Free what `_publish` made."""

    async def send(self, run_id: int, messages: Sequence[Message]) -> None:
        with self._shared_lock:
            for message in messages:
                digests = [ref.digest for ref in message.content.blobs()]
                self._named[message.message_id] = digests
                for digest in digests:
                    self._naming[digest] = self._naming.get(digest, 0) + 1
        await super().send(run_id, messages)

    def _answer(self, run: _Run, reply: Message) -> None:
        super()._answer(run, reply)
        with self._shared_lock:
            for digest in self._named.pop(reply.reply_to, []):
                left = self._naming.get(digest, 1) - 1
                if left > 0:
                    self._naming[digest] = left
                    continue
                self._naming.pop(digest, None)
                handle = self._shared.pop(digest, None)
                if handle is not None:
                    self._withdraw(handle)

    def _share(self, ref: BlobRef) -> Handle:
        """The published copy of ``ref``'s blob (published now if it is not yet);
        KeyError when the blob is not stored."""
        with self._shared_lock:
            handle = self._shared.get(ref.digest)
            if handle is None:
                handle = self._publish(ref.digest, self._blobs[ref.digest])
                self._shared[ref.digest] = handle
            return handle

    def _withdraw_all(self) -> None:
        with self._shared_lock:
            for handle in self._shared.values():
                self._withdraw(handle)
            self._shared.clear()
            self._named.clear()
            self._naming.clear()
