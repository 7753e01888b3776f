"""What a listed node may store on the SuperLink (issue 13, items 1 and 2).

A node's reply names a blob it uploaded for the instruction's run, and the SuperLink
records the size it wrote, never the size the node declares. A node uploads only for a
run in which it holds an open instruction, never above --max-blob-size, and keeps at most
its --node-quota per run; each refusal comes before a byte is written.

Real SuperLinks with TLS and client authentication on 127.0.0.1:0, in-process; the
hostile nodes speak the wire protocol with their own listed keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from pollen.cli.main import cli
from pollen.errors import RunError
from pollen.proto import fleet_pb2 as fpb
from pollen.proto.fleet_pb2_grpc import FleetStub
from pollen.records import fit_evaluate
from pollen.records.arrays import decode_arrays, encode_arrays
from pollen.records.messages import BlobRef, Message, Records
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.server import SuperLink, open_superlink
from pollen.superlink.sqlite_state import SqliteState
from pollen.superlink.upload_bounds import QUOTA_FLOOR, NodeQuota
from pollen.supernode.fleet_client import FleetClient
from pollen.supernode.node import run_supernode
from pollen.transport.addresses import Address
from pollen.transport.blob_stream import upload_call
from pollen.transport.chunk_codec import encode_chunk
from pollen.transport.convert import message_to_proto
from tests.apps import numpy_apps
from tests.auth_helpers import (
    DRIVER,
    FLEET,
    Peer,
    Seed,
    driver_client,
    node_config,
    peer,
    secure_config,
    status_of,
    stop_nodes,
)
from tests.conftest import Node, wait_until
from tests.test_auth_attacks import collecting, registered

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=3, unlisted=1)


def start_node(seed: Seed, port: int, index: int, behaviour: str = "ok") -> Node:
    """An honest SuperNode with listed key ``index``, running numpy_apps."""
    config = node_config(seed, port, seed.identity(index))
    config.node_config = {"behaviour": behaviour}
    stop = asyncio.Event()
    return Node(asyncio.create_task(run_supernode(numpy_apps.app, config, stop)), stop)


def app_config(seed: Seed, link: SuperLink, tmp_path: Path) -> ServerAppConfig:
    return ServerAppConfig(
        superlink=Address("127.0.0.1", link.driver_port),
        output_root=tmp_path / "runs",
        connect_timeout=5,
        credentials=seed.credentials,
    )


def blob_files(link: SuperLink) -> list[str]:
    """Everything in the blob folder, partial uploads (``.*.part``) included."""
    return sorted(path.name for path in link.blobs.root.iterdir())


async def first_chunk_answer(
    channel: grpc.aio.Channel, link: SuperLink, first: bytes, api: str = FLEET
) -> tuple[grpc.StatusCode, str, list[str]]:
    """Send one chunk of an upload and keep the stream open: the status the SuperLink
    ends it with, and the files it had created by then (a refusal comes before any)."""
    before = blob_files(link)
    held = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield first
        await held.wait()

    call = upload_call(channel, api + "UploadBlob")(chunks())
    try:
        await wait_until(lambda: call.done() or blob_files(link) != before, 5)
        written = sorted(set(blob_files(link)) - set(before))
    finally:
        held.set()
        call.cancel()
    return await call.code(), await call.details() or "", written


async def pushed(fleet: FleetClient, client: Peer, reply: Message) -> grpc.StatusCode:
    request = fpb.PushReplyRequest(node_id=fleet.node_id, reply=message_to_proto(reply))
    stub = FleetStub(client.channel)  # type: ignore[no-untyped-call]
    return await status_of(stub.PushReply(request))


def fit_reply(ref: BlobRef | None = None, num_examples: int = 1) -> Records[BlobRef]:
    """The content of a fit reply: the weights in blob ``ref`` (None: none)."""
    return Records(
        arrays={} if ref is None else {fit_evaluate.ARRAYS: ref},
        metrics={fit_evaluate.METRICS: {fit_evaluate.NUM_EXAMPLES: num_examples}},
    )


def fit(run_id: int, node_id: int, model: BlobRef | None = None) -> Message:
    """A fit instruction to ``node_id``, carrying ``model`` (None: none)."""
    return Message(run_id, node_id, "train", fit_evaluate.instruction(model, {}))


def test_a_reply_declaring_a_forged_size_counts_with_the_size_stored(
    tmp_path: Path, seed: Seed
) -> None:
    """A listed node names its blob with a size of 2^50 bytes: the SuperLink records the
    size it wrote, so the ServerApp takes that reply like the honest node's."""

    async def hostile(fleet: FleetClient, inbox: asyncio.Queue[Message]) -> tuple[Message, BlobRef]:
        instruction = await asyncio.wait_for(inbox.get(), 10)
        sent = fit_evaluate.model_of(instruction.content)
        assert sent is not None
        model = decode_arrays(await fleet.download_blob(sent))
        ref = await fleet.upload_blob(
            encode_arrays([a + 1 for a in model]), run_id=instruction.run_id
        )
        forged = BlobRef(ref.digest, 2**50)
        await fleet.push_reply(instruction.reply(fit_reply(forged)))
        return instruction, ref

    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(2)) as client,
        ):
            honest = start_node(seed, link.fleet_port, 1)
            fleet = await registered(client)
            try:
                async with collecting(fleet) as inbox:
                    await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
                    app = numpy_apps.make_server_app(num_rounds=1, fraction_evaluate=0.0)
                    (outcome, _), (instruction, ref) = await asyncio.gather(
                        run_server_app(app, app_config(seed, link, tmp_path)),
                        hostile(fleet, inbox),
                    )
            finally:
                await stop_nodes(honest)
            [stored] = link.dispatcher.state.get_replies([instruction.message_id])
        assert fit_evaluate.model_of(stored.content) == ref  # the size written, not 2^50
        [round_one] = outcome.history.rounds
        assert (round_one.fit_results, round_one.fit_failures) == (2, [])
        np.testing.assert_array_equal(outcome.parameters[0], np.ones((2, 3), np.float32))

    asyncio.run(scenario())


