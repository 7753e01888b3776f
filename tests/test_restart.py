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
