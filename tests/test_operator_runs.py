"""With operator keys, a run belongs to the key that created it: another operator can
neither read nor change it, unless ``--admin-keys`` names it an administrator.

Real SuperLinks with TLS, client and operator authentication on 127.0.0.1:0, in-process.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pollen.errors import CallRefused, ConfigurationError
from pollen.records import fit_evaluate
from pollen.records.messages import Message
from pollen.server.driver import DriverClient
from pollen.superlink.server import SuperLink, SuperLinkConfig, open_superlink
from pollen.superlink.sqlite_state import SqliteState
from pollen.transport.addresses import Address
from tests.auth_helpers import (
    Seed,
    allowlist_file,
    driver_client,
    secure_config,
    start_secure_node,
    stop_nodes,
)
from tests.conftest import superlink_config, wait_until
from tests.test_cli_errors import assert_one_line_error, run_superlink

OWN = grpc.StatusCode.OK
REFUSED = grpc.StatusCode.PERMISSION_DENIED
ARRAYS = [np.arange(6, dtype=np.float32).reshape(2, 3)]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=1, unlisted=3)


def operators_config(tmp_path: Path, seed: Seed, admins: int = 0) -> SuperLinkConfig:
    """Operator keys stranger 1 and 2 (and 3, the administrator with ``admins``)."""
    operators = [seed.stranger(i) for i in (1, 2, 3)]
    config = secure_config(
        tmp_path, seed, operator_keys=allowlist_file(tmp_path / "operators.csv", *operators)
    )
    if admins:
        config.admin_keys = allowlist_file(tmp_path / "admins.csv", seed.stranger(3))
    return config


def status(link: SuperLink, run_id: int) -> str:
    run = link.dispatcher.state.get_run(run_id)
    assert run is not None
    return run.status


async def outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status a DriverClient call ends with: its refusal's, or ``OWN`` (OK)."""
    try:
        await call
    except CallRefused as exc:  # never gRPC's own error: DriverClient raises Pollen errors
        return grpc.StatusCode[exc.status.upper()], exc.details
    return OWN, ""


async def stream_outcome(driver: DriverClient, run_id: int, message_id: str) -> tuple[Any, str]:
    async def first() -> None:
        async for _ in driver.replies(run_id, [message_id]):
            return

    return await outcome(asyncio.wait_for(first(), 5))


async def everything(
    driver: DriverClient, run_id: int, blob: Any, message_id: str
) -> dict[str, Any]:
    """What ``driver`` gets from each call that names run ``run_id`` or its blob."""
    instruction = Message(run_id, 1, "evaluate", fit_evaluate.instruction(None, {}))
    return {
        "GetNodes": await outcome(driver.get_nodes(run_id)),
        "PushMessages": await outcome(driver.send(run_id, [instruction])),
        "StreamReplies": await stream_outcome(driver, run_id, message_id),
        "ReleaseBlobs": await outcome(driver.release_blobs(run_id, [blob])),
        "UploadBlob": await outcome(driver.upload_arrays([np.ones(3)], run_id)),
        "DownloadBlob": await outcome(driver.download_arrays(blob)),
        "ResumeRun": await outcome(driver.resume_run(run_id)),
        "FinishRun": await outcome(driver.finish_run(run_id, "failed", "not yours")),
    }


def test_an_operator_can_neither_read_nor_change_another_operators_run(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        async with open_superlink(operators_config(tmp_path, seed)) as link:
            node = start_secure_node(seed, link.fleet_port, seed.identity(1))
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1, 10)
                [node_id] = link.dispatcher.online_nodes()
                async with (
                    driver_client(seed, link.driver_port, seed.stranger(1)) as first,
                    driver_client(seed, link.driver_port, seed.stranger(2)) as second,
                ):
                    run_id, _ = await first.create_run("first's", {})
                    blob = await first.upload_arrays(ARRAYS, run_id)
                    instruction = Message(
                        run_id, node_id, "evaluate", fit_evaluate.instruction(blob, {})
                    )
                    await first.send(run_id, [instruction])
                    answers = await everything(second, run_id, blob, instruction.message_id)
                    refusal = (REFUSED, f"run {run_id} belongs to another operator key")
                    blob_refusal = (REFUSED, f"blob {blob.digest[:12]} belongs to runs of another")
                    assert answers == {
                        **dict.fromkeys(answers, refusal),
                        "DownloadBlob": (REFUSED, blob_refusal[1] + " operator key"),
                    }
                    # the first operator's run is untouched, and still its own
                    assert status(link, run_id) == "running"
                    np.testing.assert_array_equal((await first.download_arrays(blob))[0], ARRAYS[0])
                    [reply] = [r async for r in first.replies(run_id, [instruction.message_id])]
                    assert reply.node_id == node_id
                    await first.finish_run(run_id, "finished")
            finally:
                await stop_nodes(node)

    asyncio.run(scenario())


