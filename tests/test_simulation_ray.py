"""The ``ray`` simulation backend, against a real local Ray (2 CPUs), not a mock."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pollen.cli.main import cli
from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.errors import ConfigurationError
from pollen.server import ServerConfig
from pollen.server.strategy import FedAvg
from pollen.simulation import backends, run_simulation, start_simulation
from tests.test_simulation import (
    PartitionClient,
    from_context,
    server_app,
    weighted_step,
    write_apps,
)

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

RAY = "ray"


def ray_processes(marker: str) -> list[str]:
    """Command lines of the live processes that name ``marker`` (Ray's temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def ray_simulation(tmp_path: Path, server: str, client: str, *extra: str) -> list[str]:
    """``pollen simulation`` arguments for ``--backend ray``, outputs under tmp_path/runs."""
    return ["simulation", "--server-app", server, "--client-app", client,
            "--app-dir", str(tmp_path), "--backend", RAY,
            "--output-dir", str(tmp_path / "runs"), *extra]  # fmt: skip


POLLEN = [sys.executable, "-m", "pollen"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """One local Ray of 2 CPUs for this module, in a temp folder of its own (a short
    path: Ray's socket names must fit); every process of it ends with the module."""
    folder = tempfile.mkdtemp(prefix="pray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=folder)
    try:
        yield folder
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    assert ray_processes(folder) == []


def test_fedavg_over_100_virtual_nodes_on_ray_is_the_weighted_mean(
    local_ray: str, tmp_path: Path
) -> None:
    app = server_app(2, fraction_evaluate=0.0, min_available_clients=100)
    outcome = run_simulation(
        app, ClientApp(client_fn=from_context), 100, backend_name=RAY, output_dir=tmp_path
    )
    expected = 2 * weighted_step(100)
    np.testing.assert_allclose(outcome.parameters[0], [expected, expected], rtol=1e-6)
    for number, record in enumerate(outcome.history.rounds, start=1):
        nodes = {(n.node_id, n.metrics["partition"], n.metrics["fits"]) for n in record.fit_nodes}
        assert nodes == {(i + 1, i, number) for i in range(100)}  # Context.state kept on Ray
    assert (tmp_path / str(outcome.run_id) / "final_model.npz").is_file()
    assert ray.is_initialized()  # a Ray the caller started stays up


class DiesOnce(NumPyClient):
    """Partition 3 ends its process in its first fit (the marker file says it did)."""

    def __init__(self, partition: int, marker: Path) -> None:
        self.partition = partition
        self.marker = marker

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        if self.partition == 3 and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        if self.partition == 5:
            raise ValueError("partition 5 has no data")
        return [p + 1 for p in parameters], 1, {}


def test_a_dying_actor_and_an_app_exception_fail_only_their_tasks(
    local_ray: str, tmp_path: Path
) -> None:
    marker = tmp_path / "died"

    def client_fn(context: Context) -> DiesOnce:
        return DiesOnce(int(context.node_config["partition-id"]), marker)

    app = server_app(2, fraction_evaluate=0.0, min_available_clients=8, accept_failures=True)
    outcome = run_simulation(
        app, ClientApp(client_fn=client_fn), 8, backend_name=RAY, output_dir=tmp_path
    )
    first, second = outcome.history.rounds
    assert first.fit_results == 6 and len(first.fit_failures) == 2
    assert any("worker process died" in reason for reason in first.fit_failures)
    assert any("partition 5 has no data" in reason for reason in first.fit_failures)
    assert second.fit_results == 7  # a fresh actor took over; partition 5 fails again
    np.testing.assert_allclose(outcome.parameters[0], [2.0, 2.0])


def test_client_resources_beyond_the_cluster_are_refused_before_any_round(
    local_ray: str, tmp_path: Path
) -> None:
    app = server_app(1)
    with pytest.raises(ConfigurationError, match=r"num_cpus=3: more than the 2 CPUs"):
        run_simulation(
            app,
            ClientApp(client_fn=from_context),
            2,
            backend_name=RAY,
            backend_config={"client_resources": {"num_cpus": 3}},
            output_dir=tmp_path,
        )
    assert not (tmp_path).exists() or list(tmp_path.iterdir()) == []


def test_the_command_starts_a_local_ray_and_leaves_no_process_behind(tmp_path: Path) -> None:
    server, client = write_apps(tmp_path)
    folder = tempfile.mkdtemp(prefix="pray", dir="/tmp")
    config = f'{{"init_args": {{"num_cpus": 2, "_temp_dir": "{folder}"}}}}'
    try:
        done = subprocess.run(
            [
                *POLLEN,
                *ray_simulation(
                    tmp_path, server, client, "--num-supernodes", "4", "--backend-config", config
                ),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        (run,) = (tmp_path / "runs").iterdir()
        assert (run / "final_model.npz").is_file()
        assert ray_processes(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_without_ray_installed_the_backend_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = write_apps(tmp_path)
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(
        cli, ray_simulation(tmp_path, server, client, "--num-supernodes", "2")
    )
    assert result.exit_code == 2
    assert "pip install 'pollen[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_ctrl_c_stops_a_ray_simulation_within_2_s_and_leaves_no_process(tmp_path: Path) -> None:
    server, _ = write_apps(tmp_path)
    started = tmp_path / "started"
    (tmp_path / "slow_ray_client.py").write_text(
        "import time\n"
        "from pollen.client import ClientApp, NumPyClient\n"
        "class Slow(NumPyClient):\n"
        "    def fit(self, parameters, config):\n"
        f"        open({str(started)!r}, 'w').close()\n"
        "        time.sleep(60)\n"
        "        return parameters, 1, {}\n"
        "app = ClientApp(client_fn=lambda context: Slow())\n"
    )
    folder = tempfile.mkdtemp(prefix="pray", dir="/tmp")
    config = json.dumps({"init_args": {"num_cpus": 2, "_temp_dir": folder}})
    args = ray_simulation(tmp_path, server, "slow_ray_client:app", "--backend-config", config)
    command = [*POLLEN, *args, "--num-supernodes", "4"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "no virtual node started"
        interrupted = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        process.wait(timeout=10)
        assert time.monotonic() - interrupted < 2.0, process.stdout.read()  # type: ignore[union-attr]
        assert ray_processes(folder) == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def partition_client(cid: str) -> NumPyClient:
    return PartitionClient(int(cid))


def test_start_simulation_with_ray_init_args_runs_on_ray(local_ray: str, tmp_path: Path) -> None:
    strategy = FedAvg(initial_parameters=[np.zeros(2, np.float32)], min_available_clients=10)
    history = start_simulation(
        client_fn=partition_client,
        num_clients=10,
        config=ServerConfig(num_rounds=2),
        strategy=strategy,
        client_resources={"num_cpus": 1},
        ray_init_args={"num_cpus": 2},  # Ray runs already: joined as it is
        output_dir=tmp_path,
    )
    step = weighted_step(10)
    np.testing.assert_allclose(
        [loss for _, loss in history.losses_distributed], [step, 2 * step], rtol=1e-6
    )


def start_ray_head(folder: str) -> tuple[subprocess.Popen[str], str]:
    """``ray start --head --block`` (2 CPUs, ports the OS picks) and its address."""
    ray_command = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_command, "start", "--head", "--port=0", "--num-cpus=2", "--block",
         f"--temp-dir={folder}", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert head.stdout is not None
    for line in head.stdout:
        found = re.search(r"ray start --address='([^']+)'", line)
        if found:
            return head, found.group(1)
    raise AssertionError(f"the Ray head did not start (exit code {head.wait()})")


def stop_ray_head(head: subprocess.Popen[str], folder: str) -> None:
    """Ctrl-C the head (SIGTERM drains for 30 s); kill by PID whatever is left of it."""
    if head.poll() is None:
        os.killpg(head.pid, signal.SIGINT)
        head.wait(timeout=30)
    deadline = time.monotonic() + 15
    while ray_processes(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ray_processes(folder)
    for entry in left:
        os.kill(int(entry.split(":")[0]), signal.SIGKILL)
    assert left == []


def test_the_command_joins_a_running_cluster_at_ray_address(tmp_path: Path) -> None:
    server, client = write_apps(tmp_path)
    folder = tempfile.mkdtemp(prefix="pray", dir="/tmp")
    head, address = start_ray_head(folder)
    try:
        done = subprocess.run(
            [*POLLEN, *ray_simulation(tmp_path, server, client, "--num-supernodes", "4")],
            capture_output=True, text=True, timeout=90, cwd=tmp_path,
            env={**os.environ, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        (run,) = (tmp_path / "runs").iterdir()
        assert json.loads((run / "metrics.json").read_text())["finished"] is True
        assert head.poll() is None  # a cluster the simulation joined keeps running
    finally:
        stop_ray_head(head, folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_client_app_the_workers_cannot_load_is_refused_before_any_round(
    local_ray: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = write_apps(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(client.split(":")[0])
    (tmp_path / f"{module.__name__}.py").unlink()  # importable here, not on the workers
    with pytest.raises(ConfigurationError, match=r"could not load the ClientApp \(ModuleNotFound"):
        run_simulation(server_app(1), module.app, 2, backend_name=RAY, output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert ray.is_initialized()  # the caller's Ray stays up


def test_ray_actors_see_only_their_share_of_the_gpus(tmp_path: Path) -> None:
    server, _ = write_apps(tmp_path, min_available=20)
    (tmp_path / "gpu_ray_client.py").write_text(
        "import os, time\n"
        "from pollen.client import ClientApp, NumPyClient\n"
        "class Devices(NumPyClient):\n"
        "    def fit(self, parameters, config):\n"
        "        time.sleep(0.05)\n"
        "        return parameters, 1, {'devices': os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n"
        "app = ClientApp(client_fn=lambda context: Devices())\n"
    )
    folder = tempfile.mkdtemp(prefix="pray", dir="/tmp")
    # Ray hands out GPU ids by its own count: two declared GPUs, four actors of half a GPU
    config = json.dumps({
        "client_resources": {"num_cpus": 0.5, "num_gpus": 0.5},
        "init_args": {"num_cpus": 2, "num_gpus": 2, "_temp_dir": folder},
    })  # fmt: skip
    args = ray_simulation(tmp_path, server, "gpu_ray_client:app", "--backend-config", config)
    try:
        done = subprocess.run([*POLLEN, *args, "--num-supernodes", "20"], capture_output=True,
                              text=True, timeout=90, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        (run,) = (tmp_path / "runs").iterdir()
        first = json.loads((run / "metrics.json").read_text())["rounds"][0]
        assert {node["metrics"]["devices"] for node in first["fit_nodes"]} == {"0", "1"}
        assert ray_processes(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)
