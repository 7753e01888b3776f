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

``--app cnn``: the ClientApp trains the quickstart's digits CNN instead, with the
example's own ``task.py`` (``examples/quickstart-pytorch``, which must be importable:
the caller puts it, and PyTorch and scikit-learn, on ``PYTHONPATH``), as the example's
``NumPyClient`` does: a new model and this node's data for every message, then
``set_weights``, ``train`` for ``local-epochs`` (2), ``get_weights``. Each reply reports
when (``time.time()``) its app and its training started and ended; ``out`` gets them as
``app_spans`` and ``fit_spans``.
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
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.simulation import run_simulation
from model_arrays import build_model  # beside this script


def initial_model(app: str, model_bytes: int) -> list[np.ndarray]:
    if app == "cnn":
        import task  # examples/quickstart-pytorch, on PYTHONPATH

        return list(task.get_weights(task.new_model()))
    return build_model(model_bytes)


def noop_app() -> ClientApp:
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 1})
        content = RecordDict({"arrays": msg.content["arrays"], "metrics": metrics})
        return Message(content, reply_to=msg)

    return client_app


def cnn_app() -> ClientApp:
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        import task  # examples/quickstart-pytorch, on PYTHONPATH
        import torch

        app_start = time.time()
        torch.set_num_threads(1)  # as the example's client.py
        partition = int(context.node_config["partition-id"])
        trainloader, _ = task.load_data(partition, int(context.node_config["num-partitions"]))
        net = task.new_model()
        parameters = msg.content["arrays"].to_numpy_ndarrays()
        fit_start = time.time()
        task.set_weights(net, parameters)
        epochs = int(msg.content["config"]["local-epochs"])
        loss = task.train(net, trainloader, epochs=epochs)
        weights = task.get_weights(net)
        fit_end = time.time()
        metrics = {"num-examples": len(trainloader.dataset), "train_loss": loss}
        spans = {"app-start": app_start, "fit-start": fit_start, "fit-end": fit_end}
        content = RecordDict(
            {"arrays": ArrayRecord(weights), "metrics": MetricRecord({**metrics, **spans})}
        )
        return Message(content, reply_to=msg)

    return client_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--fraction", type=float, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--model-bytes", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--app", choices=["noop", "cnn"], default="noop")
    args = parser.parse_args()

    client_app = cnn_app() if args.app == "cnn" else noop_app()
    server_app = ServerApp()
    stamps: list[float] = []
    app_spans: list[tuple[float, float]] = []
    fit_spans: list[tuple[float, float]] = []

    def train_metrics(records: list[RecordDict], weighting: str) -> MetricRecord:
        for record in records:
            metrics = next(iter(record.metric_records.values()))
            if "fit-end" in metrics:
                end = float(metrics["fit-end"])  # type: ignore[arg-type]
                app_spans.append((float(metrics["app-start"]), end))  # type: ignore[arg-type]
                fit_spans.append((float(metrics["fit-start"]), end))  # type: ignore[arg-type]
        return aggregate_metricrecords(records, weighting)

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
            train_metrics_aggr_fn=train_metrics,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_model(args.app, args.model_bytes)),
            train_config=ConfigRecord({"local-epochs": 2}) if args.app == "cnn" else None,
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
    document = {"stamps": stamps, "round_seconds": seconds}
    args.out.write_text(json.dumps({**document, "app_spans": app_spans, "fit_spans": fit_spans}))


if __name__ == "__main__":
    main()
