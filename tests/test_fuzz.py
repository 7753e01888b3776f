"""Hostile and broken input on the wire: every RPC answers with a proper status and the
SuperLink stays up with consistent state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
from collections.abc import AsyncIterator, Awaitable, Iterable
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from pollen.proto import common_pb2 as pb
from pollen.proto import driver_pb2 as dpb
from pollen.proto import fleet_pb2 as fpb
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef
from pollen.superlink.server import SuperLink, open_superlink
from pollen.transport.blob_stream import CHUNK_SIZE, iter_chunks
from pollen.transport.channels import MAX_MESSAGE_BYTES
from tests.conftest import superlink_config, wait_until

UNARY = [
    "/pollen.v1.Fleet/RegisterNode",
    "/pollen.v1.Fleet/PushReply",
    "/pollen.v1.Fleet/Heartbeat",
    "/pollen.v1.Fleet/UnregisterNode",
    "/pollen.v1.Fleet/GetRun",
    "/pollen.v1.Driver/CreateRun",
    "/pollen.v1.Driver/GetNodes",
    "/pollen.v1.Driver/PushMessages",
    "/pollen.v1.Driver/FinishRun",
    "/pollen.v1.Driver/ReleaseBlobs",
    "/pollen.v1.Driver/ResumeRun",
    "/pollen.v1.Driver/PruneRuns",
]
SERVER_STREAM = [
    "/pollen.v1.Fleet/Subscribe",
    "/pollen.v1.Fleet/DownloadBlob",
    "/pollen.v1.Driver/StreamReplies",
    "/pollen.v1.Driver/DownloadBlob",
]
CLIENT_STREAM = ["/pollen.v1.Fleet/UploadBlob", "/pollen.v1.Driver/UploadBlob"]
IMPROPER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def valid_seed() -> bytes:
    return fpb.PushReplyRequest(node_id=1).SerializeToString()


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
        return grpc.StatusCode.OK  # a stream left waiting for messages or replies: fine
    return grpc.StatusCode.OK


def temp_files(link: SuperLink) -> list[Path]:
    """Partial uploads in the blob directory (the blob store names them ``.*.part``)."""
    return sorted(link.blobs.root.glob(".*"))


def open_blob_files(link: SuperLink) -> list[str]:
    """Files under the blob directory that this process holds open (Linux only)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return []
    root = str(link.blobs.root.resolve()) + os.sep
    held = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(root):
            held.append(target)
    return held