def test_a_reply_names_only_a_blob_its_node_uploaded_for_the_instructions_run(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as a,
            peer(seed, link.fleet_port, seed.identity(2)) as b,
            driver_client(seed, link.driver_port) as driver,
        ):
            fleet_a, fleet_b = await registered(a), await registered(b)
            async with collecting(fleet_a) as inbox_a, collecting(fleet_b) as inbox_b:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
                run_id, _ = await driver.create_run("attack", {})
                other_run, _ = await driver.create_run("another", {})
                model = await driver.upload_arrays([np.arange(3.0)], run_id)
                sent = [fit(run_id, n.node_id, model) for n in (fleet_a, fleet_b)]
                await driver.send(run_id, sent)
                await driver.send(other_run, [fit(other_run, fleet_a.node_id)])
                to_a = await asyncio.wait_for(inbox_a.get(), 5)
                await asyncio.wait_for(inbox_a.get(), 5)  # its instruction in the other run
                to_b = await asyncio.wait_for(inbox_b.get(), 5)

                of_b = await fleet_b.upload_blob(os.urandom(300), run_id=run_id)
                of_other_run = await fleet_a.upload_blob(os.urandom(300), run_id=other_run)
                never_uploaded = BlobRef("ab" * 32, 300)

                def answer(instruction: Message, ref: BlobRef) -> Message:
                    return instruction.reply(fit_reply(ref))

                refusals = {
                    "b's blob": await pushed(fleet_a, a, answer(to_a, of_b)),
                    "a's blob of another run": await pushed(fleet_a, a, answer(to_a, of_other_run)),
                    "a blob never uploaded": await pushed(fleet_a, a, answer(to_a, never_uploaded)),
                }
                assert refusals == dict.fromkeys(refusals, INVALID_ARGUMENT)

                # a's own upload for the run goes through, and so does b's answer naming
                # the model it was sent (a reply equal to the model)
                own = await fleet_a.upload_blob(os.urandom(300), run_id=run_id)
                assert await pushed(fleet_a, a, answer(to_a, own)) == grpc.StatusCode.OK
                assert await pushed(fleet_b, b, answer(to_b, model)) == grpc.StatusCode.OK
                answers = {
                    r.node_id: r async for r in driver.replies(run_id, [m.message_id for m in sent])
                }
                assert {
                    n: (r.ok, fit_evaluate.model_of(r.content)) for n, r in answers.items()
                } == {
                    fleet_a.node_id: (True, own),
                    fleet_b.node_id: (True, model),
                }

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("case", "code", "names"),
    [
        ("no run named", PERMISSION_DENIED, "open instruction"),
        ("a run without an instruction to this node", PERMISSION_DENIED, "open instruction"),
        ("a run whose instruction was answered", PERMISSION_DENIED, "open instruction"),
        ("2^62 bytes declared", RESOURCE_EXHAUSTED, "--max-blob-size"),
        ("above the node's quota", RESOURCE_EXHAUSTED, "--node-quota"),
    ],
)
def test_an_upload_a_node_may_not_store_is_refused_before_a_byte_is_written(
    tmp_path: Path, seed: Seed, case: str, code: grpc.StatusCode, names: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
            peer(seed, link.fleet_port, seed.identity(2)) as other,
            driver_client(seed, link.driver_port) as driver,
        ):
            fleet, other_fleet = await registered(client), await registered(other)
            async with collecting(fleet) as inbox, collecting(other_fleet):
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
                run_id, _ = await driver.create_run("disk fill", {})
                model = await driver.upload_arrays([np.arange(3.0)], run_id)
                mine = fit(run_id, fleet.node_id, model)
                await driver.send(run_id, [mine])
                await asyncio.wait_for(inbox.get(), 5)
                other_run, _ = await driver.create_run("not mine", {})
                await driver.send(other_run, [fit(other_run, other_fleet.node_id)])

                size, run = 1024 * 1024, run_id
                if case == "no run named":
                    run = 0
                elif case == "a run without an instruction to this node":
                    run = other_run
                elif case == "a run whose instruction was answered":
                    await fleet.push_reply(mine.reply(fit_reply()))
                elif case == "2^62 bytes declared":
                    size = 2**62
                else:
                    size = QUOTA_FLOOR + 1  # the model is tiny: the quota is its floor
                first = encode_chunk(os.urandom(1024), 0, "", size, fleet.node_id, run)
                status, details, written = await first_chunk_answer(client.channel, link, first)
                assert (status, written) == (code, [])
                assert names in details

    asyncio.run(scenario())


