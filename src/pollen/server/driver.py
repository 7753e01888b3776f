"""The ServerApp's side of the Driver API, in records rather than protocol messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from pollen.errors import ConnectionFailed
from pollen.proto import common_pb2 as pb
from pollen.proto import driver_pb2 as dpb
from pollen.proto.driver_pb2_grpc import DriverStub
from pollen.records.arrays import decode_arrays, encode_arrays, sha256_hex
from pollen.records.messages import BlobRef, Result, Task
from pollen.records.typing import NDArrays, UserConfig
from pollen.transport.addresses import Address
from pollen.transport.blob_stream import iter_chunks, receive_blob
from pollen.transport.channels import open_channel
from pollen.transport.convert import fill_map, result_from_proto, task_to_proto
from pollen.transport.request_signing import (
    ClientIdentity,
    SessionHolder,
    open_session,
    request_signers,
)


class DriverClient:
    """Driver API calls over one channel. Use as ``async with DriverClient.connect(...)``."""

    def __init__(self, channel: grpc.aio.Channel, address: Address) -> None:
        self._channel = channel
        self._stub = DriverStub(channel)  # type: ignore[no-untyped-call]
        self.address = address

    @classmethod
    async def connect(
        cls,
        address: Address,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 30.0,
        identity: ClientIdentity | None = None,
    ) -> DriverClient:
        """Connect, waiting up to ``timeout`` seconds for the SuperLink to answer.

        With an ``identity`` (operator key), join the Driver API's session first.
        """
        holder = SessionHolder()
        channel = open_channel(address, credentials, request_signers(holder) if identity else [])
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
            if identity is not None:
                await open_session(channel, identity, "driver", holder)
        except TimeoutError:
            await channel.close()
            raise ConnectionFailed(
                f"SuperLink Driver API at {address} did not answer within {timeout:g} s; "
                "start it with `pollen superlink` or check --superlink"
                + (" and --root-certificates" if credentials else "")
            ) from None
        except grpc.aio.AioRpcError as exc:
            await channel.close()
            raise ConnectionFailed(
                f"SuperLink Driver API at {address} refused the operator key: {exc.details()}"
            ) from None
        return cls(channel, address)

    async def close(self) -> None:
        await self._channel.close()

    async def create_run(self, app: str, run_config: UserConfig) -> int:
        request = dpb.CreateRunRequest(app=app)
        fill_map(request.run_config, run_config)
        return int((await self._stub.CreateRun(request)).run_id)

    async def get_nodes(self, run_id: int) -> list[int]:
        reply = await self._stub.GetNodes(dpb.GetNodesRequest(run_id=run_id))
        return list(reply.node_ids)

    async def push_tasks(self, run_id: int, tasks: Sequence[Task]) -> None:
        await self._stub.PushTasks(
            dpb.PushTasksRequest(run_id=run_id, tasks=[task_to_proto(t) for t in tasks])
        )

    async def results(self, run_id: int, task_ids: Sequence[str]) -> AsyncIterator[Result]:
        """Results of ``task_ids``, each as soon as the SuperLink has it."""
        call = self._stub.StreamResults(
            dpb.StreamResultsRequest(run_id=run_id, task_ids=list(task_ids))
        )
        try:
            async for message in call:
                yield result_from_proto(message)
        finally:
            call.cancel()

    async def finish_run(self, run_id: int, status: str, message: str = "") -> None:
        await self._stub.FinishRun(
            dpb.FinishRunRequest(run_id=run_id, status=status, message=message)
        )

    async def upload_arrays(self, arrays: NDArrays) -> BlobRef:
        """Lay ``arrays`` out as one blob and upload it once (in chunks)."""
        buffer, digest = await asyncio.to_thread(_encode_and_hash, arrays)
        ref = BlobRef(digest, len(buffer))
        await self._stub.UploadBlob(iter_chunks(buffer, ref))
        return ref

    async def download_arrays(self, ref: BlobRef) -> NDArrays:
        call = self._stub.DownloadBlob(pb.DownloadBlobRequest(digest=ref.digest))
        return decode_arrays(await receive_blob(call, ref))


def _encode_and_hash(arrays: NDArrays) -> tuple[bytearray, str]:
    buffer = encode_arrays(arrays)
    return buffer, sha256_hex(buffer)
