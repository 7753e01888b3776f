"""Both examples run in simulation with one `pollen simulation` command, as a user runs them,
on data the tests have locally (scikit-learn's bundled digits, a small CIFAR-10 archive)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollen.cli.local_federation import pollen_command
from tests.conftest import REPO_ROOT, free_port
from tests.test_cifar import EXAMPLE, cifar10, write_cifar_archive
from tests.test_example_client_auth import readme_command

pytest.importorskip("torch")
QUICKSTART = REPO_ROOT / "examples" / "quickstart-pytorch"
CIFAR_METRICS = ["train_accuracy", "train_loss", "val_accuracy", "val_loss"]


def simulate(words: list[str], cwd: Path, output_dir: Path) -> subprocess.CompletedProcess[str]:
    """``pollen simulation ...`` (``words`` as a user types them) run by this interpreter."""
    assert words[:2] == ["pollen", "simulation"]
    args = [*words[1:], "--output-dir", str(output_dir)]
    return subprocess.run(
        pollen_command(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def finished_run(done: subprocess.CompletedProcess[str], output_dir: Path) -> dict[str, Any]:
    """The metrics.json of the one run the command finished; its final model is there too."""
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    [metrics_file] = output_dir.glob("*/metrics.json")
    run: dict[str, Any] = json.loads(metrics_file.read_text())
    assert run["finished"] and run["completed_rounds"] == len(run["rounds"])
    assert (metrics_file.parent / "final_model.npz").is_file()
    return run


def trained_examples(server_round: dict[str, Any]) -> list[int]:
    """How many examples each virtual node trained on, in partition order (node id i + 1)."""
    nodes = sorted(server_round["fit_nodes"], key=lambda node: node["node_id"])
    return [node["num_examples"] for node in nodes]


def test_the_quickstart_trains_and_evaluates_on_virtual_nodes(tmp_path: Path) -> None:
    words = "pollen simulation --server-app server:app --client-app client:app"
    words += f" --num-supernodes 3 --app-dir {QUICKSTART}"
    done = simulate(words.split(), tmp_path, tmp_path / "runs")

    run = finished_run(done, tmp_path / "runs")
    assert len(run["rounds"]) == 5  # the quickstart's ServerConfig(num_rounds=5)
    for server_round in run["rounds"]:
        assert server_round["fit_results"] == 3 and server_round["evaluate_results"] == 3
        assert server_round["fit_metrics"]["train_loss"] > 0
        assert server_round["evaluate_loss"] > 0
    # Each node trains on its third of the 1437 training digits.
    assert trained_examples(run["rounds"][0]) == [479, 479, 479]
    assert run["rounds"][-1]["evaluate_metrics"]["accuracy"] > 0.8
    assert re.search(r"round 5/5 .*evaluate 3 ok, 0 failed loss=\S+ accuracy=0\.\d{4}", done.stderr)
    with np.load(next((tmp_path / "runs").glob("*/final_model.npz"))) as model:
        assert model["conv1.weight"].shape == (16, 1, 3, 3)
        assert model["bn1.num_batches_tracked"] > 0


@pytest.fixture
def cifar_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small archive in the official format; the user's cache and the internet out of reach."""
    path = tmp_path / "data" / "cifar-10-python.tar.gz"
    monkeypatch.setenv("POLLEN_CIFAR10_MD5", write_cifar_archive(path))  # a test archive's md5
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("POLLEN_CIFAR10_URL", f"http://127.0.0.1:{free_port()}/unreachable")
    monkeypatch.delenv("POLLEN_CIFAR10", raising=False)
    return path


def expected_train_sizes(archive: Path, num_partitions: int, **settings: Any) -> list[int]:
    data = cifar10().read_archive(archive)
    parts = [
        cifar10().partition(data, i, num_partitions, **settings) for i in range(num_partitions)
    ]
    return [len(part.train_labels) for part in parts]


def test_the_client_authentication_example_runs_as_its_readme_shows(
    cifar_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "client-authentication-pytorch"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".pollen"))
    monkeypatch.setenv("POLLEN_CIFAR10", str(cifar_archive))  # as the README's nodes find it
    words = readme_command(
        "pollen simulation --server-app server:app --client-app client:app --num-supernodes 2"
    )
    done = simulate(words, project, tmp_path / "runs")

    run = finished_run(done, tmp_path / "runs")
    assert len(run["rounds"]) == 3  # server.py's ServerConfig(num_rounds=3)
    for server_round in run["rounds"]:
        assert server_round["fit_results"] == 2 and not server_round["fit_failures"]
        assert sorted(server_round["fit_metrics"]) == CIFAR_METRICS
        # partition-id i of num-partitions 2, as the README's two SuperNodes have
        assert trained_examples(server_round) == expected_train_sizes(cifar_archive, 2)
    assert re.search(r"round 3/3 .*fit 2 ok, 0 failed train_loss=\d\.\d{4}", done.stderr)
    with np.load(next((tmp_path / "runs").glob("*/final_model.npz"))) as model:
        assert model["layer_0"].shape == (6, 3, 5, 5) and len(model.files) == 15
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def test_a_simulation_takes_the_data_settings_from_the_run_config(
    cifar_archive: Path, tmp_path: Path
) -> None:
    words = "pollen simulation --server-app server:app --client-app client:app"
    words += f" --num-supernodes 3 --app-dir {EXAMPLE} --backend process-pool --run-config"
    words += f" data-path={cifar_archive},partitioning=dirichlet,alpha=0.3"
    done = simulate(words.split(), tmp_path, tmp_path / "runs")

    run = finished_run(done, tmp_path / "runs")
    sizes = expected_train_sizes(cifar_archive, 3, partitioning="dirichlet", alpha=0.3)
    assert len(set(sizes)) > 1  # non-IID: unequal shares
    assert all(trained_examples(r) == sizes for r in run["rounds"])
    assert run["run_config"]["partitioning"] == "dirichlet"


def test_a_missing_archive_stops_the_simulation_in_one_line_saying_where_to_put_it(
    cifar_archive: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    words = "pollen simulation --server-app server:app --client-app client:app"
    words += f" --num-supernodes 2 --app-dir {EXAMPLE} --run-config data-path={missing}"
    done = simulate(words.split(), tmp_path, tmp_path / "runs")

    assert done.returncode == 1
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert f"CIFAR-10 archive not found at {missing}; download cifar-10-python.tar.gz" in error
    assert "Traceback" not in done.stderr
