"""Attacks on an authenticated SuperLink: every test fails if its attack succeeds.

Real SuperLinks with TLS and client authentication on 127.0.0.1:0, in-process.
Time windows are crossed by moving injected clocks, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pollen.errors import (
    CallRefused,
    ConfigurationError,
    ConnectionFailed,
    JoinRefused,
    KeyInUse,
    ServerIdentityError,
    StorageFull,
)
from pollen.proto import common_pb2 as pb
from pollen.proto import driver_pb2 as dpb
from pollen.proto import fleet_pb2 as fpb
from pollen.proto.fleet_pb2_grpc import FleetStub
from pollen.records import fit_evaluate
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef, Message, Records
from pollen.server.driver import DriverClient
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.security import SecurityConfig
from pollen.superlink.server import SuperLink, open_superlink
from pollen.superlink.state import AuditEvent
from pollen.supernode.fleet_client import FleetClient
from pollen.supernode.node import run_supernode
from pollen.transport.addresses import Address
from pollen.transport.convert import message_to_proto
from pollen.transport.request_signing import ClientIdentity
from pollen.transport.session_crypto import SessionKeys
from tests.apps import numpy_apps
from tests.auth_helpers import (
    DRIVER,
    FLEET,
    Clock,
    Peer,
    Seed,
    allowlist_file,
    driver_client,
    node_config,
    open_session_request,
    peer,
    secure_config,
    signed_metadata,
    start_secure_node,
    status_of,
    stop_nodes,
)
from tests.conftest import superlink_config, wait_until

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
HEARTBEAT = FLEET + "Heartbeat"


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"))


async def registered(client: Peer) -> FleetClient:
    """Join with the client's key and register: a node in good standing."""
    await client.join()
    fleet = FleetClient(client.channel)
    await fleet.register()
    return fleet


def heartbeat_body(node_id: int) -> bytes:
    return fpb.HeartbeatRequest(node_id=node_id).SerializeToString()


def events(link: SuperLink, kind: str) -> list[AuditEvent]:
    return [e for e in link.dispatcher.state.list_audit() if e.event == kind]


@contextlib.asynccontextmanager
async def collecting(fleet: FleetClient) -> AsyncIterator[asyncio.Queue[Message]]:
    """The node's instruction stream, read in the background into a queue."""
    queue: asyncio.Queue[Message] = asyncio.Queue()

    async def read() -> None:
        async for instruction in fleet.instructions():
            queue.put_nowait(instruction)

    reader = asyncio.create_task(read())
    try:
        yield queue
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


# 1. unknown keys


def test_unlisted_key_is_refused_at_challenge_audited_and_ends_the_node(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        stranger = seed.stranger()
        async with open_superlink(secure_config(tmp_path, seed)) as link:
            async with peer(seed, link.fleet_port, stranger) as client:
                assert await status_of(client.challenge()) == PERMISSION_DENIED
            config = node_config(seed, link.fleet_port, stranger)
            with pytest.raises(JoinRefused, match="not in the allow-list"):
                await asyncio.wait_for(run_supernode(numpy_apps.app, config), 5)
            assert link.dispatcher.online_nodes() == []
            rejects = events(link, "reject")
        [event] = rejects  # the same refusal twice within a minute: one row, counted
        assert event.count == 2
        assert event.fingerprint == stranger.fingerprint
        assert "127.0.0.1" in event.peer
        assert "allow-list" in event.reason

    asyncio.run(scenario())


# 2. proof of possession


def test_listed_public_key_without_its_private_key_cannot_open_a_session(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        victim, attacker = seed.identity(1), seed.stranger()
        async with open_superlink(secure_config(tmp_path, seed)) as link:
            async with peer(seed, link.fleet_port, attacker) as client:
                challenge = await client.challenge(victim)  # public keys are public
                forged = open_session_request(victim, challenge, attacker.private_key)
                assert await status_of(client.auth.OpenSession(forged)) == PERMISSION_DENIED
            rejects = events(link, "reject")
        assert [e.fingerprint for e in rejects] == [victim.fingerprint]
        assert "signature" in rejects[0].reason

    asyncio.run(scenario())


def test_a_challenge_opens_at_most_one_session(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        owner = seed.identity(1)
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, owner) as client,
        ):
            challenge = await client.challenge()
            first = open_session_request(owner, challenge, owner.private_key)
            again = open_session_request(owner, challenge, owner.private_key)
            assert await status_of(client.auth.OpenSession(first)) == OK
            assert await status_of(client.auth.OpenSession(first)) == PERMISSION_DENIED
            assert await status_of(client.auth.OpenSession(again)) == PERMISSION_DENIED

    asyncio.run(scenario())


def test_a_challenge_issued_for_one_key_cannot_be_used_by_another(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        a, b = seed.identity(1), seed.identity(2)
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, b) as client,
        ):
            challenge_for_a = await client.challenge(a)
            join = open_session_request(b, challenge_for_a, b.private_key)  # b signs honestly
            assert await status_of(client.auth.OpenSession(join)) == PERMISSION_DENIED

    asyncio.run(scenario())


