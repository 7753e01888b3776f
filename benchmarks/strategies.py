"""Strategies: how each converges on non-IID data, and what the robust ones cost in memory.

``convergence`` (the default): scikit-learn's digits split Dirichlet(alpha=0.1)
over 10 virtual nodes of ``pollen.simulation.InProcessGrid``, 20 rounds of
every strategy of ``pollen.server.strategy`` with the settings of
``CONVERGENCE`` (Flower's defaults unless stated), the workload of
``digits_mlp.py`` (a NumPy MLP, 2 local epochs of SGD per round, the accuracy
of the global model on a held-out test set on the server after each round).
Prints each strategy's final accuracy and the first round reaching 85%. With
``--peer flower``, Flower 1.42's legacy server loop (``flwr.server.Server``)
runs the same strategies on the same partitions with the same training in its
own venv (``peers/flower_strategies.py converge``), and its figures are printed
alongside.

``memory``: ``--model-mb`` (MiB) model, ``--nodes`` SuperNodes of a secure
federation (TLS, client authentication; ``large_model.run_large_model``), one
run each of FedAvg, FedMedian and Krum (``apps/strategy_server.py``); the
ServerApp's peak RSS against the issue's target (<= 2.5 x the model whatever
the nodes: the robust rules spill the results to disk) and the median round
time against FedAvg's of the same invocation.

    .venv/bin/python benchmarks/strategies.py [convergence] [--rounds 20] [--nodes 10]
        [--alpha 0.1] [--peer flower]
    .venv/bin/python benchmarks/strategies.py memory [--model-mb 500] [--nodes 8]
        [--rounds 2] [--strategies FedAvg FedMedian Krum]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import digits_mlp
import numpy as np
from federation_run import run_benchmark
from large_model import MB, LargeModelRun, free_disk_check, run_large_model

import pollen.server.strategy as strategies
from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Metrics, NDArrays
from pollen.errors import RunError
from pollen.server import ServerApp, ServerConfig
from pollen.server.round_loop import RoundLoop, RunOutcome
from pollen.simulation import InProcessGrid

HARNESS = Path(__file__).resolve().parent / "peers" / "flower_strategies.py"
TARGET_ACCURACY = 0.85
GB = 1e9


@dataclass(frozen=True)
class Setting:
    """One row of the convergence table: a strategy class and its arguments."""

    strategy: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = "defaults"

    @property
    def label(self) -> str:
        return self.strategy if self.note == "defaults" else f"{self.strategy} ({self.note})"


CONVERGENCE = [
    Setting("FedAvg"),
    Setting("FedProx", {"proximal_mu": 0.1}, "proximal_mu=0.1"),
    Setting("FedAvgM", {"server_momentum": 0.9}, "server_momentum=0.9"),
    Setting("FedAdagrad"),
    Setting("FedAdam"),
    Setting("FedYogi"),
    Setting("QFedAvg"),
    Setting("FaultTolerantFedAvg"),
    Setting("FedMedian"),
    Setting("FedTrimmedAvg"),
    Setting("Krum"),
    Setting("Krum", {"num_malicious_clients": 1, "num_clients_to_keep": 5}, "f=1, keep 5"),
    Setting("Bulyan", {"num_malicious_clients": 1, "to_keep": 0}, "f=1"),
]


# --- (a) convergence -----------------------------------------------------------------------


@dataclass
class Convergence:
    setting: Setting
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def first_round_reaching(self, target: float) -> int | None:
        return next((r for r, a in enumerate(self.accuracy, 1) if a >= target), None)


@dataclass
class Digits:
    parts: list[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]


def load_digits_split(nodes: int, alpha: float) -> Digits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    parts, test = digits_mlp.split(digits.images, digits.target, nodes, alpha)
    return Digits(parts, test)


class DigitsClient(NumPyClient):
    def __init__(self, data: Digits, partition: int) -> None:
        self.x, self.y = data.parts[partition]
        self.partition = partition

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        return digits_mlp.train(parameters, self.x, self.y, config, self.partition), len(self.y), {}


def common_arguments(nodes: int) -> dict[str, Any]:
    """What every row shares: all nodes train each round, no federated evaluation."""
    return {"fraction_evaluate": 0.0, "min_fit_clients": nodes, "min_available_clients": nodes}


def run_pollen(setting: Setting, data: Digits, rounds: int) -> Convergence:
    nodes = len(data.parts)
    result = Convergence(setting)
    if not hasattr(strategies, setting.strategy):
        result.error = f"pollen.server.strategy has no {setting.strategy}"
        return result

    def evaluate_fn(
        server_round: int, parameters: NDArrays, config: Config
    ) -> tuple[float, Metrics]:
        loss, accuracy = digits_mlp.evaluate(parameters, *data.test)
        return loss, {"accuracy": accuracy}

    strategy = getattr(strategies, setting.strategy)(
        initial_parameters=digits_mlp.initial_model(),
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
        **common_arguments(nodes),
        **setting.kwargs,
    )
    app = ServerApp(config=ServerConfig(num_rounds=rounds, seed=1), strategy=strategy)
    client = ClientApp(
        client_fn=lambda context: DigitsClient(data, int(context.node_config["partition-id"]))
    )

    async def scenario() -> RunOutcome:
        grid = InProcessGrid(client, num_nodes=nodes)
        run_id, _ = await grid.create_run("strategies-benchmark", {})
        return await RoundLoop(app, grid, run_id).run()

    started = time.perf_counter()
    outcome = asyncio.run(scenario())
    result.seconds = time.perf_counter() - started
    result.accuracy = [
        float(record.centralized_metrics["accuracy"]) for record in outcome.history.rounds
    ]
    return result


def run_flower(settings: Sequence[Setting], data: Digits, rounds: int) -> list[Convergence]:
    from peers.flower import ensure_flower_venv

    python = ensure_flower_venv()
    nodes = len(data.parts)
    with tempfile.TemporaryDirectory(prefix="pollen-strategies-") as tmp:
        folder = Path(tmp)
        arrays: dict[str, Any] = {"x_test": data.test[0], "y_test": data.test[1]}
        for node, (x, y) in enumerate(data.parts):
            arrays.update({f"x_{node}": x, f"y_{node}": y})
        np.savez(folder / "data.npz", **arrays)
        cases = [
            {
                "id": s.label,
                "strategy": s.strategy,
                "kwargs": {**common_arguments(nodes), **s.kwargs},
                "rounds": rounds,
            }
            for s in settings
        ]
        (folder / "cases.json").write_text(json.dumps(cases))
        done = subprocess.run(
            [
                str(python),
                str(HARNESS),
                "converge",
                *(str(folder / n) for n in ("data.npz", "cases.json", "out.json")),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RunError(f"Flower's convergence runs failed: {done.stderr.strip()[-500:]}")
        report = json.loads((folder / "out.json").read_text())
    results = []
    for setting in settings:
        entry = report[setting.label]
        results.append(
            Convergence(
                setting,
                [float(a) for a in entry.get("accuracy", [])],
                float(entry.get("seconds", 0.0)),
                str(entry.get("error", "")),
            )
        )
    return results


def _round_text(run: Convergence) -> str:
    first = run.first_round_reaching(TARGET_ACCURACY)
    return "never" if first is None else str(first)


def convergence_report(
    ours: Sequence[Convergence], peer: Sequence[Convergence], nodes: int, rounds: int, alpha: float
) -> str:
    lines = [
        f"Convergence: digits split Dirichlet(alpha={alpha}) over {nodes} nodes, {rounds} rounds, "
        f"MLP 64-{digits_mlp.HIDDEN}-10, {digits_mlp.EPOCHS} local epochs of SGD "
        f"(lr {digits_mlp.LR}, batch {digits_mlp.BATCH}); accuracy of the global model "
        "on the server's test set",
    ]
    header = f"  {'strategy':<34} {'final acc':>9} {'>= 85% at round':>15} {'seconds':>8}"
    if peer:
        header += f"   | Flower 1.42: {'final acc':>9} {'>= 85% at round':>15}"
    lines.append(header)
    for index, run in enumerate(ours):
        if run.error:
            line = f"  {run.setting.label:<34} {run.error}"
        else:
            line = (
                f"  {run.setting.label:<34} {run.accuracy[-1]:9.3f} {_round_text(run):>15} "
                f"{run.seconds:8.1f}"
            )
        if peer:
            theirs = peer[index]
            if theirs.error:
                line += f"   | {theirs.error}"
            else:
                line += f"   |              {theirs.accuracy[-1]:9.3f} {_round_text(theirs):>15}"
        lines.append(line)
    return "\n".join(lines)


# --- (b) memory ----------------------------------------------------------------------------


ROBUST = ("FedMedian", "Krum")


@dataclass
class PeerRun:
    """Flower's ServerApp in the same workload: peak RSS and each round's seconds."""

    peak_rss: int
    round_seconds: list[float]


def _rounds_text(seconds: Sequence[float]) -> str:
    rounds = ", ".join(f"{s:.2f}" for s in seconds)
    return f"median round {statistics.median(seconds):.2f} s (rounds {rounds} s)"


def memory_report(
    runs: dict[str, LargeModelRun], peer: dict[str, PeerRun], model_mb: int, nodes: int
) -> str:
    model = model_mb * MB
    baseline = runs.get("FedAvg")
    rounds = len(next(iter(runs.values())).round_seconds)
    lines = [
        f"ServerApp with a {model_mb} MiB model, {nodes} nodes, TLS + client authentication "
        f"({rounds} rounds each, one federation per strategy):"
    ]
    for name, run in runs.items():
        peak = run.peak_rss["serverapp"]
        line = f"  {name:<10} peak RSS {peak / GB:5.2f} GB ({peak / model:4.2f} x model"
        if baseline is not None and name != "FedAvg":
            line += f", {(peak - baseline.peak_rss['serverapp']) / GB:+.2f} GB on FedAvg's"
        line += ")"
        if name in ROBUST:
            line += f", target <= 2.5 x: {'met' if peak <= 2.5 * model else 'NOT met'}"
        line += f"; {_rounds_text(run.round_seconds)}"
        if baseline is not None and name != "FedAvg":
            ratio = statistics.median(run.round_seconds) / statistics.median(baseline.round_seconds)
            line += f", {ratio:.2f} x FedAvg's"
        lines.append(line)
    for name, theirs in peer.items():
        lines.append(
            f"  Flower 1.42 {name:<10} serverapp peak RSS {theirs.peak_rss / GB:5.2f} GB "
            f"({theirs.peak_rss / model:4.2f} x model); {_rounds_text(theirs.round_seconds)}"
        )
    if not peer:
        lines.append(
            f"  (Flower 1.42 holds every update in its ServerApp to aggregate them: >= {nodes} "
            f"x model; --peer flower measures it)"
        )
    return "\n".join(lines)


def flower_fits(model_mb: int, nodes: int) -> None:
    """RunError before starting Flower when its processes would not fit in memory.

    From Flower's peaks measured here at 500 MB (``peers/flower.py``): each node
    (SuperNode and ClientApp) about 7 x the model, SuperLink and ServerApp about
    12 x, and a robust ServerApp one more model per node.
    """
    need = model_mb * MB * (8.2 * nodes + 12)
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    if available and need > available:
        raise RunError(
            f"Flower with a {model_mb} MiB model and {nodes} nodes needs about "
            f"{need / GB:.0f} GB of memory, {available / GB:.0f} GB are available; "
            "run --peer flower with a smaller --model-mb or fewer --nodes"
        )


def run_flower_memory(name: str, model_mb: int, nodes: int, rounds: int) -> PeerRun:
    """Flower's message-API ``name`` on the same workload (``peers/flower.py``'s memory run,
    the model of the same bytes as Pollen's)."""
    from peers.flower import _memory_label, _transfer_config, _transfer_timeout, flower_federation
    from peers.process_tree import PeakRssSampler

    config = {**_transfer_config(model_mb, rounds), "model-bytes": model_mb * MB, "strategy": name}
    with (
        flower_federation(nodes) as federation,
        PeakRssSampler(dict(federation.pids), _memory_label) as sampler,
    ):
        result = federation.run(config, timeout=_transfer_timeout(model_mb, rounds))
    seconds = result["round_seconds"]
    assert isinstance(seconds, list)
    return PeerRun(sampler.peaks["serverapp"], [float(s) for s in seconds])


