"""Simulation: wall time per round on virtual nodes, peak RSS, and start-up to the first round.

Each workload runs ``pollen.simulation.run_simulation`` in a child process of its own
(this script with ``--child``), so that its peak RSS is its own; a sampler reads
``VmHWM`` of the child and of every process under it (the process pool's workers)
every 50 ms and adds up each process's peak. The ServerApp is FedAvg (``fraction_fit``,
no federated evaluation) over the model, the ClientApp hands the model straight back
(``apps/noop_client.py``), so what is measured is the simulation's own overhead.

Per round: ``evaluate_fn`` is called at the end of every round; the figure is the median
gap between two calls (rounds 2..N: everything a round costs, its checkpoint included),
or, for a one-round run, the round's own ``seconds``.

Workloads (issue 16): tiny model (4x2 and 2 float32), 100 nodes, fraction 0.1, 50 rounds;
tiny model, 1000 nodes, every node, 4 rounds; a 4 MB model (4 float32 arrays of random
values), 100 nodes, every node, 4 rounds; tiny model, 10 000 nodes, fraction 0.01, one
round (peak RSS); the quickstart's CNN on scikit-learn's digits (below). Start-up:
``pollen simulation`` (``apps/noop_server.py``, 2 nodes) run
as a subprocess; the figure is from just before the subprocess starts to the end of
round 1 (``started_at`` + ``seconds`` in its ``metrics.json``): Flower's engine starts
its nodes during round 1, so the start of round 1 would leave that out.

The CNN workload (``cnn100``): ``examples/quickstart-pytorch``'s ClientApp (its own
client.py and task.py, imported by ``apps/timed_quickstart.py``), 100 nodes, fraction
0.1, 2 local epochs (the example's fit config), 20 rounds, FedAvg without federated
evaluation. Each fit result reports when its node's ``client_fn`` started and when its
``NumPyClient.fit`` started and ended. Per round, **outside training** is the round's wall
minus the wall during which at least one node's fit was running, and **outside the
ClientApp** the same with ``client_fn`` counted as running too (the example builds a
model and a DataLoader for every message, as Flower's ``client_fn`` does); the figures
are medians over rounds 2..N, the share is outside / round of each round.

``--peer flower`` runs the same workloads on Flower 1.42's simulation engine
(``flwr.simulation.run_simulation``, Ray) in its own venv (``peers/flower_simulation.py``,
venv from ``peers.flower.ensure_flower_simulation_venv``), timed the same way, and
prints both and the ratio; Flower's start-up is from the start of its process to the
end of round 1 of the first workload (100 nodes, 10 per round). Its CNN ClientApp runs
the example's task.py the way the example's client does, reporting its spans in its
metrics; PyTorch and scikit-learn are borrowed from Pollen's venv (`borrowed_packages`).

    .venv/bin/python benchmarks/simulation.py [--backend in-process|process-pool|ray] \
        [--peer flower]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "apps"))

from peers.model_arrays import build_model  # noqa: E402
from peers.process_tree import PeakRssSampler  # noqa: E402

if TYPE_CHECKING:
    from pollen.records.typing import Metrics

EXAMPLE = HERE.parent / "examples" / "quickstart-pytorch"
MB = 1_000_000
FLOWER_RECORDED = "recorded in the issue, not measured in this run"


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    nodes: int
    fraction: float
    rounds: int
    model_bytes: int
    target: str
    flower_recorded: str
    app: str = "noop"
    """``noop``: the ClientApp hands the model back; ``cnn``: the quickstart's digits CNN."""


