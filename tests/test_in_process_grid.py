"""The round loop on an in-process Grid: virtual nodes, no network, no gRPC."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.records.arrays import ArrayBytes
from pollen.server import ServerApp, ServerConfig
from pollen.server.round_loop import RoundLoop, RunOutcome
from pollen.server.strategy import FedAvg
from pollen.simulation import InProcessGrid

ROOT = Path(__file__).resolve().parents[1]


class PartitionClient(NumPyClient):
    """Adds (partition + 1) to every weight, trained on (partition + 1) examples;
    counts its fits in ``context.state``; partition ``fail`` raises."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.step = int(context.node_config["partition-id"]) + 1

    def get_parameters(self, config: Config) -> NDArrays:
        return [np.full(3, 100.0 * self.step, np.float32)]

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        if self.context.node_config.get("fail"):
            raise ValueError("this partition is broken")
        fits = self.context.state["fits"] = self.context.state.get("fits", 0) + 1
        return [p + self.step for p in parameters], self.step, {"fits": fits}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return float(parameters[0][0]), self.step, {"seen": float(parameters[0][0])}


client_app = ClientApp(client_fn=lambda context: PartitionClient(context))


def server_app(num_rounds: int, initial: NDArrays | None, **strategy: object) -> ServerApp:
    return ServerApp(
        config=ServerConfig(num_rounds=num_rounds, seed=1),
        strategy=FedAvg(initial_parameters=initial, **strategy),  # type: ignore[arg-type]
    )


def run(app: ServerApp, grid: InProcessGrid) -> RunOutcome:
    async def scenario() -> RunOutcome:
        run_id, _ = await grid.create_run("test", {})
        return await RoundLoop(app, grid, run_id).run()

    return asyncio.run(scenario())


def test_rounds_on_virtual_nodes_average_the_updates_by_their_examples() -> None:
    grid = InProcessGrid(client_app, num_nodes=3)
    zeros = [np.zeros(3, np.float32)]

    outcome = run(server_app(2, zeros, min_available_clients=3), grid)

    per_round = (1 * 1 + 2 * 2 + 3 * 3) / (1 + 2 + 3)  # each node adds k, weighted by k
    np.testing.assert_allclose(outcome.parameters[0], [2 * per_round] * 3, rtol=1e-6)
    rounds = outcome.history.rounds
    assert [r.fit_results for r in rounds] == [3, 3]
    assert rounds[1].fit_metrics["fits"] == 2.0  # each node's context.state kept its count
    assert rounds[0].evaluate_loss == np.float32(per_round)


def test_the_initial_model_comes_from_one_virtual_node_when_the_strategy_has_none() -> None:
    grid = InProcessGrid(client_app, num_nodes=2)

    outcome = run(server_app(1, None, fraction_evaluate=0.0), grid)

    first = float(outcome.parameters[0][0]) - (1 + 4) / 3  # what round 1 added
    assert round(first) in (100, 200)  # node 1's or node 2's weights


def test_a_failing_virtual_node_fails_its_result_and_the_round_goes_on() -> None:
    grid = InProcessGrid(
        client_app,
        num_nodes=3,
        node_config=lambda i, n: {"partition-id": i, "num-partitions": n, "fail": i == 0},
    )

    outcome = run(server_app(1, [np.zeros(3, np.float32)], fraction_evaluate=0.0), grid)

    [record] = outcome.history.rounds
    assert record.fit_results == 2
    [failure] = record.fit_failures
    assert "ClientApp raised ValueError: this partition is broken" in failure
    np.testing.assert_allclose(outcome.parameters[0], [(4 + 9) / 5] * 3, rtol=1e-6)


