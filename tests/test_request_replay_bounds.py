"""The SuperLink's memory of request nonces is bounded, and nothing replays through it.

Nonces of 7500 characters were accepted and kept, and only purged when the same
session sent again: 48 501 requests in 20 s took the SuperLink from 87 to 513 MiB.
Now a nonce is exactly 24 lowercase hex digits, checked before anything is kept;
every session's nonces are purged once they can no longer pass the time window,
whichever session sends; and a session (or all sessions together) over its bound
is refused RESOURCE_EXHAUSTED instead of having its older nonces forgotten, which
would reopen their replay.

Real SuperLinks with TLS and client authentication on 127.0.0.1:0, in-process;
the window is crossed by moving one clock that the SuperLink and clients share.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import grpc
import pytest

from pollen.proto import fleet_pb2 as fpb
from pollen.superlink import sessions as sessions_module
from pollen.superlink.server import SuperLink, open_superlink
from pollen.superlink.sessions import SessionStore
from pollen.supernode.fleet_client import FleetClient
from tests.auth_helpers import FLEET, Clock, Peer, Seed, peer, secure_config, status_of

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
HEARTBEAT = FLEET + "Heartbeat"


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"))


def sessions(link: SuperLink) -> SessionStore:
    assert link.fleet_guard is not None
    return link.fleet_guard.settings.sessions


async def registered(client: Peer) -> int:
    await client.join()
    fleet = FleetClient(client.channel)
    return await fleet.register()


async def heartbeat(
    client: Peer, node_id: int, nonce: str | None = None, clock: Clock | None = None
) -> grpc.StatusCode:
    """One heartbeat, signed by the client's session with ``nonce`` (a fresh one if None)
    at the time of ``clock`` (wall time if None)."""
    body = fpb.HeartbeatRequest(node_id=node_id).SerializeToString()
    at = int((clock or time.time)() * 1000)
    metadata = client.sign(HEARTBEAT, body, nonce=nonce, timestamp_ms=at)
    return await status_of(client.unary(HEARTBEAT, body, metadata))


async def heartbeats(client: Peer, node_id: int, times: int) -> list[grpc.StatusCode]:
    codes: list[grpc.StatusCode] = []
    for _ in range(times // 10):
        codes += await asyncio.gather(*(heartbeat(client, node_id) for _ in range(10)))
    return codes


@pytest.mark.parametrize(
    "nonce",
    ["a" * 7500, secrets.token_hex(12)[:-1], secrets.token_hex(12).upper(), "g" * 24],
    ids=["7500-characters", "23-digits", "upper-case", "not-hex"],
)
def test_a_nonce_of_another_form_is_refused_before_it_is_kept(
    tmp_path: Path, seed: Seed, nonce: str
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            node_id = await registered(client)
            kept = sessions(link).nonces
            assert await heartbeat(client, node_id, nonce) == UNAUTHENTICATED  # a valid MAC
            assert sessions(link).nonces == kept
            assert await heartbeat(client, node_id) == OK

    asyncio.run(scenario())


def test_a_session_over_its_bound_is_told_to_slow_down_and_nothing_replays(
    tmp_path: Path, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_module, "NONCES_PER_NODE_SESSION", 50)
    monkeypatch.setattr(sessions_module, "NONCES_TOTAL", 80)

    async def scenario() -> None:
        clock = Clock()
        async with (
            open_superlink(secure_config(tmp_path, seed, clock=clock)) as link,
            peer(seed, link.fleet_port, seed.identity(1), clock=clock) as flooder,
            peer(seed, link.fleet_port, seed.identity(2), clock=clock) as other,
        ):
            flooder_id, other_id = await registered(flooder), await registered(other)
            store = sessions(link)
            first = secrets.token_hex(12)
            assert await heartbeat(flooder, flooder_id, first) == OK
            codes = await heartbeats(flooder, flooder_id, 60)
            assert (codes.count(OK), codes.count(EXHAUSTED)) == (50 - 2, 12)  # and register
            # over the bound, remembered nonces are kept: a replay is still refused
            assert await heartbeat(flooder, flooder_id, first) == UNAUTHENTICATED
            # other sessions go on, up to the total bound of all sessions together
            codes = await heartbeats(other, other_id, 40)
            assert (codes.count(OK), codes.count(EXHAUSTED)) == (80 - 50 - 1, 11)
            assert store.nonces == 80
            clock.advance(61)  # every nonce can no longer pass the window
            assert await heartbeat(other, other_id, clock=clock) == OK
            # the flooder's nonces went too, although the flooder has not sent again
            assert store.nonces == 1
            assert await heartbeat(flooder, flooder_id, clock=clock) == OK

    asyncio.run(scenario())


def test_a_replay_after_the_nonce_is_forgotten_fails_on_its_timestamp(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with (
            open_superlink(secure_config(tmp_path, seed, clock=clock)) as link,
            peer(seed, link.fleet_port, seed.identity(1), clock=clock) as client,
        ):
            node_id = await registered(client)
            body = fpb.HeartbeatRequest(node_id=node_id).SerializeToString()
            captured = client.sign(HEARTBEAT, body)
            assert await status_of(client.unary(HEARTBEAT, body, captured)) == OK
            clock.advance(61)
            assert await heartbeat(client, node_id, clock=clock) == OK  # purges the first
            assert sessions(link).nonces == 1
            assert await status_of(client.unary(HEARTBEAT, body, captured)) == UNAUTHENTICATED

    asyncio.run(scenario())


def test_ended_sessions_take_their_nonces_with_them(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with open_superlink(secure_config(tmp_path, seed)) as link:
            async with peer(seed, link.fleet_port, seed.identity(1)) as client:
                node_id = await registered(client)
                assert await heartbeats(client, node_id, 20) == [OK] * 20
            assert sessions(link).nonces == 21
            async with peer(seed, link.fleet_port, seed.identity(1)) as again:
                await again.join()  # displaces the first session
            assert sessions(link).nonces == 0
            assert len(sessions(link)) == 1

    asyncio.run(scenario())
