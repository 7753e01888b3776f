"""``client_resources``: how many virtual nodes run at once, and on which GPU."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.errors import ConfigurationError
from pollen.simulation import run_simulation
from pollen.simulation.resources import ClientResources, available_cpus, gpu_slots, visible_gpus
from tests.test_simulation import server_app


def test_nodes_in_flight_are_cpus_over_num_cpus_and_gpus_over_num_gpus() -> None:
    assert ClientResources(1, 0).concurrency(8, 0) == 8
    assert ClientResources(0.5, 0).concurrency(2, 0) == 4
    assert ClientResources(2, 0).concurrency(8, 0, num_nodes=3) == 3
    assert ClientResources(1, 0.125).concurrency(16, 1) == 8  # eight nodes share one GPU
    assert ClientResources(1, 0.5).concurrency(16, 2) == 4
    assert ClientResources(1, 1).concurrency(16, 2) == 2
    assert ClientResources(4, 0).concurrency(2, 0) == 1  # never fewer than one


def test_gpu_shares_fill_one_gpu_after_another() -> None:
    assert gpu_slots(8, 0.125, ["0"]) == ["0"] * 8
    assert gpu_slots(4, 0.5, ["0", "1"]) == ["0", "0", "1", "1"]
    assert gpu_slots(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert gpu_slots(3, 0, ["0"]) == [None, None, None]  # no GPU asked: left as it is


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def test_more_than_one_gpu_must_be_whole() -> None:
    with pytest.raises(ConfigurationError, match="whole number"):
        ClientResources.from_config({"num_gpus": 1.5})


class ReportsDevices(NumPyClient):
    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        time.sleep(0.02)  # long enough for every worker to get tasks
        return parameters, 1, {"devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset")}


def reports_devices(context: Context) -> ReportsDevices:
    return ReportsDevices()


def test_each_pool_worker_sees_only_its_share_of_the_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")  # the machine's GPUs, as CUDA names them
    outcome = run_simulation(
        server_app(1, fraction_evaluate=0.0, min_available_clients=40),
        ClientApp(client_fn=reports_devices),
        40,
        backend_name="process-pool",
        backend_config={"client_resources": {"num_cpus": available_cpus() / 4, "num_gpus": 0.5}},
        output_dir=tmp_path,
    )
    (record,) = outcome.history.rounds
    seen = {str(node.metrics["devices"]) for node in record.fit_nodes}
    assert seen == {"4", "7"}  # four workers, two on each GPU, none seeing both
    assert multiprocessing.active_children() == []


def test_gpus_the_machine_lacks_are_refused_before_any_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigurationError, match=r"num_gpus=0.5: more than the 0 GPUs"):
        run_simulation(
            server_app(1),
            ClientApp(client_fn=reports_devices),
            2,
            backend_name="process-pool",
            backend_config={"client_resources": {"num_gpus": 0.5}},
            output_dir=tmp_path,
        )
    assert not any(tmp_path.iterdir())


class ReportsGrowth(NumPyClient):
    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        return parameters, 1, {"growth": os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH", "unset")}


def test_tf_gpu_growth_is_set_for_the_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    outcome = run_simulation(
        server_app(1, fraction_evaluate=0.0),
        ClientApp(client_fn=lambda context: ReportsGrowth()),
        2,
        backend_name="process-pool",
        enable_tf_gpu_growth=True,
        output_dir=tmp_path,
    )
    (record,) = outcome.history.rounds
    assert {node.metrics["growth"] for node in record.fit_nodes} == {"true"}
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in os.environ
