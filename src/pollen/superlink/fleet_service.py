"""The Fleet API: what SuperNodes call. Every request names its node."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from pollen.errors import RecordError
from pollen.proto import common_pb2 as pb
from pollen.proto import fleet_pb2 as fpb
from pollen.proto import fleet_pb2_grpc
from pollen.records.messages import BlobRef, Message
from pollen.superlink.blob_gc import BlobCollector
from pollen.superlink.blob_transfer import receive_upload, refuse_oversized, send_download
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.dispatch import Dispatcher
from pollen.superlink.request_verification import current_session
from pollen.superlink.stream_limits import (
    DEFAULT_TRANSFERS_PER_NODE,
    BlobStreams,
    Party,
    Transfer,
)
from pollen.superlink.upload_bounds import DEFAULT_NODE_QUOTA, NodeQuota, UploadQuota
from pollen.transport.chunk_codec import Chunk
from pollen.transport.convert import message_from_proto, message_to_proto, run_to_proto
from pollen.transport.retry_policy import DISPLACED

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


def _new_node_id() -> int:
    return secrets.randbits(53) or 1


@dataclass
class _Upload:
    """Whose upload this is, once its first chunk is checked, and the bytes reserved."""

    node_id: int = 0
    run_id: int = 0
    reserved: int = 0


class FleetService(fleet_pb2_grpc.FleetServicer):
    def __init__(
        self,
        dispatcher: Dispatcher,
        blobs: BlobStore,
        heartbeat_interval: float,
        collector: BlobCollector,
        authenticated: bool = False,
        node_quota: NodeQuota = DEFAULT_NODE_QUOTA,
        streams: BlobStreams | None = None,
    ) -> None:
        self._streams = streams or BlobStreams(
            DEFAULT_TRANSFERS_PER_NODE, "--max-transfers-per-node"
        )
        self._collector = collector
        self._quota = UploadQuota(dispatcher.state, node_quota, blobs.max_blob_size)
        self._dispatcher = dispatcher
        self._state = dispatcher.state
        self._blobs = blobs
        self._heartbeat_interval = heartbeat_interval
        self._authenticated = authenticated

    async def _known_node(self, node_id: int, context: Context) -> None:
        """The request's node exists and, with authentication, is the caller's own."""
        if self._authenticated:
            session = current_session.get()
            if session is None or not session.node_id:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, "register this session first"
                )
            if node_id != session.node_id:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node {session.node_id} cannot act for node {node_id}",
                )
        status = self._state.node_status(node_id)
        if status is None or status == "left":
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"node {node_id} is not registered; register again"
            )

    async def RegisterNode(
        self, request: fpb.RegisterNodeRequest, context: Context
    ) -> fpb.RegisterNodeReply:
        node_id, fingerprint = self._node_id_for(request)
        self._state.add_node(node_id, self._dispatcher.clock(), fingerprint)
        logger.info("node %d registered from %s", node_id, context.peer())
        return fpb.RegisterNodeReply(node_id=node_id, heartbeat_interval=self._heartbeat_interval)

    def _node_id_for(self, request: fpb.RegisterNodeRequest) -> tuple[int, str | None]:
        """With authentication the key decides the node id; without, the node's memory does."""
        session = current_session.get() if self._authenticated else None
        if session is not None:
            node_id = self._state.node_for_key(session.fingerprint) or _new_node_id()
            session.node_id = node_id
            return node_id, session.fingerprint
        node = self._state.get_node(request.previous_node_id) if request.previous_node_id else None
        if node is None or node.status == "left":
            return _new_node_id(), None
        return node.node_id, None

    async def Subscribe(
        self, request: fpb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.Message]:
        await self._known_node(request.node_id, context)
        subscription = self._dispatcher.subscribe(request.node_id, context.peer())
        try:
            while (message := await subscription.queue.get()) is not None:
                if subscription.closed:
                    break
                if not self._state.mark_delivered(message.message_id):
                    continue  # answered or failed while it waited in the queue
                yield message_to_proto(message)
            if subscription.close_reason.startswith(DISPLACED):
                # say why: a node that just reconnected would displace the other in turn
                await context.abort(grpc.StatusCode.ABORTED, subscription.close_reason)
        finally:
            self._dispatcher.unsubscribe(subscription, "its message stream closed")

    async def PushReply(
        self, request: fpb.PushReplyRequest, context: Context
    ) -> fpb.PushReplyReply:
        await self._known_node(request.node_id, context)
        try:
            reply = message_from_proto(request.reply)
        except RecordError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        instruction = self._state.get_message(reply.reply_to)
        if instruction is None or instruction.node_id != request.node_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"message {reply.reply_to[:12]!r} is not an instruction to node {request.node_id}",
            )
        for name, ref in reply.content.arrays.items():
            reply.content.arrays[name] = await self._stored_blob(ref, instruction, context)
        # The instruction, not the node, says which run, node and type this answers.
        reply.run_id, reply.node_id = instruction.run_id, instruction.node_id
        reply.message_type = instruction.message_type
        self._dispatcher.add_reply(reply)
        digests = [ref.digest for ref in reply.content.blobs()]
        if digests:
            run = self._state.get_run(instruction.run_id)
            if run is not None and run.status == "running":
                # held until the ServerApp releases them (a duplicate answer's: at run end)
                self._state.hold_blobs(instruction.run_id, digests)
            else:  # a late answer: nobody will fetch it
                self._collector.collect(digests)
        return fpb.PushReplyReply()

    async def _stored_blob(
        self, declared: BlobRef, instruction: Message, context: Context
    ) -> BlobRef:
        """A reply's blob as the SuperLink stored it: one its node uploaded for the
        instruction's run (or a blob of the instruction itself, for a reply that hands
        it back), with the size written, never the size the node declares."""
        digest = declared.digest
        size = self._state.blob_size(digest)
        if size is None or not self._blobs.exists(digest):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"reply blob {digest[:12]} is not stored on this SuperLink; upload it first",
            )
        node_id, run_id = instruction.node_id, instruction.run_id
        handed_back = any(ref.digest == digest for ref in instruction.content.blobs())
        if not handed_back and not self._state.node_uploaded(node_id, run_id, digest):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"reply blob {digest[:12]} was not uploaded by node {node_id} for run "
                f"{run_id}; a reply names only a blob its node uploaded for its run",
            )
        if declared.size != size:
            logger.warning(
                "node %d declared %d bytes for blob %s; recorded the %d stored",
                node_id,
                declared.size,
                digest[:12],
                size,
            )
        return BlobRef(digest, size)

    async def Heartbeat(
        self, request: fpb.HeartbeatRequest, context: Context
    ) -> fpb.HeartbeatReply:
        await self._known_node(request.node_id, context)
        self._dispatcher.heartbeat(request.node_id)
        return fpb.HeartbeatReply(heartbeat_interval=self._heartbeat_interval)

    async def UnregisterNode(
        self, request: fpb.UnregisterNodeRequest, context: Context
    ) -> fpb.UnregisterNodeReply:
        await self._known_node(request.node_id, context)
        self._dispatcher.unregister(request.node_id)
        logger.info("node %d left", request.node_id)
        return fpb.UnregisterNodeReply()

    async def GetRun(self, request: fpb.GetRunRequest, context: Context) -> fpb.GetRunReply:
        await self._known_node(request.node_id, context)
        run = self._state.get_run(request.run_id)
        if run is None or not self._state.node_has_run(request.node_id, request.run_id):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"run {request.run_id} does not exist or has no message for node {request.node_id}",
            )
        return fpb.GetRunReply(run=run_to_proto(run))

    def _party(self, node_id: int = 0) -> tuple[Party | None, object | None]:
        """Whose blob stream this is: the session's key; without authentication, the node
        the request names (``node_id`` 0: named by its first chunk)."""
        session = current_session.get() if self._authenticated else None
        if session is not None:
            name = f"node {session.node_id}" if session.node_id else f"key {session.fingerprint}"
            return Party(session.fingerprint, name), session
        return (Party(f"node {node_id}", f"node {node_id}") if node_id else None), None

    async def _counted(
        self, chunks: AsyncIterable[Chunk], transfer: Transfer
    ) -> AsyncIterator[Chunk]:
        """Without authentication an upload's node is known from its first chunk."""
        async for chunk in chunks:
            if transfer.party is None:
                party = Party(f"node {chunk.node_id}", f"node {chunk.node_id}")
                await self._streams.admit(transfer, party)
            yield chunk

    async def UploadBlob(
        self, request_iterator: AsyncIterable[Chunk], context: Context
    ) -> pb.BlobRef:
        party, session = self._party()
        async with self._streams.open("upload", context, party, session) as transfer:
            upload = _Upload()
            try:
                ref = await receive_upload(
                    self._checked_upload(
                        self._counted(request_iterator, transfer), context, upload
                    ),
                    self._blobs,
                    self._state,
                    self._dispatcher.clock,
                    context,
                    transfer,
                )
                self._state.add_upload(ref.digest, upload.node_id, upload.run_id)
                return ref
            finally:
                if upload.reserved:
                    self._quota.give_back(upload.node_id, upload.run_id, upload.reserved)

    async def _checked_upload(
        self, chunks: AsyncIterable[Chunk], context: Context, upload: _Upload
    ) -> AsyncIterator[Chunk]:
        """Only a registered node uploads, and only what it may store (`_may_store`).

        Each chunk counts as a heartbeat: a large upload can hold the node's
        heartbeats back behind it on their shared connection.
        """
        node_id = 0
        async for chunk in chunks:
            if not node_id:
                await self._known_node(chunk.node_id, context)
                await self._may_store(chunk, context, upload)
                node_id = chunk.node_id
            self._dispatcher.heartbeat(node_id)
            yield chunk

    async def _may_store(self, first: Chunk, context: Context, upload: _Upload) -> None:
        """Before a byte is written: the upload names a run in which the node holds an
        open instruction, declares at most --max-blob-size, and fits the node's quota there."""
        node_id, run_id = first.node_id, first.run_id
        if not run_id or not self._state.node_has_open_message(node_id, run_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {node_id} holds no open instruction in run {run_id}: a node uploads "
                "only the reply to an instruction it holds, naming the instruction's run",
            )
        await refuse_oversized(first.total_size, self._blobs, context)
        refusal = self._quota.take(node_id, run_id, first.total_size)
        if refusal is not None:
            logger.warning("upload refused: %s", refusal)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        upload.node_id, upload.run_id, upload.reserved = node_id, run_id, first.total_size

    async def DownloadBlob(
        self, request: pb.DownloadBlobRequest, context: Context
    ) -> AsyncIterator[bytes]:
        await self._known_node(request.node_id, context)
        if not self._state.node_can_read_blob(request.node_id, request.digest):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"blob {request.digest[:12]} is not part of a message to node {request.node_id}",
            )
        party, session = self._party(request.node_id)
        async with self._streams.open("download", context, party, session) as transfer:
            async for chunk in send_download(request, self._blobs, context, transfer):
                yield chunk
                self._dispatcher.heartbeat(request.node_id)  # it took the chunk: it is alive
