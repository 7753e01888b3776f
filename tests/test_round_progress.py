"""The live progress of a run: what the round loop reports, and the terminal line that shows it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pollen.cli.local_federation import LocalFederation
from pollen.cli.progress_line import (
    OffTerminal,
    ProgressLine,
    describe_progress,
    eta_seconds,
    format_seconds,
    terminal_progress,
)
from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.server import ServerApp, ServerConfig
from pollen.server.round_progress import Phase, RoundProgress
from pollen.server.run import ServerAppConfig, run_on_grid
from pollen.server.strategy import FedAvg
from pollen.simulation import InProcessGrid
from pollen.transport.addresses import Address
from tests.conftest import APPS_DIR


class Recorded(RoundProgress):
    """Every call the round loop makes, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def phase_started(self, phase: Phase) -> None:
        self.events.append(("started", phase))

    def tasks_finished(self, ok: int, failed: int) -> None:
        self.events.append(("finished", ok, failed))

    def phase_ended(self, ok: int, failed: int) -> None:
        self.events.append(("ended", ok, failed))


class BrokenFirstNode(NumPyClient):
    """Adds one to the model; the node of partition 0 fails every fit."""

    def __init__(self, context: Context) -> None:
        self.partition = int(context.node_config["partition-id"])

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        if self.partition == 0:
            raise ValueError("this partition is broken")
        return [p + 1 for p in parameters], 1, {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.0, 1, {}


def run_with_progress(tmp_path: Path, num_nodes: int, num_rounds: int) -> Recorded:
    progress = Recorded()
    app = ServerApp(
        config=ServerConfig(num_rounds=num_rounds, seed=1),
        strategy=FedAvg(
            initial_parameters=[np.zeros(2, np.float32)], min_available_clients=num_nodes
        ),
    )
    grid = InProcessGrid(ClientApp(client_fn=BrokenFirstNode), num_nodes)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path, progress=progress)
    asyncio.run(run_on_grid(app, config, grid))
    return progress


def test_the_round_loop_reports_each_phases_tasks_as_they_finish(tmp_path: Path) -> None:
    progress = run_with_progress(tmp_path, num_nodes=5, num_rounds=2)

    phases = [e[1] for e in progress.events if e[0] == "started"]
    assert phases == [
        Phase(1, 2, "fit", 5),
        Phase(1, 2, "evaluate", 5),
        Phase(2, 2, "fit", 5),
        Phase(2, 2, "evaluate", 5),
    ]
    ends = [e[1:] for e in progress.events if e[0] == "ended"]
    assert ends == [(4, 1), (5, 0), (4, 1), (5, 0)]  # node 0's fit fails each round
    first_fit = progress.events[1 : progress.events.index(("ended", 4, 1))]
    assert len(first_fit) == 5  # one report per reply, the error reply's too
    assert first_fit[-1] == ("finished", 4, 1)
    # the failure is told when its error reply arrives, not with the next result
    failed_at = next(i for i, (_, _, failed) in enumerate(first_fit) if failed == 1)
    assert first_fit[failed_at][1] == (first_fit[failed_at - 1][1] if failed_at else 0)
    assert all(ok + failed <= 5 for _, ok, failed in first_fit)


def test_by_default_a_run_reports_nothing_and_still_runs(tmp_path: Path) -> None:
    app = ServerApp(
        config=ServerConfig(num_rounds=1),
        strategy=FedAvg(initial_parameters=[np.zeros(2, np.float32)], min_available_clients=2),
    )
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)
    grid = InProcessGrid(ClientApp(client_fn=BrokenFirstNode), 3)

    outcome, _ = asyncio.run(run_on_grid(app, config, grid))

    assert outcome.history.rounds[0].fit_results == 2