async def assert_up_and_consistent(link: SuperLink) -> None:
    """Both APIs answer a normal call, and the state and blob store hold together."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{link.fleet_port}") as channel:
        reply = await asyncio.wait_for(channel.unary_unary("/pollen.v1.Fleet/RegisterNode")(b""), 5)
        assert fpb.RegisterNodeReply.FromString(reply).node_id > 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{link.driver_port}") as channel:
        keep_all = dpb.PruneRunsRequest(older_than_seconds=1e12).SerializeToString()
        reply = await asyncio.wait_for(
            channel.unary_unary("/pollen.v1.Driver/PruneRuns")(keep_all), 5
        )
        assert not dpb.PruneRunsReply.FromString(reply).run_ids
    state = link.dispatcher.state
    for status in ("online", "offline", "left"):
        for node_id in state.list_nodes(status):
            for message in state.open_messages(node_id):
                assert state.get_run(message.run_id) is not None
    # a cut or refused upload leaves no partial file and no open file behind
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5  # a cut call's handler may still be cleaning up
    while (
        leftovers := [str(p) for p in temp_files(link)] + open_blob_files(link)
    ) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert not leftovers, f"partial or open blob files left behind: {leftovers}"
    for digest in link.blobs.stored():  # every stored blob is whole and known
        assert content_digest((link.blobs.root / digest).read_bytes()) == digest
        assert state.has_blob(digest)


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
            await assert_up_and_consistent(link)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp)))


# Oversized, cut, mismatched and misaddressed requests (issue 6, part 6)

OVERSIZED = MAX_MESSAGE_BYTES + 1024


def padded(message: bytes, size: int = OVERSIZED) -> bytes:
    """``message`` grown past ``size`` bytes by an unknown field (field 15): still well-formed."""
    filler = size - len(message)
    length, rest = bytearray(), filler
    while True:  # varint
        byte, rest = rest & 0x7F, rest >> 7
        length.append(byte | (0x80 if rest else 0))
        if not rest:
            return message + b"\x7a" + bytes(length) + b"\0" * filler


def make_blob(size: int, seed: int = 0) -> tuple[bytes, BlobRef]:
    data = random.Random(seed).randbytes(size)
    return data, BlobRef(content_digest(data), size)


def chunks(data: bytes, ref: BlobRef, node_id: int = 0, run_id: int = 0) -> list[bytes]:
    return list(iter_chunks(data, ref, node_id=node_id, run_id=run_id))


def port(link: SuperLink, api: str) -> int:
    return link.fleet_port if api == "Fleet" else link.driver_port


def address(link: SuperLink, api: str) -> str:
    return f"127.0.0.1:{port(link, api)}"


async def unary(link: SuperLink, method: str, request: bytes) -> bytes:
    """Call ``/pollen.v1.<method>`` (e.g. ``Driver/CreateRun``) with serialized ``request``."""
    async with grpc.aio.insecure_channel(address(link, method.split("/")[0])) as channel:
        reply: bytes = await asyncio.wait_for(
            channel.unary_unary(f"/pollen.v1.{method}")(request), 5
        )
        return reply


async def register(link: SuperLink) -> int:
    reply = await unary(link, "Fleet/RegisterNode", b"")
    return int(fpb.RegisterNodeReply.FromString(reply).node_id)


async def upload(link: SuperLink, api: str, messages: Iterable[bytes]) -> pb.BlobRef:
    async with grpc.aio.insecure_channel(address(link, api)) as channel:
        call = channel.stream_unary(f"/pollen.v1.{api}/UploadBlob")(iter(messages))
        return pb.BlobRef.FromString(await asyncio.wait_for(call, 10))


async def download(link: SuperLink, api: str, digest: str, node_id: int = 0) -> bytes:
    request = pb.DownloadBlobRequest(digest=digest, node_id=node_id).SerializeToString()
    received = bytearray()
    async with grpc.aio.insecure_channel(address(link, api)) as channel:
        async with asyncio.timeout(10):
            async for raw in channel.unary_stream(f"/pollen.v1.{api}/DownloadBlob")(request):
                received += pb.BlobChunk.FromString(raw).data
    return bytes(received)


async def status_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await asyncio.wait_for(call, 10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def model(ref: BlobRef) -> pb.Records:
    """The content of an instruction that carries the model in blob ``ref``."""
    return pb.Records(arrays={"arrays": pb.BlobRef(digest=ref.digest, size=ref.size)})


async def a_node_with_an_instruction(link: SuperLink, blob: bytes, ref: BlobRef) -> tuple[int, int]:
    """A registered node with instruction ``t1`` of a new run, naming ``blob`` (so the node
    may read it); the node is not connected, so the instruction has already failed."""
    node_id = await register(link)
    run_id = dpb.CreateRunReply.FromString(await unary(link, "Driver/CreateRun", b"")).run_id
    await upload(link, "Driver", chunks(blob, ref, run_id=run_id))
    message = pb.Message(message_id="t1", node_id=node_id, message_type="train", content=model(ref))
    push = dpb.PushMessagesRequest(run_id=run_id, messages=[message])
    await unary(link, "Driver/PushMessages", push.SerializeToString())
    return node_id, run_id


@contextlib.asynccontextmanager
async def an_uploader(link: SuperLink) -> AsyncIterator[tuple[int, int]]:
    """A node on its message stream, holding an open instruction of a new run: the SuperLink
    takes a Fleet upload only from a node for a run in which it holds one."""
    node_id = await register(link)
    async with grpc.aio.insecure_channel(address(link, "Fleet")) as channel:
        subscribe = fpb.SubscribeRequest(node_id=node_id).SerializeToString()
        stream = channel.unary_stream("/pollen.v1.Fleet/Subscribe")(subscribe)
        await wait_until(lambda: node_id in link.dispatcher.online_nodes())
        run_id = dpb.CreateRunReply.FromString(await unary(link, "Driver/CreateRun", b"")).run_id
        push = dpb.PushMessagesRequest(
            run_id=run_id,
            messages=[pb.Message(message_id="up", node_id=node_id, message_type="train")],
        )
        await unary(link, "Driver/PushMessages", push.SerializeToString())
        await asyncio.wait_for(stream.read(), 5)  # delivered: the instruction is open
        try:
            yield node_id, run_id
        finally:
            stream.cancel()


def test_an_oversized_request_gets_resource_exhausted_on_both_apis(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            too_big = padded(fpb.HeartbeatRequest(node_id=await register(link)).SerializeToString())
            assert len(too_big) > MAX_MESSAGE_BYTES
            assert fpb.HeartbeatRequest.FromString(too_big).node_id > 0  # well-formed
            new_run = dpb.CreateRunRequest(app="x" * OVERSIZED).SerializeToString()
            calls = [
                ("Fleet", "/pollen.v1.Fleet/Heartbeat", too_big),
                ("Fleet", "/pollen.v1.Fleet/Subscribe", too_big),
                ("Driver", "/pollen.v1.Driver/CreateRun", new_run),
                ("Driver", "/pollen.v1.Driver/StreamReplies", padded(b"")),
            ]
            for api, method, request in calls:
                async with grpc.aio.insecure_channel(address(link, api)) as channel:
                    if method in UNARY:
                        call: Awaitable[object] = channel.unary_unary(method)(request)
                    else:
                        call = channel.unary_stream(method)(request).read()
                    assert await status_of(call) == grpc.StatusCode.RESOURCE_EXHAUSTED, method
            await assert_up_and_consistent(link)

    asyncio.run(scenario())


@pytest.mark.parametrize("api", ["Fleet", "Driver"])
def test_an_oversized_chunk_mid_upload_is_refused_and_leaves_nothing_behind(
    tmp_path: Path, api: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(superlink_config(tmp_path)) as link,
            an_uploader(link) as (node_id, run_id),
        ):
            data, ref = make_blob(3 * CHUNK_SIZE)
            good = chunks(data, ref, node_id, run_id)

            async def requests() -> AsyncIterator[bytes]:
                yield good[0]
                await wait_until(lambda: bool(temp_files(link)))  # the upload is under way
                huge = pb.BlobChunk(offset=CHUNK_SIZE, data=data[CHUNK_SIZE:] + data * 5)
                assert huge.ByteSize() > MAX_MESSAGE_BYTES
                yield huge.SerializeToString()

            async with grpc.aio.insecure_channel(address(link, api)) as channel:
                call = channel.stream_unary(f"/pollen.v1.{api}/UploadBlob")(requests())
                assert await status_of(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
            await assert_up_and_consistent(link)  # the partial file is gone
            assert not link.blobs.exists(ref.digest)
            assert not link.dispatcher.state.has_blob(ref.digest)
            # the same blob in proper chunks goes through
            reply = await upload(link, api, good)
            assert (reply.digest, reply.size) == (ref.digest, ref.size)
            assert await download(link, "Driver", ref.digest) == data

    asyncio.run(scenario())


# Just enough HTTP/2 to cut an upload inside a message: grpcio only sends whole messages.
H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS = 0, 1, 3, 4
H2_MAX_FRAME = 16384


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def grpc_frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


async def open_raw_call(
    link: SuperLink, api: str, method: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP/2 connection with one gRPC call (stream 1) opened on it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port(link, api))
    headers = {
        ":method": "POST",
        ":scheme": "http",
        ":path": f"/pollen.v1.{api}/{method}",
        ":authority": address(link, api),
        "content-type": "application/grpc",
        "te": "trailers",
    }
    block = b"".join(  # HPACK literals without indexing (all shorter than 127 bytes)
        b"\0" + bytes([len(k)]) + k.encode() + bytes([len(v)]) + v.encode()
        for k, v in headers.items()
    )
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(H2_SETTINGS, 0, 0))
    writer.write(h2_frame(H2_HEADERS, 0x4, 1, block))  # END_HEADERS
    while True:  # acknowledge the server's settings, or it hangs up after a while
        head = await asyncio.wait_for(reader.readexactly(9), 5)
        await reader.readexactly(int.from_bytes(head[:3], "big"))
        if head[3] == H2_SETTINGS and head[4] == 0:
            writer.write(h2_frame(H2_SETTINGS, 0x1, 0))
            return reader, writer


def send_body(writer: asyncio.StreamWriter, body: bytes, end: bool = False) -> None:
    """``body`` on stream 1 (within the default 64 KiB window), ending the stream if ``end``."""
    assert len(body) < 65535
    starts = range(0, len(body), H2_MAX_FRAME)
    for start in starts:
        flags = 0x1 if end and start == starts[-1] else 0  # END_STREAM
        writer.write(h2_frame(H2_DATA, flags, 1, body[start : start + H2_MAX_FRAME]))


async def receive_data(reader: asyncio.StreamReader, at_least: int) -> int:
    """Read frames until ``at_least`` bytes of DATA arrived; never grants more window."""
    received = 0
    while received < at_least:
        head = await asyncio.wait_for(reader.readexactly(9), 5)
        payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
        if head[3] == H2_DATA:
            received += len(payload)
    return received


CUTS = ["cancel", "close channel", "RST_STREAM mid-chunk", "connection lost mid-chunk"]


@pytest.mark.parametrize("api", ["Fleet", "Driver"])
@pytest.mark.parametrize("cut", CUTS)
def test_an_upload_cut_mid_blob_leaves_no_partial_blob_and_can_be_redone(
    tmp_path: Path, api: str, cut: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(superlink_config(tmp_path)) as link,
            an_uploader(link) as (node_id, run_id),
        ):
            data, ref = make_blob(3 * CHUNK_SIZE + 123)
            parts = chunks(data, ref, node_id, run_id)
            if cut in ("cancel", "close channel"):  # the first chunk, then nothing
                channel = grpc.aio.insecure_channel(address(link, api))

                async def first_chunk_then_stall() -> AsyncIterator[bytes]:
                    yield parts[0]
                    await asyncio.Event().wait()

                call = channel.stream_unary(f"/pollen.v1.{api}/UploadBlob")(
                    first_chunk_then_stall()
                )
                await wait_until(lambda: bool(temp_files(link)))  # the server is writing it
                if cut == "cancel":
                    call.cancel()
                await channel.close()
                with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
                    await call
            else:  # a whole small chunk, then half of the next one's bytes
                first = pb.BlobChunk(
                    digest=ref.digest,
                    total_size=ref.size,
                    data=data[:16384],
                    node_id=node_id,
                    run_id=run_id,
                ).SerializeToString()
                second = grpc_frame(
                    pb.BlobChunk(offset=16384, data=data[16384:32768]).SerializeToString()
                )
                _, writer = await open_raw_call(link, api, "UploadBlob")
                send_body(writer, grpc_frame(first) + second[: len(second) // 2])
                await wait_until(lambda: bool(temp_files(link)))
                await asyncio.sleep(0.05)
                assert temp_files(link)  # still waiting for the rest of the chunk
                if cut == "RST_STREAM mid-chunk":  # the call ends, the connection stays
                    writer.write(h2_frame(H2_RST_STREAM, 0, 1, (8).to_bytes(4, "big")))  # CANCEL
                    await writer.drain()
                    await assert_up_and_consistent(link)
                writer.close()
                await writer.wait_closed()

            await assert_up_and_consistent(link)  # no .part file, no open file
            assert not link.blobs.exists(ref.digest)
            assert not link.dispatcher.state.has_blob(ref.digest)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await download(link, "Driver", ref.digest)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            reply = await upload(link, api, parts)
            assert (reply.digest, reply.size) == (ref.digest, ref.size)
            stored = (link.blobs.root / ref.digest).read_bytes()
            assert content_digest(stored) == ref.digest
            assert await download(link, "Driver", ref.digest) == data
            await assert_up_and_consistent(link)

    asyncio.run(scenario())


@pytest.mark.parametrize("api", ["Fleet", "Driver"])
@pytest.mark.parametrize("cut", ["cancel", "stalled reader hangs up"])
def test_a_download_cut_mid_blob_leaves_the_blob_whole(tmp_path: Path, api: str, cut: str) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            data, ref = make_blob(4 * CHUNK_SIZE + 7)
            node_id, _ = await a_node_with_an_instruction(link, data, ref)
            request = pb.DownloadBlobRequest(digest=ref.digest, node_id=node_id)
            for _ in range(3):
                if cut == "cancel":  # one chunk read, then the call is cancelled
                    async with grpc.aio.insecure_channel(address(link, api)) as channel:
                        stream = channel.unary_stream(f"/pollen.v1.{api}/DownloadBlob")(
                            request.SerializeToString()
                        )
                        first = pb.BlobChunk.FromString(await asyncio.wait_for(stream.read(), 5))
                        assert first.data == data[:CHUNK_SIZE]
                        stream.cancel()
                else:  # the SuperLink is blocked on flow control when the client vanishes
                    reader, writer = await open_raw_call(link, api, "DownloadBlob")
                    send_body(writer, grpc_frame(request.SerializeToString()), end=True)
                    assert 0 < await receive_data(reader, 16384) < ref.size
                    if Path("/proc/self/fd").is_dir():  # the SuperLink is mid-way through it
                        await wait_until(lambda: bool(open_blob_files(link)), timeout=5)
                    writer.close()
                    await writer.wait_closed()
            await assert_up_and_consistent(link)  # no blob file left open either
            assert await download(link, api, ref.digest, node_id) == data
            assert link.blobs.exists(ref.digest) and link.dispatcher.state.has_blob(ref.digest)

    asyncio.run(scenario())


@pytest.mark.parametrize("api", ["Fleet", "Driver"])
def test_an_upload_that_does_not_match_its_digest_or_size_is_refused(
    tmp_path: Path, api: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(superlink_config(tmp_path)) as link,
            an_uploader(link) as (node_id, run_id),
        ):
            data, ref = make_blob(2 * CHUNK_SIZE + 5)
            flipped = bytes([data[0] ^ 1]) + data[1:]
            whole = chunks(data, ref, node_id, run_id)
            bad_uploads = {
                "content does not match the digest": chunks(flipped, ref, node_id, run_id),
                "a byte fewer than declared": chunks(
                    data, BlobRef(ref.digest, ref.size + 1), node_id, run_id
                ),
                "a byte more than declared": chunks(
                    data, BlobRef(ref.digest, ref.size - 1), node_id, run_id
                ),
                "a chunk skipped": whole[:1] + whole[2:],
                "a chunk twice": whole[:2] + whole[1:],
                "no chunk at all": [],
                "not a digest": chunks(data, BlobRef("../" + "0" * 61, ref.size), node_id, run_id),
            }
            for case, messages in bad_uploads.items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await upload(link, api, messages)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
                assert not link.blobs.exists(ref.digest), case
                assert not link.dispatcher.state.has_blob(ref.digest), case
                await assert_up_and_consistent(link)
            reply = await upload(link, api, whole)
            assert (reply.digest, reply.size) == (ref.digest, ref.size)

    asyncio.run(scenario())


NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNKNOWN_RUN = 987_654_321
UNKNOWN_DIGEST = "0" * 64


def test_unknown_run_message_node_and_blob_ids_get_a_proper_status(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            data, ref = make_blob(100)
            node_id, run_id = await a_node_with_an_instruction(link, data, ref)
            stranger = node_id + 1
            other_run = dpb.CreateRunReply.FromString(
                await unary(link, "Driver/CreateRun", b"")
            ).run_id

            def answer(message_id: str) -> pb.Message:
                reply = pb.Message(reply_to=message_id, message_type="train")
                reply.content.metrics["metrics"].values["num-examples"].int_value = 1
                return reply

            a_message = pb.Message(message_id="t9", node_id=node_id, message_type="train")
            missing_blob = pb.Message(
                message_id="t9",
                node_id=node_id,
                message_type="train",
                content=model(BlobRef(UNKNOWN_DIGEST, 1)),
            )
            unary_calls: list[tuple[str, Message, grpc.StatusCode]] = [
                # Fleet: a node that is not registered
                ("Fleet/Heartbeat", fpb.HeartbeatRequest(node_id=stranger), NOT_FOUND),
                ("Fleet/UnregisterNode", fpb.UnregisterNodeRequest(node_id=stranger), NOT_FOUND),
                ("Fleet/GetRun", fpb.GetRunRequest(node_id=stranger, run_id=run_id), NOT_FOUND),
                (
                    "Fleet/PushReply",
                    fpb.PushReplyRequest(node_id=stranger, reply=answer("t1")),
                    NOT_FOUND,
                ),
                # Fleet: a registered node naming a run or instruction it does not have
                ("Fleet/GetRun", fpb.GetRunRequest(node_id=node_id, run_id=UNKNOWN_RUN), NOT_FOUND),
                (
                    "Fleet/PushReply",
                    fpb.PushReplyRequest(node_id=node_id, reply=answer("nope")),
                    DENIED,
                ),
                # Driver: a run that does not exist
                ("Driver/GetNodes", dpb.GetNodesRequest(run_id=UNKNOWN_RUN), NOT_FOUND),
                (
                    "Driver/PushMessages",
                    dpb.PushMessagesRequest(run_id=UNKNOWN_RUN, messages=[a_message]),
                    NOT_FOUND,
                ),
                ("Driver/FinishRun", dpb.FinishRunRequest(run_id=UNKNOWN_RUN), NOT_FOUND),
                (
                    "Driver/ReleaseBlobs",
                    dpb.ReleaseBlobsRequest(run_id=UNKNOWN_RUN, digests=[ref.digest]),
                    NOT_FOUND,
                ),
                ("Driver/ResumeRun", dpb.ResumeRunRequest(run_id=UNKNOWN_RUN), NOT_FOUND),
                # Driver: an instruction naming a blob that was never uploaded
                (
                    "Driver/PushMessages",
                    dpb.PushMessagesRequest(run_id=run_id, messages=[missing_blob]),
                    grpc.StatusCode.FAILED_PRECONDITION,
                ),
            ]
            for method, request, code in unary_calls:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await unary(link, method, request.SerializeToString())
                assert refused.value.code() == code, (method, refused.value.details())

            stream_calls: list[tuple[str, Message, grpc.StatusCode]] = [
                ("Fleet/Subscribe", fpb.SubscribeRequest(node_id=stranger), NOT_FOUND),
                (
                    "Fleet/DownloadBlob",
                    pb.DownloadBlobRequest(digest=UNKNOWN_DIGEST, node_id=node_id),
                    DENIED,
                ),
                ("Driver/DownloadBlob", pb.DownloadBlobRequest(digest=UNKNOWN_DIGEST), NOT_FOUND),
                (
                    "Driver/StreamReplies",
                    dpb.StreamRepliesRequest(run_id=UNKNOWN_RUN, message_ids=["t1"]),
                    NOT_FOUND,
                ),
                (  # a run that exists, but an instruction it does not have: no reply ever
                    "Driver/StreamReplies",
                    dpb.StreamRepliesRequest(run_id=run_id, message_ids=["t1", "nope"]),
                    NOT_FOUND,
                ),
                (  # an instruction of another run
                    "Driver/StreamReplies",
                    dpb.StreamRepliesRequest(run_id=other_run, message_ids=["t1"]),
                    NOT_FOUND,
                ),
            ]
            for method, request, code in stream_calls:
                async with grpc.aio.insecure_channel(
                    address(link, method.split("/")[0])
                ) as channel:
                    stream = channel.unary_stream(f"/pollen.v1.{method}")(
                        request.SerializeToString()
                    )
                    try:
                        async with asyncio.timeout(3):  # an answer, not a stream left hanging
                            async for _ in stream:
                                pass
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == code, (method, exc.details())
                    except TimeoutError:
                        pytest.fail(f"{method}({request}) left hanging without a status")
                    else:
                        pytest.fail(f"{method} ended without an error")

            # an instruction for a node nobody knows is accepted, and fails at once with a reason
            ghost = pb.Message(message_id="t3", node_id=stranger, message_type="train")
            push = dpb.PushMessagesRequest(run_id=run_id, messages=[ghost])
            await unary(link, "Driver/PushMessages", push.SerializeToString())
            wanted = dpb.StreamRepliesRequest(run_id=run_id, message_ids=["t1", "t3"])
            async with grpc.aio.insecure_channel(address(link, "Driver")) as channel:
                stream = channel.unary_stream("/pollen.v1.Driver/StreamReplies")(
                    wanted.SerializeToString()
                )
                async with asyncio.timeout(5):
                    answered = [pb.Message.FromString(raw) async for raw in stream]
            assert sorted(r.reply_to for r in answered) == ["t1", "t3"]
            assert all("not connected" in r.error for r in answered)

            # none of this touched what exists
            state = link.dispatcher.state
            run = state.get_run(run_id)
            assert run is not None and run.status == "running"
            node = state.get_node(node_id)
            assert node is not None and node.status != "left"
            assert state.get_run(UNKNOWN_RUN) is None and state.get_node(stranger) is None
            assert link.blobs.exists(ref.digest)
            await assert_up_and_consistent(link)

    asyncio.run(scenario())
