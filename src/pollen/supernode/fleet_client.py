"""The SuperNode's side of the Fleet API, in records rather than protocol messages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from pollen.proto import common_pb2 as pb
from pollen.proto import fleet_pb2 as fpb
from pollen.proto.fleet_pb2_grpc import FleetStub
from pollen.records.arrays import Buffer, sha256_hex
from pollen.records.messages import BlobRef, Result, RunInfo, Task
from pollen.transport.blob_stream import iter_chunks, receive_blob
from pollen.transport.convert import result_to_proto, run_from_proto, task_from_proto


class FleetClient:
    """Fleet API calls for one node over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = FleetStub(channel)  # type: ignore[no-untyped-call]
        self.node_id = 0
        self.heartbeat_interval = 5.0

    async def register(self, previous_node_id: int = 0) -> int:
        reply = await self._stub.RegisterNode(
            fpb.RegisterNodeRequest(previous_node_id=previous_node_id)
        )
        self.node_id = reply.node_id
        self.heartbeat_interval = reply.heartbeat_interval or self.heartbeat_interval
        return self.node_id

    async def tasks(self) -> AsyncIterator[Task]:
        """Tasks for this node, as the SuperLink pushes them."""
        call = self._stub.Subscribe(fpb.SubscribeRequest(node_id=self.node_id))
        async for message in call:
            yield task_from_proto(message)

    async def heartbeat(self) -> None:
        await self._stub.Heartbeat(fpb.HeartbeatRequest(node_id=self.node_id), timeout=10)

    async def unregister(self) -> None:
        await self._stub.UnregisterNode(fpb.UnregisterNodeRequest(node_id=self.node_id), timeout=5)

    async def get_run(self, run_id: int) -> RunInfo:
        reply = await self._stub.GetRun(fpb.GetRunRequest(node_id=self.node_id, run_id=run_id))
        return run_from_proto(reply.run)

    async def push_result(self, result: Result) -> None:
        await self._stub.PushResult(
            fpb.PushResultRequest(node_id=self.node_id, result=result_to_proto(result))
        )

    async def upload_blob(self, buffer: Buffer, digest: str | None = None) -> BlobRef:
        ref = BlobRef(digest or sha256_hex(buffer), len(buffer))
        await self._stub.UploadBlob(iter_chunks(buffer, ref, node_id=self.node_id))
        return ref

    async def download_blob(self, ref: BlobRef) -> bytearray:
        call = self._stub.DownloadBlob(
            pb.DownloadBlobRequest(digest=ref.digest, node_id=self.node_id)
        )
        return await receive_blob(call, ref)
