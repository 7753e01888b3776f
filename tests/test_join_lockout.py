"""Failed joins are limited per source address, never against the key they named.

Public keys are public: a forger can name a listed node's key. Five failed joins
of that kind once locked the key's owner out for a minute, from the forger's
address, which behind a NAT or a shared gateway is the owner's address too. Now
a join that fails before proving possession of its key counts against its
address; over the limit, such joins are refused before anything is audited,
while a join that proves its key still gets in.

Real SuperLinks with TLS and client authentication on 127.0.0.1:0; a relay
(tests/address_relay.py) reaches them from 127.0.0.2. Windows are crossed by
moving an injected clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from pollen.proto import auth_pb2 as apb
from pollen.superlink.server import SuperLink, open_superlink
from pollen.superlink.sqlite_state import SqliteState
from pollen.superlink.state import AuditEvent
from pollen.supernode.fleet_client import FleetClient
from pollen.transport import keys
from pollen.transport.session_crypto import join_transcript
from tests.address_relay import relay
from tests.auth_helpers import (
    Clock,
    Peer,
    Seed,
    open_session_request,
    peer,
    secure_config,
    status_of,
)

OK = grpc.StatusCode.OK
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"))


def audit(link: SuperLink, kind: str) -> list[AuditEvent]:
    assert link.fleet_guard is not None
    link.fleet_guard.settings.audit.flush()  # throttled counts are written once a second
    return [e for e in link.dispatcher.state.list_audit() if e.event == kind]


async def forge(attacker: Peer, victim: Peer) -> grpc.StatusCode:
    """A join in ``victim``'s name, signed with ``attacker``'s key."""
    try:
        challenge = await attacker.challenge(victim.identity)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    forged = open_session_request(victim.identity, challenge, attacker.identity.private_key)
    return await status_of(attacker.auth.OpenSession(forged))


async def joins_and_works(client: Peer) -> None:
    """The node joins, registers and its signed requests are answered."""
    await client.join()
    fleet = FleetClient(client.channel)
    await fleet.register()
    await fleet.heartbeat()


def test_a_forger_cannot_lock_the_owner_out_from_the_same_address(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        clock = Clock()
        config = secure_config(tmp_path, seed, clock=clock)  # 5 failures within 60 s
        async with (
            open_superlink(config) as link,
            peer(seed, link.fleet_port, seed.stranger(), clock=clock) as attacker,
            peer(seed, link.fleet_port, seed.identity(1), clock=clock) as victim,
        ):
            assert [await forge(attacker, victim) for _ in range(5)] == [PERMISSION_DENIED] * 5
            # the forger's address is slowed: refused before the audit, whatever it tries
            assert await forge(attacker, victim) == EXHAUSTED
            assert await status_of(attacker.challenge()) == EXHAUSTED  # its own, unlisted key
            # the owner, from the very same address, proves its key and gets in
            await joins_and_works(victim)
            async with peer(seed, link.fleet_port, seed.identity(2), clock=clock) as neighbour:
                await joins_and_works(neighbour)
            clock.advance(61)
            assert await forge(attacker, victim) == PERMISSION_DENIED  # the window has passed
            rejects = audit(link, "reject")
            throttled = audit(link, "throttled")
        # one row per key, address and reason within a minute, with its count
        assert [(e.fingerprint, e.count) for e in rejects] == [
            (victim.identity.fingerprint, 5),
            (victim.identity.fingerprint, 1),
        ]
        assert [e.count for e in throttled] == [2]

    asyncio.run(scenario())


def test_failures_from_one_address_do_not_slow_another(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with open_superlink(secure_config(tmp_path, seed)) as link:
            async with (
                peer(seed, link.fleet_port, seed.stranger()) as attacker,
                peer(seed, link.fleet_port, seed.identity(1)) as victim,
            ):
                for _ in range(6):
                    await forge(attacker, victim)
                assert await forge(attacker, victim) == EXHAUSTED
            async with (
                relay(link.fleet_port) as elsewhere,
                peer(seed, elsewhere, seed.stranger()) as attacker,
                peer(seed, elsewhere, seed.identity(1)) as victim,
            ):
                assert await forge(attacker, victim) == PERMISSION_DENIED
                await joins_and_works(victim)
            rejects = audit(link, "reject")
        assert sorted(e.peer.split(":")[1] for e in rejects) == ["127.0.0.1", "127.0.0.2"]

    asyncio.run(scenario())


def test_a_flood_of_malformed_keys_is_cut_short_before_the_audit_trail(
    tmp_path: Path, seed: Seed
) -> None:
    """2000 joins with malformed keys were all answered, each with its own audit row."""

    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            garbage = [f"ecdsa-sha2-nistp384 AAAA{n}" for n in range(300)] + ["x" * 100_000]
            codes = [
                await status_of(client.auth.Challenge(apb.ChallengeRequest(public_key=key)))
                for key in garbage
            ]
            assert codes[:5] == [INVALID_ARGUMENT] * 5
            assert set(codes[5:]) == {EXHAUSTED}
            await joins_and_works(client)  # a listed key from that address still joins
            rows = link.dispatcher.state.list_audit()
            throttled = audit(link, "throttled")
            assert link.fleet_guard is not None
            followed = len(link.fleet_guard.settings.limiter)
        assert [(e.event, e.count) for e in rows] == [("reject", 5), ("throttled", 1), ("join", 1)]
        assert [e.count for e in throttled] == [len(garbage) - 5]  # written by the flush
        assert followed == 1  # one address

    asyncio.run(scenario())


def test_refusals_counted_but_not_yet_written_are_written_when_the_superlink_stops(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        config = secure_config(tmp_path, seed)
        async with (
            open_superlink(config) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            for n in range(40):
                request = apb.ChallengeRequest(public_key=f"ecdsa-sha2-nistp384 AAAA{n}")
                await status_of(client.auth.Challenge(request))
        state = SqliteState(config.database)
        try:
            counts = {e.event: e.count for e in state.list_audit()}
        finally:
            state.close()
        assert counts == {"reject": 5, "throttled": 35}

    asyncio.run(scenario())


def test_an_oversized_key_is_refused_unread(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as client,
        ):
            request = apb.ChallengeRequest(public_key="ssh-ed25519 " + "A" * 10_000)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.auth.Challenge(request)
        assert refused.value.code() == INVALID_ARGUMENT
        assert "10012 characters long; a public key has fewer than 4096" in str(
            refused.value.details()
        )

    asyncio.run(scenario())


def zero_ephemeral_join(client: Peer, challenge: bytes) -> apb.OpenSessionRequest:
    """A join that proves the key but offers an X25519 key with no shared secret."""
    ephemeral = bytes(32)
    identity = client.identity
    transcript = join_transcript("fleet", identity.public_line, challenge, ephemeral)
    return apb.OpenSessionRequest(
        public_key=identity.public_line.decode(),
        challenge=challenge,
        client_ephemeral=ephemeral,
        signature=keys.sign(identity.private_key, transcript),
    )


def test_failures_after_a_proof_count_against_that_key_from_that_address_only(
    tmp_path: Path, seed: Seed
) -> None:
    """Only the key's holder can fail after proving it: that pair is slowed, nobody else.
    (This join used to end in an unexpected ValueError, answered UNKNOWN.)"""

    async def scenario() -> None:
        async with (
            open_superlink(secure_config(tmp_path, seed)) as link,
            peer(seed, link.fleet_port, seed.identity(1)) as holder,
        ):
            codes = []
            for _ in range(5):
                join = zero_ephemeral_join(holder, await holder.challenge())
                codes.append(await status_of(holder.auth.OpenSession(join)))
            assert codes == [INVALID_ARGUMENT] * 5
            assert await status_of(holder.challenge()) == EXHAUSTED
            async with peer(seed, link.fleet_port, seed.identity(2)) as neighbour:
                await joins_and_works(neighbour)  # same address, another key
            async with (
                relay(link.fleet_port) as elsewhere,
                peer(seed, elsewhere, seed.identity(1)) as same_key,
            ):
                await joins_and_works(same_key)  # same key, another address
            [reject] = audit(link, "reject")
        assert (reject.count, reject.reason) == (
            5,
            "ephemeral key is not a usable X25519 public key",
        )

    asyncio.run(scenario())
