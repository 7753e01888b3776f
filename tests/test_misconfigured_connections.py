"""A SuperNode or ServerApp reaching its SuperLink the wrong way is told so, once.

Nobody listening at the address is worth waiting for (the SuperLink may not be
up yet). An answer that shows a mistake is not: the wrong CA, TLS against
plaintext or the reverse, the other API's port, keys missing or not used. Each
is one line naming the mistake and the fix, and exit code 2, without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from pollen.errors import ConfigurationError
from pollen.server.driver import DriverClient
from pollen.superlink.security import SecurityConfig
from pollen.superlink.server import SuperLink, SuperLinkConfig, open_superlink
from pollen.supernode.node import SuperNodeConfig, run_supernode
from pollen.transport.addresses import Address
from pollen.transport.connection_faults import GRACE_ATTEMPTS, Endpoint, diagnose
from pollen.transport.tls import channel_credentials
from tests.apps import numpy_apps
from tests.auth_helpers import Seed, secure_config
from tests.conftest import APPS_DIR, free_port, superlink_config

BOUND = 60.0
"""Seconds after which a client that should have given up fails the test instead of hanging."""


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=1, unlisted=1)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA of another `pollen keys generate`: it signed no certificate of the SuperLink."""
    return Seed.create(tmp_path_factory.mktemp("other"), clients=0, unlisted=0).ca_cert


def link_config(kind: str, tmp_path: Path, seed: Seed) -> SuperLinkConfig:
    """``secure``: TLS and client authentication; ``tls``: TLS only; ``plain``: --insecure."""
    state = tmp_path / kind
    state.mkdir(exist_ok=True)
    if kind == "secure":
        return secure_config(state, seed)
    security = SecurityConfig(tls=seed.tls) if kind == "tls" else SecurityConfig()
    return superlink_config(state, security=security)


def port_of(link: SuperLink, api: str) -> int:
    return link.fleet_port if api == "fleet" else link.driver_port


def credentials(trust: str | None, seed: Seed, other_ca: Path) -> grpc.ChannelCredentials | None:
    """``ca``: the SuperLink's CA; ``other``: another CA; None: plaintext (--insecure)."""
    if trust is None:
        return None
    return channel_credentials(seed.ca_cert if trust == "ca" else other_ca)


async def node_ends_with(config: SuperNodeConfig) -> str:
    """Run a SuperNode until it gives up; its ConfigurationError's message."""
    with pytest.raises(ConfigurationError) as raised:
        await asyncio.wait_for(run_supernode(numpy_apps.app, config, asyncio.Event()), BOUND)
    return str(raised.value)


@pytest.mark.parametrize(
    ("kind", "api", "trust", "keyed", "fragment"),
    [
        ("secure", "fleet", "other", True, "is not signed by the CA in --root-certificates"),
        ("secure", "fleet", None, False, "expects TLS; pass --root-certificates"),
        ("plain", "fleet", "ca", False, "does not speak TLS (a SuperLink started with --insec"),
        ("secure", "fleet", "ca", False, "admits only nodes with a key in its allow-list"),
        ("tls", "fleet", "ca", True, "does not authenticate nodes (it runs without"),
        ("secure", "driver", "ca", True, "does not serve the SuperLink's Fleet API (is it the D"),
        ("secure", "driver", "ca", False, "does not serve the SuperLink's Fleet API"),
        ("plain", "driver", None, False, "point --superlink at the Fleet API: port 9092"),
    ],
)
def test_a_misconfigured_node_says_what_is_wrong_and_stops(
    tmp_path: Path,
    seed: Seed,
    other_ca: Path,
    kind: str,
    api: str,
    trust: str | None,
    keyed: bool,
    fragment: str,
) -> None:
    async def scenario() -> str:
        async with open_superlink(link_config(kind, tmp_path, seed)) as link:
            config = SuperNodeConfig(
                superlink=Address("127.0.0.1", port_of(link, api)),
                credentials=credentials(trust, seed, other_ca),
                identity=seed.identity(1) if keyed else None,
                max_backoff=0.1,
            )
            message = await node_ends_with(config)
            assert not link.dispatcher.online_nodes()
            return message

    assert fragment in asyncio.run(scenario())


@pytest.mark.parametrize(
    ("kind", "api", "trust", "keyed", "fragment"),
    [
        ("secure", "driver", None, False, "expects TLS; pass --root-certificates"),
        ("plain", "driver", "ca", False, "does not speak TLS"),
        ("secure", "driver", "other", False, "is not signed by the CA in --root-certificates"),
        ("secure", "fleet", "ca", False, "does not serve the SuperLink's Driver API (is it the F"),
        ("secure", "fleet", "ca", True, "point --superlink at the Driver API: port 9091"),
        ("plain", "fleet", None, False, "does not serve the SuperLink's Driver API"),
        ("secure", "driver", "ca", True, "takes no operator keys"),
    ],
)
def test_a_misconfigured_server_app_says_what_is_wrong_without_waiting(
    tmp_path: Path,
    seed: Seed,
    other_ca: Path,
    kind: str,
    api: str,
    trust: str | None,
    keyed: bool,
    fragment: str,
) -> None:
    async def scenario() -> str:
        async with open_superlink(link_config(kind, tmp_path, seed)) as link:
            address = Address("127.0.0.1", port_of(link, api))
            identity = seed.stranger(1) if keyed else None  # an operator key
            # a connect timeout of an hour: only an answer ends this in time
            connecting = DriverClient.connect(
                address, credentials(trust, seed, other_ca), 3600, identity
            )
            with pytest.raises(ConfigurationError) as raised:
                await asyncio.wait_for(connecting, BOUND)
            return str(raised.value)

    assert fragment in asyncio.run(scenario())


