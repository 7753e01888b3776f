"""Edits of a live allow-list fail closed: a key taken out loses access even when the
edit also broke another line; a key put in waits until the file is clean; a deleted
file revokes nobody but admits no new join, and says so, until it is back.

The file watcher is driven directly for the rules, and through real SuperLinks on
127.0.0.1:0 with real nodes for what a node and an operator see.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import shutil
from pathlib import Path

import grpc
import pytest

from pollen.superlink.allowlist import MISSING_LOG_SECONDS, AllowList, Reload
from pollen.superlink.server import SuperLink, open_superlink
from pollen.supernode.fleet_client import FleetClient
from pollen.transport.request_signing import ClientIdentity
from tests.auth_helpers import (
    Peer,
    Seed,
    driver_client,
    peer,
    secure_config,
    start_secure_node,
    status_of,
    stop_nodes,
)
from tests.conftest import wait_until

OK = grpc.StatusCode.OK
BROKEN = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAA-cut pollen-client-9"
"""A key line cut short, as a careless paste leaves it."""
ALLOWLIST_LOG = "pollen.superlink.allowlist"
NODE_LOG = "pollen.supernode.node"


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"))


def key_lines(path: Path, *lines: ClientIdentity | str, prefix: bytes = b"") -> Path:
    """An allow-list of one key (or literal line) per line."""
    text = [i.public_line.decode() if isinstance(i, ClientIdentity) else i for i in lines]
    path.write_bytes(prefix + "\n".join(text).encode() + b"\n")
    return path


def settle(allowed: AllowList) -> object:
    """What the watcher applies once it has seen the file unchanged for one more check."""
    assert allowed.reload_if_changed() is None  # seen changing
    return allowed.reload_if_changed()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings_of(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


# the rules, on the file watcher


def test_a_broken_edit_revokes_the_keys_gone_from_it_and_holds_new_ones_back_until_fixed(
    tmp_path: Path, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    removed, kept, newcomer = seed.identity(1), seed.identity(2), seed.identity(3)
    path = key_lines(tmp_path / "allowed.csv", removed, kept)
    allowed = AllowList.load(path)
    key_lines(path, "# the consortium", kept, newcomer, BROKEN)

    with caplog.at_level(logging.WARNING, ALLOWLIST_LOG):
        changes = settle(allowed)

    assert changes is not None
    assert removed.fingerprint not in allowed
    assert kept.fingerprint in allowed
    assert newcomer.fingerprint not in allowed  # not admitted from a file with errors
    [warning] = warnings_of(caplog, logging.WARNING)  # one warning says it all
    assert f"{path} line 4: not a public key" in warning
    assert f"revoked (gone from it or on a line with an error): {removed.fingerprint}" in warning
    assert f"new keys waiting until the file is clean: {newcomer.fingerprint}" in warning

    key_lines(path, kept, newcomer)  # the mistake fixed
    caplog.clear()
    with caplog.at_level(logging.WARNING, ALLOWLIST_LOG):
        settle(allowed)
    assert newcomer.fingerprint in allowed and kept.fingerprint in allowed
    assert warnings_of(caplog, logging.WARNING) == [
        f"allow-list {path} is clean again: all its keys apply"
    ]


def test_a_key_whose_own_line_is_broken_is_revoked(tmp_path: Path, seed: Seed) -> None:
    """Fail closed: a key that can no longer be read is not known to be listed."""
    damaged, kept = seed.identity(1), seed.identity(2)
    path = key_lines(tmp_path / "allowed.csv", damaged, kept)
    allowed = AllowList.load(path)
    key_lines(path, damaged.public_line.decode()[:60], kept)
    settle(allowed)
    assert damaged.fingerprint not in allowed
    assert kept.fingerprint in allowed


@pytest.mark.parametrize("bom", [codecs.BOM_UTF8, codecs.BOM_UTF16_LE])
def test_a_byte_order_mark_is_no_error(
    tmp_path: Path, seed: Seed, bom: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Editors on Windows start files with one; PowerShell writes UTF-16."""
    first, second = seed.identity(1), seed.identity(2)
    encoding = "utf-16-le" if bom == codecs.BOM_UTF16_LE else "utf-8"
    path = tmp_path / "allowed.csv"
    path.write_bytes(bom + first.public_line.decode().encode(encoding))
    allowed = AllowList.load(path)
    assert first.fingerprint in allowed

    text = f"{first.public_line.decode()}\r\n{second.public_line.decode()}\r\n"
    path.write_bytes(bom + text.encode(encoding))
    with caplog.at_level(logging.WARNING, ALLOWLIST_LOG):
        settle(allowed)

    assert first.fingerprint in allowed and second.fingerprint in allowed
    assert warnings_of(caplog, logging.WARNING) == []


