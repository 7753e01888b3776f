"""One workload of ``benchmarks/simulation.py`` on Flower 1.42's simulation engine (Ray).

Runs inside the venv of ``peers.flower.ensure_flower_simulation_venv()`` (flwr[simulation]
1.42.0, which brings Ray), never in Pollen's::

    python flower_simulation.py --nodes 100 --fraction 0.1 --rounds 50 --model-bytes 0 --out F

``flwr.simulation.run_simulation`` runs a ServerApp with Flower's message-API ``FedAvg``
(``fraction_train``, no federated evaluation) on ``nodes`` virtual SuperNodes whose
ClientApp hands the model straight back. Round times come from ``Strategy.start``'s
``evaluate_fn`` hook, as in ``flower_app/peer_server.py``: Flower calls it once before
round 1 and once at the end of each round. ``out`` gets JSON: ``stamps`` (``time.time()``
of each call, so the caller can measure from its own start of the process) and
``round_seconds`` (the gaps).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation


def build_model(model_bytes: int, layers: int = 4) -> list[np.ndarray]:
    """The tiny model (4x2 and 2 float32) when ``model_bytes`` is 0, else ``layers`` random
    float32 arrays of ``model_bytes`` bytes in all (as ``benchmarks/simulation.py``)."""
    if model_bytes == 0:
        return [np.zeros((4, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]
    count = model_bytes // 4
    sizes = [count // layers] * layers
    sizes[-1] += count - sum(sizes)
    rng = np.random.default_rng(0)
    return [rng.random(size, dtype=np.float32) for size in sizes]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--fraction", type=float, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--model-bytes", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 1})
        content = RecordDict({"arrays": msg.content["arrays"], "metrics": metrics})
        return Message(content, reply_to=msg)

    server_app = ServerApp()
    stamps: list[float] = []

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:
        def clock(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            stamps.append(time.time())
            return None

        strategy = FedAvg(
            fraction_train=args.fraction,
            fraction_evaluate=0.0,
            min_train_nodes=max(1, int(args.nodes * args.fraction)),
            min_available_nodes=args.nodes,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(build_model(args.model_bytes)),
            num_rounds=args.rounds,
            evaluate_fn=clock,
        )

    run_simulation(
        server_app,
        client_app,
        num_supernodes=args.nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    seconds = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    args.out.write_text(json.dumps({"stamps": stamps, "round_seconds": seconds}))


if __name__ == "__main__":
    main()
