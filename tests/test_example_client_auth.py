"""examples/client-authentication-pytorch, run as its README says, on a small CIFAR-10 archive.

Every command is taken as the README writes it (the test checks that it is there) and
changed only where a test must differ: OS-chosen ports, state and outputs in tmp_path.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pollen.cli.local_federation import Child, pollen_command, spawn, wait_for_log
from pollen.superlink.allowlist import parse_allowlist
from pollen.transport import keys
from pollen.transport.keygen import generate
from tests.test_cifar import EXAMPLE, write_cifar_archive

README = (EXAMPLE / "README.md").read_text()
TOOLS = [tool for tool in ("bash", "openssl", "ssh-keygen") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(TOOLS), reason=f"generate.sh needs {', '.join(TOOLS)}, which is not installed"
)
_LISTENING = re.compile(r"Fleet API \S+?:(\d+), Driver API \S+?:(\d+)")
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def readme_command(command: str) -> list[str]:
    """``command`` split into words, after checking that the README shows it (line
    continuations joined, spaces collapsed)."""
    text = " ".join(README.replace("\\\n", " ").split())
    assert " ".join(command.split()) in text, f"the README does not show: {command}"
    return command.split()


def as_run(words: list[str], **ports: int) -> list[str]:
    """A README command as the test runs it: this interpreter's pollen, the test's ports."""
    replaced = [
        word.replace("127.0.0.1:9092", f"127.0.0.1:{ports.get('fleet', 9092)}").replace(
            "127.0.0.1:9091", f"127.0.0.1:{ports.get('driver', 9091)}"
        )
        for word in words
    ]
    assert replaced[0] == "pollen"
    return pollen_command(*replaced[1:])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example, as a user has it after `cd examples/client-authentication-pytorch`."""
    folder = tmp_path / "client-authentication-pytorch"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", ".pollen"))
    return folder


def generate_sh(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./generate.sh", *args], cwd=project, capture_output=True, text=True, timeout=60
    )


def relative_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_generate_sh_writes_what_pollen_keys_generate_writes(project: Path, tmp_path: Path) -> None:
    readme_command("./generate.sh 5")
    done = generate_sh(project, "5")
    assert done.returncode == 0, done.stderr
    assert "for development only" in done.stderr
    generate(tmp_path / "pollen-route", 5, [])
    written = {
        f"{folder}/{name}"
        for folder in ("certificates", "keys")
        for name in relative_files(project / folder)
    }
    assert written == relative_files(tmp_path / "pollen-route")
    csv = project / "keys" / "client_public_keys.csv"
    assert len(csv.read_text().splitlines()) == 1  # the seed's layout: one line
    allowed = parse_allowlist(csv.read_text(), csv)
    for index in range(1, 6):
        private = project / "keys" / f"client_credentials_{index}"
        assert oct(private.stat().st_mode & 0o777) == "0o600"
        public_path = private.with_suffix(".pub")
        public = keys.load_public_key(public_path)
        keys.check_pair(keys.load_private_key(private), public, private, public_path)
        assert keys.fingerprint(public) in allowed

    # issue 12: a second ./generate.sh replaced the CA and every key without asking
    before = {path: path.read_bytes() for path in (project / "keys").iterdir()}
    refused = generate_sh(project)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert refused.stderr.startswith("error: certificates/ca.crt already exists (17 files")
    assert "pass --force to replace them (./generate.sh --force 2)" in refused.stderr
    assert {path: path.read_bytes() for path in (project / "keys").iterdir()} == before

    readme_command("./generate.sh --force")
    again = generate_sh(project, "--force")  # two clients, the earlier five replaced
    assert again.returncode == 0, again.stderr
    assert len(parse_allowlist(csv.read_text(), csv)) == 2
    assert not (project / "keys" / "client_credentials_3").exists()

    wrong = generate_sh(project, "five")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().count("\n") == 0 and "./generate.sh 5" in wrong.stderr


def test_the_readme_flow_trains_three_rounds_and_refuses_an_unlisted_key(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    # Nodes find the archive through the README's $POLLEN_CIFAR10; a test archive has its own md5.
    monkeypatch.setenv("POLLEN_CIFAR10", str(archive))
    monkeypatch.setenv("POLLEN_CIFAR10_MD5", write_cifar_archive(archive))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    logs = tmp_path / "logs"

    readme_command("./generate.sh")
    generated = generate_sh(project)
    assert generated.returncode == 0, generated.stderr
    generate(tmp_path / "other", 1, [])  # the pollen keys generate route: a key nobody listed

    superlink_words = readme_command(
        "pollen superlink --certificates certificates/ca.crt certificates/server.pem "
        "certificates/server.key --require-client-authentication keys/client_public_keys.csv "
        "keys/server_credentials keys/server_credentials.pub"
    )
    superlink_args = as_run(superlink_words)
    superlink_args += ["--fleet-api-address", "127.0.0.1:0", "--driver-api-address", "127.0.0.1:0"]
    superlink_args += ["--database", str(tmp_path / "superlink.db")]
    children: list[Child] = [spawn("superlink", superlink_args, logs, cwd=project)]
    try:
        listening = wait_for_log(children[0], _LISTENING, timeout=30)
        ports = {"fleet": int(listening[1]), "driver": int(listening[2])}
        for index in (1, 2):
            words = readme_command(
                f"pollen client-app client:app --root-certificates certificates/ca.crt "
                f"--server 127.0.0.1:9092 --authentication-keys keys/client_credentials_{index} "
                f"keys/client_credentials_{index}.pub "
                f"--node-config partition-id={index - 1},num-partitions=2"
            )
            children.append(spawn(f"node-{index}", as_run(words, **ports), logs, cwd=project))
        intruder_key = tmp_path / "other" / "keys" / "client_credentials_1"
        intruder = as_run(words, **ports)
        at = intruder.index("--authentication-keys")
        intruder[at + 1 : at + 3] = [str(intruder_key), f"{intruder_key}.pub"]
        children.append(spawn("intruder", intruder, logs, cwd=project))

        server_words = readme_command(
            "pollen server-app server:app --root-certificates certificates/ca.crt --dir ./ "
            "--server 127.0.0.1:9091"
        )
        done = subprocess.run(
            [*as_run(server_words, **ports), "--output-dir", str(tmp_path / "runs")],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr + "".join(c.log() for c in children)
        for server_round in (1, 2, 3):
            line = rf"round {server_round}/3 \([\d.]+ s\): fit 2 ok, 0 failed "
            line += " ".join(rf"{name}=\d+\.\d{{4}}" for name in METRICS)
            assert re.search(line, done.stderr), done.stderr

        assert children[-1].process.wait(timeout=30) == 1
        assert "refused this node: key is not in the allow-list" in children[-1].log()
        assert "Traceback" not in children[-1].log()
    finally:
        for child in children:
            child.stop()
    for child in children[1:3]:
        assert "connected as node" in child.log() and "Traceback" not in child.log()
    [metrics_file] = (tmp_path / "runs").glob("*/metrics.json")
    rounds = json.loads(metrics_file.read_text())["rounds"]
    assert [r["fit_results"] for r in rounds] == [2, 2, 2]
    assert all(sorted(r["fit_metrics"]) == sorted(METRICS) for r in rounds)
    with np.load(metrics_file.parent / "final_model.npz") as model:
        assert model["layer_0"].shape == (6, 3, 5, 5) and len(model.files) == 15
        assert model["layer_6"].shape == () and model["layer_6"] > 0  # num_batches_tracked
