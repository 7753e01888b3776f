"""Pollen's benchmark workloads run on Flower 1.42.0, for figures printed side by side.

Benchmarks add their own folder to ``sys.path`` and call::

    from peers.flower import flower_memory, flower_round_latency, flower_throughput

    seconds = flower_round_latency(rounds=3, nodes=2)       # list of per-round seconds
    rate, seconds, model_bytes = flower_throughput(model_mb=100, nodes=2, rounds=2)
    peaks = flower_memory(model_mb=100, nodes=2)              # {"superlink": bytes, ...}

or by hand (``install`` only creates the venv)::

    .venv/bin/python benchmarks/peers/flower.py install|latency|throughput|memory [--model-mb N]

**Installation.** ``ensure_flower_venv()`` creates, once, a virtual environment with
``flwr==1.42.0`` and numpy in ``.pollen/peers/flower-1.42.0/`` (about 20 s and
300 MB here; flwr 1.42 does not depend on PyTorch, so none is installed).
``ensure_flower_simulation_venv()`` creates another, with ``flwr[simulation]==1.42.0``
(Ray) for ``benchmarks/simulation.py --peer flower`` (``flower_simulation.py`` runs
there), so that this one stays quick to create.

**What runs.** Every call starts a fresh federation in a temporary folder, all on
127.0.0.1 with OS-chosen ports, and stops it before returning:

- development credentials from ``pollen.transport.keygen`` (CA, server
  certificate for 127.0.0.1, ECDSA P-384 key pairs in OpenSSH format, one per node);
- ``flower-superlink`` with TLS (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``)
  and ``--enable-supernode-auth``. In 1.42 the SuperLink serves its Fleet, Control
  and Runtime APIs over HTTPS on one port (``--port``); there is no allow-list
  file any more: each node's public key is registered through the Control API
  with ``flwr supernode register KEY.pub`` before the node starts;
- one ``flower-supernode --root-certificates CA --auth-supernode-private-key KEY``
  per node (each with its own ``--port`` for its local Runtime API);
- the run: ``flwr run APP CONNECTION --stream`` on the Flower App in
  ``flower_app/`` (a ``pyproject.toml`` with ``[tool.flwr.app]`` is written next to
  it), which the SuperLink executes as a ``flwr-serverapp`` process; each node
  runs the ClientApp in a ``flwr-clientapp`` process. The ``flwr`` CLI reads its
  connection (address, CA) from ``$FLWR_HOME/config.toml`` in the temporary folder.

Telemetry and Flower's update check are switched off (``FLWR_TELEMETRY_ENABLED=0``,
``FLWR_DISABLE_UPDATE_CHECK=1``), and so is the SuperLink's installation of app
dependencies (``--disable-runtime-dependency-installation``): nothing leaves the machine.

**How rounds are timed.** The ServerApp uses Flower's own message-API ``FedAvg``
and times rounds with ``Strategy.start``'s ``evaluate_fn`` hook, which Flower
calls once before round 1 and once at the end of each round, after that round's
messages were sent, the replies received and aggregated. A round's time is the
gap between two calls, measured with ``time.perf_counter`` in the ServerApp
process. The ServerApp waits for all nodes to be connected before the first
round, so start-up is never counted. Both the SuperNode and the ServerApp's
``Grid`` poll every 3 s, which dominates small rounds.

**The workloads.** Latency: the tiny model (4x2 and 2 float32 values), a
ClientApp that hands the model back at once, fit and evaluate on every node.
Throughput and memory: a model of ``model_mb`` x 10^6 bytes in ``layers`` (4)
float32 arrays of random values; the ClientApp turns the arrays into NumPy,
adds 1 to one element and returns them (as a NumPyClient would), evaluation off.
Effective throughput is ``2 x nodes x model bytes`` (model to each node and
back) per median round time, in 10^6 bytes per second.

**Memory.** Peak RSS (``VmHWM`` read from ``/proc/PID/status`` every 50 ms) of
``superlink``, ``serverapp`` (the ``flwr-serverapp`` process), ``supernode-N``
and ``clientapp-N`` (the ClientApp process node N starts; Pollen runs its
ClientApp inside the SuperNode, so compare Pollen's SuperNode with both).

**Figures measured here** (2 nodes, 2-core machine): round of the tiny model
9.2-15 s (medians of 3 rounds: 12.2 s and 9.2 s in two runs), made of the
SuperNode's 3 s poll, SuperExec's 1 s poll, a new ``flwr-clientapp`` process
per message and the Grid's 3 s poll, twice per round. Throughput 39 MB/s at
100 MB and 57 MB/s at 500 MB. Peak RSS at 500 MB: serverapp 4.4 GB, superlink
1.6 GB, supernode 1.3-1.4 GB, clientapp 2.0-2.3 GB.
A run takes about 15 s of set-up and tear-down on top of its rounds.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as a script: make ``peers`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peers.process_tree import PeakRssSampler, stop
from pollen.transport.keygen import generate

FLOWER_VERSION = "1.42.0"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".pollen" / "peers" / f"flower-{FLOWER_VERSION}"
SIMULATION_VENV = REPO / ".pollen" / "peers" / f"flower-{FLOWER_VERSION}-simulation"
APP_SOURCES = Path(__file__).resolve().parent / "flower_app"
MB = 1_000_000
LAYERS = 4
CONNECTION = "pollen-bench"

PYPROJECT = """\
[project]
name = "pollen-peer-benchmark"
version = "1.0.0"
description = "Pollen's benchmark workloads as a Flower App"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "pollen"

