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
import importlib
import math
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from federation_run import run_benchmark, run_in_process, wait_until_connected

from pollen.cli.local_federation import LocalFederation
from pollen.errors import RunError
from pollen.server.server_app import ServerApp

APPS = Path(__file__).resolve().parent / "apps"
TARGET_MS = 20.0
FLOWER_REFERENCE = (
    "Flower 1.42 on this machine: 6150 ms per round (polls every 3 s) "
    "[recorded figure from the spec, not measured in this run]"
)
PLAINTEXT = "plaintext"
SECURE = "TLS + client authentication"


def build_server_app(num_rounds: int, nodes: int) -> ServerApp:
    """The ServerApp of ``benchmarks/apps/noop_server.py`` with these settings."""
    if str(APPS) not in sys.path:
        sys.path.insert(0, str(APPS))
    module = importlib.import_module("noop_server")
    app: ServerApp = module.build_app(num_rounds=num_rounds, nodes=nodes)
    return app


def measure(
    rounds: int, nodes: int, warmup: int, timeout: float, workdir: Path, secure: bool = False
) -> list[float]:
    """Run ``warmup + rounds`` rounds on a fresh federation; the measured rounds' seconds."""
    federation = LocalFederation(workdir / "federation", clients=nodes if secure else 0)
    try:
        federation.start_superlink()
        for _ in range(nodes):
            federation.start_supernode("noop_client:app", APPS)
        wait_until_connected(federation, timeout=30)
        app = build_server_app(warmup + rounds, nodes)
        outcome = run_in_process(federation, app, "noop_server:app", workdir / "runs", timeout)
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


def report(
    seconds: Sequence[float],
    nodes: int,
    warmup: int,
    mode: str = PLAINTEXT,
    peer: Sequence[float] | None = None,
) -> str:
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
            _peer_line(peer, median) if peer else FLOWER_REFERENCE,
        ]
    )


def _peer_line(peer: Sequence[float], median_ms: float) -> str:
    flower = statistics.median(peer) * 1000
    return (
        f"Flower 1.42 this run (TLS + node authentication, {len(peer)} rounds): median "
        f"{flower:.0f} ms per round; Pollen is {flower / median_ms:.0f}x faster"
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
    parser.add_argument(
        "--peer",
        choices=["flower"],
        default=None,
        help="also run the workload on Flower 1.42.0 (installed in its own virtualenv)",
    )
    args = parser.parse_args(argv)
    peer: list[float] = []
    if args.rounds < 1 or args.nodes < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--rounds and --nodes must be >= 1, --warmup >= 0, --timeout > 0")

    def run() -> list[float]:
        if args.peer == "flower":
            from peers.flower import flower_round_latency

            peer.extend(flower_round_latency(rounds=3, nodes=args.nodes))
        if args.workdir is not None:
            return measure(
                args.rounds,
                args.nodes,
                args.warmup,
                args.timeout,
                args.workdir.resolve(),
                args.secure,
            )
        with tempfile.TemporaryDirectory(prefix="pollen-bench-") as tmp:
            return measure(
                args.rounds, args.nodes, args.warmup, args.timeout, Path(tmp), args.secure
            )

    mode = SECURE if args.secure else PLAINTEXT
    return run_benchmark(
        "round_latency",
        run,
        lambda seconds: report(seconds, args.nodes, args.warmup, mode, peer),
    )


if __name__ == "__main__":
    sys.exit(main())
