"""Expiry and clean-up, end to end with real processes: a task past its TTL fails and
the run goes on; `pollen runs prune` forgets finished runs and their blobs."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
from pathlib import Path

from pollen.cli.local_federation import LocalFederation, pollen_command
from tests.conftest import APPS_DIR, rounds_recorded, run_serverapp_to_the_end


def test_tasks_past_their_ttl_fail_and_the_finished_run_is_pruned_with_its_blobs(
    tmp_path: Path,
) -> None:
    fed = LocalFederation(tmp_path / "fed")
    fed.start_superlink("--task-ttl", "1", "--heartbeat-interval", "0.3")
    marker = tmp_path / "slow-node-training"
    try:
        fed.start_supernode("numpy_apps:app", APPS_DIR)
        fed.start_supernode("numpy_apps:app", APPS_DIR, f"behaviour=slow,marker={marker},delay=8")
        took = run_serverapp_to_the_end(fed, "numpy_apps:two_rounds_both_nodes")
        assert took < 8  # no round waited for the slow node
        pruned = subprocess.run(
            pollen_command(
                "runs",
                "prune",
                "--older-than",
                "0s",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{fed.driver_port}",
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        fed.nodes[1].process.kill()  # still asleep in its first task: no need to wait
    finally:
        fed.stop()
    rounds = rounds_recorded(fed.workdir / "runs")
    assert [r["fit_results"] for r in rounds] == [1, 1]
    assert all("no answer within the task TTL of 1 s" in r["fit_failures"][0] for r in rounds)
    assert pruned.returncode == 0, pruned.stderr
    assert re.fullmatch(r"pruned runs: 1; \d+ blob\(s\) deleted\n", pruned.stdout)
    with contextlib.closing(sqlite3.connect(fed.workdir / "superlink.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM message_blobs").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM replies").fetchone() == (0,)
    assert list((fed.workdir / "superlink.db.blobs").iterdir()) == []
