"""``pollen superlink``: the long-running coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from pollen.cli.lifecycle import run_until_signalled
from pollen.cli.options import require_insecure
from pollen.superlink.server import (
    DEFAULT_DATABASE,
    DEFAULT_DRIVER_ADDRESS,
    DEFAULT_FLEET_ADDRESS,
    SuperLinkConfig,
    open_superlink,
)
from pollen.transport.addresses import parse_address


@click.command()
@click.option("--insecure", is_flag=True, help="Accept plaintext connections (no TLS).")
@click.option(
    "--fleet-api-address",
    default=str(DEFAULT_FLEET_ADDRESS),
    show_default=True,
    help="HOST:PORT for SuperNodes (port 0 picks a free port).",
)
@click.option(
    "--driver-api-address",
    default=str(DEFAULT_DRIVER_ADDRESS),
    show_default=True,
    help="HOST:PORT for ServerApps.",
)
@click.option(
    "--database",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATABASE,
    show_default=True,
    help="SQLite state file; blobs are kept beside it in DATABASE.blobs/.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between node heartbeats; a node silent for 3 intervals is offline.",
)
def superlink(
    insecure: bool,
    fleet_api_address: str,
    driver_api_address: str,
    database: Path,
    heartbeat_interval: float,
) -> None:
    """Run the SuperLink: Fleet API for SuperNodes, Driver API for ServerApps."""
    require_insecure(insecure)
    if database == DEFAULT_DATABASE:
        database.parent.mkdir(parents=True, exist_ok=True)
    config = SuperLinkConfig(
        database=database,
        fleet_address=parse_address(fleet_api_address, "--fleet-api-address"),
        driver_address=parse_address(driver_api_address, "--driver-api-address"),
        heartbeat_interval=heartbeat_interval,
    )

    async def serve(stop: asyncio.Event) -> None:
        async with open_superlink(config):
            await stop.wait()

    run_until_signalled(serve)
