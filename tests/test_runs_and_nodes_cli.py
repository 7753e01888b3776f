"""``pollen runs ls/show/log`` and ``pollen nodes ls`` against a real SuperLink on
127.0.0.1:0: a ServerApp's rounds, reported to the SuperLink, as an operator sees them.

The SuperLink, its SuperNodes and the ServerApp run in-process; the commands run
through click (in a thread, as the SuperLink serves) or, to watch ``--follow`` print
as it goes, as a real process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path
from urllib.request import urlopen

import grpc
import pytest
from click.testing import CliRunner

from pollen.cli.local_federation import pollen_command
from pollen.cli.main import cli
from pollen.errors import CallRefused
from pollen.proto import driver_pb2 as dpb
from pollen.proto.driver_pb2_grpc import DriverStub
from pollen.server.driver import DriverClient
from pollen.server.grid import RunReport
from pollen.server.history import RoundRecord
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.superlink.dashboard.settings import DashboardConfig
from pollen.superlink.server import SuperLink, open_superlink
from pollen.transport.addresses import Address
from tests.apps import numpy_apps
from tests.auth_helpers import Seed, allowlist_file, driver_client, secure_config
from tests.conftest import federation, start_node, superlink_config, wait_until
from tests.test_cli_errors import assert_one_line_error
from tests.test_operator_runs import operators_config


async def pollen(*args: str) -> tuple[int, str, str]:
    """``pollen ARGS`` (in a thread: the SuperLink goes on serving); exit code, stdout,
    stderr."""
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def insecure(link: SuperLink) -> list[str]:
    return ["--insecure", "--superlink", f"127.0.0.1:{link.driver_port}"]


async def run_app(link: SuperLink, tmp_path: Path, num_rounds: int) -> Path:
    """Run the NumPy test app for ``num_rounds`` rounds; its output folder."""
    config = ServerAppConfig(
        superlink=Address("127.0.0.1", link.driver_port), output_root=tmp_path / "runs"
    )
    _, directory = await run_server_app(numpy_apps.make_server_app(num_rounds), config)
    return directory


NODES: list[dict[str, object]] = [{"examples": 1}, {"examples": 3}]


def test_runs_ls_show_and_log_show_a_runs_rounds_and_metrics(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, numpy_apps.app, NODES) as (link, _):
            directory = await run_app(link, tmp_path, num_rounds=2)
            target = insecure(link)

            code, text, _ = await pollen("runs", "ls", *target)
            assert code == 0
            header, row = text.splitlines()
            assert header.split()[:4] == ["RUN", "APP", "STATUS", "ROUND"]
            assert row.split()[0] == "1" and "finished" in row and "2/2" in row

            code, text, _ = await pollen("runs", "ls", "--format", "json", *target)
            [run] = json.loads(text)
            assert (run["run_id"], run["status"], run["rounds_done"], run["num_rounds"]) == (
                1,
                "finished",
                2,
                2,
            )
            assert run["finished_at"].endswith("+00:00")

            code, text, _ = await pollen("runs", "show", "1", *target)
            assert code == 0
            assert f"outputs:   {directory.resolve()}" in text
            assert "round:     2/2" in text
            rounds = text.split("ROUND", 1)[1].splitlines()[1:]
            assert [line.split()[0] for line in rounds] == ["1", "2"]
            # train_loss weighted by examples: (1*1 + 3*(1/3)) / 4; accuracy 0.5 everywhere
            assert all("fit.train_loss=0.5" in line for line in rounds)
            assert all("evaluate.accuracy=0.5" in line for line in rounds)

            code, text, _ = await pollen("runs", "show", "1", "--format", "json", *target)
            shown = json.loads(text)
            assert shown["output_dir"] == str(directory.resolve())
            assert [r["round"] for r in shown["rounds"]] == [1, 2]
            assert shown["rounds"][1]["fit_metrics"] == {"train_loss": 0.5}
            assert shown["rounds"][1]["evaluate_metrics"] == {"accuracy": 0.5}
            assert len(shown["rounds"][0]["fit_nodes"]) == 2
            # the same rounds as the ServerApp's own metrics.json
            written = json.loads((directory / "metrics.json").read_text())["rounds"]
            assert [
                {k: r[k] for k in w} for r, w in zip(shown["rounds"], written, strict=True)
            ] == written

            code, text, _ = await pollen("runs", "log", "1", *target)
            assert code == 0
            lines = [line.split("  ", 1)[1] for line in text.splitlines()]
            assert lines[0] == "run 1 created (unnamed app)"
            assert [line.split(" (")[0] for line in lines[1:3]] == ["round 1/2", "round 2/2"]
            assert "fit 2 ok, 0 failed" in lines[1]
            assert lines[3:] == ["run 1 finished"]

            code, text, _ = await pollen("runs", "log", "1", "--format", "json", *target)
            logged = [json.loads(line) for line in text.splitlines()]
            assert [entry["text"] for entry in logged] == lines

    asyncio.run(scenario())


def test_an_unknown_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            for command in ("show", "log"):
                code, _, errors = await pollen("runs", command, "7", *insecure(link))
                assert code == 2
                assert_one_line_error(errors, "error: run 7: no such run", "pollen runs ls")
            code, text, _ = await pollen("runs", "ls", *insecure(link))
            assert (code, text.strip()) == (0, "no runs (start one with `pollen serverapp`)")

    asyncio.run(scenario())


class Follower:
    """``pollen runs log RUN --follow`` as a process; its lines as they arrive."""

    def __init__(self, link: SuperLink, run_id: int) -> None:
        command = pollen_command("runs", "log", str(run_id), "--follow", *insecure(link))
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n").split("  ", 1)[1])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(10)
        self._reader.join(5)
        return code


def test_log_follow_prints_rounds_as_they_are_reported_and_ends_with_the_run(
    tmp_path: Path,
) -> None:
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    gated: list[dict[str, object]] = [
        {"behaviour": "gated", "marker": str(marker), "gate": str(gate)}
    ] * 2

    async def scenario() -> None:
        async with federation(tmp_path, numpy_apps.app, gated) as (link, _):
            run = asyncio.create_task(run_app(link, tmp_path, num_rounds=2))
            await wait_until(marker.exists)  # round 1 waits at the gate
            follower = Follower(link, 1)
            try:
                await wait_until(lambda: bool(follower.lines), 15)
                assert follower.lines == ["run 1 created (unnamed app)"]  # nothing more yet
                assert not run.done()
                gate.touch()
                await run
                await wait_until(lambda: follower.process.poll() is not None, 10)
            finally:
                code = follower.stop()
            assert code == 0  # it ended by itself when the run finished
            assert [line.split(" (")[0] for line in follower.lines] == [
                "run 1 created",
                "round 1/2",
                "round 2/2",
                "run 1 finished",
            ]

    asyncio.run(scenario())


def test_nodes_ls_shows_the_nodes_online_then_one_offline(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, numpy_apps.app, NODES) as (link, nodes):
            await run_app(link, tmp_path, num_rounds=1)
            code, text, _ = await pollen("nodes", "ls", "--format", "json", *insecure(link))
            assert code == 0
            listed = json.loads(text)
            assert [n["status"] for n in listed] == ["online", "online"]
            # one fit and one evaluate each
            assert [(n["tasks_done"], n["tasks_failed"]) for n in listed] == [(2, 0), (2, 0)]
            assert all(n["address"].startswith("127.0.0.1:") for n in listed)

            nodes[0].task.cancel()  # a SuperNode killed: no goodbye
            await wait_until(lambda: len(link.dispatcher.online_nodes()) == 1)
            code, text, _ = await pollen("nodes", "ls", *insecure(link))
            header, *rows = text.splitlines()
            assert header.split()[:4] == ["NODE", "STATUS", "ADDRESS", "LAST"]
            assert sorted(row.split()[1] for row in rows) == ["offline", "online"]
            assert all(row.split()[2].startswith("127.0.0.1:") for row in rows)  # the last one

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=1, unlisted=3)


def test_an_operator_sees_only_its_own_runs_and_an_administrator_all(
    tmp_path: Path, seed: Seed
) -> None:
    def as_operator(link: SuperLink, index: int) -> list[str]:
        return [
            "--superlink",
            f"127.0.0.1:{link.driver_port}",
            "--root-certificates",
            str(seed.ca_cert),
            "--auth-private-key",
            str(seed.unlisted_key(index)),
        ]

    async def scenario() -> None:
        async with (
            open_superlink(operators_config(tmp_path, seed, admins=1)) as link,
            driver_client(seed, link.driver_port, seed.stranger(1)) as first,
            driver_client(seed, link.driver_port, seed.stranger(2)) as second,
        ):
            mine, _ = await first.create_run("first's", {})
            theirs, _ = await second.create_run("second's", {})

            code, text, _ = await pollen("runs", "ls", "--format", "json", *as_operator(link, 1))
            assert code == 0
            [run] = json.loads(text)
            assert (run["run_id"], run["app"]) == (mine, "first's")
            assert run["owner"] == seed.stranger(1).fingerprint

            # another operator's run reads exactly as a run that does not exist
            refusals = {}
            for run_id in (theirs, 999):
                code, _, errors = await pollen("runs", "show", str(run_id), *as_operator(link, 1))
                assert code == 2
                [refusal] = [line for line in errors.splitlines() if line.startswith("error:")]
                refusals[run_id] = refusal.replace(f"run {run_id}:", "run N:")
                assert_one_line_error(errors, f"error: run {run_id}: no such run")
                code, _, errors = await pollen("runs", "log", str(run_id), *as_operator(link, 1))
                assert code == 2
            assert refusals[theirs] == refusals[999]

            code, text, _ = await pollen("runs", "ls", "--format", "json", *as_operator(link, 3))
            assert [r["run_id"] for r in json.loads(text)] == [mine, theirs]  # the administrator
            code, text, _ = await pollen("runs", "show", str(theirs), *as_operator(link, 3))
            assert code == 0 and "second's" in text
            # the nodes are the federation's: any operator lists them
            code, text, _ = await pollen("nodes", "ls", "--format", "json", *as_operator(link, 2))
            assert (code, json.loads(text)) == (0, [])

    asyncio.run(scenario())


def test_each_reported_round_counts_in_the_superlinks_metrics(tmp_path: Path) -> None:
    config = superlink_config(tmp_path, dashboard=DashboardConfig(Address("127.0.0.1", 0)))

    async def scenario() -> None:
        async with open_superlink(config) as link:
            nodes = [start_node(numpy_apps.app, link.fleet_port) for _ in range(2)]
            try:
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2)
                await run_app(link, tmp_path, num_rounds=2)
                url = f"http://127.0.0.1:{link.dashboard_port}/metrics"
                text = await asyncio.to_thread(lambda: urlopen(url, timeout=5).read().decode())
                assert "pollen_rounds_completed_total 2.0" in text
            finally:
                for node in nodes:
                    node.stop.set()
                await asyncio.gather(*(n.task for n in nodes), return_exceptions=True)

    asyncio.run(scenario())


def test_the_log_says_when_a_run_failed_and_was_resumed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port), None, 5)
            try:
                run_id, _ = await driver.create_run("app:main", {})
                await driver.finish_run(run_id, "failed", "interrupted (Ctrl-C or SIGTERM)")
                await driver.resume_run(run_id)
                await driver.finish_run(run_id, "finished")
            finally:
                await driver.close()
            code, text, _ = await pollen("runs", "log", str(run_id), *insecure(link))
            assert code == 0
            assert [line.split("  ", 1)[1] for line in text.splitlines()] == [
                f"run {run_id} created (app:main)",
                f"run {run_id} failed: interrupted (Ctrl-C or SIGTERM)",
                f"run {run_id} resumed by its ServerApp",
                f"run {run_id} finished",
            ]

    asyncio.run(scenario())


def test_a_report_is_bounded_replaced_when_sent_again_and_never_fails_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A round's record is at most 64 KiB (INVALID_ARGUMENT); a round reported again
    replaces its record (a resumed run); a ServerApp whose report is refused logs it once
    and goes on."""

    def report(run_id: int, record: str) -> dpb.ReportRoundRequest:
        return dpb.ReportRoundRequest(run_id=run_id, round=1, record_json=record, num_rounds=2)

    async def scenario() -> None:
        async with (
            open_superlink(superlink_config(tmp_path)) as link,
            grpc.aio.insecure_channel(f"127.0.0.1:{link.driver_port}") as channel,
        ):
            stub = DriverStub(channel)  # type: ignore[no-untyped-call]
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port), None, 5)
            try:
                run_id, _ = await driver.create_run("app", {})
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ReportRound(report(run_id, json.dumps({"x": "x" * 65536})))
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "64 KiB" in (info.value.details() or "")
                await stub.ReportRound(report(run_id, '{"round": 1, "a": 1}'))
                await stub.ReportRound(report(run_id, '{"round": 1, "a": 2}'))
                details = await driver.run_details(run_id)
                assert [json.loads(r.record) for r in details.rounds] == [{"round": 1, "a": 2}]

                huge = RoundRecord(2, fit_metrics={"blob": "x" * 65536})
                for _ in range(2):  # refused twice, warned once, never raised
                    await driver.report_round(run_id, RunReport(2, record=huge))
                warnings = [r for r in caplog.records if "did not take round 2" in r.message]
                assert len(warnings) == 1
            finally:
                await driver.close()

    asyncio.run(scenario())


