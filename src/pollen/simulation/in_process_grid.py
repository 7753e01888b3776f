"""`InProcessGrid`: a federation of virtual nodes inside the ServerApp's own process.

Each virtual node runs the ClientApp on the messages sent to it, one at a
time, in a worker thread, through the same `execute` rule a SuperNode uses;
blobs live in memory: uploads content-addressed as on a SuperLink, replies under
a name of their own (nothing travels, so nothing is hashed to be checked; see
`InProcessGrid._store`). No network, no gRPC: the round loop, strategies,
checkpoints and outputs run unchanged on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from pollen.client.client_app import ClientApp
from pollen.client.message_execution import execute
from pollen.errors import CallRefused
from pollen.records.arrays import ArrayBytes, Layout, decode_arrays, read_specs
from pollen.records.content_address import DIGEST_HEX_LENGTH, content_digest
from pollen.records.context import Context
from pollen.records.messages import BlobRef, Message
from pollen.records.typing import NDArrays, UserConfig
from pollen.server.grid import Grid
from pollen.simulation.daemon_threads import DaemonThreadPool
from pollen.simulation.resources import available_cpus

NodeConfigFn = Callable[[int, int], UserConfig]
"""``(partition_id, num_partitions)`` → a virtual node's ``node_config``."""


def partition_config(partition_id: int, num_partitions: int) -> UserConfig:
    """Each virtual node holds one partition of a data set: which one, of how many."""
    return {"partition-id": partition_id, "num-partitions": num_partitions}


def _refused(status: str, details: str) -> CallRefused:
    return CallRefused("(in process)", status, details)


@dataclass
class _Run:
    app: str
    run_config: UserConfig
    status: str = "running"
    replies: dict[str, Message] = field(default_factory=dict)
    open: dict[str, Message] = field(default_factory=dict)
    listeners: set[asyncio.Queue[Message]] = field(default_factory=set)


@dataclass
class _Node:
    node_id: int
    node_config: UserConfig
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    contexts: dict[int, Context] = field(default_factory=dict)


