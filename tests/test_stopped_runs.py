"""A run that stops early (a signal, lost quorum) keeps its model, says how to go on, and
resumes; run outputs are never written over, not even after the SuperLink's database
was replaced."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import numpy as np
import pytest

from pollen.cli.local_federation import Child, LocalFederation
from pollen.errors import CallRefused, ConfigurationError, RunError
from pollen.server.driver import DriverClient
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.server import open_superlink
from pollen.transport.addresses import Address
from tests.apps import numpy_apps
from tests.conftest import (
    federation,
    resume_to_the_end,
    start_node,
    stop_four_rounds_after_round_two,
    superlink_config,
    wait_until,
)


def _config(tmp_path: Path, driver_port: int, **extra: object) -> ServerAppConfig:
    extra.setdefault("output_root", tmp_path / "runs")
    return ServerAppConfig(
        superlink=Address("127.0.0.1", driver_port),
        connect_timeout=5,
        command="pollen serverapp numpy_apps:four_rounds",
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_server_app_stopped_by_a_signal_saves_its_model_and_its_run_resumes(
    tmp_path: Path, signum: signal.Signals
) -> None:
    fed = LocalFederation(tmp_path / "fed", clients=0)
    fed.start_superlink()
    stopped: list[Child] = []

    def interrupt(first: Child) -> None:
        first.process.send_signal(signum)
        assert first.process.wait(timeout=60) == 1, first.log()
        stopped.append(first)

    try:
        command, run_id = stop_four_rounds_after_round_two(
            fed, tmp_path / "training", 0.3, interrupt
        )
        said = stopped[0].log().strip().splitlines()[-1]
        assert said.startswith(f"error: run {run_id} stopped after round 2 of 4: interrupted")
        assert said.endswith(f"--resume {run_id}"), said
        output = fed.workdir / "runs" / run_id
        with np.load(output / "last_model.npz") as model:
            np.testing.assert_array_equal(model["layer_0"], np.full((2, 3), 2, np.float32))
        resume_to_the_end(fed, command, run_id)
    finally:
        fed.stop()
    document = json.loads((output / "metrics.json").read_text())
    assert document["finished"] and [r["round"] for r in document["rounds"]] == [1, 2, 3, 4]
    with np.load(output / "final_model.npz") as model:
        np.testing.assert_array_equal(model["layer_0"], np.full((2, 3), 4, np.float32))


def test_a_run_that_lost_its_quorum_resumes_once_nodes_are_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {"behaviour": "raise"}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, nodes):
            app = numpy_apps.make_server_app(num_rounds=2)
            with pytest.raises(RunError) as stopped:
                await run_server_app(app, _config(tmp_path, link.driver_port))
            message = str(stopped.value)
            assert "run 1 stopped after round 0 of 2: round 1: 1 usable fit result" in message
            assert message.endswith("pollen serverapp numpy_apps:four_rounds --resume 1")
            assert link.dispatcher.state.get_run(1).status == "failed"
            # the faulty node is replaced by a good one, and the run goes on
            nodes[1].stop.set()
            await nodes[1].task
            nodes.append(start_node(numpy_apps.app, link.fleet_port))
            await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2)
            outcome, directory = await run_server_app(
                numpy_apps.make_server_app(num_rounds=2),
                _config(tmp_path, link.driver_port, resume=1),
            )
        np.testing.assert_array_equal(outcome.parameters[0], np.full((2, 3), 2, np.float32))
        with np.load(directory / "last_model.npz") as model:  # what the stop wrote: round 0
            np.testing.assert_array_equal(model["layer_0"], np.zeros((2, 3), np.float32))

    asyncio.run(scenario())


def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port))
            try:
                run_id, superlink_id = await driver.create_run("app", {})
                await driver.finish_run(run_id, "failed", "stopped")
                refusals = (
                    ("0" * 64, superlink_id, "is no longer on this SuperLink"),
                    ("", "another", "of another SuperLink database"),
                )
                for digest, identity, reason in refusals:
                    with pytest.raises(CallRefused) as refused:
                        await driver.resume_run(run_id, digest, identity)
                    assert refused.value.status == "failed_precondition"
                    assert reason in refused.value.details
                    assert link.dispatcher.state.get_run(run_id).status == "failed"
            finally:
                await driver.close()

    asyncio.run(scenario())


def test_outputs_of_a_run_of_an_earlier_database_are_never_written_over(tmp_path: Path) -> None:
    async def one_run(database: str) -> Path:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path / database, numpy_apps.app, configs) as (link, _):
            _, directory = await run_server_app(
                numpy_apps.make_server_app(num_rounds=1), _config(tmp_path, link.driver_port)
            )
        return directory

    async def scenario() -> None:
        (tmp_path / "first").mkdir()
        (tmp_path / "second").mkdir()
        first = await one_run("first")
        before = {p.name: p.read_bytes() for p in first.iterdir()}
        second = await one_run("second")  # a new database: run ids start at 1 again
        assert first.name == "1" and second.name.startswith("1-") and second != first
        assert {p.name: p.read_bytes() for p in first.iterdir()} == before
        assert json.loads((second / "metrics.json").read_text())["finished"]

    asyncio.run(scenario())


def test_an_output_dir_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("")
        async with open_superlink(superlink_config(tmp_path)) as link:
            config = _config(tmp_path, link.driver_port, output_root=blocker / "runs")
            with pytest.raises(ConfigurationError, match=r"^--output-dir .*not-a-folder/runs"):
                await run_server_app(numpy_apps.make_server_app(), config)
            assert link.dispatcher.state.get_run(1) is None  # no run was started

    asyncio.run(scenario())
