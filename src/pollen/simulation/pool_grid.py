"""`ProcessPoolGrid`: virtual nodes executed by a pool of worker processes.

It is an `InProcessGrid` (runs, replies, blobs and each node's `Context` are
kept in the simulation's process, the same bookkeeping) that replaces only how
one message is executed: a free worker process runs it through the same
`execute` rule. Workers are forked, so they inherit the ClientApp (a
``client_fn`` lambda cannot be pickled). The model reaches them by reference:
each blob an instruction names is written once to a file in shared memory
(``/dev/shm``), keyed by its digest, and each worker reads it into a buffer of
its own; the file goes when no open instruction names it any more, and at
`close`. A reply's arrays come back the same way, one file each, read once.
A worker that dies fails its in-flight task ("worker process died") and is
replaced; `close` ends every worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pollen.client.client_app import ClientApp
from pollen.client.message_execution import execute
from pollen.errors import ConfigurationError
from pollen.records.arrays import decode_arrays
from pollen.records.context import Context
from pollen.records.messages import BlobRef, Message, Records
from pollen.records.typing import NDArrays
from pollen.simulation.in_process_grid import NodeConfigFn, _Node, _Run, partition_config
from pollen.simulation.resources import (
    ClientResources,
    available_cpus,
    gpu_slots,
    visible_gpus,
)
from pollen.simulation.shared_blobs import SharedBlobGrid

_SHM = Path("/dev/shm")
_DIED = "worker process died"


@dataclass
class _Task:
    message: Message
    context: Context
    blobs: dict[str, str]  # array record name -> path of its blob in shared memory
    replies: str  # the folder in shared memory the reply's arrays are written to


@dataclass
class _Result:
    arrays: dict[str, str] = field(default_factory=dict)  # name -> path in shared memory
    content: Records[BlobRef] = field(default_factory=Records)
    error: str = ""
    state: dict[str, Any] | None = None  # None: the app did not run


def _run_task(app: ClientApp, task: _Task) -> _Result:
    arrays: dict[str, NDArrays] = {}
    for name, path in task.blobs.items():
        with open(path, "rb", buffering=0) as blob:
            buffer = bytearray(os.fstat(blob.fileno()).st_size)  # the app's own copy
            blob.readinto(buffer)
        arrays[name] = decode_arrays(buffer)
    execution = execute(app, task.message, arrays, task.context)
    written: dict[str, str] = {}
    for name, values in execution.arrays.items():  # each byte copied once, to shared memory
        path = os.path.join(task.replies, f"reply-{os.getpid()}-{uuid.uuid4().hex}")
        with open(path, "wb", buffering=0) as out:
            for piece in values.slice(0, len(values)):
                out.write(piece)
        written[name] = path
    return _Result(written, execution.content, execution.error, task.context.state)


def _worker_main(
    conn: Connection, app: ClientApp, inherited: list[Connection], gpus: str | None
) -> None:
    if gpus is not None:  # before the app touches CUDA: this worker's share of the GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    # the parent's handlers (and its event loop's wakeup fd) are not the worker's: Ctrl-C
    # reaches the whole process group, and the simulation's process ends the pool
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for other in inherited:  # other workers' ends: they must see EOF when the parent dies
        other.close()
    parent = os.getppid()
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != parent:
                    return  # orphaned
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result = _run_task(app, task)
        except Exception as exc:  # a blob that cannot be read, say
            result = _Result(error=f"worker failed: {type(exc).__name__}: {exc}")
        try:
            conn.send(result)
        except Exception as exc:  # a state that cannot be pickled
            conn.send(_Result(error=f"the reply cannot be sent back: {exc}"))


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection, gpus: str | None) -> None:
        self.process = process
        self.conn = conn
        self.gpus = gpus  # its CUDA_VISIBLE_DEVICES, which a replacement takes over
        self._closing = threading.Lock()

    def close_conn(self) -> None:
        """Close our end once (the pool's `close` and a thread that saw it die may race)."""
        with self._closing:
            if not self.conn.closed:
                with contextlib.suppress(OSError):
                    self.conn.close()


class WorkerPool:
    """``size`` forked worker processes running ``app``; `run` hands a task to a free one.
    Worker ``i`` sees the GPUs ``gpus[i]`` (`resources.gpu_slots`; None: as inherited)."""

    def __init__(self, app: ClientApp, size: int, gpus: Sequence[str | None] = ()) -> None:
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                "backend process-pool: this platform cannot fork worker processes; "
                "use the in-process backend"
            )
        self.app = app
        self.size = size
        self._context = multiprocessing.get_context("fork")
        self._workers: list[_Worker] = []
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self.closed = False
        for slot in list(gpus) + [None] * (size - len(gpus)):
            self._idle.put(self._start(slot))

    def _start(self, gpus: str | None) -> _Worker:
        with self._lock:
            ours, theirs = self._context.Pipe()
            inherited = [worker.conn for worker in self._workers]
            process = self._context.Process(
                target=_worker_main,
                args=(theirs, self.app, inherited, gpus),
                name="pollen-simulation-worker",
                daemon=True,
            )
            process.start()
            theirs.close()
            worker = _Worker(process, ours, gpus)
            self._workers.append(worker)
            return worker

    def run(self, task: _Task) -> _Result:
        """Run ``task`` on the next free worker (blocking); a worker that dies meanwhile
        fails the task and is replaced."""
        while True:
            if self.closed:
                return _Result(error="the simulation ended")
            try:
                worker = self._idle.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        try:
            worker.conn.send(task)
            result: _Result = worker.conn.recv()
        except (EOFError, OSError):
            return self._died(worker)
        except Exception as exc:  # a task that cannot be pickled
            self._idle.put(worker)
            return _Result(error=f"the task cannot be sent to a worker: {exc}")
        self._idle.put(worker)
        return result

    def _died(self, worker: _Worker) -> _Result:
        worker.process.join(1.0)
        code = worker.process.exitcode
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        worker.close_conn()
        if self.closed:
            return _Result(error="the simulation ended")
        self._idle.put(self._start(worker.gpus))
        return _Result(error=f"{_DIED} (exit code {code})")

    def close(self) -> None:
        """End every worker, at once (a task in flight fails)."""
        self.closed = True
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in workers:
            worker.process.join(2.0)
            if worker.process.is_alive():
                worker.process.kill()  # cannot be ignored: reaped once the kernel ends it
                worker.process.join()
            worker.close_conn()


