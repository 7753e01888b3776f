"""``pollen supernode MODULE:ATTR``: a long-running node at a data owner's site."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from pollen.cli.app_loading import load_app
from pollen.cli.lifecycle import run_until_signalled
from pollen.cli.options import app_options, require_insecure
from pollen.client.client_app import ClientApp
from pollen.records.config_string import parse_config_string
from pollen.supernode.node import SuperNodeConfig, run_supernode
from pollen.transport.addresses import parse_address


@click.command()
@app_options("Fleet API", "127.0.0.1:9092")
@click.option("--node-config", default="", help="key=value,... given to the ClientApp.")
@click.option(
    "--max-backoff",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Longest wait in seconds between attempts to reach the SuperLink.",
)
def supernode(
    app: str,
    insecure: bool,
    superlink_address: str,
    directory: Path,
    node_config: str,
    max_backoff: float,
) -> None:
    """Run a SuperNode: take tasks from the SuperLink and run APP (e.g. client:app) on them."""
    require_insecure(insecure)
    config = SuperNodeConfig(
        superlink=parse_address(superlink_address, "--superlink"),
        node_config=parse_config_string(node_config, "--node-config"),
        max_backoff=max_backoff,
    )
    client_app = load_app(app, directory, ClientApp)

    async def serve(stop: asyncio.Event) -> None:
        await run_supernode(client_app, config, stop)

    run_until_signalled(serve)
