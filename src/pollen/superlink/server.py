"""Starting and stopping a SuperLink: `open_superlink` returns once both APIs listen."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pollen.proto import driver_pb2_grpc, fleet_pb2_grpc
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.dispatch import Clock, Dispatcher
from pollen.superlink.driver_service import DriverService
from pollen.superlink.fleet_service import FleetService
from pollen.superlink.sqlite_state import SqliteState
from pollen.transport.addresses import Address
from pollen.transport.channels import bind, new_server

logger = logging.getLogger(__name__)

DEFAULT_FLEET_ADDRESS = Address("127.0.0.1", 9092)
DEFAULT_DRIVER_ADDRESS = Address("127.0.0.1", 9091)
DEFAULT_DATABASE = Path(".pollen") / "superlink.db"


@dataclass
class SuperLinkConfig:
    """Where a SuperLink listens and keeps its state."""

    database: Path = DEFAULT_DATABASE
    fleet_address: Address = DEFAULT_FLEET_ADDRESS
    driver_address: Address = DEFAULT_DRIVER_ADDRESS
    heartbeat_interval: float = 5.0
    """Seconds between node heartbeats; a node silent for 3 intervals is offline."""
    fleet_credentials: grpc.ServerCredentials | None = None
    driver_credentials: grpc.ServerCredentials | None = None
    clock: Clock = field(default=time.time)

    @property
    def blob_dir(self) -> Path:
        return self.database.with_name(self.database.name + ".blobs")


@dataclass
class SuperLink:
    """A running SuperLink and the ports it listens on."""

    fleet_port: int
    driver_port: int
    dispatcher: Dispatcher
    blobs: BlobStore


async def _watch_heartbeats(dispatcher: Dispatcher, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        dispatcher.close_stale(3 * interval)


@contextlib.asynccontextmanager
async def open_superlink(config: SuperLinkConfig) -> AsyncIterator[SuperLink]:
    """Run a SuperLink for the duration of the ``async with`` block."""
    state = SqliteState(config.database)
    blobs = BlobStore(config.blob_dir)
    dispatcher = Dispatcher(state, config.clock)
    fleet = new_server()
    driver = new_server()
    try:
        fleet_pb2_grpc.add_FleetServicer_to_server(  # type: ignore[no-untyped-call]
            FleetService(dispatcher, blobs, config.heartbeat_interval), fleet
        )
        driver_pb2_grpc.add_DriverServicer_to_server(  # type: ignore[no-untyped-call]
            DriverService(dispatcher, blobs), driver
        )
        fleet_port = bind(
            fleet, config.fleet_address, "--fleet-api-address", config.fleet_credentials
        )
        driver_port = bind(
            driver, config.driver_address, "--driver-api-address", config.driver_credentials
        )
        await fleet.start()
        await driver.start()
        logger.info(
            "SuperLink listening: Fleet API %s:%d, Driver API %s:%d, state %s",
            config.fleet_address.host,
            fleet_port,
            config.driver_address.host,
            driver_port,
            config.database,
        )
        watcher = asyncio.create_task(_watch_heartbeats(dispatcher, config.heartbeat_interval))
        try:
            yield SuperLink(fleet_port, driver_port, dispatcher, blobs)
        finally:
            watcher.cancel()
            dispatcher.close_all()
    finally:
        await asyncio.gather(fleet.stop(grace=1.0), driver.stop(grace=1.0))
        state.close()
        logger.info("SuperLink stopped")
