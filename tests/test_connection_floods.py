"""Connections that anyone can open, with no key and no TLS, hold nothing for long.

Idle TCP connections used to exhaust the SuperLink's 1024 file descriptors, and
no node could join while they were open. Real SuperLinks on 127.0.0.1:0,
in-process, so that ``/proc/self/fd`` counts their descriptors; floods are
bounded (300 connections, to 127.0.0.1 only) and every connection a test opens
it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from pollen.cli.local_federation import LocalFederation, wait_for_log
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.connection_limits import HANDSHAKE_SECONDS, OPEN_FILES_CAP
from pollen.superlink.peers import source_of
from pollen.superlink.server import SuperLink, SuperLinkConfig, open_superlink
from pollen.superlink.socket_table import SocketTable
from pollen.superlink.sqlite_state import SqliteState
from pollen.transport.addresses import Address
from tests.apps import numpy_apps
from tests.auth_helpers import Seed, driver_client, secure_config, start_secure_node, stop_nodes
from tests.conftest import wait_until

FD_MARGIN = 16
"""Descriptors the SuperLink may hold after a flood beyond what it held before."""

# The first bytes of a TLS ClientHello: a handshake that starts and stalls.
STALLED_HELLO = bytes.fromhex("16030100c8010000c40303")
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=2, unlisted=0)


@contextlib.contextmanager
def soft_open_files_limit(soft: int) -> Iterator[None]:
    """This process's soft limit on open files set to ``soft`` for the block, then restored."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@contextlib.asynccontextmanager
async def connections(
    port: int,
    count: int,
    first_bytes: bytes = b"",
    tls: ssl.SSLContext | None = None,
    source: str = "127.0.0.1",
) -> AsyncIterator[list[asyncio.StreamReader]]:
    """``count`` connections to ``port`` from ``source`` (all of 127.0.0.0/8 is loopback)
    that send ``first_bytes`` and then nothing."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=tls,
                server_hostname="127.0.0.1" if tls else None,
                local_addr=(source, 0),
            )
            opened.append((reader, writer))
            if first_bytes:
                writer.write(first_bytes)
                await writer.drain()
        yield [reader for reader, _ in opened]
    finally:
        for _, writer in opened:
            writer.close()
        for _, writer in opened:
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def closed_by_the_superlink(readers: list[asyncio.StreamReader], timeout: float) -> None:
    """Wait until the SuperLink has closed every one of these connections."""

    async def until_closed(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await reader.read(4096):
                pass  # what the SuperLink says before it closes (HTTP/2 settings, a GOAWAY)

    await asyncio.wait_for(asyncio.gather(*(until_closed(r) for r in readers)), timeout)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the SuperLink has closed this connection, or does within ``timeout``."""
    try:
        await closed_by_the_superlink([reader], timeout)
    except TimeoutError:
        return False
    return True


async def train_one_round(link: SuperLink, seed: Seed, tmp_path: Path) -> list[np.ndarray]:
    """A listed node joins and trains one round of a ServerApp; the final model."""
    node = start_secure_node(seed, link.fleet_port, seed.identity(1))
    try:
        await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1, 10)
        outcome, _ = await run_server_app(
            numpy_apps.make_server_app(
                num_rounds=1, min_available=1, min_fit=1, fraction_evaluate=0.0
            ),
            ServerAppConfig(
                superlink=Address("127.0.0.1", link.driver_port),
                output_root=tmp_path / "runs",
                connect_timeout=10,
                credentials=seed.credentials,
            ),
        )
    finally:
        await stop_nodes(node)
    return outcome.parameters


def test_the_superlink_raises_its_open_file_limit_at_start(
    tmp_path: Path, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_CAP)
    if expected <= 256:
        pytest.skip(f"the hard limit on open files ({hard}) leaves nothing to raise")

    async def scenario() -> None:
        async with open_superlink(secure_config(tmp_path, seed)):
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == expected

    caplog.set_level(logging.DEBUG, "pollen.superlink.connection_limits")
    with soft_open_files_limit(256):
        asyncio.run(scenario())
    assert f"open-file limit raised from 256 to {expected}" in caplog.text


def test_idle_and_stalled_connections_are_closed_and_a_node_trains_meanwhile(
    tmp_path: Path, seed: Seed
) -> None:
    config = secure_config(tmp_path, seed)
    config.max_connections_per_address = 0  # the handshake timeout alone, not the cap

    async def scenario() -> None:
        async with open_superlink(config) as link:
            before = open_descriptors()
            flood_started = time.monotonic()
            async with (
                connections(link.fleet_port, 150) as idle,
                connections(link.fleet_port, 100, STALLED_HELLO) as stalled,
                connections(link.driver_port, 50) as idle_driver,
            ):
                # 300 connections held open: the SuperLink holds one descriptor for each
                await wait_until(lambda: open_descriptors() >= before + 2 * 300, 5)
                model = await train_one_round(link, seed, tmp_path)
                await closed_by_the_superlink(
                    idle + stalled + idle_driver,
                    max(1.0, HANDSHAKE_SECONDS + 5 - (time.monotonic() - flood_started)),
                )
                # only this test's own ends of them are left
                assert open_descriptors() <= before + 300 + FD_MARGIN
            assert open_descriptors() <= before + FD_MARGIN
        np.testing.assert_array_equal(model[0], np.full((2, 3), 1, np.float32))

    asyncio.run(scenario())