[tool.flwr.app.components]
serverapp = "peer_server:app"
clientapp = "peer_client:app"

[tool.flwr.app.config]
num-rounds = 3
nodes = 2
model-bytes = 0
layers = 4
fraction-evaluate = 1.0
perturb = false
node-wait-timeout = 120.0
out = ""
strategy = "FedAvg"
"""


class FlowerError(RuntimeError):
    """A Flower process failed; the message holds the tail of its log."""


class Throughput(NamedTuple):
    """What ``flower_throughput`` measured; unpacks as ``rate, seconds, model_bytes``."""

    mb_per_s: float  # 2 x nodes x model bytes / median round seconds, in 10^6 B/s
    round_seconds: list[float]
    model_bytes: int


def ensure_flower_venv(root: Path | None = None) -> Path:
    """The Python of a venv at ``root`` (default ``DEFAULT_VENV``) with flwr 1.42.0 and numpy.

    Created on first use (about 20 s from the package index), then reused; a lock
    keeps two benchmarks from installing at once.
    """
    return _ensure_venv(root or DEFAULT_VENV, f"flwr=={FLOWER_VERSION}")


def ensure_flower_simulation_venv(root: Path | None = None) -> Path:
    """The Python of a venv at ``root`` (default ``SIMULATION_VENV``) with
    ``flwr[simulation]==1.42.0`` (Flower's simulation engine, which brings Ray) and numpy,
    for ``benchmarks/simulation.py --peer flower``.

    A venv of its own, so that the other benchmarks' venv (``ensure_flower_venv``) stays
    small and quick to create; created on first use (about 1 minute here, Ray is a large
    wheel), then reused, under the same kind of lock.
    """
    return _ensure_venv(root or SIMULATION_VENV, f"flwr[simulation]=={FLOWER_VERSION}")


def _ensure_venv(root: Path, requirement: str) -> Path:
    """The Python of a venv at ``root`` with ``requirement`` and numpy, created once (a
    marker names the Flower version installed) under a lock."""
    root = root.resolve()
    python = root / "bin" / "python"
    marker = root / ".installed"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text().strip() == FLOWER_VERSION:
            return python
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", requirement, "numpy"], check=True
        )
        marker.write_text(FLOWER_VERSION + "\n")
    return python


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 (all held open until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class FlowerFederation:
    """A SuperLink and ``nodes`` SuperNodes of Flower with TLS and node authentication.

    ``python`` is the venv's ``bin/python`` (as ``ensure_flower_venv`` returns it):
    Flower starts its helpers (``flower-superexec``, ``flwr-serverapp``,
    ``flwr-clientapp``) by name, so that ``bin`` goes first on their ``PATH``.
    """

    def __init__(self, workdir: Path, nodes: int, python: Path) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.bin = python.parent
        self.logs = workdir / "logs"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "VIRTUAL_ENV"))
        }
        self.env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_HOME=str(workdir / "flwr-home"),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
        )

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        self.pids[name] = process.pid
        return process

    def _flwr(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(self.bin / "flwr"), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            timeout=timeout,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0:
            raise FlowerError(f"flwr {' '.join(args)} failed:\n{output}")
        return output

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        generate(self.workdir, self.nodes, [])
        certs, keys = self.workdir / "certificates", self.workdir / "keys"
        port, *node_ports = _free_ports(1 + self.nodes)
        home = self.workdir / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n'
        )
        link = self._start(
            "superlink",
            [
                str(self.bin / "flower-superlink"),
                *("--ssl-ca-certfile", str(certs / "ca.crt")),
                *("--ssl-certfile", str(certs / "server.pem")),
                *("--ssl-keyfile", str(certs / "server.key")),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
        )
        self._wait_listening(link, port)
        for index in range(1, self.nodes + 1):
            self._flwr("supernode", "register", str(keys / f"client_credentials_{index}.pub"))
        for index in range(1, self.nodes + 1):
            self._start(
                f"supernode-{index}",
                [
                    str(self.bin / "flower-supernode"),
                    *("--root-certificates", str(certs / "ca.crt")),
                    *("--superlink", f"127.0.0.1:{port}"),
                    *("--auth-supernode-private-key", str(keys / f"client_credentials_{index}")),
                    *("--port", str(node_ports[index - 1])),
                ],
            )

    def _wait_listening(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise FlowerError(f"flower-superlink exited:\n{_tail(self.logs / 'superlink.log')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise FlowerError(f"flower-superlink not listening after 60 s on port {port}")

    def run(
        self, config: Mapping[str, int | float | bool | str], timeout: float
    ) -> dict[str, object]:
        """One ``flwr run`` of the peer app with ``config``; the ServerApp's JSON result."""
        app = self.workdir / "app"
        app.mkdir(exist_ok=True)
        for source in APP_SOURCES.glob("*.py"):
            shutil.copy(source, app / source.name)
        (app / "pyproject.toml").write_text(PYPROJECT)
        out = self.workdir / f"result-{time.monotonic_ns()}.json"
        values = {**config, "nodes": self.nodes, "out": str(out)}
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
        name = f"run-{len(self.processes)}"
        command = [str(self.bin / "flwr"), "run", str(app), CONNECTION, "--stream"]
        runner = self._start(name, [*command, "--run-config", overrides])
        try:
            runner.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop([runner])
            log = _tail(self.logs / f"{name}.log")
            raise FlowerError(f"the Flower run did not finish in {timeout:.0f} s:\n{log}") from None
        if runner.returncode != 0 or not out.exists():
            raise FlowerError(
                f"the Flower run failed (exit {runner.returncode}):\n"
                f"{_tail(self.logs / f'{name}.log')}"
            )
        result: dict[str, object] = json.loads(out.read_text())
        return result

    def close(self) -> None:
        stop(self.processes)


@contextmanager
def flower_federation(
    nodes: int, python: Path | None = None, workdir: Path | None = None
) -> Iterator[FlowerFederation]:
    """A running Flower federation in ``workdir`` (default: a temporary folder), then stopped."""
    python = python or ensure_flower_venv()
    with tempfile.TemporaryDirectory(prefix="pollen-flower-") as temporary:
        federation = FlowerFederation(workdir or Path(temporary), nodes, python)
        try:
            federation.start()
            yield federation
        finally:
            federation.close()


def _round_seconds(result: dict[str, object]) -> list[float]:
    seconds = result["round_seconds"]
    assert isinstance(seconds, list)
    return [float(s) for s in seconds]


def flower_round_latency(
    rounds: int = 3, nodes: int = 2, *, python: Path | None = None, timeout: float | None = None
) -> list[float]:
    """Seconds of each fit + evaluate round of the tiny model on every node."""
    with flower_federation(nodes, python) as federation:
        result = federation.run(
            {"num-rounds": rounds, "model-bytes": 0, "fraction-evaluate": 1.0, "perturb": False},
            timeout=timeout or 120 + 30 * rounds,
        )
    return _round_seconds(result)


def _transfer_config(model_mb: int, rounds: int) -> dict[str, int | float | bool]:
    return {
        "num-rounds": rounds,
        "model-bytes": model_mb * MB,
        "layers": LAYERS,
        "fraction-evaluate": 0.0,
        "perturb": True,
    }


def _transfer_timeout(model_mb: int, rounds: int) -> float:
    return 180 + rounds * (30 + model_mb * 0.5)


def flower_throughput(
    model_mb: int,
    nodes: int = 2,
    rounds: int = 2,
    *,
    python: Path | None = None,
    timeout: float | None = None,
) -> Throughput:
    """Effective MB/s (2 x nodes x model bytes per median round) and each round's seconds."""
    with flower_federation(nodes, python) as federation:
        result = federation.run(
            _transfer_config(model_mb, rounds),
            timeout=timeout or _transfer_timeout(model_mb, rounds),
        )
    seconds = _round_seconds(result)
    model_bytes = int(str(result["model_bytes"]))
    rate = 2 * nodes * model_bytes / statistics.median(seconds) / MB
    return Throughput(rate, seconds, model_bytes)


def _memory_label(root: str, pid: int, program: str) -> str | None:
    if root == "superlink":
        if program == "flower-superlink":
            return "superlink"
        return "serverapp" if program == "flwr-serverapp" else None
    if root.startswith("supernode-"):
        if program == "flower-supernode":
            return root
        return (
            "clientapp-" + root.removeprefix("supernode-") if program == "flwr-clientapp" else None
        )
    return None


def flower_memory(
    model_mb: int,
    nodes: int = 2,
    rounds: int = 2,
    *,
    python: Path | None = None,
    timeout: float | None = None,
) -> dict[str, int]:
    """Peak RSS in bytes of superlink, serverapp, supernode-N and clientapp-N during a run."""
    with (
        flower_federation(nodes, python) as federation,
        PeakRssSampler(dict(federation.pids), _memory_label) as sampler,
    ):
        federation.run(
            _transfer_config(model_mb, rounds),
            timeout=timeout or _transfer_timeout(model_mb, rounds),
        )
    return dict(sampler.peaks)


def _gb(value: int) -> str:
    return f"{value / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Pollen's benchmark workloads on Flower {FLOWER_VERSION}"
    )
    parser.add_argument("workload", choices=["install", "latency", "throughput", "memory"])
    parser.add_argument("--model-mb", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="default: 3 for latency, else 2")
    parser.add_argument("--venv", type=Path, default=None, help=f"default: {DEFAULT_VENV}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    python = ensure_flower_venv(args.venv)
    print(
        f"Flower {FLOWER_VERSION} venv: {python.parent.parent} ({time.monotonic() - started:.1f} s)"
    )
    if args.workload == "latency":
        seconds = flower_round_latency(args.rounds or 3, args.nodes, python=python)
        rounds = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"Flower round, tiny model, {args.nodes} nodes, fit + evaluate, TLS + node auth:")
        print(f"  median {statistics.median(seconds):.2f} s per round (rounds: {rounds} s)")
    elif args.workload == "throughput":
        rate, seconds, model_bytes = flower_throughput(
            args.model_mb, args.nodes, args.rounds or 2, python=python
        )
        rounds = ", ".join(f"{s:.2f}" for s in seconds)
        size = f"{model_bytes / MB:.0f} MB model, {args.nodes} nodes"
        print(f"Flower throughput, {size}, TLS + node auth:")
        print(f"  {rate:.1f} MB/s effective (rounds: {rounds} s)")
    elif args.workload == "memory":
        peaks = flower_memory(args.model_mb, args.nodes, args.rounds or 2, python=python)
        print(f"Flower peak RSS, {args.model_mb} MB model, {args.nodes} nodes, TLS + node auth:")
        for name, value in peaks.items():
            print(f"  {name:<12} {_gb(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
