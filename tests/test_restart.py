"""A SuperLink killed mid-run and started again on the same database: the run goes on."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from pollen.cli.local_federation import Child, LocalFederation, spawn, wait_for_log
from tests.conftest import (
    APPS_DIR,
    resume_to_the_end,
    rounds_recorded,
    stop_four_rounds_after_round_two,
)


def test_a_superlink_killed_mid_run_comes_back_and_the_run_finishes(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "fed", clients=2)
    fed.start_superlink()
    marker = tmp_path / "training"
    try:
        for _ in range(2):
            fed.start_supernode(
                "numpy_apps:app",
                APPS_DIR,
                f"behaviour=slow,marker={marker},delay=0.3",
                "--max-backoff",
                "0.5",
            )
        server = spawn(
            "serverapp", fed.serverapp_command("numpy_apps:four_rounds", APPS_DIR), fed.log_dir
        )
        try:
            wait_for_log(server, re.compile(r"round 2/4"), 60)
            fed.crash_superlink()
            time.sleep(0.5)  # everyone notices the SuperLink is gone
            fed.start_superlink()
            assert server.process.wait(timeout=60) == 0, server.log()
        finally:
            server.stop()
    finally:
        fed.stop()
    rounds = rounds_recorded(fed.workdir / "runs")
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["fit_results"] == 2 for r in rounds)  # nothing lost, nothing counted twice
    assert "SuperLink away" in server.log()


def test_a_node_killed_mid_round_returns_with_its_key_and_the_same_node_id(
    tmp_path: Path,
) -> None:
    fed = LocalFederation(tmp_path / "fed", clients=2)
    fed.start_superlink()
    marker = tmp_path / "slow-node-training"
    try:
        fed.start_supernode("numpy_apps:app", APPS_DIR)
        slow = fed.start_supernode(
            "numpy_apps:app", APPS_DIR, f"behaviour=slow,marker={marker},delay=60"
        )
        first_id = wait_for_log(slow, re.compile(r"connected as node (\d+)"), 30)[1]
        server = spawn(
            "serverapp",
            fed.serverapp_command("numpy_apps:two_rounds_both_nodes", APPS_DIR),
            fed.log_dir,
        )
        try:
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            slow.process.kill()  # mid-round: its task fails at once, the round goes on
            slow.process.wait()
            back = fed.start_supernode("numpy_apps:app", APPS_DIR, "", *fed.node_keys(2))
            assert wait_for_log(back, re.compile(r"connected as node (\d+)"), 30)[1] == first_id
            assert server.process.wait(timeout=60) == 0, server.log()
        finally:
            server.stop()
    finally:
        fed.stop()
    first, second = rounds_recorded(fed.workdir / "runs")
    assert first["fit_results"] == 1 and "went offline" in first["fit_failures"][0]
    assert second["fit_results"] == 2  # the returned node took part


def test_a_server_app_killed_mid_run_resumes_from_its_last_completed_round(
    tmp_path: Path,
) -> None:
    fed = LocalFederation(tmp_path / "fed", clients=2)
    fed.start_superlink()

    def crash(first: Child) -> None:
        first.process.kill()  # a crash: no goodbye to the SuperLink
        first.process.wait()

    try:
        command, run_id = stop_four_rounds_after_round_two(fed, tmp_path / "training", 0.2, crash)
        resumed = resume_to_the_end(fed, command, run_id)
        assert re.search(rf"run {run_id} resumes after round [23]", resumed.log())
    finally:
        fed.stop()
    output = fed.workdir / "runs" / run_id
    document = json.loads((output / "metrics.json").read_text())
    assert document["finished"] and [r["round"] for r in document["rounds"]] == [1, 2, 3, 4]
    with np.load(output / "final_model.npz") as model:
        # every round adds exactly 1: a round run twice or skipped would show here
        np.testing.assert_array_equal(model["layer_0"], np.full((2, 3), 4, np.float32))
    assert not (output / "checkpoint.npz").exists()


def test_resuming_a_run_without_a_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pollen.cli.main import cli

    result = CliRunner().invoke(
        cli,
        [
            "serverapp",
            "numpy_apps:four_rounds",
            "--insecure",
            "--dir",
            str(APPS_DIR),
            "--output-dir",
            str(tmp_path),
            "--resume",
            "42",
            "--connect-timeout",
            "0.3",
            "--superlink",
            "127.0.0.1:1",
        ],
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.output.startswith("error: --resume 42: no usable checkpoint")
