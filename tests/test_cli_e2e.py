"""The `pollen` commands as real subprocesses, as a user runs them in three terminals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pollen.cli.local_federation import LocalFederation, pollen_command, spawn, wait_for_log
from tests.conftest import APPS_DIR, REPO_ROOT, free_port

QUICKSTART = REPO_ROOT / "examples" / "quickstart-pytorch"


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LocalFederation]:
    federation = LocalFederation(tmp_path / "fed")
    federation.start_superlink()
    try:
        yield federation
    finally:
        federation.stop()


@pytest.fixture
def secure_fed(tmp_path: Path) -> Iterator[LocalFederation]:
    """TLS and client authentication, credentials for two nodes."""
    federation = LocalFederation(tmp_path / "secure", clients=2)
    federation.start_superlink()
    try:
        yield federation
    finally:
        federation.stop()


def run_serverapp(
    fed: LocalFederation, app: str, directory: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fed.serverapp_command(app, directory),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_quickstart_trains_to_90_percent_in_five_rounds(secure_fed: LocalFederation) -> None:
    fed = secure_fed
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    for partition in (0, 1):
        fed.start_supernode("client:app", QUICKSTART, f"partition-id={partition},num-partitions=2")
    done = run_serverapp(fed, "server:app", QUICKSTART)
    assert done.returncode == 0, done.stderr
    assert "round 5/5" in done.stderr  # per-round progress is shown
    [metrics_file] = (fed.workdir / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert len(metrics["rounds"]) == 5
    assert metrics["rounds"][-1]["evaluate_metrics"]["accuracy"] >= 0.9
    with np.load(metrics_file.parent / "final_model.npz") as model:  # named as the state_dict
        assert model.files[:3] == ["conv1.weight", "conv1.bias", "bn1.weight"]
        batches = model["bn1.num_batches_tracked"]  # BatchNorm's 0-d int64 counter, averaged
        assert batches.shape == () and batches.dtype == np.int64 and batches > 0


def test_node_killed_mid_round_lets_the_round_finish_with_the_other(
    fed: LocalFederation, tmp_path: Path
) -> None:
    marker = tmp_path / "slow-node-started"
    fed.start_supernode("numpy_apps:app", APPS_DIR)
    slow = fed.start_supernode(
        "numpy_apps:app", APPS_DIR, f"behaviour=slow,marker={marker},delay=60"
    )
    server = spawn(
        "serverapp", fed.serverapp_command("numpy_apps:two_nodes_one_round", APPS_DIR), fed.log_dir
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        os.kill(slow.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert server.process.wait(timeout=30) == 0, server.log()
        assert time.monotonic() - killed_at < 10  # the stream broke; no timeout was waited
    finally:
        server.stop()
    [metrics_file] = (fed.workdir / "runs").glob("*/metrics.json")
    record = json.loads(metrics_file.read_text())["rounds"][0]
    assert record["fit_results"] == 1
    assert "went offline" in record["fit_failures"][0]


def test_supernode_retries_while_the_superlink_is_away_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    node = spawn(
        "supernode",
        pollen_command(
            "supernode",
            "numpy_apps:app",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{free_port()}",
            "--dir",
            str(APPS_DIR),
            "--max-backoff",
            "0.5",
        ),
        tmp_path,
    )
    try:
        wait_for_log(node, re.compile(r"reconnecting in .*\n(.*\n)*.*reconnecting in"), 30)
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.log()


def test_superlink_stops_gracefully_on_sigint(fed: LocalFederation) -> None:
    assert fed.superlink is not None
    fed.superlink.process.send_signal(signal.SIGINT)
    assert fed.superlink.process.wait(timeout=10) == 0
    assert "SuperLink stopped" in fed.superlink.log()


def test_the_seeds_commands_as_written_with_an_unlisted_node_refused(tmp_path: Path) -> None:
    """keys generate, superlink --certificates/--require-client-authentication,
    client-app --server --authentication-keys, server-app --root-certificates --server."""
    subprocess.run(
        pollen_command("keys", "generate", "2", "--out", str(tmp_path)),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        pollen_command("keys", "generate", "1", "--out", str(tmp_path / "other")),
        check=True,
        capture_output=True,
    )
    certs, keys = tmp_path / "certificates", tmp_path / "keys"
    superlink = spawn(
        "superlink",
        pollen_command(
            "superlink",
            "--certificates",
            str(certs / "ca.crt"),
            str(certs / "server.pem"),
            str(certs / "server.key"),
            "--require-client-authentication",
            str(keys / "client_public_keys.csv"),
            str(keys / "server_credentials"),
            str(keys / "server_credentials.pub"),
            "--fleet-api-address",
            "127.0.0.1:0",
            "--driver-api-address",
            "127.0.0.1:0",
            "--database",
            str(tmp_path / "s.db"),
        ),
        tmp_path,
    )
    children = [superlink]
    try:
        listening = wait_for_log(
            superlink, re.compile(r"Fleet API \S+?:(\d+), Driver API \S+?:(\d+)"), 30
        )
        fleet, driver = listening[1], listening[2]

        def client_app(name: str, private: Path) -> None:
            children.append(
                spawn(
                    name,
                    pollen_command(
                        "client-app",
                        "numpy_apps:app",
                        "--root-certificates",
                        str(certs / "ca.crt"),
                        "--server",
                        f"127.0.0.1:{fleet}",
                        "--dir",
                        str(APPS_DIR),
                        "--authentication-keys",
                        str(private),
                        f"{private}.pub",
                        "--superlink-public-key",
                        str(keys / "server_credentials.pub"),
                    ),
                    tmp_path,
                )
            )

        client_app("node-1", keys / "client_credentials_1")
        client_app("node-2", keys / "client_credentials_2")
        client_app("intruder", tmp_path / "other" / "keys" / "client_credentials_1")
        assert children[-1].process.wait(timeout=30) == 1
        assert "refused this node: key is not in the allow-list" in children[-1].log()
        done = subprocess.run(
            pollen_command(
                "server-app",
                "numpy_apps:server_app",
                "--root-certificates",
                str(certs / "ca.crt"),
                "--dir",
                str(APPS_DIR),
                "--server",
                f"127.0.0.1:{driver}",
                "--output-dir",
                str(tmp_path / "runs"),
            ),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        assert "round 3/3" in done.stderr
        assert "reject" in superlink.log() and "join" in superlink.log()
    finally:
        for child in children:
            child.stop()