def test_a_node_keeps_waiting_while_nobody_listens(caplog: pytest.LogCaptureFixture) -> None:
    """A SuperLink that is not up yet is worth waiting for, past any grace."""

    async def scenario() -> None:
        config = SuperNodeConfig(
            superlink=Address("127.0.0.1", free_port()), credentials=None, max_backoff=0.1
        )
        stop = asyncio.Event()
        node = asyncio.create_task(run_supernode(numpy_apps.app, config, stop))
        while caplog.text.count("reconnecting in") <= 2 * GRACE_ATTEMPTS:
            assert not node.done(), node.exception()
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(node, 10)

    with caplog.at_level(logging.WARNING, "pollen.supernode.node"):
        asyncio.run(scenario())
    assert "Connection refused" in caplog.text


@contextlib.asynccontextmanager
async def secure_link(tmp_path: Path, seed: Seed) -> AsyncIterator[SuperLink]:
    async with open_superlink(link_config("secure", tmp_path, seed)) as link:
        yield link


async def pollen(*args: str) -> tuple[int, list[str]]:
    """Run the `pollen` command as a user does, with gRPC's logging settings left to it."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pollen",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BOUND)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode().splitlines()


def node_with_another_ca(seed: Seed, other_ca: Path, port: int, *options: str) -> list[str]:
    key = str(seed.client_key(1))
    return [
        *options,
        "supernode",
        "numpy_apps:app",
        "--dir",
        str(APPS_DIR),
        "--superlink",
        f"127.0.0.1:{port}",
        "--root-certificates",
        str(other_ca),
        "--authentication-keys",
        key,
        f"{key}.pub",
    ]


def test_the_node_command_prints_one_line_and_no_grpc_log_lines(
    tmp_path: Path, seed: Seed, other_ca: Path
) -> None:
    async def scenario() -> tuple[int, list[str]]:
        async with secure_link(tmp_path, seed) as link:
            return await pollen(*node_with_another_ca(seed, other_ca, link.fleet_port))

    code, lines = asyncio.run(scenario())
    assert code == 2
    [line] = lines  # gRPC's own "I1204 ... ssl_transport_security.cc" lines stay out
    assert line.startswith("error: the TLS certificate of the SuperLink at 127.0.0.1:"), line


def test_verbose_lets_grpc_log_lines_through(tmp_path: Path, seed: Seed, other_ca: Path) -> None:
    async def scenario() -> tuple[int, list[str]]:
        async with secure_link(tmp_path, seed) as link:
            return await pollen(*node_with_another_ca(seed, other_ca, link.fleet_port, "-v"))

    code, lines = asyncio.run(scenario())
    assert code == 2
    assert any("ssl_transport_security" in line for line in lines), lines


def test_the_server_app_command_names_tls_at_once(tmp_path: Path, seed: Seed) -> None:
    """--insecure against a TLS SuperLink: not "did not answer" after --connect-timeout."""

    async def scenario() -> tuple[int, list[str]]:
        async with secure_link(tmp_path, seed) as link:
            return await pollen(
                "serverapp",
                "numpy_apps:server_app",
                "--insecure",
                "--dir",
                str(APPS_DIR),
                "--superlink",
                f"127.0.0.1:{link.driver_port}",
                "--output-dir",
                str(tmp_path / "runs"),
                "--connect-timeout",
                "600",
            )

    code, lines = asyncio.run(scenario())
    assert code == 2
    [line] = lines
    assert "expects TLS; pass --root-certificates" in line, line


@pytest.mark.parametrize(
    ("details", "fragment"),
    [  # as gRPC 1.85 words them
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.2:9092: "
            "Custom verification check failed with error: UNAUTHENTICATED: Hostname "
            "Verification Check failed.",
            "certificate does not name 127.0.0.2; connect by a name it covers",
        ),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.2:9092: "
            "Failed to connect to remote host: Connection refused",
            None,
        ),
    ],
)
def test_what_a_connection_failure_says(details: str, fragment: str | None) -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )
    fault = diagnose(error, Endpoint(Address("127.0.0.2", 9092), "Fleet", tls=True, keyed=True))
    if fragment is None:
        assert fault is None  # nobody listening: worth waiting for
    else:
        assert fault is not None and fault.certain
        assert fragment in fault.message
