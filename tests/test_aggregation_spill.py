"""Rules over every update keep them on disk, not in memory: the spill file, where it goes,
that it disappears (after the round, after a kill -9), the disk-room check before a round,
and the ServerApp's memory for 8 results of a 4 MB model."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from pollen.aggregation import spill
from pollen.aggregation.robust import (
    BulyanRule,
    CoordinateMedian,
    KrumRule,
    SpilledRule,
    TrimmedMean,
    krum_scores,
)
from pollen.aggregation.spill import SpilledUpdates
from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.errors import RecordError, RunError
from pollen.records.replies import FitRes
from pollen.server import ServerApp, ServerConfig
from pollen.server.round_loop import RoundLoop, RunOutcome
from pollen.server.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, FitAggregator, Krum
from pollen.simulation import InProcessGrid

ROOT = Path(__file__).resolve().parents[1]


def files_open_in(folder: Path, pid: int | str = "self") -> list[str]:
    """What this process's (or ``pid``'s) descriptors point to inside ``folder``."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(str(folder) + os.sep):
            found.append(target)
    return found


# --- the spill file -----------------------------------------------------------------------


def model(rng: np.random.Generator) -> NDArrays:
    return [
        rng.normal(size=(7, 5)).astype(np.float32),
        rng.normal(size=11).astype(np.float16),
        rng.integers(-50, 50, size=4).astype(np.int64),
        np.array(rng.random() > 0.5),
        np.array(3.5, np.float64),
    ]


def test_updates_come_back_from_disk_block_by_block_as_they_went_in(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    updates = [model(rng) for _ in range(5)]

    with SpilledUpdates(updates[0], tmp_path, block_bytes=24) as spilled:
        for update in updates:
            spilled.append(update)
        assert spilled.row_bytes == 35 * 4 + 11 * 2 + 4 * 8 + 8 + 8  # ints and bools as float64
        for index in range(spilled.num_arrays):
            rows = [4, 0, 2]
            pieces = [block.copy() for _, _, block in spilled.blocks(index, rows)]  # reused
            assert len(pieces) > 1 or spilled.shape(index) in ((), (4,))
            for i, row in enumerate(rows):
                got = np.concatenate([piece[i] for piece in pieces])
                expected = np.asarray(updates[row][index], np.float64).reshape(-1)
                np.testing.assert_array_equal(got.astype(np.float64), expected)


def test_an_update_of_another_shape_or_kind_is_refused_and_takes_no_row(tmp_path: Path) -> None:
    reference = [np.zeros(3, np.float32)]
    with SpilledUpdates(reference, tmp_path) as spilled:
        with pytest.raises(RecordError, match=r"shapes \(4,\); the global model has 1 arrays"):
            spilled.append([np.zeros(4, np.float32)])
        with pytest.raises(RecordError, match="dtype complex64; the global model's is float32"):
            spilled.append([np.zeros(3, np.complex64)])
        assert spilled.append([np.ones(3, np.float64)]) == 0  # float64 into float32: taken
        assert spilled.count == 1


def test_a_failed_write_rejects_that_update_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_once(fd: int, data: Any, position: int) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, position)

    monkeypatch.setattr(os, "pwrite", full_once)
    rule = CoordinateMedian([np.zeros(2, np.float32)], tmp_path)
    rule.add([np.array([1.0, 2.0], np.float32)], 1)
    with pytest.raises(RecordError, match=f"could not be kept on disk in {tmp_path}: No space"):
        rule.add([np.array([50.0, 50.0], np.float32)], 1)
    rule.add([np.array([3.0, 4.0], np.float32)], 1)

    result = rule.result()
    assert result is not None
    np.testing.assert_array_equal(result[0], [2.0, 3.0])  # the failed one is not in