def run_memory(
    names: Sequence[str], model_mb: int, nodes: int, rounds: int, workdir: Path | None
) -> dict[str, LargeModelRun]:
    runs: dict[str, LargeModelRun] = {}
    for name in names:
        os.environ["POLLEN_BENCH_STRATEGY"] = name
        with tempfile.TemporaryDirectory(prefix="pollen-bench-", dir=workdir) as tmp:
            # the SuperLink's blobs, plus the robust rules' spill of every result
            free_disk_check(Path(tmp), model_mb, 2 * nodes)
            runs[name] = run_large_model(
                model_mb, nodes, rounds, Path(tmp), app="strategy_server:app"
            )
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=["convergence", "memory"], default="convergence")
    parser.add_argument("--rounds", type=int, default=None, help="default: 20, memory: 2")
    parser.add_argument("--nodes", type=int, default=None, help="default: 10, memory: 8")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--model-mb", type=int, default=500)
    parser.add_argument("--strategies", nargs="+", default=["FedAvg", *ROBUST])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--peer", choices=["flower"], default=None)
    args = parser.parse_args(argv)

    if args.part == "memory":
        nodes, rounds = args.nodes or 8, args.rounds or 2
        peer_runs: dict[str, PeerRun] = {}

        def measure_memory() -> dict[str, LargeModelRun]:
            if args.peer == "flower":
                flower_fits(args.model_mb, nodes)
            runs = run_memory(args.strategies, args.model_mb, nodes, rounds, args.workdir)
            if args.peer == "flower":
                for name in args.strategies:
                    peer_runs[name] = run_flower_memory(name, args.model_mb, nodes, rounds)
            return runs

        return run_benchmark(
            "strategies",
            measure_memory,
            lambda runs: memory_report(runs, peer_runs, args.model_mb, nodes),
        )

    nodes, rounds = args.nodes or 10, args.rounds or 20
    peer: list[Convergence] = []

    def measure() -> list[Convergence]:
        data = load_digits_split(nodes, args.alpha)
        ours = [run_pollen(setting, data, rounds) for setting in CONVERGENCE]
        if args.peer == "flower":
            peer.extend(run_flower(CONVERGENCE, data, rounds))
        return ours

    return run_benchmark(
        "strategies",
        measure,
        lambda ours: convergence_report(ours, peer, nodes, rounds, args.alpha),
    )


if __name__ == "__main__":
    sys.exit(main())
