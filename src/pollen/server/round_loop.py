"""The round loop: wait for nodes, then fit and evaluate rounds through a `Grid`."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pollen.aggregation import spill
from pollen.aggregation.model_shape import check_fits
from pollen.errors import ConnectionFailed, PollenError, RecordError, RunError
from pollen.records import fit_evaluate
from pollen.records.messages import EVALUATE, TRAIN, BlobRef, Message
from pollen.records.replies import EvaluateRes, FitRes
from pollen.records.typing import ArrayParameters, Config, NDArrays, parameters_to_ndarrays
from pollen.server.checkpoint import Checkpoint, write_checkpoint
from pollen.server.client_proxy import ClientProxy
from pollen.server.global_model import GlobalModel
from pollen.server.grid import Grid, RunReport
from pollen.server.history import History, NodeEvaluate, NodeFit, RoundRecord, now_iso
from pollen.server.instruction_round import InstructionRound, wait_for_nodes
from pollen.server.round_progress import (
    NO_PROGRESS,
    Phase,
    RoundProgress,
    counts_told,
    reporting,
)
from pollen.server.server_app import ServerApp
from pollen.server.strategy.flower_overrides import overrides_aggregate_fit
from pollen.server.strategy.strategy import Strategy, round_model
from pollen.server.strategy_calls import Instruction, StrategyCalls

logger = logging.getLogger(__name__)

RELEASE_BATCH_BYTES = 64 * 1024 * 1024
"""Results already taken are released once they add up to this much, not only at the
end of the round: a Grid that keeps blobs in memory (a simulation's) then holds about
this much of a round's results, not all of them; a SuperLink gets one release call per
64 MiB of results."""

Sending = tuple[BlobRef, list[tuple[int, Config]], dict[int, BlobRef]]
"""A fit round's instructions: the global model's blob, each chosen node with its config,
and the blobs of the nodes that start from a model of their own."""


@dataclass
class RunOutcome:
    """The result of a finished run: its final model and what was measured."""

    run_id: int
    parameters: NDArrays
    history: History


class RoundLoop:
    """Runs a `ServerApp` as run ``run_id`` through a `Grid`."""

    def __init__(
        self,
        app: ServerApp,
        grid: Grid,
        run_id: int,
        directory: Path | None = None,
        start: Checkpoint | None = None,
        history: History | None = None,
        progress: RoundProgress = NO_PROGRESS,
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
        self.grid = grid
        self.run_id = run_id
        self.rng = random.Random(app.config.seed)
        self.round = InstructionRound(grid, run_id, app.config.round_timeout)
        self.calls = StrategyCalls(self.strategy, self.rng)
        self.progress = progress
        """Told of each phase's tasks as replies arrive (a live display); ignored by default."""

    async def _nodes(self) -> list[int]:
        return await wait_for_nodes(
            self.grid,
            self.run_id,
            self.strategy.min_available_clients,
            self.app.config.node_wait_timeout,
        )

    async def initial_parameters(self) -> NDArrays:
        needs_nodes = self.calls.initialize_needs_nodes
        nodes = await self.grid.get_nodes(self.run_id) if needs_nodes else []
        parameters = self.calls.initialize(nodes)
        if parameters is not None:
            logger.info("initial parameters from the strategy")
            return parameters
        node = self.rng.choice(await self._nodes())
        failures: list[str] = []
        asked: list[tuple[int, Config]] = [(node, {})]
        async for reply in self.round.run(fit_evaluate.GET_PARAMETERS, None, asked, failures):
            arrays = fit_evaluate.model_of(reply.content)
            if arrays is not None:
                logger.info("initial parameters from node %d", node)
                return await self.grid.download_arrays(arrays)
        raise RunError(f"could not get initial parameters: {'; '.join(failures) or 'no arrays'}")

    async def fit(self, server_round: int, model: GlobalModel, record: RoundRecord) -> GlobalModel:
        # a rule that keeps the round's updates on disk keeps them in the run's folder
        with spill.spill_folder(self.directory):
            return await self._fit(server_round, model, record)

    async def _fit(self, server_round: int, model: GlobalModel, record: RoundRecord) -> GlobalModel:
        nodes = await self._nodes()
        parameters = await model.arrays()
        instructions = self.calls.configure("configure_fit", server_round, parameters, nodes)
        if not instructions:
            return model
        model_bytes = sum(int(array.nbytes) for array in parameters)
        spill.check_room(self.strategy.disk_needed(model_bytes, len(instructions)), server_round)
        ref = await model.ref()
        chosen = [(i.node_id, i.config) for i in instructions]
        own = await self._own_models(instructions)
        if overrides_aggregate_fit(self.strategy):
            return await self._fit_gathered(
                server_round, model, parameters, (ref, chosen, own), record
            )
        aggregator = self.strategy.fit_aggregator(server_round, parameters)
        del parameters
        await model.offload()  # memory: the running sum and one result, not the model too

        async def fold(reply: Message, fit: FitRes) -> None:
            aggregator.add(reply.node_id, fit)

        await self._receive(server_round, (ref, chosen, own), record, fold)
        if not self._aggregates(server_round, record):
            return model
        new_parameters, record.fit_metrics = aggregator.finish()
        if new_parameters is None:
            failures = "; ".join(record.fit_failures)
            raise RunError(
                f"round {server_round}: no node returned a usable fit result ({failures})"
            )
        return GlobalModel(self.grid, self.run_id, new_parameters)

    async def _fit_gathered(
        self,
        server_round: int,
        model: GlobalModel,
        parameters: NDArrays,
        sending: Sending,
        record: RoundRecord,
    ) -> GlobalModel:
        """A strategy that overrides Flower's ``aggregate_fit`` gets the round's results
        together, as that signature requires: memory O(model x nodes)."""
        results: list[tuple[ClientProxy, FitRes]] = []

        async def gather(reply: Message, fit: FitRes) -> None:
            fit.parameters = ArrayParameters(fit.parameters)
            results.append((ClientProxy(str(reply.node_id)), fit))

        await self._receive(server_round, sending, record, gather)
        failures = [RuntimeError(failure) for failure in record.fit_failures]
        if not self._aggregates(server_round, record):
            return model
        token = round_model.set(parameters)
        try:
            aggregated, record.fit_metrics = self.strategy.aggregate_fit(
                server_round, results, failures
            )
        finally:
            round_model.reset(token)
        if aggregated is None:
            logger.warning("round %d: aggregate_fit returned no model; model kept", server_round)
            return model
        arrays = parameters_to_ndarrays(aggregated)
        try:
            check_fits(
                arrays, [a.shape for a in parameters], [(a.dtype, a.dtype) for a in parameters]
            )
        except RecordError as exc:
            name = type(self.strategy).__name__
            raise RunError(f"round {server_round}: {name}.aggregate_fit {exc}") from None
        return GlobalModel(self.grid, self.run_id, arrays)

    async def _own_models(self, instructions: list[Instruction]) -> dict[int, BlobRef]:
        """Upload the models that nodes start from instead of the global one (a Flower-style
        strategy may give each node parameters of its own), each distinct one once."""
        refs: dict[int, BlobRef] = {}
        uploaded: dict[int, BlobRef] = {}
        for instruction in instructions:
            if instruction.model is not None:
                key = id(instruction.model)  # StrategyCalls gives one list per FitIns model
                if key not in uploaded:
                    uploaded[key] = await self.grid.upload_arrays(instruction.model, self.run_id)
                refs[instruction.node_id] = uploaded[key]
        return refs

    async def _receive(
        self,
        server_round: int,
        sending: Sending,
        record: RoundRecord,
        take: Callable[[Message, FitRes], Awaitable[None]],
    ) -> None:
        """Send the round's fit instructions and hand each usable result to ``take`` as it
        arrives; one that cannot be taken is rejected with its reason, the round goes on."""
        ref, chosen, own = sending
        failures = record.fit_failures
        results: list[BlobRef] = []

        def fit_results() -> int:
            return record.fit_results

        told = counts_told(self.progress, fit_results, failures)
        replies = self.round.run(TRAIN, ref, chosen, failures, own, told)
        phase = Phase(server_round, self.app.config.num_rounds, "fit", len(chosen))
        held = 0  # bytes of the results in ``results``
        sent = time.perf_counter()  # the instructions go out as the first reply is awaited
        async for reply in reporting(self.progress, phase, replies, fit_results, failures):
            arrived = time.perf_counter() - sent
            blobs = [r for r in reply.content.blobs() if r != ref]
            results.extend(blobs)
            held += sum(r.size for r in blobs)
            try:
                await self._take(reply, take, record, arrived)
            except ConnectionFailed:
                raise  # the SuperLink is gone, not this node's result
            except (PollenError, MemoryError, ValueError) as exc:
                # one node's result never ends the run, whatever is wrong with it
                failures.append(f"node {reply.node_id}: result rejected: {_reason(exc)}")
            if held >= RELEASE_BATCH_BYTES:
                await self.grid.release_blobs(self.run_id, results)
                results, held = [], 0
        # Taken (folded, spilled or gathered) already: the SuperLink may delete them, whatever
        # the round's outcome. A result with the model's own bytes shares its blob: that stays
        # until the next checkpoint no longer names it.
        taken = results + list(own.values())
        await self.grid.release_blobs(self.run_id, [r for r in taken if r != ref])
        for failure in failures:
            logger.warning("round %d fit: %s", server_round, failure)

    async def _take(
        self,
        reply: Message,
        take: Callable[[Message, FitRes], Awaitable[None]],
        record: RoundRecord,
        seconds: float,
    ) -> None:
        """Download one result (its reply arrived ``seconds`` after the instructions went
        out) and hand it to ``take``. Its arrays are this frame's only: once ``take`` has
        folded them in, the next download may reuse their memory."""
        weights = fit_evaluate.model_of(reply.content)
        if weights is None:
            raise RunError("fit result carries no arrays")
        fit = fit_evaluate.fit_res(reply.content, await self.grid.download_arrays(weights))
        await take(reply, fit)
        record.fit_results += 1
        node = NodeFit(reply.node_id, fit.num_examples, dict(fit.metrics), seconds)
        record.fit_nodes.append(node)

    def _aggregates(self, server_round: int, record: RoundRecord) -> bool:
        """Whether the round's results make a new model: False when the strategy refuses
        the round (the model is kept); RunError when too few are usable."""
        failures = record.fit_failures
        refusal = self.strategy.fit_round_refusal(server_round, record.fit_results, len(failures))
        if refusal is not None:
            logger.warning("round %d: %s; model kept", server_round, refusal)
            return False
        required = self.strategy.min_fit_clients
        if record.fit_results < required:
            raise RunError(
                f"round {server_round}: {record.fit_results} usable fit result"
                f"{'s' if record.fit_results != 1 else ''}, {required} required "
                f"(min_fit_clients); " + ("; ".join(failures) or "too few nodes were sampled")
            )
        return True

    async def evaluate(self, server_round: int, model: GlobalModel, record: RoundRecord) -> None:
        # No waiting here: the nodes that just trained are connected, and a round
        # that lost a node must still be able to finish.
        nodes = await self.grid.get_nodes(self.run_id)
        parameters = await model.arrays()
        instructions = self.calls.configure("configure_evaluate", server_round, parameters, nodes)
        if instructions:
            ref = await model.ref()
            chosen = [(i.node_id, i.config) for i in instructions]
            own = await self._own_models(instructions)
            results: list[tuple[int, EvaluateRes]] = []
            failures = record.evaluate_failures
            told = counts_told(self.progress, results.__len__, failures)
            replies = self.round.run(EVALUATE, ref, chosen, failures, own, told)
            phase = Phase(server_round, self.app.config.num_rounds, "evaluate", len(chosen))
            async for reply in reporting(self.progress, phase, replies, results.__len__, failures):
                try:
                    results.append((reply.node_id, fit_evaluate.evaluate_res(reply.content)))
                except PollenError as exc:
                    failures.append(f"node {reply.node_id}: result rejected: {exc}")
            record.evaluate_results = len(results)
            record.evaluate_nodes = [
                NodeEvaluate(node, r.num_examples, r.loss, dict(r.metrics)) for node, r in results
            ]
            record.evaluate_loss, record.evaluate_metrics = self.calls.aggregate_evaluate(
                server_round, results, failures
            )
            await self.grid.release_blobs(self.run_id, list(own.values()))
            for failure in record.evaluate_failures:
                logger.warning("round %d evaluate: %s", server_round, failure)
        if self.strategy.evaluates_on_server():
            self.grid.release_memory()  # its data may need the memory more than a buffer
        centralized = self.calls.evaluate(server_round, parameters)
        if centralized is not None:
            record.centralized_loss, record.centralized_metrics = centralized

    async def run(self) -> RunOutcome:
        history = self.history
        if self.start is not None:
            model = GlobalModel(self.grid, self.run_id, None, self.start.model)
            self.checkpointed, self.completed_rounds = model, self.start.completed_rounds
            logger.info("run %d resumes after round %d", self.run_id, self.completed_rounds)
        else:
            model = GlobalModel(self.grid, self.run_id, await self.initial_parameters())
            history.array_names = self.strategy.array_names()
            await self._checkpoint(0, model, None)  # round 0: a run that stops now can resume
        num_rounds = self.app.config.num_rounds
        await self._report()
        for server_round in range(self.completed_rounds + 1, num_rounds + 1):
            started = time.perf_counter()
            record = RoundRecord(server_round, started_at=now_iso())
            previous = await model.ref()
            model = await self.fit(server_round, model, record)
            await self.evaluate(server_round, model, record)
            record.seconds = time.perf_counter() - started
            history.rounds.append(record)
            summary = describe_round(record, num_rounds)
            logger.info("%s", summary)
            await self._checkpoint(server_round, model, previous)
            await self._report(record, summary)
        self.grid.release_memory()
        return RunOutcome(self.run_id, await model.arrays(), history)

    async def _report(self, record: RoundRecord | None = None, summary: str = "") -> None:
        """Tell the federation how the run stands (`Grid.report_round`: never fails the run)."""
        output_dir = str(self.directory.resolve()) if self.directory is not None else ""
        report = RunReport(self.app.config.num_rounds, output_dir, record, summary)
        await self.grid.report_round(self.run_id, report)

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
            await self.grid.release_blobs(self.run_id, [previous])


def _reason(exc: BaseException) -> str:
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