class ProcessPoolGrid(SharedBlobGrid[Path]):
    """`InProcessGrid` whose messages run in a pool of worker processes, as many as
    ``resources`` allow on this machine (`ClientResources.concurrency`), each seeing its
    share of the GPUs. Call `close` when the run is over."""

    def __init__(
        self,
        app: ClientApp,
        num_nodes: int,
        node_config: NodeConfigFn = partition_config,
        workers: int | None = None,
        resources: ClientResources | None = None,
    ) -> None:
        resources = resources or ClientResources()
        gpus = visible_gpus()
        size = workers or resources.concurrency(available_cpus(), len(gpus), num_nodes)
        # one of the grid's threads per worker waits on its task: as many in flight as workers
        super().__init__(app, num_nodes, node_config, threads=size)
        self._shm_dir = Path(
            tempfile.mkdtemp(prefix="pollen-sim-", dir=_SHM if _SHM.is_dir() else None)
        )
        self.pool = WorkerPool(app, size, gpu_slots(size, resources.num_gpus, gpus))

    def _publish(self, digest: str, blob: bytes) -> Path:
        path = self._shm_dir / digest
        path.write_bytes(blob)
        return path

    def _withdraw(self, handle: Path) -> None:
        handle.unlink(missing_ok=True)

    def _execute(self, node: _Node, run: _Run, message: Message) -> Message:
        context = self._context(node, run, message.run_id)
        try:
            blobs = {name: str(self._share(ref)) for name, ref in message.content.arrays.items()}
        except KeyError as exc:
            return message.reply(error=f"blob {str(exc)[:14]} is not stored")
        result = self.pool.run(_Task(message, context, blobs, str(self._shm_dir)))
        if result.state is not None:
            context.state = result.state
        if result.error:
            return message.reply(error=result.error)
        reply = message.reply(result.content)
        sent = message.content.blobs()
        for name, written in result.arrays.items():
            path = Path(written)
            encoded = path.read_bytes()
            path.unlink()
            reply.content.arrays[name] = self._store(encoded, message.run_id, sent)
        return reply

    def shared_files(self) -> list[Path]:
        """The blobs in shared memory now."""
        return sorted(self._shm_dir.iterdir()) if self._shm_dir.is_dir() else []

    def close(self) -> None:
        """End the workers and remove every blob from shared memory."""
        self.pool.close()
        super().close()
        self._withdraw_all()
        for path in self.shared_files():
            path.unlink(missing_ok=True)
        if self._shm_dir.is_dir():
            self._shm_dir.rmdir()
