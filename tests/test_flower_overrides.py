"""A strategy override written with Flower's signatures is refused, never silently ignored."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pollen.cli.main import cli
from pollen.errors import ConfigurationError
from pollen.server import ServerApp
from pollen.server.strategy import FedAvg, FitIns


class SampleSize(FedAvg):
    """Flower's FedAvg sizes its sample with num_fit_clients; Pollen's does not call it."""

    def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
        return 1, 1


class FlowerConfigureFit(FedAvg):
    def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def, override]
        return []


class FlowerInitialize(FedAvg):
    def initialize_parameters(self, client_manager):  # type: ignore[no-untyped-def, override]
        return None


class PollenConfigureFit(FedAvg):
    """Pollen's own signature: called by the round loop, accepted."""

    def configure_fit(
        self, server_round: int, parameters: Any, node_ids: list[int], rng: random.Random
    ) -> list[tuple[int, FitIns]]:
        return super().configure_fit(server_round, parameters, node_ids, rng)


@pytest.mark.parametrize(
    ("strategy", "method", "instead"),
    [
        (SampleSize, "num_fit_clients", "override configure_fit"),
        (FlowerConfigureFit, "configure_fit", "configure_fit(server_round, parameters, node_ids"),
        (FlowerInitialize, "initialize_parameters", "initialize_parameters()"),
    ],
)
def test_a_flower_signature_override_is_refused_when_the_server_app_is_built(
    strategy: type[FedAvg], method: str, instead: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        ServerApp(strategy=strategy())

    message = str(refused.value)
    assert f"strategy {strategy.__name__} overrides {method} with Flower's signature" in message
    assert "would be ignored" in message and instead in message
    assert "\n" not in message


def test_an_override_with_pollens_signature_is_accepted() -> None:
    assert isinstance(ServerApp(strategy=PollenConfigureFit()).strategy, PollenConfigureFit)


def test_pollen_serverapp_with_such_a_strategy_exits_2_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "override_server.py").write_text(
        "from pollen.server import ServerApp\n"
        "from pollen.server.strategy import FedAvg\n\n"
        "class FlowerStyle(FedAvg):\n"
        "    def configure_fit(self, server_round, parameters, client_manager):\n"
        "        return []\n\n"
        "app = ServerApp(strategy=FlowerStyle())\n"
    )

    result = CliRunner().invoke(
        cli, ["serverapp", "override_server:app", "--dir", str(tmp_path), "--insecure"]
    )

    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "FlowerStyle overrides configure_fit" in line