def test_an_expired_challenge_is_refused(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        owner, clock = seed.identity(1), Clock()
        async with (
            open_superlink(secure_config(tmp_path, seed, clock=clock)) as link,
            peer(seed, link.fleet_port, owner) as client,
        ):
            challenge = await client.challenge()
            clock.advance(31)
            join = open_session_request(owner, challenge, owner.private_key)
            assert await status_of(client.auth.OpenSession(join)) == PERMISSION_DENIED

    asyncio.run(scenario())


def test_a_join_signed_for_the_driver_api_does_not_open_a_fleet_session(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        owner = seed.identity(1)
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, owner) as client,
        ):
            challenge = await client.challenge()
            join = open_session_request(owner, challenge, owner.private_key, api="driver")
            assert await status_of(client.auth.OpenSession(join)) == PERMISSION_DENIED

    asyncio.run(scenario())


# 3. replay


def test_a_replayed_heartbeat_is_refused(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = await registered(client)
            body = heartbeat_body(fleet.node_id)
            captured = client.sign(HEARTBEAT, body)
            assert await status_of(client.unary(HEARTBEAT, body, captured)) == OK
            assert await status_of(client.unary(HEARTBEAT, body, captured)) == UNAUTHENTICATED

    asyncio.run(scenario())


@pytest.mark.parametrize("method", ["UnregisterNode", "GetRun", "Subscribe"])
def test_signed_metadata_does_not_carry_over_to_another_method(
    tmp_path: Path, seed: Seed, method: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = await registered(client)
            body = heartbeat_body(fleet.node_id)  # field 1 = node_id in all these requests
            captured = client.sign(HEARTBEAT, body)
            send = client.first if method == "Subscribe" else client.unary
            assert await status_of(send(FLEET + method, body, captured)) == UNAUTHENTICATED
            node = link.dispatcher.state.get_node(fleet.node_id)
            assert node is not None and node.status != "left"
            assert link.dispatcher.online_nodes() == []
            # the captured metadata was genuine: on its own method it still works once
            assert await status_of(client.unary(HEARTBEAT, body, captured)) == OK

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("server_offset", "client_offset", "expected"),
    [
        (31.0, 0.0, UNAUTHENTICATED),  # the SuperLink's clock moved on: a stale request
        (0.0, -31.0, UNAUTHENTICATED),  # signed 31 s ago
        (0.0, 31.0, UNAUTHENTICATED),  # dated in the future
        (0.0, -20.0, OK),  # within the window
    ],
)
def test_requests_outside_the_time_window_are_refused(
    tmp_path: Path,
    seed: Seed,
    server_offset: float,
    client_offset: float,
    expected: grpc.StatusCode,
) -> None:
    async def scenario() -> None:
        server_clock, client_clock = Clock(), Clock()
        async with (
            open_superlink(secure_config(tmp_path, seed, clock=server_clock)) as link,
            peer(seed, link.fleet_port, seed.identity(1), clock=client_clock) as client,
        ):
            fleet = await registered(client)
            server_clock.advance(server_offset)
            client_clock.advance(client_offset)
            assert await status_of(fleet.heartbeat()) == expected

    asyncio.run(scenario())


def test_a_captured_request_replayed_after_the_window_is_refused(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with (
            open_superlink(secure_config(tmp_path, seed, clock=clock)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = await registered(client)
            body = heartbeat_body(fleet.node_id)
            captured = client.sign(HEARTBEAT, body)
            assert await status_of(client.unary(HEARTBEAT, body, captured)) == OK
            clock.advance(61)  # long enough for the SuperLink to forget the nonce
            assert await status_of(client.unary(HEARTBEAT, body, captured)) == UNAUTHENTICATED

    asyncio.run(scenario())


# 4. tampering


def test_a_tampered_body_is_refused(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = await registered(client)
            body = heartbeat_body(fleet.node_id)
            metadata = client.sign(HEARTBEAT, body)
            flipped = body[:-1] + bytes([body[-1] ^ 0x01])  # another node id
            extended = body + heartbeat_body(7)
            for tampered in (flipped, extended, b""):
                status = await status_of(client.unary(HEARTBEAT, tampered, metadata))
                assert status == UNAUTHENTICATED
            subscribe = fpb.SubscribeRequest(node_id=fleet.node_id).SerializeToString()
            metadata = client.sign(FLEET + "Subscribe", subscribe)
            tampered = subscribe[:-1] + bytes([subscribe[-1] ^ 0x01])
            status = await status_of(client.first(FLEET + "Subscribe", tampered, metadata))
            assert status == UNAUTHENTICATED
            # the untouched body with fresh metadata is accepted: the bytes made the difference
            status = await status_of(client.unary(HEARTBEAT, body, client.sign(HEARTBEAT, body)))
            assert status == OK

    asyncio.run(scenario())


def test_a_mac_from_another_session_key_is_refused(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as a,
            peer(seed, link.fleet_port, seed.identity(2)) as b,
        ):
            fleet_a = await registered(a)
            await registered(b)
            body = heartbeat_body(fleet_a.node_id)
            # b's session id, a's key: neither session verifies it
            mixed = SessionKeys(b.session.session_id, a.session.key)
            metadata = signed_metadata(mixed, HEARTBEAT, body)
            assert await status_of(a.unary(HEARTBEAT, body, metadata)) == UNAUTHENTICATED

    asyncio.run(scenario())


# 5. a node acts only for itself


def test_a_node_cannot_act_for_another_node(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as a,
            peer(seed, link.fleet_port, seed.identity(2)) as b,
            driver_client(seed, link.driver_port) as driver,
        ):
            fleet_a, fleet_b = await registered(a), await registered(b)
            me, victim = fleet_a.node_id, fleet_b.node_id
            async with collecting(fleet_b) as inbox:
                await wait_until(lambda: link.dispatcher.online_nodes() == [victim], 2)
                run_id, _ = await driver.create_run("attack", {})
                ref = await driver.upload_arrays([np.arange(3.0)])
                first = Message(run_id, victim, "train", fit_evaluate.instruction(ref, {}))
                await driver.send(run_id, [first])
                assert (await asyncio.wait_for(inbox.get(), 2)).message_id == first.message_id

                stub = FleetStub(a.channel)  # type: ignore[no-untyped-call]
                stolen = message_to_proto(first.reply())

                async def first_instruction(node_id: int) -> None:
                    await stub.Subscribe(fpb.SubscribeRequest(node_id=node_id)).read()

                async def first_chunk(node_id: int) -> None:
                    call = stub.DownloadBlob(
                        pb.DownloadBlobRequest(digest=ref.digest, node_id=node_id)
                    )
                    await call.read()

                attacks = {
                    "subscribe as b": first_instruction(victim),
                    "push b's reply as a": stub.PushReply(
                        fpb.PushReplyRequest(node_id=me, reply=stolen)
                    ),
                    "push b's reply as b": stub.PushReply(
                        fpb.PushReplyRequest(node_id=victim, reply=stolen)
                    ),
                    "download b's blob as a": first_chunk(me),
                    "download b's blob as b": first_chunk(victim),
                    "get b's run as a": stub.GetRun(fpb.GetRunRequest(node_id=me, run_id=run_id)),
                    "get b's run as b": stub.GetRun(
                        fpb.GetRunRequest(node_id=victim, run_id=run_id)
                    ),
                    "heartbeat as b": stub.Heartbeat(fpb.HeartbeatRequest(node_id=victim)),
                    "unregister b": stub.UnregisterNode(fpb.UnregisterNodeRequest(node_id=victim)),
                }
                outcomes = {name: await status_of(call) for name, call in attacks.items()}
                refused = {PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}
                assert {n: c for n, c in outcomes.items() if c not in refused} == {}

                # b did not notice: same stream, its own calls work, its reply counts
                assert link.dispatcher.online_nodes() == [victim]
                assert (await fleet_b.get_run(run_id)).run_id == run_id
                assert len(await fleet_b.download_blob(ref)) == ref.size
                await fleet_b.push_reply(
                    first.reply(Records(metrics={"metrics": {"num-examples": 1}}))
                )
                replies = [r async for r in driver.replies(run_id, [first.message_id])]
                assert replies[0].ok and replies[0].node_id == victim
                second = Message(run_id, victim, "evaluate", fit_evaluate.instruction(ref, {}))
                await driver.send(run_id, [second])
                assert (await asyncio.wait_for(inbox.get(), 2)).message_id == second.message_id

    asyncio.run(scenario())


@pytest.mark.parametrize("digest", ["../../superlink.db", "f" * 63])
def test_a_reply_naming_a_malformed_blob_is_refused_as_invalid(
    tmp_path: Path, seed: Seed, digest: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
            driver_client(seed, link.driver_port) as driver,
        ):
            fleet = await registered(client)
            async with collecting(fleet) as inbox:
                await wait_until(lambda: link.dispatcher.online_nodes() == [fleet.node_id], 2)
                run_id, _ = await driver.create_run("hostile node", {})
                content: Records[BlobRef] = fit_evaluate.instruction(None, {})
                instruction = Message(run_id, fleet.node_id, "train", content)
                await driver.send(run_id, [instruction])
                await asyncio.wait_for(inbox.get(), 2)
                reply = message_to_proto(instruction.reply())
                reply.content.arrays["arrays"].digest = digest
                reply.content.arrays["arrays"].size = 1
                request = fpb.PushReplyRequest(node_id=fleet.node_id, reply=reply)
                push = FleetStub(client.channel).PushReply(request)  # type: ignore[no-untyped-call]
                assert await status_of(push) == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(scenario())


# 6. live allow-list


def test_a_key_removed_from_the_allow_list_is_cut_off_and_cannot_rejoin(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        revoked, kept, also_revoked = seed.identity(1), seed.identity(2), seed.identity(3)
        allowed = allowlist_file(tmp_path / "allowed.csv", revoked, kept, also_revoked)
        async with (
            open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link,
            peer(seed, link.fleet_port, also_revoked) as client,
        ):
            nodes = [start_secure_node(seed, link.fleet_port, i) for i in (revoked, kept)]
            try:
                fleet = await registered(client)
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
                state = link.dispatcher.state
                revoked_id = state.node_for_key(revoked.fingerprint)
                kept_id = state.node_for_key(kept.fingerprint)
                allowlist_file(allowed, kept)
                await wait_until(lambda: revoked_id not in link.dispatcher.online_nodes(), 2)
                revokes = {e.fingerprint for e in events(link, "revoke")}
                assert revokes == {revoked.fingerprint, also_revoked.fingerprint}
                assert await status_of(fleet.heartbeat()) == UNAUTHENTICATED
                with pytest.raises(JoinRefused, match="not in the allow-list"):
                    await asyncio.wait_for(nodes[0].task, 5)
                assert link.dispatcher.online_nodes() == [kept_id]
            finally:
                await stop_nodes(*nodes)

    asyncio.run(scenario())


def test_revocations_take_effect_even_when_the_disk_refuses_their_audit(
    tmp_path: Path, seed: Seed
) -> None:
    """Access is cut first, the audit written after; a full disk must not keep a revoked
    key in, nor stop the watcher from applying the next change."""

    async def cut_off(fleet: FleetClient) -> None:
        for _ in range(100):
            if await status_of(fleet.heartbeat()) == UNAUTHENTICATED:
                return
            await asyncio.sleep(0.05)
        pytest.fail("the revoked key still has access")

    async def scenario() -> None:
        first, second, kept = seed.identity(1), seed.identity(2), seed.identity(3)
        allowed = allowlist_file(tmp_path / "allowed.csv", first, second, kept)
        async with (
            open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link,
            peer(seed, link.fleet_port, first) as one,
            peer(seed, link.fleet_port, second) as two,
        ):
            fleet_one, fleet_two = await registered(one), await registered(two)

            def full_disk(event: AuditEvent) -> None:
                raise StorageFull("SuperLink storage full: cannot write the audit (test)")

            link.dispatcher.state.add_audit = full_disk  # type: ignore[method-assign]
            allowlist_file(allowed, second, kept)
            await cut_off(fleet_one)
            allowlist_file(allowed, kept)
            await cut_off(fleet_two)

    asyncio.run(scenario())


def test_a_key_added_to_the_allow_list_joins_without_a_restart(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        newcomer = seed.stranger(2)
        allowed = allowlist_file(tmp_path / "allowed.csv", seed.identity(1))
        async with open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link:
            async with peer(seed, link.fleet_port, newcomer) as client:
                assert await status_of(client.challenge()) == PERMISSION_DENIED
            allowlist_file(allowed, seed.identity(1), newcomer)
            await wait_until(lambda: events(link, "key-added"), 2)
            node = start_secure_node(seed, link.fleet_port, newcomer)
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1, 2)
            finally:
                await stop_nodes(node)
            added = events(link, "key-added")
        assert [e.fingerprint for e in added] == [newcomer.fingerprint]

    asyncio.run(scenario())


def test_an_operator_key_removed_from_the_list_loses_its_session(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        operator, successor = seed.stranger(3), seed.stranger(2)
        operators = allowlist_file(tmp_path / "operators.csv", operator)
        config = secure_config(tmp_path, seed, operator_keys=operators)
        async with (
            open_superlink(config) as link,
            driver_client(seed, link.driver_port, operator) as driver,
        ):
            assert await status_of(driver.create_run("before", {})) == OK
            allowlist_file(operators, successor)
            await wait_until(lambda: events(link, "revoke"), 2)
            # the session is gone, and joining again is refused: the key is no longer listed
            assert await status_of(driver.create_run("after", {})) == PERMISSION_DENIED

    asyncio.run(scenario())


def test_a_revoked_operator_loses_its_open_reply_stream(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        operator, successor = seed.stranger(3), seed.stranger(2)
        operators = allowlist_file(tmp_path / "operators.csv", operator)
        config = secure_config(tmp_path, seed, operator_keys=operators)
        async with (
            open_superlink(config) as link,
            driver_client(seed, link.driver_port, operator) as driver,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = await registered(client)
            async with collecting(fleet) as inbox:
                await wait_until(lambda: link.dispatcher.online_nodes() == [fleet.node_id], 2)
                run_id, _ = await driver.create_run("watching", {})
                content: Records[BlobRef] = fit_evaluate.instruction(None, {})
                instruction = Message(run_id, fleet.node_id, "evaluate", content)
                await driver.send(run_id, [instruction])  # delivered, never answered
                await asyncio.wait_for(inbox.get(), 2)

                async def watch() -> None:
                    async for _ in driver.replies(run_id, [instruction.message_id]):
                        pass

                stream = asyncio.create_task(watch())
                await asyncio.sleep(0.2)
                assert not stream.done()  # waiting for the reply
                allowlist_file(operators, successor)
                with pytest.raises(CallRefused) as cut:
                    await asyncio.wait_for(stream, 3)
            # the stream is cut, and the client's attempt to join again is refused
            assert cut.value.status == "permission_denied"

    asyncio.run(scenario())


# 7. configurations that would leave a hole; the Driver API's operators


def test_client_authentication_without_tls_is_refused_at_start(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        security = SecurityConfig(client_keys=seed.allowlist_copy(tmp_path))
        with pytest.raises(ConfigurationError, match="TLS"):
            async with open_superlink(superlink_config(tmp_path, security=security)):
                pytest.fail("a SuperLink with authentication but no TLS started")

    asyncio.run(scenario())


def test_a_reachable_driver_api_without_operator_keys_is_refused_at_start(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        config = secure_config(tmp_path, seed)
        config.driver_address = Address("0.0.0.0", 0)
        with pytest.raises(ConfigurationError, match="operator-keys"):
            async with open_superlink(config):
                pytest.fail("a Driver API open to other machines started without operator keys")

    asyncio.run(scenario())


def test_driver_api_with_operator_keys_admits_only_listed_operators(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        operator, node_key = seed.stranger(3), seed.identity(1)
        operators = allowlist_file(tmp_path / "operators.csv", operator)
        config = secure_config(tmp_path, seed, operator_keys=operators)
        config.driver_address = Address("0.0.0.0", 0)  # allowed now that operators must join
        async with open_superlink(config) as link:
            address = Address("127.0.0.1", link.driver_port)
            async with driver_client(seed, link.driver_port, operator) as driver:
                assert (await driver.create_run("by an operator", {}))[0] > 0
            with pytest.raises(ConfigurationError, match="requires an operator key"):
                await DriverClient.connect(address, seed.credentials, 5)  # told at once
            async with peer(seed, link.driver_port, node_key) as anonymous:  # no session
                body = dpb.CreateRunRequest(app="anonymous").SerializeToString()
                assert await status_of(anonymous.unary(DRIVER + "CreateRun", body)) == (
                    UNAUTHENTICATED
                )

            for outsider in (seed.stranger(1), node_key):  # a node's key is no operator key
                with pytest.raises(ConnectionFailed, match="refused the operator key"):
                    await DriverClient.connect(address, seed.credentials, 5, outsider)

            # a Fleet session is worth nothing on the Driver API
            async with peer(seed, link.fleet_port, node_key) as client:
                await client.join()
                body = dpb.CreateRunRequest(app="x").SerializeToString()
                metadata = client.sign(DRIVER + "CreateRun", body)
                async with peer(seed, link.driver_port, node_key) as other:
                    call = other.unary(DRIVER + "CreateRun", body, metadata)
                    assert await status_of(call) == UNAUTHENTICATED
            assert link.dispatcher.state.get_run(2) is None

    asyncio.run(scenario())


def test_server_app_without_an_operator_key_is_refused(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        operators = allowlist_file(tmp_path / "operators.csv", seed.stranger(3))
        config = secure_config(tmp_path, seed, operator_keys=operators)
        async with open_superlink(config) as link:
            app_config = ServerAppConfig(
                superlink=Address("127.0.0.1", link.driver_port),
                output_root=tmp_path / "runs",
                connect_timeout=5,
                credentials=seed.credentials,
            )
            with pytest.raises(ConfigurationError, match="requires an operator key; pass --auth"):
                await run_server_app(numpy_apps.make_server_app(num_rounds=1), app_config)

    asyncio.run(scenario())


# 9. requests without a session


@pytest.mark.parametrize("method", ["RegisterNode", "Heartbeat", "Subscribe", "GetRun"])
def test_requests_without_auth_metadata_are_refused(
    tmp_path: Path, seed: Seed, method: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = await registered(client)  # even a node with a session must sign
            body = heartbeat_body(fleet.node_id)
            send = client.first if method == "Subscribe" else client.unary
            assert await status_of(send(FLEET + method, body)) == UNAUTHENTICATED

    asyncio.run(scenario())


def test_blob_upload_without_a_session_is_refused(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = FleetClient(client.channel)  # never joined: nothing is signed
            assert await status_of(fleet.upload_blob(bytearray(b"payload"))) == UNAUTHENTICATED
            assert not link.blobs.exists(content_digest(b"payload"))

    asyncio.run(scenario())


def test_an_authenticated_upload_is_hashed_once_not_once_more_per_chunk(
    tmp_path: Path, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream is authenticated when it opens; its chunks are covered by the blob's
    digest, which the blob store computes. Hashing each chunk again cost a pass."""
    from pollen.superlink import request_verification

    hashed: list[int] = []

    class CountingHashlib:
        @staticmethod
        def sha256(data: bytes = b"") -> Any:
            hashed.append(len(data))
            return hashlib.sha256(data)

    monkeypatch.setattr(request_verification, "hashlib", CountingHashlib)
    data = bytearray(os.urandom(5 * 1024 * 1024 + 7))

    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
            driver_client(seed, link.driver_port) as driver,
        ):
            fleet = await registered(client)
            async with collecting(fleet) as inbox:  # a node uploads the reply to its instruction
                await wait_until(lambda: link.dispatcher.online_nodes() == [fleet.node_id], 2)
                run_id, _ = await driver.create_run("hashing", {})
                instruction: Records[BlobRef] = fit_evaluate.instruction(None, {})
                await driver.send(run_id, [Message(run_id, fleet.node_id, "train", instruction)])
                await asyncio.wait_for(inbox.get(), 2)
                hashed.clear()
                ref = await fleet.upload_blob(data, run_id=run_id)
            assert ref.digest == content_digest(data)
            assert link.blobs.exists(ref.digest)

    asyncio.run(scenario())
    assert sum(hashed) < 1024  # only small request bodies, never the chunks


@pytest.mark.parametrize(
    "session_id", ["00" * 16, "not-hex", ""], ids=["unknown", "malformed", "empty"]
)
def test_a_session_that_does_not_exist_is_refused(
    tmp_path: Path, seed: Seed, session_id: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            fleet = await registered(client)
            body = heartbeat_body(fleet.node_id)
            [(name, value)] = client.sign(HEARTBEAT, body)
            metadata = ((name, session_id + value[value.index(".") :]),)
            assert await status_of(client.unary(HEARTBEAT, body, metadata)) == UNAUTHENTICATED

    asyncio.run(scenario())


# 10. the same key twice


def test_a_newer_session_of_the_same_key_replaces_the_older(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        key = seed.identity(1)
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, key) as old,
            peer(seed, link.fleet_port, key) as new,
        ):
            old_fleet = await registered(old)
            async with collecting(old_fleet):
                await wait_until(lambda: link.dispatcher.online_nodes() == [old_fleet.node_id], 2)
                new_fleet = await registered(new)
                assert new_fleet.node_id == old_fleet.node_id  # the key decides the node id
                await wait_until(lambda: link.dispatcher.online_nodes() == [], 2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await old_fleet.heartbeat()
            assert refused.value.code() == UNAUTHENTICATED
            # the older process is told why, so that it does not join again and displace back
            assert refused.value.details().startswith(
                "replaced by another process with the same key (SHA256:"
            )
            assert await status_of(new_fleet.heartbeat()) == OK
            assert len(events(link, "displaced")) == 1

    asyncio.run(scenario())


def test_a_node_replaced_by_another_process_with_its_key_says_so_and_stops(
    tmp_path: Path, seed: Seed
) -> None:
    """Two processes with one key: the older one ends with the reason, the newer one stays
    (they used to displace each other about three times a second, forever)."""

    async def scenario() -> None:
        async with open_superlink(secure_config(tmp_path, seed)) as link:
            older = start_secure_node(seed, link.fleet_port, seed.identity(1))
            await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1)
            newer = start_secure_node(seed, link.fleet_port, seed.identity(1))
            try:
                with pytest.raises(KeyInUse) as ended:
                    await asyncio.wait_for(older.task, 30)
                message = str(ended.value)
                assert "replaced by another process with the same key (SHA256:" in message
                assert "give each SuperNode its own key pair" in message
                assert ended.value.exit_code == 2
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1)
                assert not newer.task.done()
                assert len(events(link, "displaced")) == 1
            finally:
                await stop_nodes(older, newer)

    asyncio.run(scenario())


# 11. pinning the SuperLink's key


def test_a_node_pinning_the_superlink_key_joins(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        pinned = seed.identity(1, pin=seed.server_public())
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, pinned) as client,
        ):
            assert (await registered(client)).node_id > 0

    asyncio.run(scenario())


@pytest.mark.parametrize("other", ["key_1", "ed25519"])
def test_a_node_pinning_another_key_refuses_the_superlink(
    tmp_path: Path, seed: Seed, other: str
) -> None:
    async def scenario() -> None:
        wrong = seed.stranger(other).private_key.public_key()
        pinned = seed.identity(1, pin=wrong)
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, pinned) as client,
        ):
            with pytest.raises(ServerIdentityError, match="pinned"):
                await client.join()
            config = node_config(seed, link.fleet_port, pinned)
            with pytest.raises(ServerIdentityError):
                await asyncio.wait_for(run_supernode(numpy_apps.app, config), 5)

    asyncio.run(scenario())


def test_a_pinned_key_is_refused_when_the_superlink_signs_nothing(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        pinned = seed.identity(1, pin=seed.server_public())
        async with (
            open_superlink(secure_config(tmp_path, seed, server_key=None)) as link,
            peer(seed, link.fleet_port, pinned) as client,
        ):
            with pytest.raises(ServerIdentityError):
                await client.join()

    asyncio.run(scenario())


# 12. end to end


@pytest.mark.parametrize("curve", ["ed25519", "p256", "p521"])
def test_nodes_join_with_every_supported_key_type(tmp_path: Path, seed: Seed, curve: str) -> None:
    async def scenario() -> None:
        private = (
            ed25519.Ed25519PrivateKey.generate()
            if curve == "ed25519"
            else ec.generate_private_key(ec.SECP256R1() if curve == "p256" else ec.SECP521R1())
        )
        identity = ClientIdentity(private, seed.server_public())
        allowed = allowlist_file(tmp_path / "allowed.csv", identity)
        async with (
            open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link,
            peer(seed, link.fleet_port, identity) as client,
        ):
            fleet = await registered(client)
            assert await status_of(fleet.heartbeat()) == OK

    asyncio.run(scenario())


def test_two_server_apps_of_one_operator_run_at_the_same_time(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        operator = seed.stranger(3)
        operators = allowlist_file(tmp_path / "operators.csv", operator)
        config = secure_config(tmp_path, seed, operator_keys=operators)
        async with open_superlink(config) as link:
            nodes = [start_secure_node(seed, link.fleet_port, seed.identity(i)) for i in (1, 2)]
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
                app_config = ServerAppConfig(
                    superlink=Address("127.0.0.1", link.driver_port),
                    output_root=tmp_path / "runs",
                    connect_timeout=5,
                    credentials=seed.credentials,
                    identity=operator,
                )
                both = await asyncio.gather(
                    run_server_app(numpy_apps.make_server_app(num_rounds=1), app_config),
                    run_server_app(numpy_apps.make_server_app(num_rounds=1), app_config),
                )
            finally:
                await stop_nodes(*nodes)
        assert [len(outcome.history.rounds) for outcome, _ in both] == [1, 1]

    asyncio.run(scenario())


def test_two_authenticated_nodes_and_an_operator_run_two_rounds(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        operator = seed.stranger(3)
        operators = allowlist_file(tmp_path / "operators.csv", operator)
        config = secure_config(tmp_path, seed, operator_keys=operators)
        async with open_superlink(config) as link:
            nodes = [start_secure_node(seed, link.fleet_port, seed.identity(i)) for i in (1, 2)]
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
                outcome, _ = await run_server_app(
                    numpy_apps.make_server_app(num_rounds=2),
                    ServerAppConfig(
                        superlink=Address("127.0.0.1", link.driver_port),
                        output_root=tmp_path / "runs",
                        connect_timeout=5,
                        credentials=seed.credentials,
                        identity=operator,
                    ),
                )
            finally:
                await stop_nodes(*nodes)
        assert [r.fit_results for r in outcome.history.rounds] == [2, 2]
        np.testing.assert_array_equal(outcome.parameters[0], np.full((2, 3), 2, np.float32))

    asyncio.run(scenario())


def test_a_flood_of_invented_keys_is_cut_short_without_filling_the_audit_trail(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        async with open_superlink(secure_config(tmp_path, seed)) as link:
            codes = []
            for _ in range(12):
                stranger = ClientIdentity(ec.generate_private_key(ec.SECP384R1()))
                async with peer(seed, link.fleet_port, stranger) as client:
                    codes.append(await status_of(client.join()))
            assert codes[:5] == [grpc.StatusCode.PERMISSION_DENIED] * 5
            assert set(codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            rejects = [e for e in link.dispatcher.state.list_audit() if e.event == "reject"]
            assert len(rejects) == 5

    asyncio.run(scenario())
