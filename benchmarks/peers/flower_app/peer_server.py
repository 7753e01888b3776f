"""The Flower ServerApp of the peer benchmarks (runs inside Flower's own venv).

Flower's own message-API ``FedAvg`` (or the run config's ``strategy``: FedMedian,
Krum) drives the rounds. Round times come from ``Strategy.start``'s
``evaluate_fn`` hook, which Flower calls once before round 1 and once at the end
of every round (after train and evaluate were sent, received and aggregated);
round k lasts from call k-1 to call k. Before the strategy starts, the app waits
until all ``nodes`` SuperNodes are connected, so that no round includes
start-up. The times go to the JSON file named by ``out``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, Krum

app = ServerApp()

STRATEGIES = {"FedAvg": FedAvg, "FedMedian": FedMedian, "Krum": Krum}
"""What the run config's ``strategy`` may name (``strategies.py memory`` uses the robust ones)."""


def build_model(model_bytes: int, layers: int) -> list[np.ndarray]:
    """``model_bytes == 0``: the tiny model (4x2 weights and 2 biases, float32).

    Otherwise ``layers`` float32 arrays of ``model_bytes`` bytes in all, random
    values (so that nothing on the way could compress them).
    """
    if model_bytes == 0:
        return [np.zeros((4, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]
    count = model_bytes // 4
    sizes = [count // layers] * layers
    sizes[-1] += count - sum(sizes)
    rng = np.random.default_rng(0)
    return [rng.random(size, dtype=np.float32) for size in sizes]


def wait_for_nodes(grid: Grid, nodes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {nodes} SuperNodes connected after {timeout} s")
        time.sleep(0.2)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes = int(config["nodes"])
    model = build_model(int(config["model-bytes"]), int(config["layers"]))
    model_bytes = sum(array.nbytes for array in model)
    wait_for_nodes(grid, nodes, float(config["node-wait-timeout"]))

    stamps: list[float] = []

    def clock(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stamps.append(time.perf_counter())
        return None

    strategy = STRATEGIES[str(config["strategy"])](
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    initial = ArrayRecord(model)
    del model
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(config["num-rounds"]),
        evaluate_fn=clock,
    )
    seconds = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    result = {"round_seconds": seconds, "model_bytes": model_bytes}
    Path(str(config["out"])).write_text(json.dumps(result))
