"""Running one message on a node: fetch its blobs, call the ClientApp, upload and push the reply."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from pollen.client.client_app import ClientApp
from pollen.client.message_execution import Execution, execute
from pollen.errors import PollenError
from pollen.records.arrays import buffer_in_use, decode_arrays
from pollen.records.context import Context
from pollen.records.messages import BlobRef, Message, Records
from pollen.records.typing import UserConfig
from pollen.supernode.blob_cache import BlobCache
from pollen.supernode.fleet_client import FleetClient
from pollen.transport.retry_policy import classify, until_stored

logger = logging.getLogger(__name__)


class TaskRunner:
    """Runs the messages a node receives; keeps a `Context` per run and a blob cache."""

    def __init__(self, app: ClientApp, node_config: UserConfig, cache: BlobCache | None = None):
        self.app = app
        self.node_config = node_config
        self.cache = cache or BlobCache()
        self._contexts: dict[int, Context] = {}
        # Reused to spare a fresh allocation (which costs about as much as a copy).
        self._app_buffers: list[bytearray] = []  # the copies the last message's app got

    async def _context(self, fleet: FleetClient, message: Message) -> Context:
        context = self._contexts.get(message.run_id)
        if context is None:
            run = await fleet.get_run(message.run_id)
            context = Context(fleet.node_id, dict(self.node_config), run.run_id, run.run_config)
            self._contexts[message.run_id] = context
        context.node_id = fleet.node_id
        return context

    async def _blob(self, fleet: FleetClient, ref: BlobRef) -> tuple[bytearray, bool]:
        """The blob's bytes, and whether they are the app's own (not the cache's)."""
        blob = self.cache.get(ref.digest)
        if blob is None:
            if not self.cache.accepts(ref.size):
                return await fleet.download_blob(ref), True  # not kept: the app gets it
            # into the buffer of the blob the cache lets go, if it is full
            blob = await fleet.download_blob(ref, self.cache.make_room())
            self.cache.put(ref.digest, blob)  # room was made: evicts nothing
        return blob, False

    async def _arrays(self, fleet: FleetClient, message: Message) -> dict[str, bytearray]:
        """The buffers of the message's array records, each the app's to change."""
        blobs = {name: await self._blob(fleet, ref) for name, ref in message.content.arrays.items()}
        # The app may change its arrays in place; a cached blob must stay intact.
        spare = [b for b in self._app_buffers if not buffer_in_use(b)]
        buffers: dict[str, bytearray] = {}
        self._app_buffers = []
        for name, (blob, own) in blobs.items():
            buffers[name] = blob if own else _copy_into(spare, blob)
            if not own:
                self._app_buffers.append(buffers[name])
        return buffers

    async def run(self, fleet: FleetClient, message: Message) -> None:
        """Run ``message`` and push its reply; a failing ClientApp becomes an error reply.

        Connection errors propagate: the node reconnects and the SuperLink has
        already failed the message when the stream broke.
        """
        started = time.perf_counter()
        context = await self._context(fleet, message)
        try:
            buffers = await self._arrays(fleet, message)
            execution = await asyncio.to_thread(self._execute, message, buffers, context)
        except grpc.aio.AioRpcError:
            raise
        except PollenError as exc:
            execution = Execution(error=str(exc))
        reply = message.reply(execution.content, execution.error)
        if not reply.error:
            await self._upload(fleet, message, execution, reply)
        if reply.error:
            logger.warning("message %s failed: %s", message.message_id[:8], reply.error)
        await until_stored(lambda: fleet.push_reply(reply))
        logger.info(
            "run %d: %s done in %.3f s",
            message.run_id,
            message.message_type,
            time.perf_counter() - started,
        )

    async def _upload(
        self, fleet: FleetClient, message: Message, execution: Execution, reply: Message
    ) -> None:
        """Upload the reply's arrays; a refusal (over a quota, not allowed) becomes the
        reply's error, so the ServerApp learns why instead of seeing the node go away."""
        for name, encoded in execution.arrays.items():
            try:
                upload = functools.partial(fleet.upload_blob, encoded, run_id=message.run_id)
                reply.content.arrays[name] = await until_stored(upload)
            except grpc.aio.AioRpcError as exc:
                if classify(exc) not in ("refused", "passing"):
                    raise  # the SuperLink is away: reconnect, it failed the message already
                reply.error = f"the SuperLink refused the reply's upload: {exc.details()}"
                reply.content = Records()
                return

    def _execute(
        self, message: Message, buffers: dict[str, bytearray], context: Context
    ) -> Execution:
        try:
            arrays = {name: decode_arrays(buffer) for name, buffer in buffers.items()}
        except PollenError as exc:
            return Execution(error=str(exc))
        return execute(self.app, message, arrays, context)


def _copy_into(spare: list[bytearray], blob: bytearray) -> bytearray:
    """A copy of ``blob``, written over a spare buffer of its size when there is one
    (an app may keep its model between messages: a buffer in use is never spare)."""
    for index, buffer in enumerate(spare):
        if len(buffer) == len(blob):
            del spare[index]
            buffer[:] = blob
            return buffer
    return bytearray(blob)