def test_a_whole_run_on_an_in_process_grid_writes_its_outputs_and_loads_no_grpc(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        import numpy as np
        from pollen.server.run import ServerAppConfig, run_on_grid
        from pollen.simulation import InProcessGrid
        from pollen.transport.addresses import Address
        from tests.test_in_process_grid import client_app, server_app

        config = ServerAppConfig(Address("unused", 1), output_root=Path({str(tmp_path)!r}))
        grid = InProcessGrid(client_app, num_nodes=2)
        app = server_app(2, [np.zeros(3, np.float32)])
        outcome, directory = asyncio.run(run_on_grid(app, config, grid))
        print(len(outcome.history.rounds), float(outcome.parameters[0][0]), directory)
        loaded = sorted(name for name in sys.modules if name.split(".")[0] == "grpc")
        assert not loaded, loaded
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    rounds, value, directory = done.stdout.split()
    assert rounds == "2" and float(value) == pytest.approx(2 * (1 + 4) / 3, rel=1e-6)
    final = np.load(Path(directory) / "final_model.npz")
    np.testing.assert_allclose(final["layer_0"], [float(value)] * 3)
    metrics = json.loads((Path(directory) / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2 and metrics["finished"] is True
    for record in metrics["rounds"]:  # each node's fit time, within its round's
        times = [node["seconds"] for node in record["fit_nodes"]]
        assert len(times) == 2 and all(0 < t <= record["seconds"] for t in times), record


def test_a_round_that_keeps_its_model_still_lets_go_of_its_results() -> None:
    released: list[str] = []

    class Watched(InProcessGrid):
        async def release_blobs(self, run_id: int, refs: Any) -> None:
            released.extend(ref.digest for ref in refs)
            await super().release_blobs(run_id, refs)

    grid = Watched(
        client_app,
        num_nodes=2,
        node_config=lambda i, n: {"partition-id": i, "num-partitions": n, "fail": i == 0},
    )
    app = server_app(1, [np.zeros(3, np.float32)], fraction_evaluate=0.0, accept_failures=False)

    outcome = run(app, grid)

    np.testing.assert_array_equal(outcome.parameters[0], np.zeros(3))  # the model was kept
    [record] = outcome.history.rounds
    assert record.fit_results == 1 and len(record.fit_failures) == 1
    assert len(released) == 1  # the one usable result's blob, released all the same


def test_each_result_is_let_go_before_the_next_is_downloaded() -> None:
    """The Grid writes a download over the previous one's memory only when no array of it
    is alive: the round loop must hold none once a result is folded in (else each result
    of a large model takes fresh memory)."""
    from pollen.records.arrays import buffer_in_use, decode_arrays

    held: list[bool] = []

    class Watched(InProcessGrid):
        last: bytearray | None = None

        async def download_arrays(self, ref: Any) -> Any:
            if self.last is not None:
                held.append(buffer_in_use(self.last))
            self.last = bytearray(self._blobs[ref.digest])
            return decode_arrays(self.last)

    grid = Watched(client_app, num_nodes=3)

    run(
        server_app(2, [np.zeros(3, np.float32)], min_available_clients=3, fraction_evaluate=0.0),
        grid,
    )

    assert len(held) == 5 and not any(held)


def test_send_and_receive_returns_the_replies_and_what_got_none_in_time() -> None:
    import time

    from pollen.records.messages import Message, Records

    app = ClientApp()
    app.register("query", lambda content, ctx: Records(configs={"c": {"node": ctx.node_id}}))
    app.register("query.slow", lambda content, ctx: time.sleep(1.0) or Records())

    async def scenario() -> tuple[Any, Any]:
        grid = InProcessGrid(app, num_nodes=2)
        run_id, _ = await grid.create_run("test", {})
        quick = [Message(run_id, node, "query") for node in (1, 2)]
        answered, waiting = await grid.send_and_receive(run_id, quick)
        assert waiting == []
        slow = [Message(run_id, 1, "query.slow")]
        return answered, await grid.send_and_receive(run_id, slow, timeout=0.1)

    answered, (late, waiting) = asyncio.run(scenario())

    assert sorted(r.content.configs["c"]["node"] for r in answered) == [1, 2]
    assert all(r.is_reply and r.ok for r in answered)
    assert late == [] and [m.message_type for m in waiting] == ["query.slow"]


def test_a_reply_keeps_its_own_bytes_and_one_that_hands_the_model_back_shares_its_blob() -> None:
    from pollen.records.content_address import content_digest
    from pollen.records.messages import Message, Records

    kept: list[np.ndarray] = []

    def train(content: Any, context: Context) -> Any:
        [model] = content.arrays["arrays"]
        if context.node_id == 1:
            return Records(arrays={"arrays": [model]})  # the model, unchanged
        kept.append(model + 1)
        return Records(arrays={"arrays": [kept[-1]]})

    app = ClientApp()
    app.register("train", train)

    async def scenario() -> tuple[Any, list[NDArrays], NDArrays]:
        grid = InProcessGrid(app, num_nodes=2)
        run_id, _ = await grid.create_run("test", {})
        model = await grid.upload_arrays([np.arange(4, dtype=np.float32)], run_id)
        sent = [
            Message(run_id, node, "train", Records(arrays={"arrays": model})) for node in (1, 2)
        ]
        replies, _ = await grid.send_and_receive(run_id, sent)
        refs = {r.node_id: r.content.arrays["arrays"] for r in replies}
        kept[0][:] = -1  # the app changes its arrays after replying
        downloads = [await grid.download_arrays(refs[node]) for node in (1, 2)]
        downloads[0][0][:] = 7  # a download is the caller's own, writable copy
        return (model, refs), downloads, await grid.download_arrays(model)

    (model, refs), downloads, again = asyncio.run(scenario())

    assert model.digest == content_digest(bytes(ArrayBytes([np.arange(4, dtype=np.float32)])))
    assert refs[1] == model  # handed back: the model's blob, no second copy
    assert refs[2] != model and refs[2].size == model.size
    np.testing.assert_array_equal(downloads[1][0], np.arange(4) + 1)  # as replied, not as changed
    np.testing.assert_array_equal(again[0], np.arange(4))  # the stored model is unchanged


def test_a_simulation_holds_a_bounded_share_of_a_rounds_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Results are released as they add up, not only at the end of the round: in memory
    (an in-process Grid) a round of 40 distinct 1 MB results holds a few at a time."""
    monkeypatch.setattr("pollen.server.round_loop.RELEASE_BATCH_BYTES", 4_000_000)
    most = 0

    class Watched(InProcessGrid):
        def _keep(self, name: str, data: bytes, run_id: int) -> Any:
            nonlocal most
            ref = super()._keep(name, data, run_id)
            most = max(most, sum(len(blob) for blob in self._blobs.values()))
            return ref

    class Training(PartitionClient):  # slow enough for the folding to keep up
        def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
            time.sleep(0.01)
            return super().fit(parameters, config)

    grid = Watched(ClientApp(client_fn=Training), num_nodes=40, threads=1)
    app = server_app(1, [np.zeros(250_000, np.float32)], min_available_clients=40,
                     fraction_evaluate=0.0)  # fmt: skip

    outcome = run(app, grid)

    assert outcome.history.rounds[0].fit_results == 40
    assert most <= 10_000_000  # the model, 4 MB of results and the ones in flight; not 40 MB
