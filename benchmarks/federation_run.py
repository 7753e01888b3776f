"""What the benchmark scripts share: running a ServerApp in this process against a
``LocalFederation`` of child processes, and the one-line error handling of ``main()``.

A plain module next to the scripts (not part of the ``pollen`` package); the scripts
are run as ``python benchmarks/X.py``, so this folder is ``sys.path[0]`` and they
import it as ``federation_run``.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pollen.cli.local_federation import LocalFederation, wait_for_log
from pollen.errors import PollenError, RunError
from pollen.server.round_loop import RunOutcome
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.server.server_app import ServerApp
from pollen.transport.addresses import Address
from pollen.transport.tls import channel_credentials

T = TypeVar("T")

_CONNECTED = re.compile(r"connected as node \d+")


def wait_until_connected(federation: LocalFederation, timeout: float) -> None:
    """Wait until every node has joined, so that no round includes a node's start-up."""
    for node in federation.nodes:
        wait_for_log(node, _CONNECTED, timeout=timeout)


async def _watch(federation: LocalFederation, poll_interval: float) -> None:
    """Raise as soon as any child process has exited: the run cannot finish then."""
    children = [*federation.nodes, *([federation.superlink] if federation.superlink else [])]
    while True:
        for child in children:
            if child.process.poll() is not None:
                lines = child.log().strip().splitlines()
                last = lines[-1] if lines else "no output"
                raise RunError(
                    f"{child.name} exited with {child.process.returncode} during the run: {last}"
                )
        await asyncio.sleep(poll_interval)


async def _drive(
    federation: LocalFederation,
    app: ServerApp,
    config: ServerAppConfig,
    timeout: float,
    poll_interval: float,
) -> RunOutcome:
    run = asyncio.create_task(run_server_app(app, config))
    watch = asyncio.create_task(_watch(federation, poll_interval))
    try:
        done, _ = await asyncio.wait(
            {run, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if watch in done:
            watch.result()  # raises: a child process died
        if run not in done:
            raise RunError(f"the run did not finish within {timeout:g} s")
        outcome, _directory = run.result()
        return outcome
    finally:
        for task in (run, watch):
            task.cancel()
        await asyncio.gather(run, watch, return_exceptions=True)


def run_in_process(
    federation: LocalFederation,
    app: ServerApp,
    app_name: str,
    output_root: Path,
    timeout: float,
    poll_interval: float = 0.1,
) -> RunOutcome:
    """Run ``app`` here against ``federation``'s SuperLink (over TLS when the federation is
    secure) while checking its child processes every ``poll_interval`` seconds.

    RunError when a child process exits during the run or the run takes more than
    ``timeout`` seconds.
    """
    ca = federation.credentials / "certificates" / "ca.crt"
    config = ServerAppConfig(
        superlink=Address("127.0.0.1", federation.driver_port),
        app_name=app_name,
        output_root=output_root,
        connect_timeout=10.0,
        credentials=channel_credentials(ca) if federation.clients else None,
    )
    return asyncio.run(_drive(federation, app, config, timeout, poll_interval))


def run_benchmark(
    prog: str,
    measure: Callable[[], T],
    report: Callable[[T], str],
    expected: tuple[type[Exception], ...] = (PollenError, OSError),
) -> int:
    """``main()``'s tail: print ``report(measure())`` and return 0, or print one error line
    on stderr and return 1 (130 when interrupted)."""
    try:
        result = measure()
    except expected as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything unexpected: still one line, still non-zero
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(report(result))
    return 0