def test_a_change_is_applied_only_once_the_file_has_settled(tmp_path: Path, seed: Seed) -> None:
    """A file caught half-written (here: empty) must not revoke every key."""
    path = seed.allowlist_copy(tmp_path)
    allowed = AllowList.load(path)
    before = set(allowed.keys)
    content = path.read_text()
    path.write_text("")  # the editor truncated the file ...
    assert allowed.reload_if_changed() is None
    path.write_text(content + "\n")  # ... and finished writing it
    assert settle(allowed) == Reload(frozenset(), frozenset(), frozenset(), ())
    assert set(allowed.keys) == before


def test_bytes_that_are_not_utf8_are_named_by_their_line(tmp_path: Path, seed: Seed) -> None:
    first, second = seed.identity(1), seed.identity(2)
    path = tmp_path / "allowed.csv"
    path.write_bytes(b"# Jos\xe9's lab\n" + first.public_line + b"\n")
    assert first.fingerprint in AllowList.load(path)  # a comment's bytes do not matter
    allowed = AllowList.load(path)
    path.write_bytes(first.public_line + b"\n" + second.public_line[:30] + b"\xe9\n")
    changes = settle(allowed)
    assert isinstance(changes, Reload)
    assert changes.errors == (f"{path} line 2: not UTF-8 text; save it as UTF-8",)


