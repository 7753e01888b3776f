"""The `pollen` command line."""

from __future__ import annotations

import sys
from typing import Any

import click

from pollen import __version__
from pollen.cli.demo_cmd import demo
from pollen.cli.keys_cmd import keys
from pollen.cli.log_lines import install as install_logging
from pollen.cli.log_lines import one_line
from pollen.cli.nodes_cmd import nodes
from pollen.cli.runs_cmd import runs
from pollen.cli.serverapp_cmd import serverapp
from pollen.cli.simulation_cmd import simulation
from pollen.cli.superlink_cmd import superlink
from pollen.cli.supernode_cmd import supernode
from pollen.errors import PollenError


class _Group(click.Group):
    """Turns every `PollenError` into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PollenError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pollen")
@click.option(
    "-v", "--verbose", is_flag=True, help="Log debug messages too, and gRPC's own log lines."
)
def cli(verbose: bool) -> None:
    """Pollen: federated learning with long-running, authenticated nodes.

    Start a SuperLink, one SuperNode per data owner, then a ServerApp.
    """
    install_logging(verbose)


cli.add_command(superlink)
cli.add_command(supernode)
cli.add_command(supernode, name="client-app")
cli.add_command(serverapp)
cli.add_command(serverapp, name="server-app")
cli.add_command(demo)
cli.add_command(keys)
cli.add_command(runs)
cli.add_command(nodes)
cli.add_command(simulation)


def main() -> None:
    cli(prog_name="pollen")