def test_follow_of_a_run_that_already_ended_prints_its_log_and_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, numpy_apps.app, NODES) as (link, _):
            await run_app(link, tmp_path, num_rounds=1)
            started = time.monotonic()
            code, text, _ = await pollen("runs", "log", "1", "--follow", *insecure(link))
            assert code == 0 and text.splitlines()[-1].endswith("run 1 finished")
            assert time.monotonic() - started < 5

    asyncio.run(scenario())


def test_a_followers_stream_ends_when_its_operator_key_is_revoked(
    tmp_path: Path, seed: Seed
) -> None:
    async def scenario() -> None:
        operators = allowlist_file(tmp_path / "operators.csv", seed.stranger(1))
        config = secure_config(tmp_path, seed, operator_keys=operators)
        async with (
            open_superlink(config) as link,
            driver_client(seed, link.driver_port, seed.stranger(1)) as driver,
        ):
            run_id, _ = await driver.create_run("app", {})
            lines: list[str] = []

            async def follow() -> None:
                async for line in driver.run_log(run_id, follow=True):
                    lines.append(line.text)

            follower = asyncio.create_task(follow())
            await wait_until(lambda: lines == [f"run {run_id} created (app)"])
            allowlist_file(operators, seed.stranger(2))  # the operator's key is removed
            with pytest.raises(CallRefused) as info:
                await asyncio.wait_for(follower, 10)
            assert (info.value.status, info.value.details) == (
                "unauthenticated",
                "the operator key was revoked",
            )

    asyncio.run(scenario())
