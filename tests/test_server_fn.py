"""Flower's ``ServerApp(server_fn=...)``: a run's strategy and config built from its run config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pollen.cli.main import cli
from pollen.client import ClientApp
from pollen.common import Context
from pollen.errors import ConfigurationError
from pollen.server import ServerApp, ServerAppComponents, ServerConfig
from pollen.server.strategy import FedAvg
from pollen.simulation import run_simulation
from tests.test_simulation import from_context, weighted_step, write_apps

DEFAULTS = {"num-server-rounds": 2, "fraction-fit": 1.0}


def server_fn(context: Context) -> ServerAppComponents:
    strategy = FedAvg(
        fraction_fit=float(context.run_config["fraction-fit"]),
        fraction_evaluate=0.0,
        min_available_clients=4,
        initial_parameters=[np.zeros(2, np.float32)],
    )
    rounds = int(context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))


def test_the_run_config_chooses_the_rounds_and_the_strategys_settings(tmp_path: Path) -> None:
    app = ServerApp(server_fn=server_fn, run_config=DEFAULTS)
    client = ClientApp(client_fn=from_context)

    default = run_simulation(app, client, 4, output_dir=tmp_path / "a")
    changed = run_simulation(
        app, client, 4, run_config={"num-server-rounds": 3}, output_dir=tmp_path / "b"
    )

    assert len(default.history.rounds) == 2 and len(changed.history.rounds) == 3
    step = weighted_step(4)
    np.testing.assert_allclose(changed.parameters[0], [3 * step, 3 * step], rtol=1e-6)
    assert changed.history.run_config == {"num-server-rounds": 3, "fraction-fit": 1.0}


def test_the_command_builds_the_strategy_from_run_config_before_any_round(
    tmp_path: Path,
) -> None:
    (tmp_path / "fn_server.py").write_text(
        "from tests.test_server_fn import DEFAULTS, server_fn\n"
        "from pollen.server import ServerApp\n"
        "app = ServerApp(server_fn=server_fn, run_config={**DEFAULTS, 'step': 1.0})\n"
    )
    _, client = write_apps(tmp_path)
    output = tmp_path / "runs"
    args = ["simulation", "--server-app", "fn_server:app", "--client-app", client,
            "--app-dir", str(tmp_path), "--output-dir", str(output)]  # fmt: skip

    done = CliRunner().invoke(
        cli, [*args, "--num-supernodes", "4", "--run-config", "num-server-rounds=1"]
    )
    assert done.exit_code == 0, done.output
    (run,) = output.iterdir()
    assert len(json.loads((run / "metrics.json").read_text())["rounds"]) == 1

    refused = CliRunner().invoke(cli, [*args, "--num-supernodes", "3"])
    assert refused.exit_code == 2  # the minimum of the strategy server_fn builds
    assert "min_available_clients (4)" in refused.output, refused.output


def test_server_fn_with_a_strategy_or_a_wrong_return_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="give either server_fn"):
        ServerApp(server_fn=server_fn, strategy=FedAvg())
    with pytest.raises(ConfigurationError, match="return ServerAppComponents"):
        ServerApp(server_fn=lambda context: FedAvg()).for_run({})  # type: ignore[arg-type,return-value]
    refused = ServerApp(server_fn=lambda context: ServerAppComponents(server=object()))
    with pytest.raises(ConfigurationError, match=r"ServerAppComponents\(server=...\)"):
        refused.for_run({})
