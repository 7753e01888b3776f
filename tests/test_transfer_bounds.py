"""Blob streams a node can hold open: bounded in number, cut when idle or revoked.

Real SuperLinks with TLS and client authentication on 127.0.0.1:0, in-process; the
hostile node is a `Peer` sending raw streams. Idle timeouts are crossed by moving the
SuperLink's injected clock, never by sleeping. The SuperLink's memory and descriptors
are this process's (/proc/self): margins below are measured, with room to spare.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pollen.proto import common_pb2 as pb
from pollen.records import fit_evaluate
from pollen.records.messages import BlobRef, Message
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.server import SuperLink, SuperLinkConfig, open_superlink
from pollen.superlink.stream_limits import BlobStreams
from pollen.supernode.fleet_client import FleetClient
from pollen.transport.addresses import Address
from pollen.transport.blob_stream import download_call, upload_call
from pollen.transport.chunk_codec import Chunk, encode_chunk
from tests.apps import numpy_apps
from tests.auth_helpers import (
    DRIVER,
    FLEET,
    Clock,
    Peer,
    Seed,
    allowlist_file,
    driver_client,
    peer,
    secure_config,
    start_secure_node,
    stop_nodes,
)
from tests.conftest import wait_until

MiB = 1 << 20
LIMIT = 3
IDLE = 5.0
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=3, unlisted=0)


def rss_mib() -> float:
    """This process's resident memory (the SuperLink runs in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def partial_files(link: SuperLink) -> list[Path]:
    """Uploads under way or left behind (spares, kept for reuse, are not uploads)."""
    return [p for p in link.blobs.root.glob(".*.part") if not p.name.startswith(".spare-")]


@dataclass
class Attacker:
    """A listed node in good standing that holds an instruction (so it may upload and
    download)."""

    link: SuperLink
    client: Peer
    fleet: FleetClient
    run_id: int
    model: BlobRef
    clock: Clock

    @property
    def fingerprint(self) -> str:
        return self.client.identity.fingerprint

    @property
    def streams(self) -> BlobStreams:
        assert self.link.fleet_transfers is not None
        return self.link.fleet_transfers

    def download(self, offset: int = 0) -> grpc.aio.UnaryStreamCall[Any, Chunk]:
        request = pb.DownloadBlobRequest(
            digest=self.model.digest, node_id=self.fleet.node_id, offset=offset
        )
        return download_call(self.client.channel, FLEET + "DownloadBlob")(request)

    def stalled_upload(
        self, size: int, gate: asyncio.Event | None = None
    ) -> grpc.aio.StreamUnaryCall[bytes, pb.BlobRef]:
        return stalled_upload(
            self.client.channel, FLEET, size, gate, node_id=self.fleet.node_id, run_id=self.run_id
        )


def stalled_upload(
    channel: grpc.aio.Channel,
    api: str,
    size: int,
    gate: asyncio.Event | None = None,
    **first: int,
) -> grpc.aio.StreamUnaryCall[bytes, pb.BlobRef]:
    """An upload declaring ``size`` bytes that sends one byte, then waits for ``gate``
    (forever without one), then sends the rest."""

    async def chunks() -> AsyncIterator[bytes]:
        data = os.urandom(size)
        yield encode_chunk(data[:1], 0, total_size=size, **first)
        await (gate or asyncio.Event()).wait()
        yield encode_chunk(data[1:], 1)

    return upload_call(channel, api + "UploadBlob")(chunks())


@contextlib.asynccontextmanager
async def attacker_with_an_instruction(
    tmp_path: Path, seed: Seed, model_bytes: int, **settings: Any
) -> AsyncIterator[Attacker]:
    """A SuperLink (limit `LIMIT`, idle timeout `IDLE`), node 1 holding an instruction whose
    model has ``model_bytes`` bytes, and its message stream open."""
    clock = Clock()
    allowed = allowlist_file(tmp_path / "allowed.csv", *(seed.identity(i) for i in (1, 2, 3)))
    config: SuperLinkConfig = secure_config(tmp_path, seed, clock=clock, client_keys=allowed)
    config.max_transfers_per_node = LIMIT
    config.transfer_idle_timeout = IDLE
    for name, value in settings.items():
        setattr(config, name, value)
    async with (
        open_superlink(config) as link,
        peer(seed, link.fleet_port, seed.identity(1)) as client,
        driver_client(seed, link.driver_port) as driver,
    ):
        await client.join()
        fleet = FleetClient(client.channel)
        await fleet.register()
        inbox: asyncio.Queue[Message] = asyncio.Queue()

        async def read_instructions() -> None:
            async for instruction in fleet.instructions():
                inbox.put_nowait(instruction)

        reader = asyncio.create_task(read_instructions())
        try:
            await wait_until(lambda: link.dispatcher.online_nodes() == [fleet.node_id], 5)
            run_id, _ = await driver.create_run("flood", {})
            model = await driver.upload_arrays([np.ones(model_bytes // 4, np.float32)], run_id)
            content = fit_evaluate.instruction(model, {})
            await driver.send(run_id, [Message(run_id, fleet.node_id, "train", content)])
            await asyncio.wait_for(inbox.get(), 5)
            yield Attacker(link, client, fleet, run_id, model, clock)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader


async def status(call: Any, timeout: float = 5) -> tuple[grpc.StatusCode, str]:
    """The status a call ended with (waiting at most ``timeout`` seconds)."""
    code = await asyncio.wait_for(call.code(), timeout)
    return code, await call.details()


async def a_node_joins_and_trains(link: SuperLink, seed: Seed, tmp_path: Path) -> None:
    """After a flood: a legitimate node joins and trains a round, nothing refused."""
    identity = seed.identity(3)
    node = start_secure_node(seed, link.fleet_port, identity)
    try:
        state = link.dispatcher.state
        await wait_until(
            lambda: link.dispatcher.online_nodes() == [state.node_for_key(identity.fingerprint)],
            10,
        )
        app = numpy_apps.make_server_app(
            num_rounds=1, min_available=1, min_fit=1, fraction_evaluate=0.0
        )
        config = ServerAppConfig(
            superlink=Address("127.0.0.1", link.driver_port),
            output_root=tmp_path / "runs",
            connect_timeout=5,
            credentials=seed.credentials,
        )
        outcome, _ = await asyncio.wait_for(run_server_app(app, config), 30)
    finally:
        await stop_nodes(node)
    assert [r.fit_results for r in outcome.history.rounds] == [1]


async def left(attacker: Attacker) -> None:
    """The attacker's message stream is closed and the SuperLink saw it go."""
    await attacker.client.close()
    await wait_until(lambda: attacker.link.dispatcher.online_nodes() == [], 5)


def revoked(attacker: Attacker) -> bool:
    """The SuperLink has applied the removal of the attacker's key (and audited it)."""
    audit = attacker.link.dispatcher.state.list_audit()
    return any(e.event == "revoke" and e.fingerprint == attacker.fingerprint for e in audit)


@contextlib.contextmanager
def cancelled(*calls: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for call in calls:
            call.cancel()


def test_uploads_beyond_the_limit_are_refused_and_a_new_one_works_once_they_end(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        async with attacker_with_an_instruction(tmp_path, seed, MiB) as attacker:
            descriptors = open_descriptors()
            stalled = [attacker.stalled_upload(64 * 1024) for _ in range(LIMIT)]
            with cancelled(*stalled):
                await wait_until(lambda: len(partial_files(attacker.link)) == LIMIT, 5)
                flood = [attacker.stalled_upload(64 * 1024) for _ in range(20)]
                with cancelled(*flood):
                    refusals = await asyncio.gather(*(status(c) for c in flood))
                assert {code for code, _ in refusals} == {RESOURCE_EXHAUSTED}
                _, message = refusals[0]
                assert message == (
                    f"node {attacker.fleet.node_id} has {LIMIT} blob transfers open, the "
                    f"most allowed (--max-transfers-per-node {LIMIT}); wait for one to end "
                    "before starting another, or ask the SuperLink's operator to raise "
                    "--max-transfers-per-node"
                )
                # the refused ones hold nothing: no partial file, no descriptor
                assert len(partial_files(attacker.link)) == LIMIT
                assert open_descriptors() <= descriptors + LIMIT + 2
            await wait_until(lambda: attacker.streams.held_by(attacker.fingerprint) == 0, 5)
            assert partial_files(attacker.link) == []
            stored = await attacker.fleet.upload_blob(b"result", run_id=attacker.run_id)
            assert attacker.link.blobs.exists(stored.digest)
            await left(attacker)
            await a_node_joins_and_trains(attacker.link, seed, tmp_path)

    asyncio.run(scenario())


def test_a_stalled_upload_is_cut_after_the_idle_timeout_and_its_partial_file_removed(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        async with attacker_with_an_instruction(tmp_path, seed, MiB) as attacker:
            descriptors = open_descriptors()
            upload = attacker.stalled_upload(256 * 1024)
            with cancelled(upload):
                await wait_until(lambda: len(partial_files(attacker.link)) == 1, 5)
                attacker.clock.advance(IDLE / 2)
                assert attacker.streams.expire_idle() == 0  # not idle for long enough yet
                attacker.clock.advance(IDLE / 2 + 1)
                assert attacker.streams.expire_idle() == 1
                code, message = await status(upload)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert message == (
                f"blob upload of node {attacker.fleet.node_id} cut: the upload delivered no "
                f"chunk for {IDLE:g} s (--transfer-idle-timeout); start it again"
            )
            await wait_until(lambda: attacker.streams.held_by(attacker.fingerprint) == 0, 5)
            assert partial_files(attacker.link) == []
            assert open_descriptors() <= descriptors + 1
            await left(attacker)
            await a_node_joins_and_trains(attacker.link, seed, tmp_path)

    asyncio.run(scenario())


def test_unread_downloads_are_bounded_and_release_memory_and_descriptors(
    tmp_path: Path, seed: Seed
) -> None:
    flood = 40

    async def scenario() -> None:
        async with attacker_with_an_instruction(tmp_path, seed, 16 * MiB) as attacker:
            await attacker.fleet.download_blob(attacker.model)  # warm up: buffers, allocator
            memory, descriptors = rss_mib(), open_descriptors()
            calls = [attacker.download() for _ in range(flood)]
            with cancelled(*calls):
                first = await asyncio.gather(*(c.read() for c in calls), return_exceptions=True)
                refused = [e for e in first if isinstance(e, grpc.aio.AioRpcError)]
                assert len(refused) == flood - LIMIT
                assert {e.code() for e in refused} == {RESOURCE_EXHAUSTED}
                assert "--max-transfers-per-node" in (refused[0].details() or "")
                await asyncio.sleep(0.3)  # let flow control fill what it will
                # about 3 MiB each on the SuperLink, a few more in this client's window
                assert rss_mib() - memory < 64
                assert open_descriptors() <= descriptors + LIMIT + 2
                # the receiver reads nothing: cut when idle, the files closed at once
                attacker.clock.advance(IDLE + 1)
                assert attacker.streams.expire_idle() == LIMIT
                assert open_descriptors() <= descriptors + 2
            await wait_until(lambda: attacker.streams.held_by(attacker.fingerprint) == 0, 5)
            assert rss_mib() - memory < 64
            assert open_descriptors() <= descriptors + 2
            await left(attacker)
            await a_node_joins_and_trains(attacker.link, seed, tmp_path)

    asyncio.run(scenario())


def test_a_revoked_keys_open_download_and_upload_are_cut_at_once(
    tmp_path: Path, seed: Seed
) -> None:
    model_bytes = 48 * MiB

    async def scenario() -> None:
        async with attacker_with_an_instruction(tmp_path, seed, model_bytes) as attacker:
            download = attacker.download()
            gate = asyncio.Event()
            upload = attacker.stalled_upload(8 * MiB, gate)
            with cancelled(download, upload):
                first = await download.read()
                assert isinstance(first, Chunk)
                await wait_until(lambda: len(partial_files(attacker.link)) == 1, 5)
                # the download's receiver pauses; its key is removed from the allow-list
                allowlist_file(tmp_path / "allowed.csv", seed.identity(2), seed.identity(3))
                await wait_until(lambda: revoked(attacker), 5)
                code, message = await status(upload)
                assert (code, message) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"key {attacker.fingerprint} revoked",
                )
                gate.set()  # the upload would send the rest of its blob now: too late
                received_after = 0
                with pytest.raises(grpc.aio.AioRpcError) as cut:
                    async for chunk in download:
                        received_after += len(chunk.data)
            assert cut.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # what flow control had let through before the cut, not the other 47 MiB
            assert received_after < 16 * MiB
            assert partial_files(attacker.link) == []
            assert len(attacker.link.blobs.stored()) == 1  # the model; the upload is not kept
            await left(attacker)
            await a_node_joins_and_trains(attacker.link, seed, tmp_path)

    asyncio.run(scenario())


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_no_file_descriptor_left_is_resource_exhausted_with_a_message_not_unknown(
    tmp_path: Path, seed: Seed, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """EMFILE while opening a blob file (the issue: a raw OSError reached the client)."""

    async def scenario() -> None:
        async with attacker_with_an_instruction(tmp_path, seed, MiB) as attacker:
            blob_dir = attacker.link.blobs.root
            real_open = Path.open

            def no_descriptor(self: Path, *args: Any, **kwargs: Any) -> Any:
                if self.parent == blob_dir:
                    raise OSError(errno.EMFILE, "Too many open files")
                return real_open(self, *args, **kwargs)

            monkeypatch.setattr(Path, "open", no_descriptor)
            if direction == "upload":
                call: Any = attacker.fleet.upload_blob(b"result", run_id=attacker.run_id)
            else:
                call = attacker.fleet.download_blob(attacker.model)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(call, 5)
            monkeypatch.undo()
            assert refused.value.code() == RESOURCE_EXHAUSTED
            assert (refused.value.details() or "").startswith(
                f"SuperLink out of file descriptors: cannot open a file in {blob_dir} "
                "(Too many open files); retry once other transfers end"
            )
            await wait_until(lambda: attacker.streams.held_by(attacker.fingerprint) == 0, 5)
            assert partial_files(attacker.link) == []
            stored = await attacker.fleet.upload_blob(b"result", run_id=attacker.run_id)
            assert attacker.link.blobs.exists(stored.digest)

    asyncio.run(scenario())


def test_an_operator_key_holds_its_own_limit_and_a_revoked_ones_uploads_are_cut(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        operators = allowlist_file(tmp_path / "operators.csv", seed.identity(2))
        config = secure_config(tmp_path, seed, operator_keys=operators)
        config.max_transfers_per_operator = 2
        async with (
            open_superlink(config) as link,
            peer(seed, link.driver_port, seed.identity(2), api="driver") as operator,
        ):
            await operator.join()
            held = [stalled_upload(operator.channel, DRIVER, MiB) for _ in range(2)]
            with cancelled(*held):
                await wait_until(lambda: len(partial_files(link)) == 2, 5)
                refused = stalled_upload(operator.channel, DRIVER, MiB)
                with cancelled(refused):
                    code, message = await status(refused)
                assert code == RESOURCE_EXHAUSTED
                assert message.startswith(
                    f"operator key {seed.identity(2).fingerprint} has 2 blob transfers open, "
                    "the most allowed (--max-transfers-per-operator 2)"
                )
                allowlist_file(operators, seed.identity(3))  # the operator's key is removed
                outcomes = await asyncio.gather(*(status(c) for c in held))
            assert (
                outcomes == [(grpc.StatusCode.UNAUTHENTICATED, "the operator key was revoked")] * 2
            )
            assert partial_files(link) == []
            assert link.blobs.stored() == []

    asyncio.run(scenario())


def test_a_session_displaced_by_another_process_with_its_key_loses_its_uploads(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        async with attacker_with_an_instruction(tmp_path, seed, MiB) as attacker:
            upload = attacker.stalled_upload(64 * 1024)
            with cancelled(upload):
                await wait_until(lambda: len(partial_files(attacker.link)) == 1, 5)
                async with peer(seed, attacker.link.fleet_port, seed.identity(1)) as other:
                    await other.join()  # another process with the same key
                    code, message = await status(upload)
            assert code == grpc.StatusCode.ABORTED
            assert message.startswith(
                f"replaced by another process with the same key ({attacker.fingerprint})"
            )
            assert partial_files(attacker.link) == []

    asyncio.run(scenario())
