"""The public API is what `__all__` says, and every name in it exists."""

from __future__ import annotations

import pollen
import pollen.client
import pollen.common
import pollen.server
import pollen.server.strategy
import pollen.simulation


def test_top_level_exports() -> None:
    assert sorted(pollen.__all__) == [
        "ClientApp",
        "Context",
        "FedAvg",
        "NumPyClient",
        "PollenError",
        "ServerApp",
        "ServerConfig",
        "__version__",
        "client",
        "common",
        "server",
        "simulation",
    ]


def test_every_exported_name_exists() -> None:
    modules = (pollen, pollen.client, pollen.common, pollen.server, pollen.server.strategy)
    for module in (*modules, pollen.simulation):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_seed_names_are_where_flower_users_look() -> None:
    assert {"ClientApp", "NumPyClient", "Client"} <= set(pollen.client.__all__)
    assert {"ServerApp", "ServerConfig"} <= set(pollen.server.__all__)
    assert "FedAvg" in pollen.server.strategy.__all__
    assert {"NDArrays", "Scalar", "Metrics", "Context"} <= set(pollen.common.__all__)
