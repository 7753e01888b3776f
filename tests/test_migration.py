"""Apps written in the seed era's Flower style run on Pollen with `flwr` replaced by `pollen` in
their imports, and docs/migrating-from-flower.md says truly what maps and what does not."""

from __future__ import annotations

import ast
import asyncio
import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pollen.client import ClientApp
from pollen.common import bytes_to_ndarray, ndarray_to_bytes
from pollen.server import ServerApp
from pollen.server.round_loop import RunOutcome
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.transport.addresses import Address
from tests.conftest import APPS_DIR, REPO_ROOT, federation

FLOWER_STYLE = APPS_DIR / "flower_style"
MIGRATION_DOC = REPO_ROOT / "docs" / "migrating-from-flower.md"

# The public names of Flower 1.8.0 (the `__all__` lists of its wheel), and modules it has.
FLOWER_18: dict[str, set[str]] = {
    "flwr": {"client", "common", "server", "simulation"},
    "flwr.client": {
        "Client",
        "ClientApp",
        "ClientFn",
        "NumPyClient",
        "run_client_app",
        "start_client",
        "start_numpy_client",
    },
    "flwr.common": {
        *("Array", "array_from_numpy", "bytes_to_ndarray", "ClientMessage", "Code", "Config"),
        *("ConfigsRecord", "configure", "Context", "DisconnectRes", "EvaluateIns"),
        *("EvaluateRes", "event", "EventType", "FitIns", "FitRes", "Error", "GetParametersIns"),
        *("GetParametersRes", "GetPropertiesIns", "GetPropertiesRes", "GRPC_MAX_MESSAGE_LENGTH"),
        *("log", "Message", "MessageType", "MessageTypeLegacy", "DEFAULT_TTL", "Metadata"),
        *("Metrics", "MetricsAggregationFn", "MetricsRecord", "ndarray_to_bytes", "now"),
        *("NDArray", "NDArrays", "ndarrays_to_parameters", "Parameters"),
        *("parameters_to_ndarrays", "ParametersRecord", "Properties", "ReconnectIns"),
        *("RecordSet", "Scalar", "ServerMessage", "Status", "typing", "logger"),
    },
    "flwr.server": {
        *("ClientManager", "Driver", "History", "LegacyContext", "run_driver_api"),
        *("run_fleet_api", "run_server_app", "run_superlink", "Server", "ServerApp"),
        *("ServerConfig", "SimpleClientManager", "start_driver", "start_server", "strategy"),
        "workflow",
    },
    "flwr.server.strategy": {
        *("Bulyan", "DPFedAvgAdaptive", "DPFedAvgFixed", "FedAdagrad", "FedAdam", "FedAvg"),
        *("FedAvgAndroid", "FedAvgM", "FedMedian", "FedOpt", "FedProx", "FedTrimmedAvg"),
        *("FedXgbBagging", "FedXgbCyclic", "FedXgbNnAvg", "FedYogi", "FaultTolerantFedAvg"),
        *("Krum", "QFedAvg", "Strategy", "fedavg"),
    },
    "flwr.server.strategy.fedavg": {"FedAvg"},
    "flwr.simulation": {"start_simulation", "run_simulation_from_cli", "run_simulation"},
}


