"""A ServerApp whose join is answered "retry later" (the SuperLink bounds joins from one
address while others flood it) retries instead of stopping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from pollen.server import reconnect
from pollen.server.driver import DriverClient
from pollen.superlink.server import open_superlink
from pollen.transport.addresses import Address
from tests.auth_helpers import Seed, allowlist_file, secure_config


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=1, unlisted=3)


def test_an_operator_join_answered_retry_later_is_retried(
    tmp_path: Path, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open_session = reconnect.open_session
    refusals = []

    async def busy_once(*args: Any, **kwargs: Any) -> Any:
        if not refusals:
            refusals.append(1)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "too many challenges outstanding for this address; retry in 1 s",
            )
        return await real_open_session(*args, **kwargs)

    monkeypatch.setattr(reconnect, "open_session", busy_once)

    async def scenario() -> None:
        operator = seed.stranger(3)
        config = secure_config(
            tmp_path, seed, operator_keys=allowlist_file(tmp_path / "ops.csv", operator)
        )
        async with open_superlink(config) as link:
            address = Address("127.0.0.1", link.driver_port)
            driver = await DriverClient.connect(address, seed.credentials, 5, operator)
            try:
                assert (await driver.create_run("after a busy join", {}))[0] > 0
            finally:
                await driver.close()

    asyncio.run(scenario())
    assert refusals == [1]
