"""Running a `ServerApp` against a SuperLink, from connection to written outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pollen.errors import ConfigurationError, ConnectionFailed, PollenError
from pollen.records.typing import UserConfig
from pollen.server.checkpoint import Checkpoint, read_checkpoint
from pollen.server.driver import DriverClient
from pollen.server.outputs import write_outputs
from pollen.server.round_loop import RoundLoop, RunOutcome
from pollen.server.server_app import ServerApp
from pollen.transport.addresses import Address
from pollen.transport.request_signing import ClientIdentity
from pollen.transport.statuses import call_failed

logger = logging.getLogger(__name__)


@dataclass
class ServerAppConfig:
    """Where a ServerApp connects, what it tells the nodes, where it writes."""

    superlink: Address
    app_name: str = ""
    run_config: UserConfig = field(default_factory=dict)
    output_root: Path = Path(".pollen") / "runs"
    connect_timeout: float = 30.0
    credentials: grpc.ChannelCredentials | None = None
    identity: ClientIdentity | None = None
    """The operator key, for a Driver API that requires one."""
    resume: int | None = None
    """Take up this run from its last checkpoint instead of starting a new one."""


async def run_server_app(app: ServerApp, config: ServerAppConfig) -> tuple[RunOutcome, Path]:
    """Create (or resume) a run, drive its rounds, write its outputs; failed runs are marked."""
    start = None
    if config.resume is not None:  # checked before connecting: a typo fails at once
        start = read_checkpoint(config.output_root / str(config.resume), config.resume)
    driver = await DriverClient.connect(
        config.superlink, config.credentials, config.connect_timeout, config.identity
    )
    try:
        return await _drive(app, config, driver, start)
    except grpc.aio.AioRpcError as exc:
        raise call_failed(config.superlink, exc) from exc
    finally:
        await driver.close()


async def _drive(
    app: ServerApp, config: ServerAppConfig, driver: DriverClient, start: Checkpoint | None
) -> tuple[RunOutcome, Path]:
    if config.resume is not None:
        run_id = config.resume
        try:
            await driver.resume_run(run_id)
        except grpc.aio.AioRpcError as exc:
            raise ConfigurationError(f"--resume {run_id}: {exc.details()}") from None
    else:
        run_config = app.merged_run_config(config.run_config)
        run_id = await driver.create_run(config.app_name, run_config)
        logger.info("run %d started: %d rounds, %r", run_id, app.config.num_rounds, app.strategy)
    directory = config.output_root / str(run_id)
    loop = RoundLoop(app, driver, run_id, directory, start)
    try:
        outcome = await loop.run()
        write_outputs(outcome, directory)
    except (PollenError, asyncio.CancelledError) as exc:
        with contextlib.suppress(grpc.aio.AioRpcError, ConnectionFailed):
            await driver.finish_run(run_id, "failed", str(exc)[:500] or "interrupted")
        raise
    await driver.finish_run(run_id, "finished")
    logger.info("run %d finished; outputs in %s", run_id, directory)
    return outcome, directory
