"""Join challenges under a flood: bounded per address and key, and nobody else's evicted.

Anyone may ask for a challenge in a listed node's name. The SuperLink kept up to
10 000 outstanding challenges and evicted the oldest, so a flood for a listed key
evicted the challenges of nodes in the middle of their join. Now one address
holds at most 4 challenges of one key (and 256 in all); more are refused, never
made room for by evicting, and the audit trail counts the refusals in one row.

Real SuperLinks with TLS and client authentication on 127.0.0.1:0; a relay
(tests/address_relay.py) reaches them from other loopback addresses.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from pollen.superlink import challenges
from pollen.superlink.server import SuperLink, open_superlink
from pollen.superlink.sessions import SessionStore
from pollen.supernode.fleet_client import FleetClient
from pollen.transport.request_signing import ClientIdentity
from tests.address_relay import relay
from tests.auth_helpers import Clock, Peer, Seed, open_session_request, peer, secure_config

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
FLOOD = 300


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"))


def sessions(link: SuperLink) -> SessionStore:
    assert link.fleet_guard is not None
    return link.fleet_guard.settings.sessions


async def flood(
    attacker: Peer, victim: ClientIdentity, times: int = FLOOD
) -> list[grpc.StatusCode]:
    """``times`` challenge requests in ``victim``'s name, 20 at a time."""
    codes: list[grpc.StatusCode] = []

    async def one() -> grpc.StatusCode:
        try:
            await attacker.challenge(victim)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    for _ in range(times // 20):
        codes += await asyncio.gather(*(one() for _ in range(20)))
    return codes


async def finish_join(client: Peer, challenge: bytes) -> None:
    """Answer ``challenge`` as its key's owner: the SuperLink opens a session."""
    identity = client.identity
    reply = await client.auth.OpenSession(
        open_session_request(identity, challenge, identity.private_key)
    )
    assert reply.session_id


async def joins_and_works(client: Peer) -> None:
    await client.join()
    fleet = FleetClient(client.channel)
    await fleet.register()
    await fleet.heartbeat()


def test_a_challenge_flood_for_a_listed_key_is_bounded_and_its_owner_still_joins(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with (
            open_superlink(secure_config(tmp_path, seed, clock=clock)) as link,
            peer(seed, link.fleet_port, seed.stranger(), clock=clock) as attacker,
            peer(seed, link.fleet_port, seed.identity(1), clock=clock) as owner,
            relay(link.fleet_port) as elsewhere,
            peer(seed, elsewhere, seed.identity(1), clock=clock) as owner_elsewhere,
        ):
            mid_join = await owner.challenge()  # the owner is joining as the flood starts
            codes = await flood(attacker, owner.identity)
            assert codes.count(grpc.StatusCode.OK) == challenges.PER_KEY - 1
            assert codes.count(EXHAUSTED) == FLOOD - challenges.PER_KEY + 1
            assert len(sessions(link).challenges) == challenges.PER_KEY  # memory bounded
            # the owner's challenge was not evicted: its join goes through
            await finish_join(owner, mid_join)
            # from another address, the flood is no obstacle at all
            await joins_and_works(owner_elsewhere)
            # from the flooder's address, while the flood goes on, a new join waits until
            # the flood's challenges expire (a SuperNode retries RESOURCE_EXHAUSTED)
            codes += await flood(attacker, owner.identity, 20)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await owner.challenge()
            assert refused.value.code() == EXHAUSTED
            assert "already under way; retry in" in str(refused.value.details())
            clock.advance(challenges.CHALLENGE_SECONDS + 1)
            await joins_and_works(owner)
            assert link.fleet_guard is not None
            link.fleet_guard.settings.audit.flush()
            rows = link.dispatcher.state.list_audit()
        throttled = [e for e in rows if e.event == "throttled"]
        assert len(rows) < 10  # was one row per refused attempt
        assert [e.count for e in throttled] == [codes.count(EXHAUSTED) + 1]

    asyncio.run(scenario())


def test_a_full_challenge_table_makes_room_only_for_an_address_that_holds_none(
    tmp_path: Path, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the total bound, a flooding address is refused; a new address evicts the
    oldest challenge, which is the flood's, never a node's mid-join."""
    monkeypatch.setattr(challenges, "TOTAL", 10)

    async def scenario() -> None:
        first, second, third = (seed.identity(n) for n in (1, 2, 3))
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.stranger()) as attacker,
            relay(link.fleet_port, "127.0.0.2") as one_address,
            relay(link.fleet_port, "127.0.0.3") as another_address,
            peer(seed, one_address, first) as owner,
            peer(seed, another_address, second) as neighbour,
        ):
            assert (await flood(attacker, first, 20)).count(grpc.StatusCode.OK) == 4
            assert (await flood(attacker, second, 20)).count(grpc.StatusCode.OK) == 4
            assert (await flood(attacker, third, 20)).count(grpc.StatusCode.OK) == 2  # full
            mid_join = await owner.challenge()  # evicts the flood's oldest
            assert await flood(attacker, third, 20) == [EXHAUSTED] * 20
            await finish_join(owner, mid_join)
            await joins_and_works(neighbour)
            assert len(sessions(link).challenges) == 9  # the flood's; the nodes answered theirs

    asyncio.run(scenario())
