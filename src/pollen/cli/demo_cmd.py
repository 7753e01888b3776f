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
from pollen.errors import ConfigurationError, RunError
from pollen.transport.keygen import generate

console = Console()

MARKER = ".pollen-demo"
"""Written into every demo folder: only a folder holding it is ever emptied."""
_EARLIER_DEMO = {
    "credentials",
    "intruder",
    "logs",
    "runs",
    "superlink.db",
    "superlink.db.blobs",
    "superlink.db.lock",
}
"""What a demo folder of a Pollen from before the marker holds (and nothing else)."""


def prepare_workdir(workdir: Path) -> Path:
    """Empty ``workdir`` if an earlier demo made it, create it, and mark it as the demo's.

    A folder that holds anything else is refused: Pollen deletes only what it created.
    """
    workdir = workdir.resolve()
    if workdir.is_file():
        raise ConfigurationError(f"--workdir {workdir} is a file; give a folder for the demo")
    if workdir.is_dir() and any(workdir.iterdir()):
        names = {p.name.removesuffix("-wal").removesuffix("-shm") for p in workdir.iterdir()}
        if MARKER not in names and not names <= _EARLIER_DEMO:
            raise ConfigurationError(
                f"--workdir {workdir} is not empty and no earlier demo made it, so the demo "
                "will not empty it; give a new or empty folder (default .pollen/demo)"
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `pollen demo`: it empties this folder on each run\n")
    return workdir


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


def _show_intruder_refused(federation: LocalFederation, directory: Path) -> None:
    """Start a node whose key is not in the allow-list and show the SuperLink refusing it."""
    generate(federation.workdir / "intruder", 1, [], force=True)
    key = federation.workdir / "intruder" / "keys" / "client_credentials_1"
    intruder = federation.start_supernode(
        "client:app",
        directory,
        "partition-id=0,num-partitions=1",
        "--authentication-keys",
        str(key),
        f"{key}.pub",
    )
    try:
        code = intruder.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise RunError("a node with an unlisted key was not refused within 60 s") from None
    refusal = [line for line in intruder.log().splitlines() if line.startswith("error:")]
    if code == 0 or not refusal:
        raise RunError(f"a node with an unlisted key was not refused; see {intruder.log_path}")
    console.print(f"[bold]Unlisted node[/] refused as it should be (exit {code}):")
    console.print(f"  {refusal[-1]}", markup=False, soft_wrap=True)


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
    help="Credentials, state, logs and outputs of the demo (a new or empty folder, or one an "
    "earlier demo made: that is emptied first).",
)
@click.option("--insecure", is_flag=True, help="Plaintext, without TLS or client authentication.")
def demo(directory: Path, nodes: int, workdir: Path, insecure: bool) -> None:
    """The workflow of Flower's client-authentication example, on this machine, in one command.

    Generates development keys, starts a SuperLink with TLS and client
    authentication, NODES authorised SuperNodes, shows a node with an unlisted key
    being refused, runs the ServerApp, prints per-round accuracy, stops everything.
    """
    directory = check_dir(directory)
    federation = LocalFederation(prepare_workdir(workdir), clients=0 if insecure else nodes)
    try:
        federation.start_superlink()
        mode = "plaintext" if insecure else "TLS + client authentication"
        console.print(
            f"[bold]SuperLink[/] up ({mode}): Fleet API :{federation.fleet_port}, "
            f"Driver API :{federation.driver_port}; dashboard "
            f"{'http' if insecure else 'https'}://127.0.0.1:{federation.dashboard_port}/"
        )
        for index in range(nodes):
            federation.start_supernode(
                "client:app", directory, f"partition-id={index},num-partitions={nodes}"
            )
        console.print(f"[bold]{nodes} SuperNodes[/] started (logs in {federation.log_dir})")
        if not insecure:
            _show_intruder_refused(federation, directory)
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
