"""CIFAR-10 round time: how long a round of examples/client-authentication-pytorch takes with two
SuperNodes on the full CIFAR-10 split, and how much of it is not local training.

A SuperLink with TLS and client authentication and two SuperNodes run as child
processes (127.0.0.1, OS-chosen ports, a temporary folder); each node trains the
example's CNN for one epoch on its 20,000 training images (half of the 50,000,
less 20 % for validation). The ServerApp runs in this process. For every round it
prints the wall time and the time outside local training: the round's time minus
the longest ``train_seconds`` (the time spent in ``task.train``) a node reported.
Target: under 2 % of the round. The first rounds (``--warmup``) also read the
archive and set PyTorch up on the nodes, so they are shown but not counted.

Needs the real archive (``--data-path``, else ``$POLLEN_CIFAR10``, else
``~/.cache/pollen/cifar-10-python.tar.gz``); without it, it says so and exits 0.
It never downloads.

    .venv/bin/python benchmarks/cifar_round.py [--rounds 3] [--warmup 1] [--data-path PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from federation_run import run_benchmark, run_in_process, wait_until_connected

from pollen.cli.local_federation import LocalFederation
from pollen.common import Metrics
from pollen.errors import RunError
from pollen.server import ServerApp, ServerConfig
from pollen.server.history import RoundRecord
from pollen.server.strategy import FedAvg

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "client-authentication-pytorch"
NODES = 2
TARGET_SHARE = 0.02

sys.path.insert(0, str(EXAMPLE))
import cifar10  # noqa: E402  (the example's loader: where the archive is looked for)


def find_archive(data_path: Path | None) -> Path | None:
    """The archive the nodes will read, or None when it is not there (nothing is downloaded)."""
    given = data_path or os.environ.get(cifar10.PATH_ENV) or cifar10.default_location()
    path = Path(given).expanduser()
    if path.is_dir():
        path = path / cifar10.ARCHIVE
    return path.resolve() if path.is_file() else None


def timing(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Fit metrics of a round: the slowest and fastest node's training time, and accuracy."""
    seconds = [float(m["train_seconds"]) for _, m in metrics]
    examples = sum(n for n, _ in metrics)
    return {
        "train_seconds_max": max(seconds),
        "train_seconds_min": min(seconds),
        "examples": examples,
        "val_accuracy": sum(n * float(m["val_accuracy"]) for n, m in metrics) / examples,
    }


def build_server_app(num_rounds: int) -> ServerApp:
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=NODES,
        min_available_clients=NODES,
        fit_metrics_aggregation_fn=timing,
    )
    return ServerApp(config=ServerConfig(num_rounds=num_rounds), strategy=strategy)


def measure(
    archive: Path, rounds: int, warmup: int, timeout: float, workdir: Path
) -> list[RoundRecord]:
    federation = LocalFederation(workdir / "federation", clients=NODES)
    try:
        federation.start_superlink()
        for index in range(NODES):
            node_config = f"partition-id={index},num-partitions={NODES},data-path={archive}"
            federation.start_supernode("client:app", EXAMPLE, node_config)
        wait_until_connected(federation, timeout=60)
        app = build_server_app(warmup + rounds)
        outcome = run_in_process(
            federation, app, "cifar_round", workdir / "runs", timeout, poll_interval=0.2
        )
    finally:
        federation.stop()
    for record in outcome.history.rounds:
        if record.fit_results != NODES or record.fit_failures:
            raise RunError(
                f"round {record.round}: {record.fit_results} of {NODES} nodes trained "
                f"({'; '.join(record.fit_failures) or 'no failure reported'})"
            )
    return outcome.history.rounds


def outside(record: RoundRecord) -> float:
    return record.seconds - float(record.fit_metrics["train_seconds_max"])


def report(records: Sequence[RoundRecord], warmup: int) -> str:
    lines = []
    for record in records:
        training = float(record.fit_metrics["train_seconds_max"])
        note = "  (warm-up: reads the archive, sets PyTorch up)" if record.round <= warmup else ""
        lines.append(
            f"round {record.round}: {record.seconds:.2f} s, local training {training:.2f} s "
            f"(slowest node), outside training {outside(record) * 1000:.0f} ms = "
            f"{outside(record) / record.seconds:.2%}; "
            f"val_accuracy {float(record.fit_metrics['val_accuracy']):.3f}{note}"
        )
    measured = records[warmup:]
    shares = [outside(r) / r.seconds for r in measured]
    median_share = statistics.median(shares)
    verdict = "met" if median_share < TARGET_SHARE else "NOT met"
    lines.append(
        f"CIFAR-10 round ({NODES} nodes, {int(measured[0].fit_metrics['examples']):,} training "
        f"images, 1 epoch, TLS + client authentication): median "
        f"{statistics.median(r.seconds for r in measured):.2f} s over {len(measured)} rounds; "
        f"outside local training median {median_share:.2%}, max {max(shares):.2%}"
    )
    lines.append(f"target outside-training share < {TARGET_SHARE:.0%}: {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", type=Path, help="cifar-10-python.tar.gz or its folder")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds not counted (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds the run may take (default 1800)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--rounds must be >= 1, --warmup >= 0, --timeout > 0")
    archive = find_archive(args.data_path)
    if archive is None:
        where = args.data_path or os.environ.get(cifar10.PATH_ENV) or cifar10.default_location()
        print(
            f"cifar_round: skipped: no CIFAR-10 archive at {where}; put {cifar10.ARCHIVE} "
            f"({cifar10.URL}) there, or pass --data-path PATH (or set {cifar10.PATH_ENV})"
        )
        return 0

    def run() -> list[RoundRecord]:
        cifar10.verify(archive)
        with tempfile.TemporaryDirectory(prefix="pollen-cifar-bench-") as tmp:
            return measure(archive, args.rounds, args.warmup, args.timeout, Path(tmp))

    return run_benchmark("cifar_round", run, lambda records: report(records, args.warmup))


if __name__ == "__main__":
    sys.exit(main())
