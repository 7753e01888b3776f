"""``pollen supernode MODULE:ATTR``: a long-running node at a data owner's site."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from pollen.cli.app_loading import load_app
from pollen.cli.lifecycle import run_until_signalled
from pollen.cli.options import app_options
from pollen.cli.progress_line import terminal_progress
from pollen.cli.security_options import client_credentials, client_identity
from pollen.client.client_app import ClientApp
from pollen.errors import ConfigurationError
from pollen.records.config_string import parse_config_string
from pollen.supernode.node import SuperNodeConfig, run_supernode
from pollen.transport.addresses import parse_address


@click.command()
@app_options("Fleet API", "127.0.0.1:9092")
@click.option(
    "--authentication-keys",
    type=(click.Path(path_type=Path), click.Path(path_type=Path)),
    default=None,
    metavar="PRIVATE PUBLIC",
    help="The node's key pair (e.g. keys/client_credentials_1 keys/client_credentials_1.pub).",
)
@click.option(
    "--superlink-public-key",
    type=click.Path(path_type=Path),
    help="Only accept a SuperLink that proves this key (keys/server_credentials.pub).",
)
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
    root_certificates: Path | None,
    auth_private_key: Path | None,
    authentication_keys: tuple[Path, Path] | None,
    superlink_public_key: Path | None,
    node_config: str,
    max_backoff: float,
) -> None:
    """Run a SuperNode: take tasks from the SuperLink and run APP (e.g. client:app) on them.

    `pollen supernode` and `pollen client-app` are the same command. On a terminal,
    a live line shows the rate and ETA of blobs over 50 MB moving; otherwise each
    ends with one summary line.
    """
    credentials = client_credentials(insecure, root_certificates)
    private, public = authentication_keys or (auth_private_key, None)
    if authentication_keys and auth_private_key and auth_private_key != private:
        raise ConfigurationError("--authentication-keys and --auth-private-key differ; give one")
    config = SuperNodeConfig(
        superlink=parse_address(superlink_address, "--superlink"),
        node_config=parse_config_string(node_config, "--node-config"),
        credentials=credentials,
        identity=client_identity(private, public, superlink_public_key, credentials is not None),
        max_backoff=max_backoff,
    )
    client_app = load_app(app, directory, ClientApp)

    async def serve(stop: asyncio.Event) -> None:
        with terminal_progress(sys.stderr) as progress:  # blobs over 50 MB: rate and ETA
            config.transfers = progress
            await run_supernode(client_app, config, stop)

    run_until_signalled(serve, holds_models=True)
