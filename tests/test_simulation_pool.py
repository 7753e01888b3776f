"""The ``process-pool`` simulation backend: virtual nodes run by forked worker processes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.errors import ConfigurationError
from pollen.records.messages import Message
from pollen.simulation import run_simulation
from pollen.simulation.in_process_grid import _Run
from pollen.simulation.pool_grid import ProcessPoolGrid
from pollen.simulation.simulate import simulate
from tests.test_simulation import (
    from_context,
    server_app,
    simulation,
    weighted_step,
    write_apps,
)

POOL = "process-pool"


@pytest.fixture(autouse=True)
def no_process_left() -> object:
    yield
    assert multiprocessing.active_children() == []  # every worker ended with its run


def test_fedavg_over_100_virtual_nodes_on_the_pool_equals_the_in_process_result(
    tmp_path: Path,
) -> None:
    app = ClientApp(client_fn=from_context)

    def run(backend: str) -> NDArrays:
        strategy_app = server_app(2, fraction_evaluate=0.0, min_available_clients=100)
        outcome = run_simulation(
            strategy_app, app, 100, backend_name=backend, output_dir=tmp_path / backend
        )
        for record in outcome.history.rounds:
            nodes = {(n.node_id, n.metrics["partition"], n.num_examples) for n in record.fit_nodes}
            assert nodes == {(i + 1, i, i + 1) for i in range(100)}
        return outcome.parameters

    pooled = run(POOL)

    np.testing.assert_array_equal(pooled[0], run("in-process")[0])
    np.testing.assert_allclose(pooled[0], [2 * weighted_step(100)] * 2, rtol=1e-6)


class PidClient(NumPyClient):
    """Counts its fits in ``context.state`` and reports the worker process it ran in."""

    def __init__(self, context: Context) -> None:
        self.state = context.state

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        fits = int(self.state.get("fits", 0)) + 1
        self.state["fits"] = fits
        return parameters, 1, {"fits": fits, "pid": os.getpid()}


def test_context_state_survives_rounds_across_different_workers(tmp_path: Path) -> None:
    app = server_app(4, fraction_evaluate=0.0)

    outcome = run_simulation(
        app,
        ClientApp(client_fn=PidClient),
        6,
        backend_name=POOL,
        backend_config={"client_resources": {"num_cpus": 0.5}},  # >= 2 workers
        output_dir=tmp_path,
    )

    pids: set[object] = set()
    for number, record in enumerate(outcome.history.rounds, start=1):
        assert [n.metrics["fits"] for n in record.fit_nodes] == [number] * 6
        pids |= {n.metrics["pid"] for n in record.fit_nodes}
    assert os.getpid() not in pids and len(pids) >= 2  # in workers, more than one


class FailingClient(NumPyClient):
    """Partition 1 raises; partition 2 kills its worker process once (run 1, round 1)."""

    def __init__(self, context: Context) -> None:
        self.partition = int(context.node_config["partition-id"])
        self.state = context.state

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        if self.partition == 1:
            raise ValueError("partition 1 has no data")
        if self.partition == 2 and config.get("die"):
            os._exit(3)
        return [p + 1 for p in parameters], 1, {}


def test_a_client_app_exception_and_a_dying_worker_fail_only_their_tasks(
    tmp_path: Path,
) -> None:
    def fit_config(server_round: int) -> Config:
        return {"die": server_round == 1}

    app = server_app(
        2,
        fraction_evaluate=0.0,
        min_available_clients=4,
        accept_failures=True,
        on_fit_config_fn=fit_config,
    )

    outcome = run_simulation(
        app, ClientApp(client_fn=FailingClient), 4, backend_name=POOL, output_dir=tmp_path
    )

    first, second = outcome.history.rounds
    failures = dict(f.split(": ", 1) for f in first.fit_failures)
    assert "ValueError: partition 1 has no data" in failures["node 2"]
    assert "worker process died (exit code 3)" in failures["node 3"]
    assert {n.node_id for n in first.fit_nodes} == {1, 4}
    assert [f.split(":")[0] for f in second.fit_failures] == ["node 2"]  # the run goes on
    assert {n.node_id for n in second.fit_nodes} == {1, 3, 4}
    np.testing.assert_allclose(outcome.parameters[0], [2.0, 2.0])


def test_no_shared_blob_or_worker_outlives_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grids: list[ProcessPoolGrid] = []
    original = ProcessPoolGrid.close

    def close(grid: ProcessPoolGrid) -> None:
        grids.append(grid)
        assert multiprocessing.active_children()  # the workers are still there
        original(grid)

    monkeypatch.setattr(ProcessPoolGrid, "close", close)
    run_simulation(
        server_app(3, fraction_evaluate=0.5),
        ClientApp(client_fn=from_context),
        8,
        backend_name=POOL,
        output_dir=tmp_path,
    )

    [grid] = grids
    assert not grid._shm_dir.exists() and grid.shared_files() == []
    assert multiprocessing.active_children() == []


def test_a_cancelled_run_leaves_no_worker_and_no_shared_blob(tmp_path: Path) -> None:
    class Slow(NumPyClient):
        def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
            import time

            time.sleep(30)
            return parameters, 1, {}

    before = set(Path("/dev/shm").glob("pollen-sim-*"))

    async def main() -> None:
        task = asyncio.create_task(
            simulate(
                server_app(1, fraction_evaluate=0.0),
                ClientApp(client_fn=lambda context: Slow()),
                4,
                backend_name=POOL,
                output_dir=tmp_path,
            )
        )
        await asyncio.sleep(1.0)
        assert multiprocessing.active_children()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())

    assert multiprocessing.active_children() == []
    assert set(Path("/dev/shm").glob("pollen-sim-*")) <= before


def test_blobs_in_shared_memory_go_when_no_open_instruction_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = ProcessPoolGrid._answer

    def answer(grid: ProcessPoolGrid, run: _Run, reply: Message) -> None:
        original(grid, run, reply)
        if not grid._named:  # no instruction open: nothing shared any more
            seen.append(len(grid.shared_files()))

    monkeypatch.setattr(ProcessPoolGrid, "_answer", answer)
    run_simulation(
        server_app(2, fraction_evaluate=0.0),
        ClientApp(client_fn=from_context),
        5,
        backend_name=POOL,
        output_dir=tmp_path,
    )

    assert seen and set(seen) == {0}


def test_more_cpus_per_client_than_the_machine_has_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="more than the"):
        run_simulation(
            server_app(1),
            ClientApp(client_fn=from_context),
            2,
            backend_name=POOL,
            backend_config={"client_resources": {"num_cpus": 10_000}},
            output_dir=tmp_path,
        )


def test_the_command_runs_on_the_process_pool(tmp_path: Path) -> None:
    output = tmp_path / "runs"
    code, text = simulation(
        tmp_path,
        "--num-supernodes",
        "4",
        "--backend",
        POOL,
        "--run-config",
        "step=2.0",
        "--output-dir",
        str(output),
    )

    assert code == 0, text
    [run] = list(output.iterdir())
    assert json.loads((run / "metrics.json").read_text())["finished"] is True
    final = np.load(run / "final_model.npz")["layer_0"]
    np.testing.assert_allclose(final, [2 * 2.0 * weighted_step(4)] * 2, rtol=1e-6)


@pytest.mark.parametrize("backend", ["in-process", POOL])
def test_ctrl_c_stops_the_command_within_2_s_and_leaves_no_worker(
    tmp_path: Path, backend: str
) -> None:
    # in-process: a ClientApp thread still in its fit once held the process open for 60 s
    pids = tmp_path / "pids"
    pids.mkdir()
    server, _ = write_apps(tmp_path)
    (tmp_path / "slow_pool_client.py").write_text(
        textwrap.dedent(
            f"""
            import os, time
            from pollen.client import ClientApp, NumPyClient

            class Slow(NumPyClient):
                def fit(self, parameters, config):
                    open(os.path.join({str(pids)!r}, str(os.getpid())), "w").close()
                    time.sleep(60)
                    return parameters, 1, {{}}

            app = ClientApp(client_fn=lambda context: Slow())
            """
        )
    )
    command = [
        sys.executable,
        "-c",
        "from pollen.cli.main import cli; cli()",
        "simulation",
        "--server-app",
        server,
        "--client-app",
        "slow_pool_client:app",
        "--num-supernodes",
        "4",
        "--backend",
        backend,
        "--app-dir",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "runs"),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not any(pids.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(pids.iterdir()), "no worker started"
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        process.wait(timeout=10)
        assert time.monotonic() - started < 2.0, process.stdout.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    workers = [int(p.name) for p in pids.iterdir()]
    time.sleep(0.2)
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []
