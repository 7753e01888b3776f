"""Running a `ServerApp` against a SuperLink, from connection to written outputs.

A run that stops before its last round (a signal, lost quorum, an error)
stays resumable: the SuperLink keeps the model of its last checkpoint, the
ServerApp writes that model to ``last_model.npz`` and says how to go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pollen.errors import CallRefused, ConfigurationError, ConnectionFailed, PollenError, RunError
from pollen.records.typing import UserConfig
from pollen.server.checkpoint import (
    Checkpoint,
    read_checkpoints,
    write_checkpoint,
    write_finished,
)
from pollen.server.grid import Grid
from pollen.server.history import History, now_iso
from pollen.server.outputs import (
    FINAL_MODEL,
    LAST_MODEL,
    candidate_directories,
    check_output_root,
    run_directory,
    write_model,
)
from pollen.server.round_loop import RoundLoop, RunOutcome
from pollen.server.round_progress import NO_PROGRESS, RoundProgress
from pollen.server.server_app import ServerApp
from pollen.transport.addresses import Address
from pollen.transport.transfer_progress import LOGGED_TRANSFERS, TransferProgress

if TYPE_CHECKING:
    import grpc

    from pollen.transport.request_signing import ClientIdentity

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STOP_GRACE = 30.0
"""Seconds a stopping ServerApp spends saving the last model and marking the run."""


@dataclass
class ServerAppConfig:
    """Where a ServerApp connects, what it tells the nodes, where it writes."""

    superlink: Address
    app_name: str = ""
    run_config: UserConfig = field(default_factory=dict)
    output_root: Path = Path(".pollen") / "runs"
    connect_timeout: float = 30.0
    credentials: grpc.ChannelCredentials | None = None
    identity: ClientIdentity | None = None
    """The operator key, for a Driver API that requires one."""
    resume: int | None = None
    """Take up this run from its last checkpoint instead of starting a new one."""
    command: str = "pollen serverapp"
    """How the user started this ServerApp: a stopped run's message ends with it + --resume
    (empty: the run cannot be resumed, as a simulation's, and the message says no more)."""
    progress: RoundProgress = NO_PROGRESS
    """Told of each round's tasks as they finish (the CLI's live line on a terminal)."""
    transfers: TransferProgress = LOGGED_TRANSFERS
    """Where the progress of blobs over 50 MB the ServerApp moves goes."""


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event | None, when: str) -> T:
    """``work``'s result; RunError once ``stop`` is set (``work`` is cancelled first)."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise RunError(f"interrupted (Ctrl-C or SIGTERM) {when}")
    return task.result()


async def run_server_app(
    app: ServerApp, config: ServerAppConfig, stop: asyncio.Event | None = None
) -> tuple[RunOutcome, Path]:
    """Create (or resume) a run, drive its rounds, write its outputs.

    Setting ``stop`` ends the run early, as a failure does: the run stays
    resumable and the error names the command that takes it up again.
    """
    from pollen.server.driver import DriverClient  # loads gRPC: a deployment's only

    checkpoints = _checkpoints_to_resume(config)  # before connecting: a typo fails at once
    driver = await _unless_stopped(
        DriverClient.connect(
            config.superlink, config.credentials, config.connect_timeout, config.identity
        ),
        stop,
        "while connecting to the SuperLink; no run was started",
    )
    driver.transfers = config.transfers
    try:
        return await _drive(app, config, driver, checkpoints, stop)
    finally:
        await driver.close()


async def run_on_grid(
    app: ServerApp, config: ServerAppConfig, grid: Grid, stop: asyncio.Event | None = None
) -> tuple[RunOutcome, Path]:
    """`run_server_app` through a Grid that is already there (an in-process one): the
    same runs, checkpoints, outputs and resumes; ``config.superlink`` is not used."""
    return await _drive(app, config, grid, _checkpoints_to_resume(config), stop)


def _checkpoints_to_resume(config: ServerAppConfig) -> list[Checkpoint]:
    """The checkpoints of the run to resume (none for a new run, whose outputs' folder
    is checked instead)."""
    if config.resume is None:
        check_output_root(config.output_root)
        return []
    directories = candidate_directories(config.output_root, config.resume)
    return read_checkpoints(directories, config.resume)


async def _resume(grid: Grid, run_id: int, checkpoints: list[Checkpoint]) -> Checkpoint:
    """Reopen the run on the SuperLink whose checkpoint this is; refused: nothing changes."""
    refusals: list[str] = []
    for checkpoint in checkpoints:
        try:
            await grid.resume_run(run_id, checkpoint.model.digest, checkpoint.history.superlink_id)
            return checkpoint
        except CallRefused as exc:
            if exc.status not in ("failed_precondition", "not_found"):
                raise
            refusals.append(exc.details or exc.status)
    raise ConfigurationError(f"--resume {run_id}: {'; '.join(refusals)}")


async def _drive(
    app: ServerApp,
    config: ServerAppConfig,
    grid: Grid,
    checkpoints: list[Checkpoint],
    stop: asyncio.Event | None,
) -> tuple[RunOutcome, Path]:
    start: Checkpoint | None = None
    if config.resume is not None:
        run_id = config.resume
        start = await _resume(grid, run_id, checkpoints)
        directory, history = start.directory, start.history
        app = app.for_run(history.run_config)
    else:
        run_config = app.merged_run_config(config.run_config)
        app = app.for_run(run_config)  # Flower's server_fn builds the run's strategy here
        run_id, superlink_id = await grid.create_run(config.app_name, run_config)
        logger.info("run %d started: %d rounds, %r", run_id, app.config.num_rounds, app.strategy)
        directory = run_directory(config.output_root, run_id, superlink_id)
        history = History(
            run_id,
            superlink_id=superlink_id,
            app=config.app_name,
            run_config=run_config,
            started_at=now_iso(),
        )
    loop = RoundLoop(app, grid, run_id, directory, start, history, config.progress)
    try:
        outcome = await _unless_stopped(loop.run(), stop, "")
    except PollenError as exc:  # a Grid raises nothing else
        raise await _stopped(loop, config, exc) from None
    except Exception as exc:  # the app's own code (a strategy, evaluate_fn) raised
        logger.debug("the ServerApp raised", exc_info=True)
        error = RunError(f"the ServerApp raised {type(exc).__name__}: {exc} (-v shows where)")
        raise await _stopped(loop, config, error) from None
    history.finished_at = now_iso()
    write_model(directory, FINAL_MODEL, outcome.parameters, history.array_names)
    write_finished(directory, history, FINAL_MODEL)
    await grid.finish_run(run_id, "finished")
    logger.info("run %d finished; outputs in %s", run_id, directory)
    return outcome, directory


async def _stopped(loop: RoundLoop, config: ServerAppConfig, error: Exception) -> PollenError:
    """Save what a stopped run has, leave it resumable, and say how to go on. A
    configuration error (a strategy's settings that the federation cannot meet) stays one:
    its exit code tells the user to fix the settings, not to wait and retry."""
    reason = str(error).strip() or "interrupted"
    reachable = not isinstance(error, ConnectionFailed)
    saved = await _save_last_model(loop, reason, reachable)
    if reachable:
        kept = [] if loop.checkpointed is None else [await loop.checkpointed.ref()]
        with contextlib.suppress(PollenError, TimeoutError):
            async with asyncio.timeout(_STOP_GRACE):
                await loop.grid.finish_run(loop.run_id, "failed", reason[:500], kept)
    kind = ConfigurationError if isinstance(error, ConfigurationError) else RunError
    head = f"run {loop.run_id} stopped"
    if saved is None:
        return kind(f"{head} before its first round: {reason}; start a new run")
    rounds = f"after round {loop.completed_rounds} of {loop.app.config.num_rounds}"
    if not config.command:  # nothing can take it up again (a simulation's nodes are gone)
        return kind(f"{head} {rounds}: {reason}; {saved}")
    return kind(
        f"{head} {rounds}: {reason}; {saved}; to go on from there: "
        f"{config.command} --resume {loop.run_id}"
    )


async def _save_last_model(loop: RoundLoop, reason: str, reachable: bool) -> str | None:
    """Write the last checkpoint's model as ``last_model.npz`` and record the stop in
    ``metrics.json``; say where the model is (None: the run has no checkpoint)."""
    model, directory = loop.checkpointed, loop.directory
    if model is None or directory is None:
        return None
    round_ = loop.completed_rounds
    extra = {"stopped": reason}
    try:
        async with asyncio.timeout(_STOP_GRACE if reachable else 0.0):
            arrays = model.in_memory() or await model.arrays()
        path = write_model(directory, LAST_MODEL, arrays, loop.history.array_names)
        extra["last_model"] = LAST_MODEL
        saved = f"the model of round {round_} is in {path}"
    except (PollenError, TimeoutError) as exc:
        logger.warning("last model not written (%s)", exc or "the SuperLink did not send it")
        saved = f"the model of round {round_} stays on the SuperLink"
    loop.history.finished_at = now_iso()
    with contextlib.suppress(RunError):
        write_checkpoint(directory, round_, await model.ref(), loop.history, extra)
    return saved