WORKLOADS = [
    Workload(
        "tiny100",
        "tiny model, 100 nodes, fraction 0.1, 50 rounds: wall per round",
        100,
        0.1,
        50,
        0,
        "≤ 5 ms, ≥ 20x faster than Flower",
        "0.10 s (10 clients per round)",
    ),
    Workload(
        "tiny1000",
        "tiny model, 1000 nodes, fraction 1.0, 4 rounds: wall per round",
        1000,
        1.0,
        4,
        0,
        "≤ 0.35 s, ≥ 20x faster than Flower",
        "about 7 s",
    ),
    Workload(
        "model4mb",
        "4 MB model, 100 nodes, fraction 1.0, 4 rounds: wall per round",
        100,
        1.0,
        4,
        4 * MB,
        "≥ 10x faster than Flower",
        "1.6-2.5 s",
    ),
    Workload(
        "nodes10000",
        "tiny model, 10 000 nodes, fraction 0.01, 1 round: the round",
        10_000,
        0.01,
        1,
        0,
        "completes",
        "",
    ),
    Workload(
        "cnn100",
        "quickstart CNN on digits, 100 nodes, fraction 0.1, 2 local epochs, 20 rounds: "
        "time outside training",
        100,
        0.1,
        20,
        0,
        "≤ 10% of the round",
        "",
        "cnn",
    ),
]


Span = tuple[float, float]


class Spans:
    """``(start, end)`` of each node's training, and of each node's ClientApp (``client_fn``
    and fit), from the metrics of the fit results (``apps/timed_quickstart.py``)."""

    def __init__(self) -> None:
        self.fits: list[Span] = []
        self.apps: list[Span] = []

    def collect(self, results: list[tuple[int, Metrics]]) -> Metrics:
        """FedAvg's ``fit_metrics_aggregation_fn``: keeps the spans, aggregates nothing."""
        from timed_quickstart import SPAN_KEYS

        for _, metrics in results:
            app_start, fit_start, fit_end = (float(metrics[k]) for k in SPAN_KEYS)  # type: ignore[arg-type]
            self.fits.append((fit_start, fit_end))
            self.apps.append((app_start, fit_end))
        return {}


def covered(spans: list[Span], start: float, end: float) -> float:
    """Seconds of ``start..end`` during which at least one span was running."""
    total, reach = 0.0, start
    for first, last in sorted(spans):
        first, last = max(first, reach), min(last, end)
        if last > first:
            total += last - first
            reach = last
    return total


def outside(stamps: list[float], spans: list[Span]) -> list[float]:
    """Per round (between two consecutive stamps): its wall minus `covered` by ``spans``."""
    return [
        later - earlier - covered(spans, earlier, later)
        for earlier, later in itertools.pairwise(stamps)
    ]


def child(workload: Workload, backend: str, out: Path) -> None:
    """Run one workload in this process; write the per-round times to ``out``."""
    from noop_client import app as noop_app

    from pollen import FedAvg, ServerApp, ServerConfig
    from pollen.simulation import run_simulation

    stamps: list[float] = []
    spans = Spans()

    def clock(server_round: int, parameters: object, config: object) -> None:
        stamps.append(time.perf_counter())

    if workload.app == "cnn":
        import timed_quickstart as cnn

        client_app, model, fit_config = cnn.app, cnn.initial_model(), cnn.fit_config
        aggregate_fit_metrics = spans.collect
    else:
        client_app, model, fit_config = noop_app, build_model(workload.model_bytes), None
        aggregate_fit_metrics = None
    app = ServerApp(
        config=ServerConfig(num_rounds=workload.rounds, seed=1),
        strategy=FedAvg(
            fraction_fit=workload.fraction,
            fraction_evaluate=0.0,
            min_fit_clients=max(1, int(workload.nodes * workload.fraction)),
            min_available_clients=workload.nodes,
            initial_parameters=model,  # type: ignore[arg-type]
            on_fit_config_fn=fit_config,  # type: ignore[arg-type]
            fit_metrics_aggregation_fn=aggregate_fit_metrics,
            evaluate_fn=clock,  # type: ignore[arg-type]
        ),
    )
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        outcome = run_simulation(
            app, client_app, workload.nodes, backend_name=backend, output_dir=Path(runs)
        )
        wall = time.perf_counter() - started
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    out.write_text(
        json.dumps(
            {
                "round_seconds": gaps or [r.seconds for r in outcome.history.rounds],
                "wall": wall,
                "fit_nodes": [len(r.fit_nodes) for r in outcome.history.rounds],
                "outside_training": outside(stamps, spans.fits),
                "outside_app": outside(stamps, spans.fits + spans.apps),
            }
        )
    )


