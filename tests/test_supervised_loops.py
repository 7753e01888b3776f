"""The SuperLink's background loops never stop silently: a loop whose step fails is logged
and tried again, and one that keeps failing stops the SuperLink with a clear message."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from pollen.cli.main import cli
from pollen.superlink import supervisor
from pollen.superlink.dispatch import Dispatcher
from pollen.superlink.security import ApiGuard
from pollen.superlink.server import open_superlink
from pollen.supernode.fleet_client import FleetClient
from tests.auth_helpers import Seed, allowlist_file, peer, secure_config, status_of
from tests.conftest import free_port, superlink_config, wait_until


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=2, unlisted=1)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "RETRY_AFTER", (0.01, 0.02))


def test_a_revocation_after_the_watcher_failed_still_cuts_the_node_off(
    tmp_path: Path, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_reload = ApiGuard.reload
    failures: list[int] = []

    def locked_once(self: ApiGuard, *args: Any) -> Any:
        if not failures:  # not a storage fault: it used to end the watcher for good
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return real_reload(self, *args)

    monkeypatch.setattr(ApiGuard, "reload", locked_once)

    async def scenario() -> None:
        revoked, kept = seed.identity(1), seed.identity(2)
        allowed = allowlist_file(tmp_path / "allowed.csv", revoked, kept)
        async with (
            open_superlink(secure_config(tmp_path, seed, client_keys=allowed)) as link,
            peer(seed, link.fleet_port, revoked) as client,
        ):
            await client.join()
            fleet = FleetClient(client.channel)
            await fleet.register()
            await wait_until(lambda: failures == [1], 3)  # the watcher failed once
            allowlist_file(allowed, kept)
            await wait_until(
                lambda: revoked.fingerprint not in link.fleet_guard.settings.allowlist,  # type: ignore[union-attr]
                5,
            )
            assert await status_of(fleet.heartbeat()) == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(scenario())


def _always_locked(self: Dispatcher, *args: Any) -> None:
    raise sqlite3.OperationalError("database is locked")


def test_a_loop_that_keeps_failing_stops_the_superlink_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Dispatcher, "close_stale", _always_locked)

    async def scenario() -> str:
        config = superlink_config(tmp_path, heartbeat_interval=0.05)
        async with open_superlink(config) as link:
            failure = await asyncio.wait_for(link.until_failed(), 5)
        return str(failure)

    message = asyncio.run(scenario())
    assert message.startswith(
        "the SuperLink stopped: the heartbeat and task TTL check failed 5 times in a row "
        "(OperationalError: database is locked)"
    )


def test_the_superlink_command_exits_non_zero_with_that_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Dispatcher, "close_stale", _always_locked)
    arguments = [
        "superlink",
        "--insecure",
        "--database",
        str(tmp_path / "state.db"),
        "--fleet-api-address",
        f"127.0.0.1:{free_port()}",
        "--driver-api-address",
        f"127.0.0.1:{free_port()}",
        "--heartbeat-interval",
        "0.1",
    ]
    with contextlib.suppress(SystemExit):
        result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1].startswith(
        "error: the SuperLink stopped: the heartbeat and task TTL check failed 5 times"
    )