def test_a_driver_upload_above_the_max_blob_size_is_refused_before_a_byte_is_written(
    tmp_path: Path, seed: Seed
) -> None:
    config = secure_config(tmp_path, seed)
    config.max_blob_size = 64 * 1024

    async def scenario() -> None:
        async with (
            open_superlink(config) as link,
            peer(seed, link.driver_port, seed.identity(1), api="driver") as operator,
        ):
            first = encode_chunk(os.urandom(1024), 0, "", 64 * 1024 + 1)
            answer = await first_chunk_answer(operator.raw, link, first, DRIVER)
            assert answer[0] == RESOURCE_EXHAUSTED and answer[2] == []
            assert "--max-blob-size of 64 KiB" in answer[1]
            async with driver_client(seed, link.driver_port) as driver:  # below it: stored
                ref = await driver.upload_arrays([np.zeros(1000, np.float32)])
            assert link.blobs.exists(ref.digest)

    asyncio.run(scenario())


def test_a_nodes_quota_counts_its_uploads_under_way_and_frees_what_the_run_released(
    tmp_path: Path, seed: Seed
) -> None:
    """Two uploads at once cannot each pass the quota alone; once the ServerApp has
    released a reply's blob, its bytes no longer count."""
    half = QUOTA_FLOOR // 2 + 1

    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
            driver_client(seed, link.driver_port) as driver,
        ):
            fleet = await registered(client)
            async with collecting(fleet) as inbox:
                await wait_until(lambda: link.dispatcher.online_nodes() == [fleet.node_id], 5)
                run_id, _ = await driver.create_run("quota", {})
                model = await driver.upload_arrays([np.arange(3.0)], run_id)
                await driver.send(run_id, [fit(run_id, fleet.node_id, model)])
                await asyncio.wait_for(inbox.get(), 5)
                first = encode_chunk(os.urandom(1024), 0, "", half, fleet.node_id, run_id)

                held = asyncio.Event()

                async def under_way() -> AsyncIterator[bytes]:
                    yield first
                    await held.wait()

                upload = upload_call(client.channel, FLEET + "UploadBlob")(under_way())
                await wait_until(lambda: bool(blob_files(link)), 5)  # it is being written
                status, details, _ = await first_chunk_answer(client.channel, link, first)
                assert status == RESOURCE_EXHAUSTED and "--node-quota" in details
                upload.cancel()
                held.set()

                stored = await fleet.upload_blob(os.urandom(half), run_id=run_id)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await fleet.upload_blob(os.urandom(half), run_id=run_id)
                assert refused.value.code() == RESOURCE_EXHAUSTED
                await driver.release_blobs(run_id, [stored])
                assert not link.blobs.exists(stored.digest)
                await fleet.upload_blob(os.urandom(half), run_id=run_id)

    asyncio.run(scenario())


