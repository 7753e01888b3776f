"""A real SuperLink on 127.0.0.1:0 with in-process SuperNodes and ServerApps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from pollen.errors import ConnectionFailed, RunError
from pollen.server.driver import DriverClient
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.server import open_superlink
from pollen.transport.addresses import Address
from tests.apps import numpy_apps
from tests.conftest import federation, free_port, start_node, superlink_config, wait_until


def server_config(tmp_path: Path, driver_port: int, **extra: object) -> ServerAppConfig:
    return ServerAppConfig(
        superlink=Address("127.0.0.1", driver_port),
        output_root=tmp_path / "runs",
        connect_timeout=5,
        **extra,  # type: ignore[arg-type]
    )


def test_three_rounds_with_two_nodes_average_and_write_outputs(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"examples": 1}, {"examples": 3}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            outcome, directory = await run_server_app(
                numpy_apps.make_server_app(num_rounds=3),
                server_config(tmp_path, link.driver_port),
            )
        # every node adds 1 per round, so the average moves by exactly 1 per round
        np.testing.assert_array_equal(outcome.parameters[0], np.full((2, 3), 3, np.float32))
        np.testing.assert_array_equal(outcome.parameters[1], np.arange(4) + 3)
        assert [r.fit_results for r in outcome.history.rounds] == [2, 2, 2]
        # train_loss weighted by examples: (1*1 + 3*(1/3)) / 4
        assert outcome.history.rounds[0].fit_metrics["train_loss"] == pytest.approx(0.5)
        assert outcome.history.rounds[-1].evaluate_metrics == {"accuracy": 0.5}
        with np.load(directory / "final_model.npz") as saved:
            np.testing.assert_array_equal(saved["layer_0"], outcome.parameters[0])
        metrics = json.loads((directory / "metrics.json").read_text())
        assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]

    asyncio.run(scenario())


def test_global_model_blob_is_stored_once_for_all_nodes(tmp_path: Path) -> None:
    async def scenario() -> None:
        marker = tmp_path / "training"
        slow = {"behaviour": "slow", "marker": str(marker), "delay": 0.5}
        configs: list[dict[str, object]] = [slow, slow, slow]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            app = numpy_apps.make_server_app(num_rounds=1, min_available=3, fraction_evaluate=0)
            run = asyncio.create_task(
                run_server_app(app, server_config(tmp_path, link.driver_port))
            )
            await wait_until(marker.exists)
            assert len(link.blobs.stored()) == 1  # three tasks, one copy of the model
            await run

    asyncio.run(scenario())


def test_blobs_are_deleted_when_the_run_no_longer_needs_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"examples": 1}, {"examples": 3}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            await run_server_app(
                numpy_apps.make_server_app(num_rounds=3),
                server_config(tmp_path, link.driver_port),
            )
            assert link.blobs.stored() == []  # no orphan files after a run
            assert not any(p.name.endswith(".part") for p in link.blobs.root.iterdir())
            state = link.dispatcher.state
            assert state.unheld_blobs(created_before=float("inf")) == []

    asyncio.run(scenario())


def test_failing_client_app_becomes_an_error_result_and_the_node_stays(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"behaviour": "raise"}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, nodes):
            outcome, _ = await run_server_app(
                numpy_apps.make_server_app(num_rounds=2, min_fit=1),
                server_config(tmp_path, link.driver_port),
            )
            assert all(not n.task.done() for n in nodes)
        first = outcome.history.rounds[0]
        assert first.fit_results == 1
        assert "ValueError: fit failed on purpose" in first.fit_failures[0]
        assert len(outcome.history.rounds) == 2

    asyncio.run(scenario())


def test_wrong_shapes_are_rejected_with_the_reason_and_the_round_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"behaviour": "wrong-shape"}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            outcome, _ = await run_server_app(
                numpy_apps.make_server_app(num_rounds=1, min_fit=1),
                server_config(tmp_path, link.driver_port),
            )
        record = outcome.history.rounds[0]
        assert record.fit_results == 1
        assert "result rejected" in record.fit_failures[0]
        assert "(5,)" in record.fit_failures[0] and "(2, 3)" in record.fit_failures[0]
        np.testing.assert_array_equal(outcome.parameters[0], np.ones((2, 3), np.float32))

    asyncio.run(scenario())


def test_too_few_nodes_ends_with_a_message_saying_how_many(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            app = numpy_apps.make_server_app(min_available=3, node_wait_timeout=0.3)
            with pytest.raises(RunError, match="only 2 of 3 required nodes connected"):
                await run_server_app(app, server_config(tmp_path, link.driver_port))

    asyncio.run(scenario())


def test_a_node_that_left_is_never_sampled_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, nodes):
            await nodes[0].leave()
            assert len(link.dispatcher.online_nodes()) == 1
            outcome, _ = await run_server_app(
                numpy_apps.make_server_app(num_rounds=2, min_available=1, min_fit=1),
                server_config(tmp_path, link.driver_port),
            )
            assert [r.fit_results for r in outcome.history.rounds] == [1, 1]
            assert all(not r.fit_failures for r in outcome.history.rounds)
            assert len(link.dispatcher.state.list_nodes("left")) == 1

    asyncio.run(scenario())


def test_runs_at_once_and_one_after_another_share_the_same_nodes(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, nodes):
            config = server_config(tmp_path, link.driver_port)
            both = await asyncio.gather(
                run_server_app(numpy_apps.make_server_app(num_rounds=2), config),
                run_server_app(numpy_apps.make_server_app(num_rounds=3), config),
            )
            after, _ = await run_server_app(numpy_apps.make_server_app(num_rounds=1), config)
            assert not any(n.task.done() for n in nodes)
        run_ids = {both[0][0].run_id, both[1][0].run_id, after.run_id}
        assert len(run_ids) == 3
        assert float(both[1][0].parameters[0][0, 0]) == 3.0

    asyncio.run(scenario())


def test_server_app_gives_up_when_the_superlink_is_unreachable(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = server_config(tmp_path, free_port())
        config.connect_timeout = 0.3
        with pytest.raises(ConnectionFailed, match=r"did not answer within 0\.3 s"):
            await run_server_app(numpy_apps.make_server_app(), config)

    asyncio.run(scenario())


def test_node_waits_for_a_late_superlink_and_survives_its_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        config = superlink_config(tmp_path, fleet_address=Address("127.0.0.1", port))
        node = start_node(numpy_apps.app, port)
        await asyncio.sleep(0.5)  # the node is retrying against nothing
        async with open_superlink(config) as link:
            await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1)
            first_id = link.dispatcher.online_nodes()[0]
        async with open_superlink(config) as link:
            await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1)
            assert link.dispatcher.online_nodes() == [first_id]  # same node id after restart
            outcome, _ = await run_server_app(
                numpy_apps.make_server_app(num_rounds=1, min_available=1, min_fit=1),
                server_config(tmp_path, link.driver_port),
            )
            assert outcome.history.rounds[0].fit_results == 1
            await node.leave()

    asyncio.run(scenario())


def test_node_that_disconnects_mid_task_fails_its_task_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        marker = tmp_path / "started"
        configs: list[dict[str, object]] = [
            {},
            {"behaviour": "slow", "marker": str(marker), "delay": 3},
        ]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, nodes):
            run = asyncio.create_task(
                run_server_app(
                    numpy_apps.make_server_app(
                        num_rounds=1, min_available=2, min_fit=1, fraction_evaluate=0
                    ),
                    server_config(tmp_path, link.driver_port),
                )
            )
            await wait_until(marker.exists)
            nodes[1].task.cancel()  # the node's connection drops while its ClientApp runs
            started = asyncio.get_running_loop().time()
            outcome, _ = await asyncio.wait_for(run, 5)
            assert asyncio.get_running_loop().time() - started < 1.0
        record = outcome.history.rounds[0]
        assert record.fit_results == 1
        assert "went offline" in record.fit_failures[0]

    asyncio.run(scenario())


def test_a_round_below_min_fit_clients_ends_the_run_with_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"behaviour": "raise"}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            app = numpy_apps.make_server_app(num_rounds=2, min_fit=2)
            with pytest.raises(RunError, match=r"round 1: 1 usable fit result, 2 required"):
                await run_server_app(app, server_config(tmp_path, link.driver_port))

    asyncio.run(scenario())


def test_driver_lists_only_connected_nodes(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, nodes):
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port))
            run_id, _ = await driver.create_run("test", {"lr": 0.1})
            assert len(await driver.get_nodes(run_id)) == 2
            nodes[1].task.cancel()
            await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1)
            assert len(await driver.get_nodes(run_id)) == 1
            await driver.close()

    asyncio.run(scenario())


def test_pruning_forgets_finished_runs_and_their_blobs_but_not_running_ones(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            finished, _ = await run_server_app(
                numpy_apps.make_server_app(num_rounds=1),
                server_config(tmp_path, link.driver_port),
            )
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port))
            running, _ = await driver.create_run("still going", {})
            pruned, _ = await driver.prune_runs(0)
            await driver.close()
            state = link.dispatcher.state
            assert pruned == [finished.run_id]
            assert state.get_run(finished.run_id) is None
            assert state.get_run(running) is not None
            assert link.blobs.stored() == []

    asyncio.run(scenario())


def test_a_node_busy_uploading_a_blob_is_not_taken_for_dead(tmp_path: Path) -> None:
    """Its heartbeats can wait behind a large upload on their shared connection: the
    chunks themselves show that it is alive."""
    from collections.abc import AsyncIterator

    from pollen.proto import common_pb2 as pb
    from pollen.proto.fleet_pb2_grpc import FleetStub
    from pollen.records.messages import Message
    from pollen.supernode.fleet_client import FleetClient
    from pollen.transport.channels import open_channel

    async def slow_chunks(node_id: int, run_id: int) -> AsyncIterator[pb.BlobChunk]:
        for index in range(15):  # 1.5 s, far beyond 3 heartbeat intervals
            yield pb.BlobChunk(
                total_size=15 if index == 0 else 0,
                offset=index,
                data=b"x",
                node_id=node_id,
                run_id=run_id,
            )
            await asyncio.sleep(0.1)

    async def drain(instructions: AsyncIterator[object]) -> None:
        async for _ in instructions:
            pass

    async def scenario() -> None:
        config = superlink_config(tmp_path, heartbeat_interval=0.2)
        async with (
            open_superlink(config) as link,
            open_channel(Address("127.0.0.1", link.fleet_port)) as channel,
        ):
            fleet = FleetClient(channel)  # sends no heartbeat of its own
            node_id = await fleet.register()
            stream = asyncio.create_task(drain(fleet.instructions()))
            await wait_until(lambda: link.dispatcher.online_nodes() == [node_id])
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port))
            run_id, _ = await driver.create_run("busy node", {})
            await driver.send(run_id, [Message(run_id, node_id, "train")])  # uploads its reply
            await driver.close()
            upload = slow_chunks(node_id, run_id)
            await FleetStub(channel).UploadBlob(upload)  # type: ignore[no-untyped-call]
            assert link.dispatcher.online_nodes() == [node_id]
            # silent once the upload is done: now it is offline, its message stream closed
            await wait_until(lambda: link.dispatcher.online_nodes() == [], timeout=3)
            await asyncio.wait_for(stream, 3)

    asyncio.run(scenario())


def test_a_result_equal_to_the_model_does_not_take_the_models_blob_with_it(
    tmp_path: Path,
) -> None:
    """Releasing the round's results must not delete the model they were computed from:
    until the next checkpoint it is what a resumed ServerApp starts from."""
    from pollen.server.global_model import GlobalModel
    from pollen.server.history import RoundRecord
    from pollen.server.round_loop import RoundLoop

    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"behaviour": "same"}, {}]
        async with federation(tmp_path, numpy_apps.app, configs) as (link, _):
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port))
            app = numpy_apps.make_server_app(num_rounds=1, fraction_evaluate=0.0)
            run_id, _ = await driver.create_run("numpy_apps:server_app", {})
            model = GlobalModel(driver, run_id, [a.copy() for a in numpy_apps.INITIAL])
            ref = await model.ref()
            record = RoundRecord(1)
            await RoundLoop(app, driver, run_id).fit(1, model, record)
            assert record.fit_results == 2
            assert link.blobs.exists(ref.digest)
            await driver.close()

    asyncio.run(scenario())


def test_pruning_abandoned_runs_ends_and_forgets_only_the_idle_running_ones(
    tmp_path: Path,
) -> None:
    """A ServerApp that died and was never resumed leaves its run running, holding its
    blobs: ``--abandoned`` ends and deletes it once it has been idle long enough."""

    class Clock:
        now = 1_000_000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    week = 7 * 24 * 3600.0

    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path, clock=clock)) as link:
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port))
            idle, _ = await driver.create_run("died long ago", {})
            held = await driver.upload_arrays([np.arange(1000.0)], idle)
            clock.now += week + 3600
            active, _ = await driver.create_run("still going", {})
            assert await driver.prune_runs(week) == ([], 0)  # running runs: left alone
            pruned, deleted = await driver.prune_runs(week, abandoned=True)
            await driver.close()
            state = link.dispatcher.state
            assert (pruned, deleted) == ([idle], 1)
            assert state.get_run(idle) is None
            assert state.get_run(active) is not None
            assert not link.blobs.exists(held.digest)

    asyncio.run(scenario())
