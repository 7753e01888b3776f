"""One round's instructions to the nodes, and waiting for enough nodes to start one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from pollen.errors import RunError
from pollen.records import fit_evaluate
from pollen.records.messages import BlobRef, Message
from pollen.records.typing import Config
from pollen.server.grid import Grid

logger = logging.getLogger(__name__)

_WAIT_POLL = 0.05
_WAIT_REPORT = 5.0


async def wait_for_nodes(grid: Grid, run_id: int, minimum: int, timeout: float) -> list[int]:
    """Online nodes once at least ``minimum`` are connected; RunError after ``timeout``."""
    started = last_report = time.monotonic()
    while True:
        nodes = await grid.get_nodes(run_id)
        if len(nodes) >= minimum:
            return nodes
        now = time.monotonic()
        if now - started >= timeout:
            raise RunError(
                f"only {len(nodes)} of {minimum} required nodes connected after {timeout:g} s; "
                "start more SuperNodes or lower min_available_clients"
            )
        if now - last_report >= _WAIT_REPORT or now == started:
            logger.info("waiting for nodes: %d of %d connected", len(nodes), minimum)
            last_report = now
        await asyncio.sleep(_WAIT_POLL)


class InstructionRound:
    """Sends one type of instruction to chosen nodes and yields their replies as they arrive."""

    def __init__(self, grid: Grid, run_id: int, timeout: float | None) -> None:
        self.grid = grid
        self.run_id = run_id
        self.timeout = timeout

    async def run(
        self,
        message_type: str,
        model: BlobRef | None,
        chosen: Sequence[tuple[int, Config]],
        failures: list[str],
        models: dict[int, BlobRef] | None = None,
        failed: Callable[[], None] = lambda: None,
    ) -> AsyncIterator[Message]:
        """``models``: nodes that start from a model of their own instead of ``model``;
        ``failed`` is called after each error reply joins ``failures``."""
        own = models or {}
        messages = [
            Message(
                self.run_id,
                node_id,
                message_type,
                fit_evaluate.instruction(own.get(node_id, model), config),
            )
            for node_id, config in chosen
        ]
        await self.grid.send(self.run_id, messages)
        missing = {m.message_id: m.node_id for m in messages}
        try:
            async with asyncio.timeout(self.timeout):
                async for reply in self.grid.replies(self.run_id, list(missing)):
                    missing.pop(reply.reply_to, None)
                    if reply.ok:
                        yield reply
                    else:
                        failures.append(f"node {reply.node_id}: {reply.error}")
                        failed()
        except TimeoutError:
            failures.extend(
                f"node {node}: no result within round_timeout={self.timeout:g} s"
                for node in missing.values()
            )
