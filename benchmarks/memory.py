"""Memory: peak RSS of every process while a large model moves through a secure federation.

For each ``--nodes`` count, one round trip of a ``--model-mb`` model (TLS and
client authentication); peak RSS (VmHWM) of the SuperLink, the ServerApp and
each SuperNode, against the targets: SuperLink <= 0.2 GB + 0.5 x model, ServerApp
<= 2.5 x model, whatever the number of nodes.

    .venv/bin/python benchmarks/memory.py [--model-mb 500] [--nodes 2 8] [--peer flower]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from federation_run import run_benchmark
from large_model import MB, LargeModelRun, free_disk_check, run_large_model

GB = 1e9
FLOWER_RECORDED_500MB = {"superlink": 1.37 * GB, "serverapp": 4.6 * GB}


def _limit(name: str, model_bytes: int) -> float | None:
    if name == "superlink":
        return 0.2 * GB + 0.5 * model_bytes
    if name == "serverapp":
        return 2.5 * model_bytes
    return None


def report(runs: Sequence[LargeModelRun], peer: dict[int, dict[str, int]]) -> str:
    lines = []
    for run in runs:
        model = run.model_mb * MB
        lines.append(f"{run.model_mb} MB model, {run.nodes} nodes, peak RSS:")
        for name, peak in run.peak_rss.items():
            limit = _limit(name, model)
            line = f"  {name:<12} {peak / GB:6.2f} GB ({peak / model:4.1f} x model)"
            if limit is not None:
                line += f"; target <= {limit / GB:.2f} GB: {'met' if peak <= limit else 'NOT met'}"
            if name in peer.get(run.nodes, {}):
                line += f"; Flower 1.42 this run: {peer[run.nodes][name] / GB:.2f} GB"
            elif run.model_mb == 500 and name in FLOWER_RECORDED_500MB and run.nodes == 2:
                line += f"; Flower 1.42 recorded here: {FLOWER_RECORDED_500MB[name] / GB:.2f} GB"
            lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-mb", type=int, default=500)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--peer", choices=["flower"], default=None)
    args = parser.parse_args(argv)
    peer: dict[int, dict[str, int]] = {}

    def measure() -> list[LargeModelRun]:
        runs = []
        for nodes in args.nodes:
            with tempfile.TemporaryDirectory(prefix="pollen-bench-", dir=args.workdir) as tmp:
                free_disk_check(Path(tmp), args.model_mb, nodes)
                runs.append(run_large_model(args.model_mb, nodes, args.rounds, Path(tmp)))
            if args.peer == "flower":
                from peers.flower import flower_memory

                peer[nodes] = flower_memory(args.model_mb, nodes)
        return runs

    return run_benchmark("memory", measure, lambda runs: report(runs, peer))


if __name__ == "__main__":
    sys.exit(main())
