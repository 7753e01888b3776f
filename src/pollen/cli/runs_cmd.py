"""``pollen runs``: the runs a SuperLink keeps, over its Driver API: list them, show
one with its rounds, read or follow its log, prune finished ones."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from pollen.cli.driver_connection import DriverTarget, driver_options, format_option
from pollen.cli.run_views import print_details, print_line, print_runs
from pollen.errors import CallRefused, ConfigurationError
from pollen.server.driver import DriverClient

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s`` or ``0`` as seconds; a number needs its unit."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ConfigurationError(
            f"--older-than {text!r} is not an age; write e.g. 7d, 12h, 30m or 45s"
        )
    if not match[2] and float(match[1]) != 0:
        # "7" could mean days as well as seconds; guessing wrong deletes runs
        number = match[1]
        raise ConfigurationError(
            f"--older-than {text!r} has no unit; write {number}d (days), {number}h (hours), "
            f"{number}m (minutes) or {number}s (seconds)"
        )
    return float(match[1]) * _UNITS[match[2] or "s"]


@click.group()
def runs() -> None:
    """Runs kept by a SuperLink."""


@runs.command("prune")
@click.option(
    "--older-than",
    required=True,
    help="Age of the runs to delete, with its unit: 7d, 12h, 30m or 45s.",
)
@click.option(
    "--abandoned",
    is_flag=True,
    help="Also end and delete running runs with no task or result for that long "
    "(their ServerApp died and was never resumed).",
)
@driver_options
def prune(older_than: str, abandoned: bool, target: DriverTarget) -> None:
    """Delete runs that finished (or failed) longer ago than --older-than, blobs included.

    Running runs are left alone unless --abandoned is given: then a running run with
    no new task or result for longer than --older-than is ended as failed and deleted.
    With --auth-private-key, only the runs that key created are touched (every run for
    a key in the SuperLink's --admin-keys).
    """
    age = parse_age(older_than)
    run_ids, blobs = target.run(lambda driver: driver.prune_runs(age, abandoned))
    listed = ", ".join(map(str, run_ids)) or "none"
    click.echo(f"pruned runs: {listed}; {blobs} blob(s) deleted")


@runs.command("ls")
@format_option
@driver_options
def list_runs(output_format: str, target: DriverTarget) -> None:
    """List the runs: id, app, status, round k of n, created, finished, owner.

    With operator keys, an operator key lists the runs it created (every run for a
    key in the SuperLink's --admin-keys).
    """
    print_runs(target.run(lambda driver: driver.list_runs()), output_format)


@runs.command("show")
@click.argument("run_id", metavar="RUN", type=int)
@format_option
@driver_options
def show(run_id: int, output_format: str, target: DriverTarget) -> None:
    """Show run RUN: its config, one row per round with its metrics, where its outputs are."""
    details = target.run(_about_run(run_id, target, lambda driver: driver.run_details(run_id)))
    print_details(details, output_format)


@runs.command("log")
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@format_option
@driver_options
def log(run_id: int, follow: bool, output_format: str, target: DriverTarget) -> None:
    """Print run RUN's log as the SuperLink keeps it: created, each round, resumed,
    finished or failed. JSON: one object per line."""

    async def read(driver: DriverClient) -> None:
        async for line in driver.run_log(run_id, follow):
            print_line(line, output_format)

    target.run(_about_run(run_id, target, read))


def _about_run(
    run_id: int, target: DriverTarget, work: Callable[[DriverClient], Awaitable[T]]
) -> Callable[[DriverClient], Awaitable[T]]:
    """``work``, whose refusal for a run this key cannot see says so in one line."""

    async def checked(driver: DriverClient) -> T:
        try:
            return await work(driver)
        except CallRefused as exc:
            if exc.status != "not_found":
                raise
            raise ConfigurationError(
                f"run {run_id}: no such run on the SuperLink at {target.address} that this "
                "operator key may see; `pollen runs ls` lists the runs you may see"
            ) from None

    return checked