def test_the_spill_has_no_name_in_its_folder_and_its_space_goes_after_the_round(
    tmp_path: Path,
) -> None:
    strategy = Krum(min_fit_clients=3)
    with spill.spill_folder(tmp_path):
        aggregator = strategy.fit_aggregator(1, [np.zeros(1000, np.float32)])
    for node in range(3):
        aggregator.add(node, FitRes([np.full(1000, node, np.float32)], 1))

    assert list(tmp_path.iterdir()) == []  # unlinked from the start
    [held] = files_open_in(tmp_path)
    assert held.endswith("(deleted)")

    aggregator.finish()

    assert files_open_in(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_an_aggregator_dropped_without_finish_frees_its_spill(tmp_path: Path) -> None:
    with spill.spill_folder(tmp_path):
        aggregator = FedMedian().fit_aggregator(1, [np.zeros(10, np.float32)])
    aggregator.add(1, FitRes([np.ones(10, np.float32)], 1))
    assert len(files_open_in(tmp_path)) == 1

    del aggregator  # what a round that keeps its model (accept_failures=False) does

    assert files_open_in(tmp_path) == []


def test_a_process_killed_by_sigkill_leaves_no_spill_behind(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        import numpy as np
        from pollen.aggregation.spill import SpilledUpdates

        spilled = SpilledUpdates([np.zeros(1 << 20, np.float32)], Path(sys.argv[1]))
        for _ in range(4):
            spilled.append([np.ones(1 << 20, np.float32)])
        print(spilled.count * spilled.row_bytes, flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert int(child.stdout.readline()) == 16 << 20
        [held] = files_open_in(tmp_path, child.pid)
        assert os.stat(f"/proc/{child.pid}/fd/{_fd_of(child.pid, held)}").st_size == 16 << 20
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()

    assert child.returncode == -signal.SIGKILL
    assert list(tmp_path.iterdir()) == []


SERVERAPP = """
import asyncio, sys, time
from pathlib import Path
import numpy as np
from pollen.client import ClientApp, NumPyClient
from pollen.server import ServerApp, ServerConfig
from pollen.server.run import ServerAppConfig, run_on_grid
from pollen.server.strategy import FedMedian
from pollen.simulation import InProcessGrid
from pollen.transport.addresses import Address

root = Path(sys.argv[1])

class Client(NumPyClient):
    def __init__(self, context):
        self.partition = int(context.node_config["partition-id"])

    def fit(self, parameters, config):
        if self.partition == 2:  # the last node never answers: the round stays open
            (root / "waiting").touch()
            time.sleep(120)
        return [p + self.partition for p in parameters], 1, {}

app = ServerApp(
    config=ServerConfig(num_rounds=1),
    strategy=FedMedian(min_available_clients=3, initial_parameters=[np.zeros(1 << 20, np.float32)]),
)
grid = InProcessGrid(ClientApp(client_fn=lambda context: Client(context)), num_nodes=3)
config = ServerAppConfig(Address("unused", 1), output_root=root / "runs")
asyncio.run(run_on_grid(app, config, grid))
"""


def test_a_serverapp_killed_by_sigkill_mid_round_leaves_no_spill_in_its_run_folder(
    tmp_path: Path,
) -> None:
    child = subprocess.Popen([sys.executable, "-c", SERVERAPP, str(tmp_path)], cwd=ROOT)
    runs = tmp_path / "runs"
    try:
        for _ in range(600):
            if (tmp_path / "waiting").exists() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "waiting").exists(), "the run did not reach its first round"
        [held] = files_open_in(runs, child.pid)  # the round's spill, in the run's folder
        assert held.endswith("(deleted)")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)

    left = sorted(p.name for p in runs.rglob("*") if p.is_file())
    assert left and all(not name.startswith("pollen-spill") for name in left), left


def _fd_of(pid: int, target: str) -> str:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return fd
        except OSError:
            continue
    raise AssertionError(f"{target} not open in {pid}")


# --- block by block gives the numbers of the whole arrays ---------------------------------


@pytest.mark.parametrize("block_bytes", [8, 100, None])
def test_blocks_of_any_size_give_the_rules_numbers_on_whole_arrays(
    tmp_path: Path, block_bytes: int | None
) -> None:
    rng = np.random.default_rng(7)
    updates = [[rng.normal(size=(13, 3)).astype(np.float32)] for _ in range(11)]
    stacked = np.stack([u[0] for u in updates])

    def run(rule: SpilledRule) -> np.ndarray:
        for update in updates:
            rule.add(update, 1)
        result = rule.result()
        assert result is not None
        return result[0]

    reference = updates[0]
    median = run(CoordinateMedian(reference, tmp_path, block_bytes))
    trimmed = run(TrimmedMean(reference, 0.2, tmp_path, block_bytes))
    krum = KrumRule(reference, 2, 0, tmp_path, block_bytes)
    chosen = run(krum)

    np.testing.assert_array_equal(median, np.median(stacked, axis=0))
    kept = np.sort(stacked, axis=0)[2:9]  # int(0.2 * 11) = 2 per end
    np.testing.assert_allclose(trimmed, kept.mean(axis=0), rtol=1e-6, atol=1e-7)  # sum order
    flat = stacked.reshape(11, -1).astype(np.float64)
    distances = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2)
    best = int(np.argmin(krum_scores(distances, 2)))
    np.testing.assert_array_equal(chosen, stacked[best])
    bulyan = run(BulyanRule(reference, 2, tmp_path, block_bytes))
    assert bulyan.shape == (13, 3) and bulyan.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 2, 5, 8])