def is_flower_name(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    return name in FLOWER_18.get(module, set())


def resolve(dotted: str) -> Any:
    """The module or attribute ``dotted`` names; LookupError when Pollen has no such thing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                raise LookupError(dotted)
            found = getattr(found, attribute)
        return found
    raise LookupError(dotted)


def run_federation(
    tmp_path: Path, client_app: ClientApp, server_app: ServerApp, configs: list[dict[str, Any]]
) -> RunOutcome:
    """A real SuperLink on 127.0.0.1:0 with one in-process SuperNode per config."""

    async def scenario() -> RunOutcome:
        async with federation(tmp_path, client_app, configs) as (link, _):
            config = ServerAppConfig(
                superlink=Address("127.0.0.1", link.driver_port),
                output_root=tmp_path / "runs",
                connect_timeout=5,
            )
            outcome, _directory = await run_server_app(server_app, config)
            return outcome

    return asyncio.run(scenario())


def flower_style(name: str) -> ModuleType:
    return importlib.import_module(f"tests.apps.flower_style.{name}")


def test_the_seeds_client_and_server_as_flower_users_wrote_them(tmp_path: Path) -> None:
    """``import pollen as fl``, ``fl.client.NumPyClient``, ``client_fn(cid: str)``,
    ``fl.client.ClientApp``, ``FedAvg`` from ``...strategy.fedavg``, ``fl.server.ServerConfig``."""
    client, server = flower_style("seed_client"), flower_style("seed_server")
    outcome = run_federation(tmp_path, client.app, server.app, [{}, {}])
    assert [r.fit_results for r in outcome.history.rounds] == [2, 2]
    assert [r.evaluate_results for r in outcome.history.rounds] == [0, 0]  # fraction_evaluate=0
    for record in outcome.history.rounds:
        assert sorted(record.fit_metrics) == [
            "train_accuracy",
            "train_loss",
            "val_accuracy",
            "val_loss",
        ]
    first, last = outcome.history.rounds[0], outcome.history.rounds[-1]
    assert float(last.fit_metrics["train_loss"]) < float(first.fit_metrics["train_loss"])
    # client_fn(cid) got the node id as a string (an initial get_parameters and 2 fits a round)
    assert client.seen_cids and all(isinstance(c, str) and c.isdigit() for c in client.seen_cids)
    assert len(set(client.seen_cids)) == 2


def test_client_fn_with_context_and_every_fedavg_argument(tmp_path: Path) -> None:
    client, server = flower_style("context_client"), flower_style("strategy_server")
    configs: list[dict[str, Any]] = [{"partition-id": 0}, {"partition-id": 1}]
    outcome = run_federation(tmp_path, client.app, server.app, configs)
    rounds = outcome.history.rounds
    assert [(r.fit_results, r.evaluate_results) for r in rounds] == [(2, 2), (2, 2)]
    assert all(r.fit_metrics["lr"] == pytest.approx(0.1) for r in rounds)  # on_fit_config_fn
    assert [r.evaluate_metrics["round"] for r in rounds] == [1, 2]  # on_evaluate_config_fn
    # evaluate_fn ran on the server after each round, on the aggregated model
    assert [server_round for server_round, _ in server.server_evaluations] == [1, 2]
    assert [r.centralized_metrics["server_mse"] for r in rounds] == [
        loss for _, loss in server.server_evaluations
    ]
    assert rounds[1].centralized_loss < rounds[0].centralized_loss  # it learns
    # initial_parameters=ndarrays_to_parameters(...) set the shapes of the final model
    assert [a.shape for a in outcome.parameters] == [(3,), (1,)]


def test_flower_style_apps_import_only_what_flower_18_had() -> None:
    """The apps are Flower apps: with pollen -> flwr, every name they import is Flower's."""
    for path in sorted(FLOWER_STYLE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pollen"):
                module = "flwr" + (node.module or "").removeprefix("pollen")
                for alias in node.names:
                    assert is_flower_name(f"{module}.{alias.name}"), f"{path.name}: {alias.name}"
        for match in re.finditer(r"\bfl\.(\w+)\.(\w+)", path.read_text()):
            assert is_flower_name(f"flwr.{match[1]}.{match[2]}"), f"{path.name}: {match[0]}"


def _table(section: str) -> list[tuple[str, str]]:
    """(first column, second column) of the table under ``## section`` in the migration doc."""
    text = MIGRATION_DOC.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`flwr"):
            rows.append((cells[0].strip("`"), cells[1]))
    assert rows, f"no table under ## {section}"
    return rows


@pytest.mark.parametrize("section", ["Names that map unchanged", "Same name, different shape"])
def test_every_name_the_doc_maps_exists_in_pollen(section: str) -> None:
    for flower, pollen in _table(section):
        assert is_flower_name(flower), f"{flower} is not a Flower 1.8 name"
        assert pollen == f"`{flower.replace('flwr', 'pollen', 1)}`", (flower, pollen)
        resolve(pollen.strip("`"))  # raises LookupError when it is not there


def test_no_name_the_doc_says_is_missing_exists_in_pollen() -> None:
    for flower, _instead in _table("Not in Pollen"):
        assert is_flower_name(flower), f"{flower} is not a Flower 1.8 name"
        with pytest.raises(LookupError):
            resolve(flower.replace("flwr", "pollen", 1))


def test_parameters_helpers_match_flower() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(bytes_to_ndarray(ndarray_to_bytes(array)), array)
    assert ndarray_to_bytes(array).startswith(b"\x93NUMPY")  # .npy, as Flower's
