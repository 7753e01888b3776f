"""``pollen serverapp MODULE:ATTR``: one federated run."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import click

from pollen.cli.app_loading import load_app
from pollen.cli.lifecycle import run_until_signalled
from pollen.cli.options import app_options
from pollen.cli.progress_line import terminal_progress
from pollen.cli.security_options import client_credentials, client_identity
from pollen.records.config_string import parse_config_string
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.server.server_app import ServerApp
from pollen.transport.addresses import parse_address


@click.command()
@app_options("Driver API", "127.0.0.1:9091")
@click.option("--run-config", default="", help="key=value,... given to every ClientApp.")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path(".pollen") / "runs",
    show_default=True,
    help="final_model.npz and metrics.json go to OUTPUT_DIR/RUN_ID/.",
)
@click.option(
    "--resume",
    type=int,
    default=None,
    metavar="RUN_ID",
    help="Take up RUN_ID from its last completed round (checkpoint in OUTPUT_DIR/RUN_ID/).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the SuperLink before giving up.",
)
def serverapp(
    app: str,
    insecure: bool,
    superlink_address: str,
    directory: Path,
    root_certificates: Path | None,
    auth_private_key: Path | None,
    run_config: str,
    output_dir: Path,
    resume: int | None,
    connect_timeout: float,
) -> None:
    """Run APP (e.g. server:app) as one run on the SuperLink's connected nodes.

    `pollen serverapp` and `pollen server-app` are the same command.
    --auth-private-key is the operator key for a Driver API started with
    --operator-keys. On a terminal, a live line shows the current round's tasks
    done, elapsed time and ETA.
    """
    credentials = client_credentials(insecure, root_certificates)
    config = ServerAppConfig(
        credentials=credentials,
        identity=client_identity(auth_private_key, tls=credentials is not None),
        superlink=parse_address(superlink_address, "--superlink"),
        app_name=app,
        run_config=parse_config_string(run_config, "--run-config"),  # checked below
        output_root=output_dir,
        resume=resume,
        connect_timeout=connect_timeout,
    )
    server_app = load_app(app, directory, ServerApp)
    config.run_config = server_app.merged_run_config(config.run_config)

    config.command = _resume_command(sys.argv[1:])

    async def drive(stop: asyncio.Event) -> None:
        with terminal_progress(sys.stderr) as progress:
            config.progress = config.transfers = progress
            await run_server_app(server_app, config, stop)

    run_until_signalled(drive, holds_models=True, one_run=True)


def _resume_command(arguments: list[str]) -> str:
    """This command line without --resume (a stopped run's message adds it)."""
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--resume":
            skip = True
        elif not argument.startswith("--resume="):
            kept.append(argument)
    return shlex.join(["pollen", *kept])
