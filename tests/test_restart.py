"""A SuperLink killed mid-run and started again on the same database: the run goes on."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from pollen.cli.local_federation import LocalFederation, spawn, wait_for_log
from tests.conftest import APPS_DIR


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
    [metrics] = (fed.workdir / "runs").glob("*/metrics.json")
    rounds = json.loads(metrics.read_text())["rounds"]
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
    [metrics] = (fed.workdir / "runs").glob("*/metrics.json")
    first, second = json.loads(metrics.read_text())["rounds"]
    assert first["fit_results"] == 1 and "went offline" in first["fit_failures"][0]
    assert second["fit_results"] == 2  # the returned node took part
