"""The round loop: wait for nodes, then fit and evaluate rounds over the Driver API."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from pollen.errors import ConnectionFailed, PollenError, RunError
from pollen.records.messages import BlobRef, Result, Task, TaskKind
from pollen.records.replies import EvaluateRes, FitRes
from pollen.records.typing import Config, NDArrays
from pollen.server.checkpoint import Checkpoint, write_checkpoint
from pollen.server.driver import DriverClient
from pollen.server.global_model import GlobalModel
from pollen.server.history import History, NodeEvaluate, NodeFit, RoundRecord, now_iso
from pollen.server.server_app import ServerApp
from pollen.server.strategy.strategy import FitAggregator, Strategy

logger = logging.getLogger(__name__)

_WAIT_POLL = 0.05
_WAIT_REPORT = 5.0


@dataclass
class RunOutcome:
    """The result of a finished run: its final model and what was measured."""

    run_id: int
    parameters: NDArrays
    history: History


async def wait_for_nodes(
    driver: DriverClient, run_id: int, minimum: int, timeout: float
) -> list[int]:
    """Online nodes once at least ``minimum`` are connected; RunError after ``timeout``."""
    started = last_report = time.monotonic()
    while True:
        nodes = await driver.get_nodes(run_id)
        if len(nodes) >= minimum:
            return nodes
        now = time.monotonic()
        if now - started >= timeout:
            raise RunError(
                f"only {len(nodes)} of {minimum} required nodes connected after {timeout:g} s; "
                "start more SuperNodes or lower min_available_clients"
            )
        if now - last_report >= _WAIT_REPORT or now == started:
            logger.info("waiting for nodes: %d of %d connected", len(nodes), minimum)
            last_report = now
        await asyncio.sleep(_WAIT_POLL)


class _Round:
    """Sends one kind of task to chosen nodes and yields their results as they arrive."""

    def __init__(self, driver: DriverClient, run_id: int, timeout: float | None) -> None:
        self.driver = driver
        self.run_id = run_id
        self.timeout = timeout

    async def run(
        self,
        kind: TaskKind,
        ref: BlobRef | None,
        chosen: Sequence[tuple[int, Config]],
        failures: list[str],
    ) -> AsyncIterator[Result]:
        tasks = [Task(self.run_id, node_id, kind, ref, config) for node_id, config in chosen]
        await self.driver.push_tasks(self.run_id, tasks)
        missing = {t.task_id: t.node_id for t in tasks}
        try:
            async with asyncio.timeout(self.timeout):
                async for result in self.driver.results(self.run_id, list(missing)):
                    missing.pop(result.task_id, None)
                    if result.ok:
                        yield result
                    else:
                        failures.append(f"node {result.node_id}: {result.error}")
        except TimeoutError:
            failures.extend(
                f"node {node}: no result within round_timeout={self.timeout:g} s"
                for node in missing.values()
            )


def _evaluates_on_server(strategy: Strategy) -> bool:
    """True when ``strategy.evaluate`` may do real work (an ``evaluate_fn`` or an override)."""
    if type(strategy).evaluate is Strategy.evaluate:
        return False
    return getattr(strategy, "evaluate_fn", True) is not None


class RoundLoop:
    """Runs a `ServerApp` as run ``run_id`` through a connected `DriverClient`."""

    def __init__(
        self,
        app: ServerApp,
        driver: DriverClient,
        run_id: int,
        directory: Path | None = None,
        start: Checkpoint | None = None,
        history: History | None = None,
    ) -> None:
        self.directory = directory
        """Where checkpoints (and outputs) are written; None: nowhere."""
        self.start = start
        self.history = start.history if start is not None else history or History(run_id)
        self.checkpointed: GlobalModel | None = None
        """The model of the last checkpoint (round ``completed_rounds``)."""
        self.completed_rounds = 0
        self.app = app
        self.strategy: Strategy = app.strategy
        self.driver = driver
        self.run_id = run_id
        self.rng = random.Random(app.config.seed)
        self.round = _Round(driver, run_id, app.config.round_timeout)

    async def _nodes(self) -> list[int]:
        return await wait_for_nodes(
            self.driver,
            self.run_id,
            self.strategy.min_available_clients,
            self.app.config.node_wait_timeout,
        )

    async def initial_parameters(self) -> NDArrays:
        parameters = self.strategy.initialize_parameters()
        if parameters is not None:
            logger.info("initial parameters from the strategy")
            return parameters
        node = self.rng.choice(await self._nodes())
        failures: list[str] = []
        async for result in self.round.run("get_parameters", None, [(node, {})], failures):
            if result.parameters is not None:
                logger.info("initial parameters from node %d", node)
                return await self.driver.download_arrays(result.parameters)
        raise RunError(f"could not get initial parameters: {'; '.join(failures) or 'no arrays'}")

    async def fit(self, server_round: int, model: GlobalModel, record: RoundRecord) -> GlobalModel:
        nodes = await self._nodes()
        parameters = await model.arrays()
        instructions = self.strategy.configure_fit(server_round, parameters, nodes, self.rng)
        if not instructions:
            return model
        ref = await model.ref()
        aggregator = self.strategy.fit_aggregator(server_round, parameters)
        del parameters
        await model.offload()  # memory: the running sum and one result, not the model too
        chosen = [(node, ins.config) for node, ins in instructions]
        failures = record.fit_failures
        results: list[BlobRef] = []
        async for result in self.round.run("fit", ref, chosen, failures):
            if result.parameters is not None:
                results.append(result.parameters)
            try:
                await self._take(result, aggregator, record)
            except ConnectionFailed:
                raise  # the SuperLink is gone, not this node's result
            except (PollenError, grpc.aio.AioRpcError, MemoryError, ValueError) as exc:
                # one node's result never ends the run, whatever is wrong with it
                failures.append(f"node {result.node_id}: result rejected: {_reason(exc)}")
        for failure in failures:
            logger.warning("round %d fit: %s", server_round, failure)
        if failures and not getattr(self.strategy, "accept_failures", True):
            logger.warning("round %d: failures and accept_failures=False; model kept", server_round)
            return model
        required = getattr(self.strategy, "min_fit_clients", 1)
        if record.fit_results < required:
            raise RunError(
                f"round {server_round}: {record.fit_results} usable fit result"
                f"{'s' if record.fit_results != 1 else ''}, {required} required "
                f"(min_fit_clients); " + ("; ".join(failures) or "too few nodes were sampled")
            )
        new_parameters, record.fit_metrics = aggregator.finish()
        if new_parameters is None:
            raise RunError(
                f"round {server_round}: no node returned a usable fit result ("
                + "; ".join(failures)
                + ")"
            )
        # Folded in: the SuperLink may delete these. The previous model goes once the
        # next checkpoint no longer names it.
        # A result with the model's own bytes shares its blob: that stays until the next
        # checkpoint no longer names it.
        await self.driver.release_blobs(self.run_id, [r for r in results if r != ref])
        return GlobalModel(self.driver, self.run_id, new_parameters)

    async def _take(self, result: Result, aggregator: FitAggregator, record: RoundRecord) -> None:
        """Download one fit result and fold it in."""
        if result.parameters is None:
            raise RunError("fit result carries no arrays")
        arrays = await self.driver.download_arrays(result.parameters, transient=True)
        aggregator.add(result.node_id, FitRes(arrays, result.num_examples, result.metrics))
        record.fit_results += 1
        record.fit_nodes.append(NodeFit(result.node_id, result.num_examples, dict(result.metrics)))

    async def evaluate(self, server_round: int, model: GlobalModel, record: RoundRecord) -> None:
        # No waiting here: the nodes that just trained are connected, and a round
        # that lost a node must still be able to finish.
        nodes = await self.driver.get_nodes(self.run_id)
        parameters = await model.arrays()
        instructions = self.strategy.configure_evaluate(server_round, parameters, nodes, self.rng)
        if instructions:
            ref = await model.ref()
            chosen = [(node, ins.config) for node, ins in instructions]
            results: list[tuple[int, EvaluateRes]] = []
            async for result in self.round.run("evaluate", ref, chosen, record.evaluate_failures):
                results.append(
                    (result.node_id, EvaluateRes(result.loss, result.num_examples, result.metrics))
                )
            record.evaluate_results = len(results)
            record.evaluate_nodes = [
                NodeEvaluate(node, r.num_examples, r.loss, dict(r.metrics)) for node, r in results
            ]
            record.evaluate_loss, record.evaluate_metrics = self.strategy.aggregate_evaluate(
                server_round, results
            )
            for failure in record.evaluate_failures:
                logger.warning("round %d evaluate: %s", server_round, failure)
        if _evaluates_on_server(self.strategy):
            self.driver.drop_transient()  # its data may need the memory more than a buffer
        centralized = self.strategy.evaluate(server_round, parameters)
        if centralized is not None:
            record.centralized_loss, record.centralized_metrics = centralized

    async def run(self) -> RunOutcome:
        history = self.history
        if self.start is not None:
            model = GlobalModel(self.driver, self.run_id, None, self.start.model)
            self.checkpointed, self.completed_rounds = model, self.start.completed_rounds
            logger.info("run %d resumes after round %d", self.run_id, self.completed_rounds)
        else:
            model = GlobalModel(self.driver, self.run_id, await self.initial_parameters())
            history.array_names = self.strategy.array_names()
            await self._checkpoint(0, model, None)  # round 0: a run that stops now can resume
        num_rounds = self.app.config.num_rounds
        for server_round in range(self.completed_rounds + 1, num_rounds + 1):
            started = time.perf_counter()
            record = RoundRecord(server_round, started_at=now_iso())
            previous = await model.ref()
            model = await self.fit(server_round, model, record)
            await self.evaluate(server_round, model, record)
            record.seconds = time.perf_counter() - started
            history.rounds.append(record)
            logger.info("%s", describe_round(record, num_rounds))
            await self._checkpoint(server_round, model, previous)
        self.driver.drop_transient()
        return RunOutcome(self.run_id, await model.arrays(), history)

    async def _checkpoint(
        self, server_round: int, model: GlobalModel, previous: BlobRef | None
    ) -> None:
        """Name the new model (uploaded now: the next round sends it anyway) on disk."""
        self.checkpointed, self.completed_rounds = model, server_round
        if self.directory is None:
            return
        current = await model.ref()
        write_checkpoint(self.directory, server_round, current, self.history)
        if previous is not None and previous.digest != current.digest:
            await self.driver.release_blobs(self.run_id, [previous])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"the SuperLink answered {exc.code().name}: {exc.details()}"
    if isinstance(exc, MemoryError):
        return "the ServerApp could not allocate the memory to take it (MemoryError)"
    if isinstance(exc, PollenError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _format_metrics(metrics: dict[str, object]) -> str:
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )


def describe_round(record: RoundRecord, num_rounds: int) -> str:
    """One progress line: ``round 2/5 (0.41 s): fit 2 ok 0 failed ... | evaluate ...``."""
    parts = [
        f"round {record.round}/{num_rounds} ({record.seconds:.2f} s): "
        f"fit {record.fit_results} ok, {len(record.fit_failures)} failed"
    ]
    if record.fit_metrics:
        parts.append(_format_metrics(dict(record.fit_metrics)))
    if record.evaluate_results or record.evaluate_failures:
        parts.append(
            f"| evaluate {record.evaluate_results} ok, {len(record.evaluate_failures)} failed"
        )
        if record.evaluate_loss is not None:
            parts.append(f"loss={record.evaluate_loss:.4f}")
        parts.append(_format_metrics(dict(record.evaluate_metrics)))
    if record.centralized_loss is not None:
        parts.append(f"| server loss={record.centralized_loss:.4f}")
        parts.append(_format_metrics(dict(record.centralized_metrics)))
    return " ".join(p for p in parts if p)
