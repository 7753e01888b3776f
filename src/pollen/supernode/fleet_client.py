"""The SuperNode's side of the Fleet API, in records rather than protocol messages."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import grpc
from google.protobuf.message import Message as ProtoMessage

from pollen.proto import common_pb2 as pb
from pollen.proto import fleet_pb2 as fpb
from pollen.proto.fleet_pb2_grpc import FleetStub
from pollen.records.arrays import ArrayBytes, Buffer
from pollen.records.messages import BlobRef, Message, RunInfo
from pollen.transport.blob_stream import (
    download_blob,
    download_call,
    iter_chunks,
    stored_ref,
    upload_call,
)
from pollen.transport.chunk_codec import Chunk
from pollen.transport.convert import message_from_proto, message_to_proto, run_from_proto
from pollen.transport.request_signing import Metadata, RequestAuth
from pollen.transport.transfer_progress import LOGGED_TRANSFERS, Tracked, TransferProgress

_FLEET = "/pollen.v1.Fleet/"


class FleetClient:
    """Fleet API calls for one node over one channel, signed when ``auth`` is given."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        auth: RequestAuth | None = None,
        transfers: TransferProgress = LOGGED_TRANSFERS,
    ) -> None:
        self._stub = FleetStub(channel)  # type: ignore[no-untyped-call]
        self._transfers = transfers  # where blobs over 50 MB report their progress
        self._upload = upload_call(channel, _FLEET + "UploadBlob")
        self._download = download_call(channel, _FLEET + "DownloadBlob")
        self._auth = auth
        self.node_id = 0
        self.heartbeat_interval = 5.0

    def _signed(self, name: str, request: ProtoMessage) -> Metadata | None:
        return self._auth.request(_FLEET + name, request) if self._auth else None

    async def register(self, previous_node_id: int = 0) -> int:
        request = fpb.RegisterNodeRequest(previous_node_id=previous_node_id)
        reply = await self._stub.RegisterNode(
            request, metadata=self._signed("RegisterNode", request)
        )
        self.node_id = reply.node_id
        self.heartbeat_interval = reply.heartbeat_interval or self.heartbeat_interval
        return self.node_id

    async def instructions(self) -> AsyncIterator[Message]:
        """Instructions for this node, as the SuperLink pushes them."""
        request = fpb.SubscribeRequest(node_id=self.node_id)
        call = self._stub.Subscribe(request, metadata=self._signed("Subscribe", request))
        async for message in call:
            yield message_from_proto(message)

    async def heartbeat(self) -> None:
        request = fpb.HeartbeatRequest(node_id=self.node_id)
        await self._stub.Heartbeat(request, timeout=10, metadata=self._signed("Heartbeat", request))

    async def unregister(self) -> None:
        request = fpb.UnregisterNodeRequest(node_id=self.node_id)
        await self._stub.UnregisterNode(
            request, timeout=5, metadata=self._signed("UnregisterNode", request)
        )

    async def get_run(self, run_id: int) -> RunInfo:
        request = fpb.GetRunRequest(node_id=self.node_id, run_id=run_id)
        reply = await self._stub.GetRun(request, metadata=self._signed("GetRun", request))
        return run_from_proto(reply.run)

    async def push_reply(self, reply: Message) -> None:
        request = fpb.PushReplyRequest(node_id=self.node_id, reply=message_to_proto(reply))
        await self._stub.PushReply(request, metadata=self._signed("PushReply", request))

    async def upload_blob(
        self, buffer: Buffer | ArrayBytes, digest: str = "", run_id: int = 0
    ) -> BlobRef:
        """Upload ``buffer``; without ``digest`` the SuperLink names it (and hashes it once)."""
        ref = BlobRef(digest, len(buffer))
        metadata = self._auth.stream(_FLEET + "UploadBlob") if self._auth else None
        tracked = Tracked(self._transfers, "upload of the result", len(buffer))
        try:
            chunks = iter_chunks(buffer, ref, node_id=self.node_id, run_id=run_id, tracked=tracked)
            reply = await self._upload(chunks, metadata=metadata)
            tracked.advanced(len(buffer))
        finally:
            tracked.ended()
        return stored_ref(reply, ref)

    async def download_blob(self, ref: BlobRef, reuse: bytearray | None = None) -> bytearray:
        def open_stream(offset: int) -> AsyncIterable[Chunk]:
            request = pb.DownloadBlobRequest(digest=ref.digest, node_id=self.node_id, offset=offset)
            call: AsyncIterable[Chunk] = self._download(
                request, metadata=self._signed("DownloadBlob", request)
            )
            return call

        return await download_blob(open_stream, ref, reuse, progress=self._transfers)