class InProcessGrid(Grid):
    """``num_nodes`` virtual nodes running ``app``; node ``i`` (0-based) gets
    ``node_config(i, num_nodes)`` (by default its partition: `partition_config`)."""

    def __init__(
        self,
        app: ClientApp,
        num_nodes: int,
        node_config: NodeConfigFn = partition_config,
        threads: int | None = None,
    ) -> None:
        self.app = app
        self._thread_count = threads or available_cpus()
        self._worker_threads: DaemonThreadPool | None = None
        self.superlink_id = f"in-process-{secrets.token_hex(4)}"
        self._nodes = {i + 1: _Node(i + 1, node_config(i, num_nodes)) for i in range(num_nodes)}
        self._runs: dict[int, _Run] = {}
        self._blobs: dict[str, bytes] = {}
        self._layouts: dict[str, Layout] = {}
        self._holds: dict[str, set[int]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()

    def _run(self, run_id: int, running: bool = True) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise _refused("not_found", f"run {run_id} does not exist")
        if running and run.status != "running":
            raise _refused("failed_precondition", f"run {run_id} is {run.status}")
        return run

    # runs
    async def create_run(self, app: str, run_config: UserConfig) -> tuple[int, str]:
        run_id = len(self._runs) + 1
        self._runs[run_id] = _Run(app, dict(run_config))
        return run_id, self.superlink_id

    async def resume_run(self, run_id: int, checkpoint: str = "", superlink_id: str = "") -> str:
        run = self._run(run_id, running=False)
        if run.status == "finished" or (superlink_id and superlink_id != self.superlink_id):
            raise _refused("failed_precondition", f"run {run_id} cannot resume here")
        if checkpoint and checkpoint not in self._blobs:
            raise _refused(
                "failed_precondition",
                f"the checkpoint's model (blob {checkpoint[:12]}) is no longer stored",
            )
        self._end_open(run, "the ServerApp restarted")
        run.status = "running"
        return self.superlink_id

    async def finish_run(
        self, run_id: int, status: str, message: str = "", keep: Sequence[BlobRef] = ()
    ) -> None:
        run = self._run(run_id)
        self._end_open(run, f"run {run_id} ended")
        run.status = status
        kept = {ref.digest for ref in keep}
        held = [digest for digest, runs in self._holds.items() if run_id in runs]
        self._release(run_id, [digest for digest in held if digest not in kept])

    # nodes and messages
    async def get_nodes(self, run_id: int) -> list[int]:
        self._run(run_id)
        return sorted(self._nodes)

    async def send(self, run_id: int, messages: Sequence[Message]) -> None:
        run = self._run(run_id)
        for message in messages:
            message.run_id = run_id
            run.open[message.message_id] = message
            for ref in message.content.blobs():
                self._hold(run_id, ref.digest)
            delivery = asyncio.create_task(self._deliver(run, message))
            self._deliveries.add(delivery)
            delivery.add_done_callback(self._deliveries.discard)

    async def replies(self, run_id: int, message_ids: Sequence[str]) -> AsyncIterator[Message]:
        run = self._run(run_id, running=False)
        wanted = set(message_ids)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        run.listeners.add(queue)
        try:
            for message_id in sorted(wanted):
                if message_id in run.replies:
                    wanted.discard(message_id)
                    yield run.replies[message_id]
            while wanted:
                reply = await queue.get()
                if reply.reply_to in wanted:
                    wanted.discard(reply.reply_to)
                    yield reply
        finally:
            run.listeners.discard(queue)

    async def _deliver(self, run: _Run, message: Message) -> None:
        node = self._nodes.get(message.node_id)
        if node is None:
            self._answer(run, message.reply(error=f"node {message.node_id} is not connected"))
            return
        async with node.busy:  # a node runs one message at a time, as a SuperNode does
            if message.message_id not in run.open:
                return  # the run ended while this one waited
            reply = await self._execute_off_loop(node, run, message)
        self._answer(run, reply)

    async def _execute_off_loop(self, node: _Node, run: _Run, message: Message) -> Message:
        """`_execute` in one of this grid's worker threads (daemons: a stopped
        simulation does not wait for a ClientApp still running)."""
        if self._worker_threads is None:
            self._worker_threads = DaemonThreadPool(self._thread_count)
        call = functools.partial(contextvars.copy_context().run, self._execute, node, run, message)
        return await asyncio.get_running_loop().run_in_executor(self._worker_threads, call)

    def close(self) -> None:
        """Stop the worker threads; a message still running is abandoned."""
        if self._worker_threads is not None:
            self._worker_threads.shutdown(wait=False)

    @staticmethod
    def _context(node: _Node, run: _Run, run_id: int) -> Context:
        """The node's `Context` for ``run_id``, made on its first message: its ``state``
        lives as long as the run, as a SuperNode's does."""
        context = node.contexts.get(run_id)
        if context is None:
            context = Context(node.node_id, dict(node.node_config), run_id, run.run_config)
            node.contexts[run_id] = context
        return context

    def _execute(self, node: _Node, run: _Run, message: Message) -> Message:
        context = self._context(node, run, message.run_id)
        try:
            arrays = {
                name: self._decode(ref.digest) for name, ref in message.content.arrays.items()
            }
        except KeyError as exc:
            return message.reply(error=f"blob {str(exc)[:14]} is not stored")
        execution = execute(self.app, message, arrays, context)
        reply = message.reply(execution.content, execution.error)
        sent = message.content.blobs()
        for name, encoded in execution.arrays.items():
            reply.content.arrays[name] = self._store(encoded, message.run_id, sent)
        return reply

    def _answer(self, run: _Run, reply: Message) -> None:
        if run.open.pop(reply.reply_to, None) is None:
            return  # answered already (the run ended meanwhile)
        run.replies[reply.reply_to] = reply
        for queue in run.listeners:
            queue.put_nowait(reply)

    def _end_open(self, run: _Run, reason: str) -> None:
        for message in list(run.open.values()):
            self._answer(run, message.reply(error=reason))

    # arrays
    def _store(
        self, arrays: ArrayBytes | bytes, run_id: int, sent: Sequence[BlobRef] | None = None
    ) -> BlobRef:
        """Keep a reply's arrays, copied once, now (the app may change its arrays later).

        With ``sent`` (the blobs its instruction named), not hashed: a SuperLink hashes what
        arrives, to check it and to keep each content once, but here nothing travels, and
        hashing was over half of what a 4 MB reply cost (BLAKE3 reads 4 MB in about 0.8 ms,
        the copy takes 0.1-0.2 ms). Arrays with the bytes of a blob in ``sent`` (a node that
        hands its model back) keep that blob's name, as a content address would, and take no
        memory; any other reply gets a name of its own. Without ``sent``: content-addressed.
        """
        data = bytes(arrays)
        if sent is None:
            return self._keep(content_digest(data), data, run_id)
        for ref in sent:
            if ref.size == len(data) and self._blobs.get(ref.digest) == data:  # memcmp
                return self._keep(ref.digest, data, run_id)
        return self._keep(secrets.token_hex(DIGEST_HEX_LENGTH // 2), data, run_id)

    def _keep(self, name: str, data: bytes, run_id: int) -> BlobRef:
        self._blobs.setdefault(name, data)
        self._hold(run_id, name)
        return BlobRef(name, len(data))

    def _hold(self, run_id: int, digest: str) -> None:
        if run_id:
            self._holds.setdefault(digest, set()).add(run_id)

    def _release(self, run_id: int, digests: Sequence[str]) -> None:
        for digest in digests:
            runs = self._holds.get(digest, set())
            runs.discard(run_id)
            if not runs:
                self._holds.pop(digest, None)
                self._blobs.pop(digest, None)
                self._layouts.pop(digest, None)

    async def upload_arrays(self, arrays: NDArrays, run_id: int = 0) -> BlobRef:
        """Content-addressed, as on a SuperLink: a checkpoint names the model by its digest."""
        return self._store(ArrayBytes(arrays), run_id)

    async def download_arrays(self, ref: BlobRef) -> NDArrays:
        try:
            return self._decode(ref.digest)
        except KeyError:
            raise _refused("not_found", f"blob {ref.digest[:12]} is not stored") from None

    def _decode(self, name: str) -> NDArrays:
        """A copy of blob ``name``'s arrays that the caller may change; its header is parsed
        once per blob (a model goes to every node of a round). KeyError: not stored."""
        blob = self._blobs[name]
        layout = self._layouts.get(name)
        if layout is None:
            layout = self._layouts[name] = read_specs(blob)
        return decode_arrays(bytearray(blob), layout)

    async def release_blobs(self, run_id: int, refs: Sequence[BlobRef]) -> None:
        self._release(run_id, [ref.digest for ref in refs])

    def release_memory(self) -> None:
        """Nothing is kept for reuse: each download is a fresh copy."""