class FakeTerminal(io.StringIO):
    """A terminal's stream as far as the progress line can tell."""

    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_line_is_redrawn_in_place_with_counts_elapsed_and_eta() -> None:
    terminal, clock = FakeTerminal(), FakeClock()
    line = ProgressLine(terminal, clock)

    line.phase_started(Phase(3, 50, "fit", 100))
    clock.now += 1.2
    line.tasks_finished(38, 2)
    line.redraw()

    first, second = terminal.getvalue().split("\r")[1:]
    assert first == "round 3/50 fit 0/100 tasks 0.0 s elapsed\x1b[K"
    assert second == "round 3/50 fit 40/100 tasks (2 failed) 1.2 s elapsed, ETA 1.8 s\x1b[K"
    assert "\n" not in terminal.getvalue()  # one line, overwritten


def test_an_ended_phase_shows_its_final_counts_and_stops_moving() -> None:
    terminal, clock = FakeTerminal(), FakeClock()
    line = ProgressLine(terminal, clock)
    line.phase_started(Phase(1, 2, "evaluate", 10))
    clock.now += 2.0

    line.phase_ended(7, 3)
    drawn = terminal.getvalue()
    clock.now += 5.0
    line.redraw()

    assert drawn.endswith("\rround 1/2 evaluate 10/10 tasks (3 failed) 2.0 s elapsed\x1b[K")
    assert terminal.getvalue() == drawn


def test_tasks_draw_nothing_themselves_only_the_timed_redraws_do() -> None:
    terminal = FakeTerminal()
    with ProgressLine(terminal) as line:
        line.phase_started(Phase(1, 1, "fit", 1_000_000))
        started = time.monotonic()
        finished = 0
        while time.monotonic() - started < 0.35:
            for _ in range(1000):  # far more tasks than redraws
                finished += 1
                line.tasks_finished(finished, 0)
            time.sleep(0.001)
        seconds = time.monotonic() - started
    draws = terminal.getvalue().count("round 1/1")

    assert finished > 10_000
    assert 2 <= draws <= 2 + seconds / 0.1  # the phase's start, then at most ten a second


def test_a_log_line_clears_the_progress_line_first_and_leaving_clears_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = FakeTerminal()
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    with ProgressLine(terminal, interval=60) as line:
        line.phase_started(Phase(2, 5, "fit", 4))
        logging.getLogger("pollen.server.round_loop").warning("round 2/5 (0.41 s): fit 4 ok")
        line.phase_started(Phase(3, 5, "fit", 4))

    assert terminal.getvalue() == (
        "\rround 2/5 fit 0/4 tasks 0.0 s elapsed\x1b[K"
        "\r\x1b[Kround 2/5 (0.41 s): fit 4 ok\n"  # cleared, then the log line
        "\rround 3/5 fit 0/4 tasks 0.0 s elapsed\x1b[K"
        "\r\x1b[K"  # cleared on the way out
    )
    assert handler.stream is terminal


def test_a_line_wider_than_the_terminal_is_cut_to_fit() -> None:
    terminal = FakeTerminal()  # no size: 80 columns are assumed
    ProgressLine(terminal).phase_started(Phase(1, 1, "evaluate-" + "x" * 100, 10))

    assert len(terminal.getvalue()) == len("\r") + 79 + len("\x1b[K")


@pytest.mark.parametrize("stream", [io.StringIO(), FakeTerminal()], ids=["file", "dumb"])
def test_off_a_terminal_there_is_no_line(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "dumb" if stream.isatty() else "xterm")
    with terminal_progress(stream) as progress:
        progress.phase_started(Phase(1, 1, "fit", 3))
        progress.phase_ended(3, 0)

    assert isinstance(progress, OffTerminal)
    assert stream.getvalue() == ""


