"""What a finished run leaves on disk: a model with named arrays and a metrics.json that says
what ran, when, with which settings, and what each node reported in each round."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import numpy as np

from pollen.server import ServerApp, ServerConfig
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.server.strategy import FedAvg
from pollen.transport.addresses import Address
from tests.apps import numpy_apps
from tests.conftest import federation


def _run(tmp_path: Path, app: ServerApp, run_config: dict[str, object]) -> Path:
    async def scenario() -> Path:
        configs: list[dict[str, object]] = [{"examples": 1}, {"examples": 3}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            config = ServerAppConfig(
                superlink=Address("127.0.0.1", link.driver_port),
                app_name="numpy_apps:named",
                run_config=run_config,  # type: ignore[arg-type]
                output_root=tmp_path / "runs",
            )
            _, directory = await run_server_app(app, config)
        return directory

    return asyncio.run(scenario())


def _app(initial: object) -> ServerApp:
    strategy = FedAvg(min_available_clients=2, initial_parameters=initial)  # type: ignore[arg-type]
    return ServerApp(config=ServerConfig(num_rounds=2), strategy=strategy)


def test_a_state_dict_given_as_initial_parameters_names_the_saved_arrays(tmp_path: Path) -> None:
    named = {"fc.weight": np.zeros((2, 3), np.float32), "bn.num_batches_tracked": np.array(0)}

    directory = _run(tmp_path, _app(named), {})

    with np.load(directory / "final_model.npz") as model:
        assert model.files == ["fc.weight", "bn.num_batches_tracked"]
        np.testing.assert_array_equal(model["fc.weight"], np.full((2, 3), 2, np.float32))
        assert model["bn.num_batches_tracked"].shape == () and model["bn.num_batches_tracked"] == 2


def test_unnamed_arrays_are_saved_as_layers_in_model_order(tmp_path: Path) -> None:
    directory = _run(tmp_path, _app([a.copy() for a in numpy_apps.INITIAL]), {})

    with np.load(directory / "final_model.npz") as model:
        assert model.files == ["layer_0", "layer_1"]


def test_metrics_json_says_what_ran_when_and_what_each_node_reported(tmp_path: Path) -> None:
    directory = _run(tmp_path, _app([a.copy() for a in numpy_apps.INITIAL]), {"lr": 0.5})

    document = json.loads((directory / "metrics.json").read_text())
    assert document["app"] == "numpy_apps:named" and document["run_config"] == {"lr": 0.5}
    assert len(document["superlink_id"]) == 16
    started = datetime.fromisoformat(document["started_at"])
    finished = datetime.fromisoformat(document["finished_at"])
    first, second = document["rounds"]
    assert started <= datetime.fromisoformat(first["started_at"]) <= finished
    assert datetime.fromisoformat(first["started_at"]) <= datetime.fromisoformat(
        second["started_at"]
    )
    fits = sorted((n["num_examples"], n["metrics"]["train_loss"]) for n in first["fit_nodes"])
    assert fits == [(1, 1.0), (3, 1 / 3)]
    node_ids = {n["node_id"] for n in first["fit_nodes"]}
    assert len(node_ids) == 2 and {n["node_id"] for n in first["evaluate_nodes"]} == node_ids
    # each node evaluates the averaged model of round 1: every weight 1, six weights
    assert [n["loss"] for n in first["evaluate_nodes"]] == [6.0, 6.0]
    assert document["finished"] and document["final_model"] == "final_model.npz"


def test_metrics_json_holds_one_round_per_line_and_reads_back_exactly(tmp_path: Path) -> None:
    from pollen.server.checkpoint import write_metrics

    rounds = [{"round": r, "fit_nodes": [{"node_id": 1, "metrics": {"loss": 0.5}}]} for r in (1, 2)]
    document = {"run_id": 3, "rounds": rounds, "run_config": {"lr": 0.1}, "fit_failures": []}

    write_metrics(tmp_path, document)

    text = (tmp_path / "metrics.json").read_text()
    assert json.loads(text) == document
    assert [line.strip() for line in text.splitlines() if '"round"' in line] == [
        json.dumps(r) + "," for r in rounds[:1]
    ] + [json.dumps(rounds[1])]