def test_the_median_is_numpys_bit_for_bit_nans_included(
    tmp_path: Path, dtype: type, count: int
) -> None:
    rng = np.random.default_rng(count)
    updates: list[NDArrays] = [[rng.normal(size=200).astype(dtype)] for _ in range(count)]
    updates[0][0][:3] = np.nan  # a node sending NaN makes those coordinates NaN, as in Flower
    updates[-1][0][10:20] = 0.5  # ties

    rule = CoordinateMedian(updates[0], tmp_path, block_bytes=256)
    for update in updates:
        rule.add(update, 1)
    result = rule.result()

    assert result is not None and result[0].dtype == np.dtype(dtype)
    expected = np.median(np.stack([u[0] for u in updates]), axis=0)
    np.testing.assert_array_equal(result[0], expected)


# --- the round loop: where the spill goes, and the room it needs --------------------------


class AddPartition(NumPyClient):
    """Adds (partition + 1) to every weight; counts the fits it was asked for."""

    fits: ClassVar[list[int]] = []

    def __init__(self, context: Context) -> None:
        self.step = int(context.node_config["partition-id"]) + 1

    def get_parameters(self, config: Config) -> NDArrays:
        return [np.zeros(3, np.float32)]

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        AddPartition.fits.append(self.step)
        return [p + self.step for p in parameters], self.step, {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.0, 1, {}


client_app = ClientApp(client_fn=lambda context: AddPartition(context))


def run_rounds(strategy: Any, nodes: int, rounds: int, directory: Path | None) -> RunOutcome:
    AddPartition.fits = []
    app = ServerApp(config=ServerConfig(num_rounds=rounds, seed=1), strategy=strategy)
    grid = InProcessGrid(client_app, num_nodes=nodes)

    async def scenario() -> RunOutcome:
        run_id, _ = await grid.create_run("test", {})
        return await RoundLoop(app, grid, run_id, directory).run()

    return asyncio.run(scenario())


class WatchedMedian(FedMedian):
    """FedMedian that notes where each round's spill went and what it held open."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[Path, list[str]]] = []

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        inner = super().fit_aggregator(server_round, parameters)
        seen = self.seen

        class Watch(FitAggregator):
            def add(self, node_id: int, result: FitRes) -> None:
                inner.add(node_id, result)

            def finish(self) -> Any:
                folder = inner._rule.spill.folder  # type: ignore[attr-defined]
                seen.append((folder, files_open_in(folder)))
                return inner.finish()

        return Watch()


def test_rounds_spill_in_the_runs_folder_and_leave_nothing_there(tmp_path: Path) -> None:
    strategy = WatchedMedian(
        min_available_clients=3, fraction_evaluate=0.0, initial_parameters=[np.zeros(3)]
    )

    outcome = run_rounds(strategy, nodes=3, rounds=2, directory=tmp_path)

    np.testing.assert_allclose(outcome.parameters[0], [4.0] * 3)  # median(1, 2, 3) twice
    assert [folder for folder, _ in strategy.seen] == [tmp_path, tmp_path]
    assert all(len(held) == 1 and held[0].endswith("(deleted)") for _, held in strategy.seen)
    assert files_open_in(tmp_path) == []
    assert not [p for p in tmp_path.rglob("*") if "spill" in p.name]


def test_without_a_run_folder_the_spill_goes_to_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    strategy = WatchedMedian(min_available_clients=3, initial_parameters=[np.zeros(3)])

    run_rounds(strategy, nodes=3, rounds=1, directory=None)

    assert [folder for folder, _ in strategy.seen] == [tmp_path]


def test_a_disk_without_room_stops_the_run_before_any_node_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def usage(path: object) -> Any:
        return type("Usage", (), {"total": 10**9, "used": 10**9 - 100, "free": 100})()

    monkeypatch.setattr(shutil, "disk_usage", usage)
    strategy = Krum(min_available_clients=4, initial_parameters=[np.zeros(1000, np.float32)])

    with pytest.raises(RunError) as info:
        run_rounds(strategy, nodes=4, rounds=1, directory=tmp_path)

    message = str(info.value)
    assert "\n" not in message
    # 4 results of 4000 bytes
    assert message == (
        f"round 1: the strategy keeps this round's updates on disk, 16.0 kB in {tmp_path}, "
        "which has 100 B free; free space there or give the ServerApp an --output-dir "
        "on a larger disk"
    )
    assert AddPartition.fits == []


def test_strategies_that_fold_as_results_arrive_need_no_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_room(path: object) -> Any:
        return type("Usage", (), {"total": 1, "used": 1, "free": 0})()

    monkeypatch.setattr(shutil, "disk_usage", no_room)
    strategy = FedAvg(min_available_clients=2, initial_parameters=[np.zeros(3, np.float32)])

    outcome = run_rounds(strategy, nodes=2, rounds=1, directory=tmp_path)

    assert FedAvg().disk_needed(10**9, 100) == 0
    assert Krum().disk_needed(10**9, 8) == 8 * 10**9
    np.testing.assert_allclose(outcome.parameters[0], [(1 + 4) / 3] * 3, rtol=1e-6)


# --- memory: 8 results of a 4 MB model ----------------------------------------------------

MODEL_BYTES = 4_000_000
STRATEGIES: dict[str, Callable[[], Any]] = {
    "FedMedian": lambda: FedMedian(min_fit_clients=8),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(min_fit_clients=8),
    "Krum": lambda: Krum(min_fit_clients=8, num_malicious_clients=2),
    "multi-Krum": lambda: Krum(min_fit_clients=8, num_malicious_clients=2, num_clients_to_keep=4),
    "Bulyan": lambda: Bulyan(min_fit_clients=8, num_malicious_clients=1),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_aggregating_8_results_allocates_at_most_2_5_models(name: str, tmp_path: Path) -> None:
    """What the aggregator allocates on top of the results handed to it (numpy's arrays
    are traced by tracemalloc): the new model and a few blocks, not 8 results."""
    rng = np.random.default_rng(0)
    reference = [np.zeros(600_000, np.float32), np.zeros((400, 1000), np.float32)]
    results = [[rng.normal(size=a.shape).astype(np.float32) for a in reference] for _ in range(8)]
    strategy = STRATEGIES[name]()

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        with spill.spill_folder(tmp_path):
            aggregator = strategy.fit_aggregator(1, reference)
        for node, arrays in enumerate(results):
            aggregator.add(node, FitRes(arrays, 10 + node))
        parameters, _ = aggregator.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert parameters is not None and parameters[1].shape == (400, 1000)
    assert peak - before <= 2.5 * MODEL_BYTES
