"""Throughput: effective MB/s moving a large model through a secure federation.

For each ``--model-mb`` size, two SuperNodes (TLS and client authentication)
receive the model, change two elements (one from the node's id, so that the
nodes' results differ) and send it back, for ``--rounds`` rounds.
Effective throughput = 4 x model bytes per round (to both nodes and back) over
the median round time, the measure the recorded Flower figures use. The first
rounds are slower on this project's machine (its VM hands freed memory back to
the host, and memory touched fresh costs ~0.65 s/GB until each process and the
page cache reuse their buffers), so the default is 10 rounds; every round's time
is printed.

    .venv/bin/python benchmarks/throughput.py [--model-mb 100 500 2500] [--rounds 10]
        [--peer flower]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from federation_run import run_benchmark
from large_model import LargeModelRun, free_disk_check, run_large_model

TARGETS = {100: 600.0, 500: 700.0, 2500: 500.0}
FLOWER_RECORDED = {100: 46.0, 500: 63.0}


def _verdict(run: LargeModelRun) -> str:
    target = TARGETS.get(run.model_mb)
    if target is None:
        return ""
    return (
        f"; target >= {target:.0f} MB/s: {'met' if run.effective_mb_per_s >= target else 'NOT met'}"
    )


def report(runs: Sequence[LargeModelRun], peer: dict[int, float]) -> str:
    lines = ["effective throughput, 2 nodes, TLS + client authentication (4 x model per round):"]
    for run in runs:
        rounds = ", ".join(f"{s:.2f}" for s in run.round_seconds)
        line = f"  {run.model_mb:>5} MB: {run.effective_mb_per_s:6.0f} MB/s (rounds {rounds} s)"
        line += _verdict(run)
        if run.model_mb in peer:
            line += f"; Flower 1.42 this run: {peer[run.model_mb]:.0f} MB/s"
            line += f" (ratio {run.effective_mb_per_s / peer[run.model_mb]:.1f}x)"
        elif run.model_mb in FLOWER_RECORDED:
            line += f"; Flower 1.42 recorded here: {FLOWER_RECORDED[run.model_mb]:.0f} MB/s"
        lines.append(line)
        lines.append(f"         {run.cpu_per_round()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-mb", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where state and blobs go (default: a temporary folder)",
    )
    parser.add_argument(
        "--peer",
        choices=["flower"],
        default=None,
        help="also run the same workload on Flower 1.42.0 (own virtualenv)",
    )
    args = parser.parse_args(argv)
    peer: dict[int, float] = {}

    def measure() -> list[LargeModelRun]:
        runs = []
        for size in args.model_mb:
            with tempfile.TemporaryDirectory(prefix="pollen-bench-", dir=args.workdir) as tmp:
                free_disk_check(Path(tmp), size, 2)
                runs.append(run_large_model(size, 2, args.rounds, Path(tmp)))
            if args.peer == "flower":
                from peers.flower import flower_throughput

                peer[size] = flower_throughput(size, 2, args.rounds)[0]
        return runs

    return run_benchmark("throughput", measure, lambda runs: report(runs, peer))


if __name__ == "__main__":
    sys.exit(main())
