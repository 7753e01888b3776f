"""``pollen simulation``: a whole run on virtual nodes in one process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from pollen.cli.app_loading import load_app
from pollen.cli.lifecycle import run_until_signalled
from pollen.cli.progress_line import terminal_progress
from pollen.client.client_app import ClientApp
from pollen.errors import ConfigurationError
from pollen.records.config_string import parse_config_string
from pollen.server.server_app import ServerApp
from pollen.simulation.backends import BACKENDS, check_backend, parse_backend_config
from pollen.simulation.simulate import DEFAULT_OUTPUT_DIR, check_num_supernodes, simulate


@click.command()
@click.option("--server-app", required=True, help="The ServerApp, MODULE:ATTRIBUTE (server:app).")
@click.option("--client-app", required=True, help="The ClientApp, MODULE:ATTRIBUTE (client:app).")
@click.option("--num-supernodes", type=int, required=True, help="How many virtual nodes to run.")
@click.option(
    "--app-dir",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder holding the apps' modules.",
)
@click.option(
    "--backend",
    default=BACKENDS[0],
    show_default=True,
    help=(
        f"What runs the virtual nodes: {', '.join(BACKENDS)} (threads of this process, "
        "forked worker processes, or Ray actors: pip install 'pollen[ray]'; a local Ray "
        "or the cluster at RAY_ADDRESS)."
    ),
)
@click.option(
    "--backend-config",
    default="",
    help=(
        'JSON, e.g. \'{"client_resources": {"num_cpus": 1, "num_gpus": 0.25}}\': what each '
        "virtual node in flight holds (CPUs/num_cpus and GPUs/num_gpus run at once); "
        "for ray also init_args, passed to ray.init."
    ),
)
@click.option("--run-config", default="", help="key=value,... given to every ClientApp.")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_OUTPUT_DIR,
    show_default=True,
    help="final_model.npz and metrics.json go to OUTPUT_DIR/RUN_ID/.",
)
def simulation(
    server_app: str,
    client_app: str,
    num_supernodes: int,
    app_dir: Path,
    backend: str,
    backend_config: str,
    run_config: str,
    output_dir: Path,
) -> None:
    """Run SERVER_APP on NUM_SUPERNODES virtual nodes, each running CLIENT_APP.

    Virtual node i (0..N-1) gets node_config partition-id=i, num-partitions=N.
    The round loop, strategies, checkpoints and outputs are a deployment's.
    On a terminal, a live line shows the current round's tasks done, elapsed time and ETA.
    """
    if not app_dir.is_dir():
        raise ConfigurationError(
            f"--app-dir {app_dir}: no such directory; point it at the folder holding your apps"
        )
    check_backend(backend, "--backend")
    resources = parse_backend_config(backend_config, backend=backend)
    overrides = parse_config_string(run_config, "--run-config")
    server = load_app(server_app, app_dir, ServerApp)
    client = load_app(client_app, app_dir, ClientApp)
    overrides = server.merged_run_config(overrides)  # a wrong key fails before any round
    server = server.for_run(overrides)
    check_num_supernodes(num_supernodes, server.strategy, "--num-supernodes")

    async def drive(stop: asyncio.Event) -> None:
        with terminal_progress(sys.stderr) as progress:
            await simulate(
                server,
                client,
                num_supernodes,
                backend_name=backend,
                backend_config=resources,
                run_config=overrides,
                output_dir=output_dir,
                app_name=server_app,
                stop=stop,
                progress=progress,
            )

    run_until_signalled(drive, holds_models=True, one_run=True)
