"""Running one task: fetch its blob, call the ClientApp, upload and push the result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from pollen.client.client_app import ClientApp, Reply
from pollen.errors import PollenError
from pollen.records.arrays import ArrayBytes, decode_arrays
from pollen.records.context import Context
from pollen.records.messages import BlobRef, Result, Task
from pollen.records.typing import NDArrays, UserConfig
from pollen.supernode.blob_cache import BlobCache
from pollen.supernode.fleet_client import FleetClient
from pollen.transport.backoff import Backoff
from pollen.transport.statuses import storage_full

logger = logging.getLogger(__name__)

T = TypeVar("T")

_REFUSED = frozenset(
    {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
"""What the SuperLink answers an upload it will not take: trying again would not help."""

STORAGE_PATIENCE = 600.0
"""Seconds a node keeps offering a result to a SuperLink whose disk is full."""


async def _until_stored(send: Callable[[], Awaitable[T]], patience: float) -> T:
    """``await send()``, again while the SuperLink's disk is full (it says so), up to
    ``patience`` seconds: a result is not thrown away for want of disk space."""
    backoff = Backoff(initial=0.5, maximum=10.0)
    deadline = time.monotonic() + patience
    while True:
        try:
            return await send()
        except grpc.aio.AioRpcError as exc:
            if not storage_full(exc) or time.monotonic() > deadline:
                raise
            delay = backoff.next_delay()
            logger.warning("%s; offering the result again in %.1f s", exc.details(), delay)
            await asyncio.sleep(delay)


class TaskRunner:
    """Runs tasks for one node; keeps a `Context` per run and a blob cache."""

    def __init__(self, app: ClientApp, node_config: UserConfig, cache: BlobCache | None = None):
        self.app = app
        self.node_config = node_config
        self.cache = cache or BlobCache()
        self._contexts: dict[int, Context] = {}
        # Reused to spare a fresh allocation (which costs about as much as a copy).
        self._app_buffer: bytearray | None = None  # the last copy an app got, if it let go

    async def _context(self, fleet: FleetClient, task: Task) -> Context:
        context = self._contexts.get(task.run_id)
        if context is None:
            run = await fleet.get_run(task.run_id)
            context = Context(fleet.node_id, dict(self.node_config), run.run_id, run.run_config)
            self._contexts[task.run_id] = context
        context.node_id = fleet.node_id
        return context

    async def _parameters(self, fleet: FleetClient, ref: BlobRef | None) -> bytearray | None:
        if ref is None:
            return None
        blob = self.cache.get(ref.digest)
        if blob is None:
            if not self.cache.accepts(ref.size):
                return await fleet.download_blob(ref)  # not kept: the app gets this very buffer
            # into the buffer of the blob the cache lets go, if it is full
            blob = await fleet.download_blob(ref, self.cache.make_room())
            self.cache.put(ref.digest, blob)  # room was made: evicts nothing
        # The app may change its arrays in place; the cached blob must stay intact.
        return self._app_copy(blob)

    def _app_copy(self, blob: bytearray) -> bytearray:
        """A copy of ``blob`` for the app, written over the previous app's copy when no
        array of it is alive any more (an app may keep its model between tasks)."""
        previous, self._app_buffer = self._app_buffer, None
        if previous is not None and len(previous) == len(blob) and not _viewed(previous):
            previous[:] = blob
            self._app_buffer = previous
        else:
            self._app_buffer = bytearray(blob)
        return self._app_buffer

    async def run(self, fleet: FleetClient, task: Task) -> None:
        """Run ``task`` and push its result; a failing ClientApp becomes an error result.

        Connection errors propagate: the node reconnects and the SuperLink has
        already failed the task when the stream broke.
        """
        started = time.perf_counter()
        result = Result(task.task_id, task.run_id, task.node_id, task.kind)
        context = await self._context(fleet, task)
        try:
            blob = await self._parameters(fleet, task.parameters)
            reply, encoded = await asyncio.to_thread(self._execute, task, blob, context)
        except grpc.aio.AioRpcError:
            raise
        except PollenError as exc:
            result.error = str(exc)
        except Exception as exc:  # the user's code failed: report it, keep the node alive
            logger.exception("ClientApp failed on %s task of run %d", task.kind, task.run_id)
            result.error = f"ClientApp raised {type(exc).__name__}: {exc}"
        else:
            result.num_examples = reply.num_examples
            result.loss = reply.loss
            result.metrics = reply.metrics
            if encoded is not None:
                await self._upload(fleet, task, encoded, result)
        if result.error:
            logger.warning("task %s failed: %s", task.task_id[:8], result.error)
        await _until_stored(lambda: fleet.push_result(result), STORAGE_PATIENCE)
        logger.info(
            "run %d: %s task done in %.3f s", task.run_id, task.kind, time.perf_counter() - started
        )

    async def _upload(
        self, fleet: FleetClient, task: Task, encoded: ArrayBytes, result: Result
    ) -> None:
        """Upload the result's arrays; a refusal (over a quota, not allowed) becomes the
        result's error, so the ServerApp learns why instead of seeing the node go away."""
        try:
            result.parameters = await _until_stored(
                lambda: fleet.upload_blob(encoded, run_id=task.run_id), STORAGE_PATIENCE
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _REFUSED:
                raise
            result.error = f"the SuperLink refused the result's upload: {exc.details()}"

    def _execute(
        self, task: Task, blob: bytearray | None, context: Context
    ) -> tuple[Reply, ArrayBytes | None]:
        parameters: NDArrays = decode_arrays(blob) if blob is not None else []
        reply = self.app.run_task(task.kind, parameters, task.config, context)
        if reply.parameters is None:
            return reply, None
        # sent straight from the app's arrays: each chunk is copied once, into its message
        return reply, ArrayBytes(reply.parameters)


def _viewed(buffer: bytearray) -> bool:
    """True while an array decoded from ``buffer`` is alive: each holds an export of its
    buffer, and a bytearray with exports cannot change size."""
    if not buffer:
        return False
    try:
        last = buffer.pop()
    except BufferError:
        return True
    buffer.append(last)  # within the allocation: no copy, no move
    return False