def test_a_connection_that_never_calls_is_closed_and_clients_reconnect_by_themselves(
    tmp_path: Path, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    """A finished handshake and then silence: closed after the idle timeout. A node's
    open task stream is a call, so its connection stays; a ServerApp's channel that was
    closed while idle opens again on its next call."""
    tls = ssl.create_default_context(cafile=seed.ca_cert)
    tls.set_alpn_protocols(["h2"])
    config = secure_config(tmp_path, seed)
    config.idle_connection_timeout = 0.5

    async def scenario() -> None:
        async with open_superlink(config) as link:
            node = start_secure_node(seed, link.fleet_port, seed.identity(1))
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1, 10)
                async with (
                    driver_client(seed, link.driver_port) as driver,
                    connections(link.fleet_port, 20, HTTP2_PREFACE, tls) as silent,
                ):
                    await driver.create_run("before the idle timeout", {})
                    await closed_by_the_superlink(silent, HANDSHAKE_SECONDS)
                    await asyncio.sleep(1.0)  # the driver's connection idles past 0.5 s too
                    run_id, _ = await driver.create_run("after it", {})
                    assert await driver.get_nodes(run_id) == link.dispatcher.online_nodes()
            finally:
                await stop_nodes(node)

    caplog.set_level(logging.INFO, "pollen.superlink.fleet_service")
    asyncio.run(scenario())
    joins = [r for r in caplog.records if "registered from" in r.getMessage()]
    assert len(joins) == 1  # the node's connection was never closed under it


def capped_at(limit: int, tmp_path: Path, seed: Seed) -> SuperLinkConfig:
    config = secure_config(tmp_path, seed)
    config.max_connections_per_address = limit
    return config


def still_open(link: SuperLink, source: bytes) -> int:
    """Connections from ``source`` (packed) that the SuperLink holds, on both APIs."""
    table = SocketTable()
    try:
        ports = (link.fleet_port, link.driver_port)
        return sum(c.address == source for c in table.established(ports))
    finally:
        table.close()


def test_one_address_holds_no_more_connections_that_made_no_call_than_the_cap(
    tmp_path: Path, seed: Seed
) -> None:
    """250 idle connections from 127.0.0.2 (both APIs): within 3 s the SuperLink holds 16
    of them, not 250 until the handshake timeout (5 s); a node from 127.0.0.1 trains
    meanwhile; the audit trail counts the closed ones."""
    config = capped_at(16, tmp_path, seed)
    attacker = bytes([127, 0, 0, 2])

    async def scenario() -> list[np.ndarray]:
        async with open_superlink(config) as link:
            flood_started = time.monotonic()
            async with (
                connections(link.fleet_port, 200, source="127.0.0.2"),
                connections(link.driver_port, 50, STALLED_HELLO, source="127.0.0.2"),
            ):
                await wait_until(lambda: still_open(link, attacker) <= 16, 3.0)
                assert time.monotonic() - flood_started < HANDSHAKE_SECONDS
                model = await train_one_round(link, seed, tmp_path)
                assert still_open(link, attacker) <= 16
                assert link.connection_cap is not None
                assert link.connection_cap.shut >= 250 - 16
        return model

    model = asyncio.run(scenario())
    np.testing.assert_array_equal(model[0], np.full((2, 3), 1, np.float32))
    state = SqliteState(config.database)
    try:
        throttled = [e for e in state.list_audit() if e.event == "throttled"]
    finally:
        state.close()
    assert {e.api for e in throttled} == {"fleet", "driver"}
    assert all(source_of(e.peer) == "127.0.0.2" for e in throttled)
    assert sum(e.count for e in throttled) >= 250 - 16
    assert all("--max-connections-per-address 16" in e.reason for e in throttled)


def test_connections_that_made_calls_are_not_counted_against_their_address(
    tmp_path: Path, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    """Two nodes behind one address (127.0.0.1) with a cap of 1: their connections made
    calls, so idle connections from the same address are closed around them, and both
    nodes train on without joining again."""

    async def scenario() -> None:
        async with open_superlink(capped_at(1, tmp_path, seed)) as link:
            nodes = []
            for n in (1, 2):  # one after the other: at most one connection is still opening
                nodes.append(start_secure_node(seed, link.fleet_port, seed.identity(n)))
                await wait_until(lambda n=n: len(link.dispatcher.online_nodes()) == n, 10)
            try:
                async with connections(link.fleet_port, 30):
                    await wait_until(lambda: still_open(link, bytes([127, 0, 0, 1])) <= 2 + 1, 3)
                async with driver_client(seed, link.driver_port) as driver:
                    run_id, _ = await driver.create_run("after the flood", {})
                    assert len(await driver.get_nodes(run_id)) == 2
            finally:
                await stop_nodes(*nodes)

    caplog.set_level(logging.INFO, "pollen.superlink.fleet_service")
    asyncio.run(scenario())
    joins = [r for r in caplog.records if "registered from" in r.getMessage()]
    assert len(joins) == 2  # neither node's connection was closed under it


def test_pollen_superlink_takes_the_cap_from_its_option_and_logs_the_flood(
    tmp_path: Path,
) -> None:
    fed = LocalFederation(tmp_path / "fed")
    superlink = fed.start_superlink("--max-connections-per-address", "3")

    async def flood() -> None:
        async with connections(fed.fleet_port, 20, source="127.0.0.2") as idle:
            await asyncio.sleep(3.0)  # less than the handshake timeout
            closed = await asyncio.gather(*(closed_within(reader, 0.1) for reader in idle))
            assert closed.count(False) <= 3

    try:
        asyncio.run(flood())
        wait_for_log(
            superlink,
            re.compile(
                r"fleet API throttled: key - from ipv4:127\.0\.0\.2:\d+ over "
                r"--max-connections-per-address 3"
            ),
            5,
        )
    finally:
        fed.stop()