def test_an_administrator_acts_on_every_run(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(operators_config(tmp_path, seed, admins=1)) as link,
            driver_client(seed, link.driver_port, seed.stranger(1)) as first,
            driver_client(seed, link.driver_port, seed.stranger(3)) as admin,
        ):
            run_id, _ = await first.create_run("first's", {})
            blob = await first.upload_arrays(ARRAYS, run_id)
            np.testing.assert_array_equal((await admin.download_arrays(blob))[0], ARRAYS[0])
            assert await outcome(admin.get_nodes(run_id)) == (OWN, "")
            await admin.finish_run(run_id, "failed", "stopped by the administrator")
            assert status(link, run_id) == "failed"
            # and the administrator's own runs are no one else's
            own, _ = await admin.create_run("admin's", {})
            assert (await outcome(first.get_nodes(own)))[0] == REFUSED

    asyncio.run(scenario())


def test_runs_prune_deletes_only_the_callers_runs_unless_an_administrator(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        async with (
            open_superlink(operators_config(tmp_path, seed, admins=1)) as link,
            driver_client(seed, link.driver_port, seed.stranger(1)) as first,
            driver_client(seed, link.driver_port, seed.stranger(2)) as second,
            driver_client(seed, link.driver_port, seed.stranger(3)) as admin,
        ):
            runs = {}
            for name, driver in (("first", first), ("second", second), ("admin", admin)):
                runs[name], _ = await driver.create_run(name, {})
                await driver.finish_run(runs[name], "finished")
            idle, _ = await first.create_run("first's, idle", {})
            assert await second.prune_runs(0.0, abandoned=True) == ([runs["second"]], 0)
            assert status(link, idle) == "running"
            assert await admin.prune_runs(0.0) == ([runs["first"], runs["admin"]], 0)

    asyncio.run(scenario())


def test_without_operator_keys_every_run_is_open_to_every_caller(tmp_path: Path) -> None:
    """The Driver API on loopback without operator keys: nobody is identified, as before."""

    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            address = Address("127.0.0.1", link.driver_port)
            one = await DriverClient.connect(address, None, 5, None)
            other = await DriverClient.connect(address, None, 5, None)
            try:
                run_id, _ = await one.create_run("one's", {})
                blob = await one.upload_arrays(ARRAYS, run_id)
                np.testing.assert_array_equal((await other.download_arrays(blob))[0], ARRAYS[0])
                await other.finish_run(run_id, "finished")
            finally:
                await one.close()
                await other.close()

    asyncio.run(scenario())


def test_an_administrator_removed_from_the_file_acts_on_its_own_runs_only(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        config = operators_config(tmp_path, seed, admins=1)
        async with (
            open_superlink(config) as link,
            driver_client(seed, link.driver_port, seed.stranger(1)) as first,
            driver_client(seed, link.driver_port, seed.stranger(3)) as admin,
        ):
            run_id, _ = await first.create_run("first's", {})
            assert await outcome(admin.get_nodes(run_id)) == (OWN, "")
            assert config.admin_keys is not None
            config.admin_keys.write_text("")  # nobody is an administrator any more

            async def refused() -> bool:
                return (await outcome(admin.get_nodes(run_id)))[0] == REFUSED

            for _ in range(100):
                if await refused():
                    break
                await asyncio.sleep(0.05)
            assert await refused()

    asyncio.run(scenario())


def test_admin_keys_without_operator_keys_or_outside_them_are_refused_at_start(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        config = secure_config(tmp_path, seed)
        config.admin_keys = allowlist_file(tmp_path / "admins.csv", seed.stranger(3))
        with pytest.raises(ConfigurationError, match="--admin-keys needs --operator-keys"):
            async with open_superlink(config):
                pytest.fail("started")
        config = operators_config(tmp_path, seed)
        config.admin_keys = allowlist_file(tmp_path / "admins.csv", seed.identity(1))
        with pytest.raises(ConfigurationError, match=r"which --operator-keys .* does not"):
            async with open_superlink(config):
                pytest.fail("started")

    asyncio.run(scenario())


def test_the_admin_keys_option_refuses_a_superlink_without_operator_keys(
    tmp_path: Path, seed: Seed
) -> None:
    admins = allowlist_file(tmp_path / "admins.csv", seed.stranger(3))
    code, output = run_superlink(tmp_path / "superlink.db", "--admin-keys", str(admins))
    assert code == 2
    assert_one_line_error(output, "--admin-keys needs --operator-keys")


def test_runs_of_a_database_written_before_owners_belong_to_no_operator(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    with sqlite3.connect(database) as db:
        db.execute(
            "CREATE TABLE runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, "
            "run_config TEXT NOT NULL, status TEXT NOT NULL, message TEXT NOT NULL DEFAULT '', "
            "created_at REAL NOT NULL, finished_at REAL)"
        )
        db.execute(
            "INSERT INTO runs (app, run_config, status, created_at) "
            "VALUES ('old', '{}', 'running', 1)"
        )
    db.close()
    state = SqliteState(database)
    try:
        assert state.run_owner(1) == ""
        new = state.create_run("new", {}, 2.0, "SHA256:someone")
        assert state.run_owner(new) == "SHA256:someone"
        assert state.run_owner(99) is None
    finally:
        state.close()
