"""Waiting with limits, end to end with real processes: the ServerApp waits for its
minimum of nodes and says so, and leaves stragglers behind at ``round_timeout``."""

from __future__ import annotations

import re
from pathlib import Path

from pollen.cli.local_federation import LocalFederation, spawn, wait_for_log
from tests.conftest import APPS_DIR, rounds_recorded, run_serverapp_to_the_end


def test_a_straggler_is_left_behind_at_round_timeout_and_the_run_goes_on(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "fed")
    fed.start_superlink()
    marker = tmp_path / "straggler-training"
    try:
        fed.start_supernode("numpy_apps:app", APPS_DIR)
        fed.start_supernode("numpy_apps:app", APPS_DIR, f"behaviour=slow,marker={marker},delay=6")
        took = run_serverapp_to_the_end(fed, "numpy_apps:round_timeout_one_second")
        fed.nodes[1].process.kill()  # still training for the first round: no need to wait
    finally:
        fed.stop()
    assert marker.exists()  # the straggler did get the task
    assert took < 6  # neither round waited for it
    rounds = rounds_recorded(fed.workdir / "runs")
    assert [r["fit_results"] for r in rounds] == [1, 1]
    for record in rounds:
        [failure] = record["fit_failures"]
        assert "no result within round_timeout=1 s" in failure


def test_the_serverapp_waits_for_its_minimum_of_nodes_and_says_so(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "fed")
    fed.start_superlink()
    try:
        fed.start_supernode("numpy_apps:app", APPS_DIR)
        server = spawn(
            "serverapp", fed.serverapp_command("numpy_apps:server_app", APPS_DIR), fed.log_dir
        )
        try:
            wait_for_log(server, re.compile(r"waiting for nodes: 1 of 2 connected"), 30)
            assert server.process.poll() is None  # waiting, not failed
            fed.start_supernode("numpy_apps:app", APPS_DIR)
            assert server.process.wait(timeout=60) == 0, server.log()
        finally:
            server.stop()
    finally:
        fed.stop()
    rounds = rounds_recorded(fed.workdir / "runs")
    assert [r["fit_results"] for r in rounds] == [2, 2, 2]