@pytest.mark.parametrize("how", ["deleted", "unreadable"])
def test_a_missing_file_admits_nobody_and_says_so_every_minute(
    tmp_path: Path, seed: Seed, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    listed = seed.identity(1)
    path = key_lines(tmp_path / "allowed.csv", listed)
    clock = FakeClock()
    allowed = AllowList.load(path, clock)
    content = path.read_bytes()
    path.unlink()
    if how == "unreadable":
        path.mkdir()  # stat works, reading does not

    with caplog.at_level(logging.ERROR, ALLOWLIST_LOG):
        settle(allowed)
        assert listed.fingerprint not in allowed  # no new join while the file is gone
        assert listed.fingerprint in allowed.keys  # nobody revoked
        for _ in range(5):
            allowed.reload_if_changed()
        clock.now += MISSING_LOG_SECONDS
        allowed.reload_if_changed()

    errors = warnings_of(caplog, logging.ERROR)
    assert len(errors) == 2  # at once, then a minute later
    assert str(path) in errors[0]
    assert "every new join is refused until it is back" in errors[0]

    if how == "unreadable":
        path.rmdir()
    path.write_bytes(content)
    settle(allowed)
    assert listed.fingerprint in allowed


# what nodes and operators see, through a real SuperLink


async def subscribed(link: SuperLink, client: Peer) -> tuple[FleetClient, asyncio.Task[None]]:
    """``client`` joined, registered, and reading its task stream until it ends."""
    await client.join()
    fleet = FleetClient(client.channel)
    await fleet.register()

    async def read() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in fleet.instructions():
                pass

    stream = asyncio.create_task(read())
    await wait_until(lambda: fleet.node_id in link.dispatcher.online_nodes(), 2)
    return fleet, stream


def test_a_key_removed_in_a_broken_edit_is_cut_off_and_one_added_in_it_waits(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        removed, kept, newcomer = seed.identity(1), seed.identity(2), seed.identity(3)
        allowed = key_lines(tmp_path / "allowed.csv", removed, kept)
        async with (
            open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link,
            peer(seed, link.fleet_port, removed) as one,
            peer(seed, link.fleet_port, kept) as two,
            peer(seed, link.fleet_port, newcomer) as waiting,
        ):
            fleet, stream = await subscribed(link, one)
            kept_fleet, kept_stream = await subscribed(link, two)

            key_lines(allowed, kept, newcomer, BROKEN)

            await asyncio.wait_for(stream, 3)  # its task stream is cut ...
            assert fleet.node_id not in link.dispatcher.online_nodes()
            # ... its session is over, and the kept key goes on
            assert await status_of(fleet.heartbeat()) == grpc.StatusCode.UNAUTHENTICATED
            assert await status_of(kept_fleet.heartbeat()) == OK
            assert not kept_stream.done()
            # the key added in the same broken edit may not join yet
            assert await status_of(waiting.challenge()) == grpc.StatusCode.PERMISSION_DENIED

            key_lines(allowed, kept, newcomer)  # the mistake fixed
            guard = link.fleet_guard
            assert guard is not None
            await wait_until(lambda: newcomer.fingerprint in guard.settings.allowlist, 3)
            node = start_secure_node(seed, link.fleet_port, newcomer)
            try:
                state = link.dispatcher.state
                await wait_until(
                    lambda: (
                        state.node_for_key(newcomer.fingerprint) in link.dispatcher.online_nodes()
                    ),
                    5,
                )
            finally:
                await stop_nodes(node)

    asyncio.run(scenario())


def test_an_allow_list_saved_with_a_byte_order_mark_admits_its_nodes(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        listed = seed.identity(1)
        allowed = key_lines(tmp_path / "allowed.csv", listed, prefix=codecs.BOM_UTF8)
        async with open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link:
            node = start_secure_node(seed, link.fleet_port, listed)
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1, 5)
            finally:
                await stop_nodes(node)

    asyncio.run(scenario())


def test_a_deleted_allow_list_refuses_new_joins_until_it_is_back(
    tmp_path: Path, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    def logged(name: str, level: int, text: str) -> bool:
        return any(
            r.name == name and r.levelno == level and text in r.getMessage() for r in caplog.records
        )

    async def scenario() -> None:
        joined, latecomer = seed.identity(1), seed.identity(2)
        allowed = key_lines(tmp_path / "allowed.csv", joined, latecomer)
        aside = tmp_path / "allowed.csv.bak"
        async with (
            open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link,
            peer(seed, link.fleet_port, joined) as client,
            peer(seed, link.fleet_port, latecomer) as refused,
        ):
            fleet, stream = await subscribed(link, client)

            shutil.move(allowed, aside)
            await wait_until(
                lambda: logged(ALLOWLIST_LOG, logging.ERROR, "allow-list file not found"), 3
            )

            assert await status_of(fleet.heartbeat()) == OK  # open sessions go on
            assert not stream.done()
            with pytest.raises(grpc.aio.AioRpcError) as join:
                await refused.join()
            assert join.value.code() == grpc.StatusCode.UNAVAILABLE  # a node retries
            assert "allow-list file is missing" in (join.value.details() or "")
            node = start_secure_node(seed, link.fleet_port, latecomer)
            try:
                await wait_until(
                    lambda: logged(NODE_LOG, logging.WARNING, "allow-list file is missing"), 3
                )
                assert not node.task.done()  # refused for now, it does not give up
                assert len(link.dispatcher.online_nodes()) == 1

                shutil.move(aside, allowed)  # the file is back: the node gets in
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2, 5)
            finally:
                await stop_nodes(node)

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())


def test_a_broken_edit_of_the_operator_keys_revokes_the_operator_taken_out(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        operator, successor = seed.stranger(3), seed.stranger(2)
        operators = key_lines(tmp_path / "operators.csv", operator, successor)
        config = secure_config(tmp_path, seed, operator_keys=operators)
        async with (
            open_superlink(config) as link,
            driver_client(seed, link.driver_port, operator) as driver,
        ):
            assert await status_of(driver.create_run("before", {})) == OK
            key_lines(operators, successor, BROKEN)
            guard = link.driver_guard
            assert guard is not None
            await wait_until(lambda: operator.fingerprint not in guard.settings.allowlist, 3)
            assert (
                await status_of(driver.create_run("after", {})) == grpc.StatusCode.PERMISSION_DENIED
            )

    asyncio.run(scenario())