def test_the_eta_is_the_pace_so_far_times_the_tasks_left() -> None:
    assert eta_seconds(1.2, 40, 100) == pytest.approx(1.8)
    assert eta_seconds(3.0, 100, 100) == 0.0
    assert eta_seconds(0.5, 0, 100) is None  # no pace yet
    assert [format_seconds(s) for s in (1.25, 125.0, 3720.0)] == ["1.2 s", "2m05s", "1h02m"]
    assert describe_progress(Phase(1, 5, "fit", 8), 0, 0, 0.3) == (
        "round 1/5 fit 0/8 tasks 0.3 s elapsed"
    )


def write_tiny_apps(directory: Path) -> tuple[str, str]:
    (directory / "progress_server.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from pollen.server import ServerApp, ServerConfig
            from pollen.server.strategy import FedAvg

            app = ServerApp(
                config=ServerConfig(num_rounds=2),
                strategy=FedAvg(
                    initial_parameters=[np.zeros(2, np.float32)], min_available_clients=4
                ),
            )
            """
        )
    )
    (directory / "progress_client.py").write_text(
        textwrap.dedent(
            """
            from pollen.client import ClientApp, NumPyClient

            class AddOne(NumPyClient):
                def fit(self, parameters, config):
                    return [p + 1 for p in parameters], 1, {}

                def evaluate(self, parameters, config):
                    return 0.0, 1, {}

            app = ClientApp(client_fn=lambda context: AddOne())
            """
        )
    )
    return "progress_server:app", "progress_client:app"


def read_until_closed(fd: int, timeout: float) -> str:
    """All a child wrote to its terminal, until it closed it."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child's side of the terminal is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def run_on_a_terminal(command: list[str], timeout: float = 120) -> str:
    """Run ``command`` with a pseudo-terminal as its stdin, stdout and stderr; what it
    wrote there. It must exit 0; it is stopped by its PID whatever happens."""
    parent, child = pty.openpty()
    try:
        process = subprocess.Popen(
            command, stdin=child, stdout=child, stderr=child, env={**os.environ, "TERM": "xterm"}
        )
        os.close(child)
        try:
            output = read_until_closed(parent, timeout)
            assert process.wait(timeout=30) == 0, output
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        for fd in (parent, child):
            with contextlib.suppress(OSError):  # closed already
                os.close(fd)
    return output


def assert_live_lines_then_clean_summaries(output: str, num_rounds: int, tasks: int) -> None:
    assert f"\rround 1/{num_rounds} fit 0/{tasks} tasks" in output
    assert f"\rround {num_rounds}/{num_rounds} evaluate {tasks}/{tasks} tasks" in output
    lines = output.replace("\r\n", "\n").split("\n")
    summaries = [line for line in lines if "INFO    round " in line]
    assert len(summaries) == num_rounds
    for summary in summaries:  # what the terminal shows: what follows the last clearing
        shown = summary.rsplit("\r\x1b[K", 1)[-1]
        assert "INFO    round " in shown and "tasks" not in shown


def test_pollen_simulation_on_a_terminal_shows_the_live_line_then_each_summary(
    tmp_path: Path,
) -> None:
    server, client = write_tiny_apps(tmp_path)
    command = [sys.executable, "-m", "pollen", "simulation"]
    command += ["--server-app", server, "--client-app", client, "--num-supernodes", "4"]
    command += ["--app-dir", str(tmp_path), "--output-dir", str(tmp_path / "runs")]

    output = run_on_a_terminal(command)

    assert_live_lines_then_clean_summaries(output, num_rounds=2, tasks=4)


def test_pollen_serverapp_on_a_terminal_shows_the_live_line_then_each_summary(
    tmp_path: Path,
) -> None:
    federation = LocalFederation(tmp_path / "fed")
    federation.start_superlink()
    try:
        for _ in range(2):
            federation.start_supernode("numpy_apps:app", APPS_DIR)
        command = federation.serverapp_command("numpy_apps:two_rounds_both_nodes", APPS_DIR)

        output = run_on_a_terminal(command)
    finally:
        federation.stop()

    assert_live_lines_then_clean_summaries(output, num_rounds=2, tasks=2)
