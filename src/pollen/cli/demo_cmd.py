"""``pollen demo``: the whole federation on bundled data, started and stopped in one command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pollen.cli.app_loading import check_dir
from pollen.cli.local_federation import LocalFederation
from pollen.errors import RunError

console = Console()


def _summary(metrics_path: Path) -> Table:
    document = json.loads(metrics_path.read_text())
    table = Table(title=f"run {document['run_id']}: per-round results")
    for column in ("round", "seconds", "train loss", "eval loss", "accuracy"):
        table.add_column(column, justify="right")
    for record in document["rounds"]:
        train_loss = record["fit_metrics"].get("train_loss")
        accuracy = record["evaluate_metrics"].get("accuracy")
        table.add_row(
            str(record["round"]),
            f"{record['seconds']:.2f}",
            "-" if train_loss is None else f"{train_loss:.4f}",
            "-" if record["evaluate_loss"] is None else f"{record['evaluate_loss']:.4f}",
            "-" if accuracy is None else f"{accuracy:.2%}",
        )
    return table


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("examples") / "quickstart-pytorch",
    show_default=True,
    help="The example project to run (client:app and server:app).",
)
@click.option("--nodes", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path(".pollen") / "demo",
    show_default=True,
    help="State, logs and outputs of the demo (emptied first).",
)
def demo(directory: Path, nodes: int, workdir: Path) -> None:
    """Run a SuperLink, NODES SuperNodes and the ServerApp locally, then stop them all."""
    directory = check_dir(directory)
    shutil.rmtree(workdir, ignore_errors=True)
    federation = LocalFederation(workdir.resolve())
    try:
        federation.start_superlink()
        console.print(
            f"[bold]SuperLink[/] up: Fleet API :{federation.fleet_port}, "
            f"Driver API :{federation.driver_port}"
        )
        for index in range(nodes):
            federation.start_supernode(
                "client:app", directory, f"partition-id={index},num-partitions={nodes}"
            )
        console.print(f"[bold]{nodes} SuperNodes[/] started (logs in {federation.log_dir})")
        command = federation.serverapp_command("server:app", directory)
        console.print("[bold]ServerApp[/] running:")
        code = subprocess.call(
            command, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stdout
        )
        if code != 0:
            raise RunError(f"the ServerApp exited with {code}; logs in {federation.log_dir}")
        metrics = sorted((federation.workdir / "runs").glob("*/metrics.json"))[-1]
        console.print(_summary(metrics))
        console.print(f"final model and metrics: {metrics.parent}")
    finally:
        federation.stop()
        console.print("all processes stopped")
