"""Hostile and broken input on the wire: every RPC answers with a proper status and the
SuperLink stays up with consistent state."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from pollen.proto import fleet_pb2 as fpb
from pollen.superlink.server import open_superlink
from tests.conftest import superlink_config

UNARY = [
    "/pollen.v1.Fleet/RegisterNode",
    "/pollen.v1.Fleet/PushResult",
    "/pollen.v1.Fleet/Heartbeat",
    "/pollen.v1.Fleet/UnregisterNode",
    "/pollen.v1.Fleet/GetRun",
    "/pollen.v1.Driver/CreateRun",
    "/pollen.v1.Driver/GetNodes",
    "/pollen.v1.Driver/PushTasks",
    "/pollen.v1.Driver/FinishRun",
    "/pollen.v1.Driver/ReleaseBlobs",
    "/pollen.v1.Driver/ResumeRun",
    "/pollen.v1.Driver/PruneRuns",
]
SERVER_STREAM = [
    "/pollen.v1.Fleet/Subscribe",
    "/pollen.v1.Fleet/DownloadBlob",
    "/pollen.v1.Driver/StreamResults",
    "/pollen.v1.Driver/DownloadBlob",
]
CLIENT_STREAM = ["/pollen.v1.Fleet/UploadBlob", "/pollen.v1.Driver/UploadBlob"]
IMPROPER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def valid_seed() -> bytes:
    return fpb.PushResultRequest(node_id=1).SerializeToString()


async def call(channel: grpc.aio.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    try:
        if method in UNARY:
            await asyncio.wait_for(channel.unary_unary(method)(payload), 5)
        elif method in SERVER_STREAM:
            stream = channel.unary_stream(method)(payload)
            async with asyncio.timeout(0.5):
                async for _ in stream:
                    break
            stream.cancel()
        else:
            await asyncio.wait_for(channel.stream_unary(method)(iter([payload, payload])), 5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    except TimeoutError:
        return grpc.StatusCode.OK  # a stream left waiting for tasks or results: fine
    return grpc.StatusCode.OK


@settings(max_examples=4, deadline=None, database=None)
@given(
    payloads=st.lists(
        st.one_of(
            st.binary(max_size=96),
            st.binary(min_size=1, max_size=8).map(lambda b: valid_seed() + b),  # mutated
            st.just(b"\xff" * 40),
        ),
        min_size=3,
        max_size=6,
    )
)
def test_every_rpc_answers_garbage_with_a_proper_status(payloads: list[bytes]) -> None:
    async def scenario(tmp: Path) -> None:
        async with open_superlink(superlink_config(tmp)) as link:
            for port, prefix in ((link.fleet_port, "Fleet"), (link.driver_port, "Driver")):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    for method in (
                        m for m in UNARY + SERVER_STREAM + CLIENT_STREAM if f".{prefix}/" in m
                    ):
                        for payload in payloads:
                            code = await call(channel, method, payload)
                            assert code not in IMPROPER, (method, payload, code)
            # still up, and the state is consistent
            async with grpc.aio.insecure_channel(f"127.0.0.1:{link.fleet_port}") as channel:
                reply = await channel.unary_unary("/pollen.v1.Fleet/RegisterNode")(b"")
                assert fpb.RegisterNodeReply.FromString(reply).node_id > 0
            state = link.dispatcher.state
            for node_id in state.list_nodes("online"):
                for task in state.open_tasks(node_id):
                    assert state.get_run(task.run_id) is not None

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp)))
