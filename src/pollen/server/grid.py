"""The `Grid`: everything a ServerApp does above the wire.

A Grid reaches the nodes of a federation: it lists them, sends them messages
of records, hands back their replies as they arrive, and stores the arrays
that messages name. `DriverClient` is the Grid of a deployment (the Driver API
of a SuperLink, over gRPC); `pollen.simulation.InProcessGrid` runs virtual nodes
in the ServerApp's own process. The round loop, the strategies and the run's
lifecycle depend on this protocol only.

Blobs and buffers are the Grid's business: `download_arrays` may reuse the
memory of an earlier download once no array of it is alive any more, never
while one is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pollen.records.messages import BlobRef, Message
from pollen.records.typing import NDArrays, UserConfig
from pollen.server.history import RoundRecord


@dataclass(frozen=True)
class RunReport:
    """How a run stands, as its ServerApp tells the federation after each round."""

    num_rounds: int
    output_dir: str = ""
    """Where the run's outputs are written ("": nowhere)."""
    record: RoundRecord | None = None
    """The round just completed (None: no round yet, the run starts or resumes)."""
    summary: str = ""
    """That round's one-line summary, as the ServerApp logs it."""


class Grid(Protocol):
    """What a ServerApp needs of a federation. Methods raise `pollen.errors.PollenError`s."""

    # runs
    async def create_run(self, app: str, run_config: UserConfig) -> tuple[int, str]:
        """A new run: its id and the id of the federation's state (run ids are unique
        only within it)."""
        ...

    async def resume_run(self, run_id: int, checkpoint: str = "", superlink_id: str = "") -> str:
        """Reopen ``run_id`` if its ``checkpoint`` model is still stored (and the state
        is ``superlink_id``, when given); the state's id. Refused: `CallRefused`."""
        ...

    async def finish_run(
        self, run_id: int, status: str, message: str = "", keep: Sequence[BlobRef] = ()
    ) -> None:
        """End the run; a failed one keeps the blobs in ``keep`` (its checkpoint's model)."""
        ...

    async def report_round(self, run_id: int, report: RunReport) -> None:
        """Tell the federation's state how the run stands (`pollen runs` shows it). Never
        raises: a report that fails must not fail the run. This default keeps nothing
        (a Grid whose runs nobody else sees, as a simulation's)."""
        return None

    # nodes and messages
    async def get_nodes(self, run_id: int) -> list[int]:
        """The ids of the nodes connected now."""
        ...

    async def send(self, run_id: int, messages: Sequence[Message]) -> None:
        """Send instructions; each node's reply comes back through `replies`."""
        ...

    def replies(self, run_id: int, message_ids: Sequence[str]) -> AsyncIterator[Message]:
        """The replies to ``message_ids``, each as soon as it exists. An instruction its
        node could not carry out (it left, it failed) gets a reply with an error."""
        ...

    # arrays
    async def upload_arrays(self, arrays: NDArrays, run_id: int = 0) -> BlobRef:
        """Store ``arrays`` as one blob, held by ``run_id`` until released."""
        ...

    async def download_arrays(self, ref: BlobRef) -> NDArrays:
        """The arrays of a stored blob."""
        ...

    async def release_blobs(self, run_id: int, refs: Sequence[BlobRef]) -> None:
        """The run no longer needs these blobs."""
        ...

    def release_memory(self) -> None:
        """Let go of memory kept to be reused by later downloads."""
        ...

    async def send_and_receive(
        self, run_id: int, messages: Sequence[Message], timeout: float | None = None
    ) -> tuple[list[Message], list[Message]]:
        """Send ``messages`` and wait up to ``timeout`` seconds (None: for ever) for their
        replies: (the replies, the instructions that got none in time). Written once,
        here, for every Grid (they subclass `Grid`)."""
        await self.send(run_id, messages)
        waiting = {m.message_id: m for m in messages}
        replies: list[Message] = []
        try:
            async with asyncio.timeout(timeout):
                async for reply in self.replies(run_id, list(waiting)):
                    waiting.pop(reply.reply_to, None)
                    replies.append(reply)
        except TimeoutError:
            pass
        return replies, list(waiting.values())