def run_tree(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[float, int]:
    """Run ``argv``; its wall time and the sum of the peak RSS of every process in its tree."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    with PeakRssSampler({"run": process.pid}, lambda root, pid, program: str(pid)) as sampler:
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = err.decode(errors="replace")[-3000:]
        raise RuntimeError(f"{argv[1]} failed ({process.returncode}):\n{tail}")
    return wall, sum(sampler.peaks.values())


@dataclass
class Result:
    round_seconds: list[float]
    wall: float
    rss: int
    first_round: float | None = None  # from the start of the process, Flower only
    outside_training: list[float] = field(default_factory=list)
    """Per round: its wall minus the wall during which at least one node's fit ran."""
    outside_app: list[float] = field(default_factory=list)
    """The same with the ClientApp's ``client_fn`` counted as running too."""

    @property
    def per_round(self) -> float:
        return statistics.median(self.round_seconds)

    def outside(self, training_only: bool = True) -> tuple[float, float]:
        """Median over rounds of the time outside (seconds) and of its share of the round."""
        seconds = self.outside_training if training_only else self.outside_app
        shares = [out / wall for out, wall in zip(seconds, self.round_seconds, strict=True)]
        return statistics.median(seconds), statistics.median(shares)

    def describe_outside(self) -> str:
        training, share = self.outside()
        app, app_share = self.outside(training_only=False)
        return (
            f"outside training {fmt_s(training)} = {share:.1%} of the round "
            f"(outside the ClientApp's client_fn and fit: {fmt_s(app)} = {app_share:.1%})"
        )


def pollen_workload(workload: Workload, backend: str, tmp: Path) -> Result:
    out = tmp / f"pollen-{workload.name}.json"
    argv = [sys.executable, __file__, "--child", workload.name, "--backend", backend]
    wall, rss = run_tree([*argv, "--out", str(out)], timeout=600)
    data = json.loads(out.read_text())
    return Result(
        data["round_seconds"],
        wall,
        rss,
        outside_training=data["outside_training"],
        outside_app=data["outside_app"],
    )


def pollen_first_round(backend: str, tmp: Path) -> float:
    """Seconds from just before ``pollen simulation`` starts to the end of round 1
    (its ``started_at`` plus its ``seconds`` in ``metrics.json``)."""
    runs = tmp / "first-round"
    pollen = Path(sys.executable).with_name("pollen")
    argv = [
        str(pollen),
        "simulation",
        "--server-app",
        "noop_server:app",
        "--client-app",
        "noop_client:app",
        "--num-supernodes",
        "2",
        "--app-dir",
        str(HERE / "apps"),
        "--backend",
        backend,
        "--output-dir",
        str(runs),
    ]
    started = time.time()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    [run] = list(runs.iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    round_1 = metrics["rounds"][0]
    first = datetime.fromisoformat(round_1["started_at"]).timestamp() + round_1["seconds"]
    return first - started


def borrowed_packages(python: Path, folder: Path) -> Path:
    """``folder`` with links to PyTorch and scikit-learn, and what they need, from this
    venv, leaving out what ``python``'s venv has: Flower's venv runs the quickstart's
    task.py on ``PYTHONPATH=folder`` without installing them (both venvs: Python 3.11,
    the same numpy)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    script = (
        "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))"
    )
    theirs = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True)
    have = {name.lower().replace("_", "-") for name in theirs.stdout.split()}
    folder.mkdir(exist_ok=True)
    wanted, seen = ["torch", "scikit-learn"], set()
    while wanted:
        name = wanted.pop().lower().replace("_", "-")
        if name in seen or name in have:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
        for top in {Path(str(file)).parts[0] for file in dist.files or []}:
            link = folder / top
            if top not in ("..", "__pycache__") and not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))
    return folder


def flower_workload(python: Path, workload: Workload, tmp: Path) -> Result:
    out = tmp / f"flower-{workload.name}.json"
    argv = [
        str(python),
        str(HERE / "peers" / "flower_simulation.py"),
        "--nodes",
        str(workload.nodes),
        "--fraction",
        str(workload.fraction),
        "--rounds",
        str(workload.rounds),
        "--model-bytes",
        str(workload.model_bytes),
        "--app",
        workload.app,
        "--out",
        str(out),
    ]
    env = None
    if workload.app == "cnn":  # Ray's workers import the example's task.py too
        borrowed = borrowed_packages(python, tmp / "borrowed")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(borrowed), str(EXAMPLE)])}
    started = time.time()
    wall, rss = run_tree(argv, timeout=900, env=env)
    data = json.loads(out.read_text())
    stamps = data["stamps"]
    measured = data["round_seconds"]
    if len(measured) > 1:  # rounds 2..N, as Pollen's
        measured, stamps = measured[1:], stamps[1:]
    return Result(
        measured,
        wall,
        rss,
        data["stamps"][1] - started,  # end of round 1
        outside(stamps, [tuple(span) for span in data["fit_spans"]]),
        outside(stamps, [tuple(span) for span in data["fit_spans"] + data["app_spans"]]),
    )


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_gb(value: int) -> str:
    return f"{value / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="in-process", help="in-process, process-pool or ray")
    parser.add_argument("--peer", choices=["flower"], help="run Flower 1.42's simulation too")
    parser.add_argument(
        "--only", nargs="+", choices=[w.name for w in WORKLOADS], help="these workloads only"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    by_name = {w.name: w for w in WORKLOADS}
    if args.child:
        child(by_name[args.child], args.backend, args.out)
        return 0

    workloads = [by_name[name] for name in args.only] if args.only else WORKLOADS
    python = None
    if args.peer == "flower":
        from peers.flower import ensure_flower_simulation_venv

        python = ensure_flower_simulation_venv()
    print(
        f"Pollen simulation, backend {args.backend}; ClientApp hands the model back "
        "(the CNN workload: the quickstart's ClientApp trains)"
    )
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        flower_first: float | None = None
        for workload in workloads:
            ours = pollen_workload(workload, args.backend, tmp)
            print(f"\n{workload.label}")
            print(
                f"  Pollen: {fmt_s(ours.per_round)} a round (median of {len(ours.round_seconds)}; "
                f"process wall {ours.wall:.2f} s, peak RSS of all processes "
                f"{fmt_gb(ours.rss)})   target: {workload.target}"
            )
            if workload.app == "cnn":
                print(f"    round {fmt_s(ours.per_round)}: {ours.describe_outside()}")
            if workload.name == "nodes10000":
                print(
                    f"  Pollen peak RSS, all processes together: {fmt_gb(ours.rss)}"
                    "   target: ≤ 2 GB"
                )
            if python is not None:
                theirs = flower_workload(python, workload, tmp)
                if flower_first is None:
                    flower_first = theirs.first_round
                print(
                    f"  Flower 1.42 (Ray), this run: {fmt_s(theirs.per_round)} (median of "
                    f"{len(theirs.round_seconds)}; process wall {theirs.wall:.2f} s, peak RSS "
                    f"{fmt_gb(theirs.rss)}); Flower / Pollen "
                    f"{theirs.per_round / ours.per_round:.1f}x"
                )
                if workload.app == "cnn":
                    print(f"    round {fmt_s(theirs.per_round)}: {theirs.describe_outside()}")
            elif workload.flower_recorded:
                print(f"  Flower 1.42: {workload.flower_recorded} ({FLOWER_RECORDED})")
        first = pollen_first_round(args.backend, tmp)
        print("\nstart of `pollen simulation` (subprocess, 2 nodes) to the end of round 1")
        print(f"  Pollen: {first:.2f} s   target: ≤ 1 s")
        if flower_first is not None:
            print(
                f"  Flower 1.42 (Ray), this run, start of its process to the end of round 1: "
                f"{flower_first:.2f} s; Flower / Pollen {flower_first / first:.1f}x"
            )
        else:
            print(f"  Flower 1.42: 7-24 s ({FLOWER_RECORDED})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
