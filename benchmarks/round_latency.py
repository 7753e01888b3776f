"""Round latency: how long one fit + evaluate round takes when the ClientApp does no work.

Starts a real SuperLink and real SuperNodes as child processes (on 127.0.0.1,
OS-chosen ports, in a temporary folder), runs the ServerApp in this process and
reads each round's ``seconds`` from the run's history. The apps live in
``benchmarks/apps/``: the ClientApp hands the model straight back, the model is
two small float32 arrays, so what is measured is Pollen's own overhead.

By default everything is plaintext (``--insecure``). With ``--secure``, development
credentials are generated in the temporary folder (``pollen.transport.keygen``) and
the SuperLink, SuperNodes and ServerApp use TLS, and the SuperNodes authenticate
with their own key pairs (``--require-client-authentication``).

    .venv/bin/python benchmarks/round_latency.py [--rounds 20] [--nodes 2] [--warmup 2] [--secure]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import re
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pollen.cli.local_federation import LocalFederation, pollen_command, spawn, wait_for_log
from pollen.errors import PollenError, RunError
from pollen.server.round_loop import RunOutcome
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.server.server_app import ServerApp
from pollen.transport import keygen
from pollen.transport.addresses import Address
from pollen.transport.tls import channel_credentials

APPS = Path(__file__).resolve().parent / "apps"
TARGET_MS = 20.0
FLOWER_REFERENCE = (
    "Flower 1.42 on this machine: 6150 ms per round (polls every 3 s) "
    "[recorded figure from the spec, not measured in this run]"
)
_CONNECTED = re.compile(r"connected as node \d+")
_LISTENING = re.compile(r"Fleet API \S+?:(\d+), Driver API \S+?:(\d+)")
PLAINTEXT = "plaintext"
SECURE = "TLS + client authentication"


def build_server_app(num_rounds: int, nodes: int) -> ServerApp:
    """The ServerApp of ``benchmarks/apps/noop_server.py`` with these settings."""
    if str(APPS) not in sys.path:
        sys.path.insert(0, str(APPS))
    module = importlib.import_module("noop_server")
    app: ServerApp = module.build_app(num_rounds=num_rounds, nodes=nodes)
    return app


async def _watch(federation: LocalFederation) -> None:
    """Return (so that the run is abandoned) as soon as any child process has exited."""
    children = [*federation.nodes, *([federation.superlink] if federation.superlink else [])]
    while True:
        for child in children:
            if child.process.poll() is not None:
                lines = child.log().strip().splitlines()
                last = lines[-1] if lines else "no output"
                raise RunError(
                    f"{child.name} exited with {child.process.returncode} during the run: {last}"
                )
        await asyncio.sleep(0.1)


def _start_secure(federation: LocalFederation, nodes: int, credentials: Path) -> None:
    """SuperLink and SuperNodes with TLS and client authentication, keys from ``credentials``.

    ``LocalFederation.start_superlink`` always passes --insecure, which the CLI refuses
    together with certificates, so the commands are built here.
    """
    certificates, keys = credentials / "certificates", credentials / "keys"
    ca = str(certificates / "ca.crt")
    superlink = pollen_command(
        "superlink",
        "--certificates",
        ca,
        str(certificates / "server.pem"),
        str(certificates / "server.key"),
        "--require-client-authentication",
        str(keys / "client_public_keys.csv"),
        str(keys / "server_credentials"),
        str(keys / "server_credentials.pub"),
        "--fleet-api-address",
        "127.0.0.1:0",
        "--driver-api-address",
        "127.0.0.1:0",
        "--database",
        str(federation.workdir / "superlink.db"),
    )
    federation.workdir.mkdir(parents=True, exist_ok=True)
    federation.superlink = spawn("superlink", superlink, federation.log_dir)
    match = wait_for_log(federation.superlink, _LISTENING, timeout=30)
    federation.fleet_port, federation.driver_port = int(match[1]), int(match[2])
    for index in range(1, nodes + 1):
        supernode = pollen_command(
            "supernode",
            "noop_client:app",
            "--superlink",
            f"127.0.0.1:{federation.fleet_port}",
            "--dir",
            str(APPS),
            "--node-config",
            "",
            "--root-certificates",
            ca,
            "--authentication-keys",
            str(keys / f"client_credentials_{index}"),
            str(keys / f"client_credentials_{index}.pub"),
        )
        federation.nodes.append(
            spawn(f"supernode-{len(federation.nodes)}", supernode, federation.log_dir)
        )


async def _drive(
    federation: LocalFederation,
    app: ServerApp,
    output_root: Path,
    timeout: float,
    root_certificates: Path | None = None,
) -> RunOutcome:
    config = ServerAppConfig(
        superlink=Address("127.0.0.1", federation.driver_port),
        app_name="noop_server:app",
        output_root=output_root,
        connect_timeout=10.0,
        credentials=channel_credentials(root_certificates) if root_certificates else None,
    )
    run = asyncio.create_task(run_server_app(app, config))
    watch = asyncio.create_task(_watch(federation))
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


def measure(
    rounds: int, nodes: int, warmup: int, timeout: float, workdir: Path, secure: bool = False
) -> list[float]:
    """Run ``warmup + rounds`` rounds on a fresh federation; the measured rounds' seconds."""
    federation = LocalFederation(workdir / "federation")
    root_certificates = None
    try:
        if secure:
            credentials = workdir / "credentials"
            keygen.generate(credentials, clients=nodes, sans=[], force=True)
            root_certificates = credentials / "certificates" / "ca.crt"
            _start_secure(federation, nodes, credentials)
        else:
            federation.start_superlink()
            for _ in range(nodes):
                federation.start_supernode("noop_client:app", APPS)
        for node in federation.nodes:  # so that no round includes a node's start-up
            wait_for_log(node, _CONNECTED, timeout=30)
        app = build_server_app(warmup + rounds, nodes)
        outcome = asyncio.run(_drive(federation, app, workdir / "runs", timeout, root_certificates))
    finally:
        federation.stop()
    records = outcome.history.rounds
    if len(records) != warmup + rounds:
        raise RunError(f"the run recorded {len(records)} rounds, expected {warmup + rounds}")
    for record in records:
        problems = [*record.fit_failures, *record.evaluate_failures]
        if record.fit_results != nodes or record.evaluate_results != nodes or problems:
            raise RunError(
                f"round {record.round}: {record.fit_results} fit and "
                f"{record.evaluate_results} evaluate results of {nodes} nodes "
                f"({'; '.join(problems) or 'no failures reported'})"
            )
    return [record.seconds for record in records[warmup:]]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with ``fraction`` of the values at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def report(seconds: Sequence[float], nodes: int, warmup: int, mode: str = PLAINTEXT) -> str:
    ms = [s * 1000 for s in seconds]
    median = statistics.median(ms)
    verdict = "met" if median <= TARGET_MS else "NOT met"
    return "\n".join(
        [
            f"round latency ({nodes} node{'s' if nodes != 1 else ''}, tiny model, fit+evaluate, "
            f"{mode}): "
            f"median {median:.1f} ms, p90 {percentile(ms, 0.9):.1f} ms, "
            f"min {min(ms):.1f} ms, max {max(ms):.1f} ms "
            f"over {len(ms)} rounds ({warmup} warm-up rounds excluded)",
            f"target median <= {TARGET_MS:g} ms: {verdict}",
            FLOWER_REFERENCE,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20)")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes to start (default 2)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="rounds run first and left out of the figures (default 2)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=45.0,
        help="seconds the run may take before the benchmark gives up (default 45)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep state, logs and outputs here (default: a temporary folder, removed)",
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="TLS and client authentication, with credentials generated in the work folder "
        "(default: plaintext)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.nodes < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--rounds and --nodes must be >= 1, --warmup >= 0, --timeout > 0")
    try:
        if args.workdir is not None:
            seconds = measure(
                args.rounds,
                args.nodes,
                args.warmup,
                args.timeout,
                args.workdir.resolve(),
                args.secure,
            )
        else:
            with tempfile.TemporaryDirectory(prefix="pollen-bench-") as tmp:
                seconds = measure(
                    args.rounds, args.nodes, args.warmup, args.timeout, Path(tmp), args.secure
                )
    except (PollenError, OSError) as exc:
        print(f"round_latency: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything unexpected: still one line, still non-zero
        print(f"round_latency: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("round_latency: interrupted", file=sys.stderr)
        return 130
    print(report(seconds, args.nodes, args.warmup, SECURE if args.secure else PLAINTEXT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