def test_an_honest_federation_trains_within_the_bounds(tmp_path: Path, seed: Seed) -> None:
    """A 2 MiB model, a node that returns it unchanged (naming the model's own blob) and
    one that trains: every reply fits the default quota, both rounds count both."""
    model = [np.zeros(512 * 1024, np.float32), np.arange(4, dtype=np.int64)]

    async def scenario() -> None:
        async with open_superlink(secure_config(tmp_path, seed)) as link:
            nodes = [
                start_node(seed, link.fleet_port, 1, "same"),
                start_node(seed, link.fleet_port, 2),
            ]
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
                app = numpy_apps.make_server_app(num_rounds=2, initial=model)
                outcome, _ = await run_server_app(app, app_config(seed, link, tmp_path))
            finally:
                await stop_nodes(*nodes)
        assert [(r.fit_results, r.fit_failures) for r in outcome.history.rounds] == [
            (2, []),
            (2, []),
        ]
        np.testing.assert_array_equal(outcome.parameters[0], np.ones(512 * 1024, np.float32))

    asyncio.run(scenario())


def test_a_reply_over_the_quota_reaches_the_server_app_as_that_nodes_error(
    tmp_path: Path, seed: Seed
) -> None:
    """The node reports the refusal as its reply's error (it used to reconnect, and the
    round saw only 'node went offline'); it stays connected for the next instruction."""
    model = [np.zeros(512 * 1024, np.float32)]  # 2 MiB, over a 1 MiB quota

    async def scenario() -> None:
        config = secure_config(tmp_path, seed)
        config.node_quota = NodeQuota(fixed=1024 * 1024)
        async with open_superlink(config) as link:
            node = start_node(seed, link.fleet_port, 1)
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1, 5)
                online = link.dispatcher.online_nodes()
                app = numpy_apps.make_server_app(
                    num_rounds=1, min_available=1, min_fit=1, initial=model
                )
                with pytest.raises(RunError) as stopped:
                    await run_server_app(app, app_config(seed, link, tmp_path))
                assert "refused the reply's upload: " in str(stopped.value)
                assert "--node-quota" in str(stopped.value)
                assert link.dispatcher.online_nodes() == online  # never went away
            finally:
                await stop_nodes(node)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--max-blob-size", "lots", "--max-blob-size 'lots' is not a size; write it as 16GiB"),
        ("--max-blob-size", "0", "--max-blob-size '0' is not a size"),
        ("--node-quota", "0.5x", "--node-quota '0.5x' is below one model"),
        ("--node-quota", "8 GB of disk", "--node-quota '8 GB of disk' is not a size"),
    ],
)
def test_a_bound_that_is_not_a_size_is_one_line_and_exit_2(
    tmp_path: Path, option: str, value: str, says: str
) -> None:
    database = tmp_path / "superlink.db"
    result = CliRunner().invoke(
        cli, ["superlink", "--insecure", "--database", str(database), option, value]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and says in result.output
    assert len(result.output.splitlines()) == 1 and not database.exists()


def test_a_database_of_an_older_pollen_records_uploads(tmp_path: Path) -> None:
    """A database from before uploads were recorded (no blob_uploads table) opens and
    records them."""
    SqliteState(tmp_path / "s.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as older:
        older.execute("DROP TABLE blob_uploads")
    state = SqliteState(tmp_path / "s.db")
    try:
        state.add_upload("ab" * 32, node_id=7, run_id=1)
        assert state.node_uploaded(7, 1, "ab" * 32) and not state.node_uploaded(8, 1, "ab" * 32)
    finally:
        state.close()
