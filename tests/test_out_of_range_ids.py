"""Ids beyond what the SuperLink stores (2^64-1 in a uint64 field) are refused as
INVALID_ARGUMENT naming the field, on every method of both APIs that takes one.

They used to reach SQLite (signed 64-bit integers) and end as UNKNOWN, ``Unexpected
<class 'OverflowError'>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf.message import Message

from pollen.proto import common_pb2 as pb
from pollen.proto import driver_pb2 as dpb
from pollen.proto import fleet_pb2 as fpb
from pollen.superlink.server import SuperLink, open_superlink
from tests.conftest import superlink_config

TOO_BIG = 2**64 - 1
LARGEST = 2**63 - 1
DIGEST = "ab" * 32

UNARY: dict[str, tuple[str, Message]] = {
    "/pollen.v1.Fleet/RegisterNode": (
        "previous_node_id",
        fpb.RegisterNodeRequest(previous_node_id=TOO_BIG),
    ),
    "/pollen.v1.Fleet/PushReply": (
        "node_id",
        fpb.PushReplyRequest(node_id=TOO_BIG, reply=pb.Message(reply_to="t", message_type="train")),
    ),
    "/pollen.v1.Fleet/Heartbeat": ("node_id", fpb.HeartbeatRequest(node_id=TOO_BIG)),
    "/pollen.v1.Fleet/UnregisterNode": ("node_id", fpb.UnregisterNodeRequest(node_id=TOO_BIG)),
    "/pollen.v1.Fleet/GetRun": ("run_id", fpb.GetRunRequest(node_id=1, run_id=TOO_BIG)),
    "/pollen.v1.Driver/ResumeRun": ("run_id", dpb.ResumeRunRequest(run_id=TOO_BIG)),
    "/pollen.v1.Driver/GetNodes": ("run_id", dpb.GetNodesRequest(run_id=TOO_BIG)),
    "/pollen.v1.Driver/PushMessages": ("run_id", dpb.PushMessagesRequest(run_id=TOO_BIG)),
    "/pollen.v1.Driver/FinishRun": ("run_id", dpb.FinishRunRequest(run_id=TOO_BIG)),
    "/pollen.v1.Driver/ReleaseBlobs": ("run_id", dpb.ReleaseBlobsRequest(run_id=TOO_BIG)),
}
SERVER_STREAM: dict[str, tuple[str, Message]] = {
    "/pollen.v1.Fleet/Subscribe": ("node_id", fpb.SubscribeRequest(node_id=TOO_BIG)),
    "/pollen.v1.Fleet/DownloadBlob": (
        "node_id",
        pb.DownloadBlobRequest(digest=DIGEST, node_id=TOO_BIG),
    ),
    "/pollen.v1.Driver/StreamReplies": (
        "run_id",
        dpb.StreamRepliesRequest(run_id=TOO_BIG, message_ids=["t"]),
    ),
    "/pollen.v1.Driver/DownloadBlob": (
        "offset",
        pb.DownloadBlobRequest(digest=DIGEST, offset=TOO_BIG),
    ),
}
CLIENT_STREAM: dict[str, tuple[str, Message]] = {
    "/pollen.v1.Fleet/UploadBlob": (
        "node_id",
        pb.BlobChunk(digest=DIGEST, total_size=1, data=b"x", node_id=TOO_BIG),
    ),
    "/pollen.v1.Driver/UploadBlob": (
        "run_id",
        pb.BlobChunk(digest=DIGEST, total_size=1, data=b"x", run_id=TOO_BIG),
    ),
}


def _arrays(size: int) -> pb.Records:
    """A message's content whose one array record is a blob of ``size`` bytes."""
    return pb.Records(arrays={"arrays": pb.BlobRef(digest=DIGEST, size=size)})


NESTED: list[tuple[str, str, Message]] = [  # ids and sizes inside a message or a reply
    (
        "/pollen.v1.Driver/PushMessages",
        "messages[0].node_id",
        dpb.PushMessagesRequest(
            run_id=1, messages=[pb.Message(message_id="t", node_id=TOO_BIG, message_type="train")]
        ),
    ),
    (
        "/pollen.v1.Driver/PushMessages",
        "messages[0].content.arrays['arrays'].size",
        dpb.PushMessagesRequest(
            run_id=1,
            messages=[
                pb.Message(
                    message_id="t", node_id=1, message_type="train", content=_arrays(TOO_BIG)
                )
            ],
        ),
    ),
    (
        "/pollen.v1.Fleet/PushReply",
        "reply.run_id",
        fpb.PushReplyRequest(
            node_id=1, reply=pb.Message(reply_to="t", run_id=TOO_BIG, message_type="train")
        ),
    ),
    (
        "/pollen.v1.Fleet/PushReply",
        "reply.content.arrays['arrays'].size",
        fpb.PushReplyRequest(
            node_id=1,
            reply=pb.Message(reply_to="t", message_type="train", content=_arrays(TOO_BIG)),
        ),
    ),
]


async def outcome(channel: grpc.aio.Channel, method: str, request: Message) -> str:
    """``CODE: details`` of the call."""
    body = request.SerializeToString()
    try:
        if method in SERVER_STREAM:
            call = channel.unary_stream(method)(body, timeout=5)
            await call.read()
            call.cancel()
        elif method in CLIENT_STREAM:

            async def chunks() -> AsyncIterator[bytes]:
                yield body

            await channel.stream_unary(method)(chunks(), timeout=5)
        else:
            await channel.unary_unary(method)(body, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return "OK"


def channel_to(link: SuperLink, method: str) -> grpc.aio.Channel:
    port = link.fleet_port if "Fleet" in method else link.driver_port
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def refusal(field: str) -> str:
    return f"INVALID_ARGUMENT: {field} {TOO_BIG} is out of range: at most {LARGEST} (2^63-1)"


def test_every_method_taking_an_id_refuses_one_out_of_range(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            cases = {**UNARY, **SERVER_STREAM, **CLIENT_STREAM}
            answers = {}
            for method, (_, request) in cases.items():
                async with channel_to(link, method) as channel:
                    answers[method] = await outcome(channel, method, request)
            assert answers == {method: refusal(field) for method, (field, _) in cases.items()}

    asyncio.run(scenario())


def test_ids_inside_messages_and_replies_are_checked_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            for method, field, request in NESTED:
                async with channel_to(link, method) as channel:
                    assert await outcome(channel, method, request) == refusal(field)

    asyncio.run(scenario())


def test_the_largest_stored_id_is_still_served(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            method = "/pollen.v1.Driver/GetNodes"
            async with channel_to(link, method) as channel:
                answer = await outcome(channel, method, dpb.GetNodesRequest(run_id=LARGEST))
            assert answer == f"NOT_FOUND: run {LARGEST} does not exist"
            # and the SuperLink serves on after the refusals
            async with channel_to(link, "/pollen.v1.Fleet/") as channel:
                reply = await channel.unary_unary("/pollen.v1.Fleet/RegisterNode")(
                    fpb.RegisterNodeRequest().SerializeToString(), timeout=5
                )
            assert fpb.RegisterNodeReply.FromString(reply).node_id > 0

    asyncio.run(scenario())
