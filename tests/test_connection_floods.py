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
import resource
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.connection_limits import HANDSHAKE_SECONDS, OPEN_FILES_CAP
from pollen.superlink.server import SuperLink, open_superlink
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
    port: int, count: int, first_bytes: bytes = b"", tls: ssl.SSLContext | None = None
) -> AsyncIterator[list[asyncio.StreamReader]]:
    """``count`` connections to ``port`` that send ``first_bytes`` and then nothing."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1" if tls else None
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
    async def scenario() -> None:
        async with open_superlink(secure_config(tmp_path, seed)) as link:
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
