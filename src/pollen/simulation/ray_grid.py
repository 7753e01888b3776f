"""`RayGrid`: virtual nodes executed by Ray actors, on one machine or a cluster.

It is an `InProcessGrid` (runs, replies, blobs and each node's `Context` are
kept in the simulation's process) that replaces only how one message is
executed: a free actor runs it through the same `execute` rule. Each actor holds
``client_resources`` (``num_cpus``, ``num_gpus``, fractions allowed) as Ray
resources, so Ray places it and sets its ``CUDA_VISIBLE_DEVICES``; there are as
many actors as the cluster's resources allow (at most one per virtual node).
Each blob an instruction names is put in Ray's object store once and read by
every actor from there (on the same machine: shared memory, no copy per node).
An actor that dies fails its in-flight task ("worker process died") and is
replaced. Ray is joined (``RAY_ADDRESS`` or ``init_args.address``) or started
locally; a Ray this grid started is shut down by `close`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pollen.client.client_app import ClientApp
from pollen.client.message_execution import execute
from pollen.errors import ConfigurationError
from pollen.records.arrays import decode_arrays
from pollen.records.context import Context
from pollen.records.messages import BlobRef, Message, Records
from pollen.records.typing import NDArrays
from pollen.simulation.backends import require_ray
from pollen.simulation.in_process_grid import NodeConfigFn, _Node, _Run, partition_config
from pollen.simulation.resources import ClientResources, available_cpus
from pollen.simulation.shared_blobs import SharedBlobGrid

_DIED = "worker process died"
_READY_SECONDS = 120
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _last_line(exc: BaseException) -> str:
    """The exception at the end of a Ray error's remote traceback."""
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else type(exc).__name__


def import_ray() -> Any:
    """The ``ray`` module; ConfigurationError naming the extra when it is not installed."""
    require_ray()
    import ray

    return ray


@dataclass
class _Reply:
    content: Records[BlobRef] = field(default_factory=Records)
    arrays: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)  # encoded
    error: str = ""
    state: dict[str, Any] | None = None


class NodeRunner:
    """What each Ray actor is: the ClientApp, and `run` for one message. The app comes
    pickled (by Ray's cloudpickle) and is loaded after the driver's ``sys.path`` is
    known, so that an app loaded from ``--app-dir`` is found on a local cluster."""

    def __init__(self, app: bytes, sys_path: list[str]) -> None:
        import ray.cloudpickle

        sys.path.extend(path for path in sys_path if path not in sys.path)
        self.app: ClientApp = ray.cloudpickle.loads(app)

    def ready(self) -> bool:
        """True once the ClientApp is loaded (a call Ray answers after ``__init__``)."""
        return True

    def run(
        self, message: Message, context: Context, names: list[str], *blobs: np.ndarray[Any, Any]
    ) -> _Reply:
        arrays: dict[str, NDArrays] = {
            name: decode_arrays(bytearray(blob))  # the app's own copy of the shared blob
            for name, blob in zip(names, blobs, strict=True)
        }
        execution = execute(self.app, message, arrays, context)
        encoded = {
            name: np.frombuffer(bytes(values), np.uint8)
            for name, values in execution.arrays.items()
        }
        return _Reply(execution.content, encoded, execution.error, context.state)


def connect(ray: Any, init_args: Mapping[str, Any]) -> bool:
    """Join the cluster at ``init_args['address']`` or ``$RAY_ADDRESS``, or start a
    local one with this machine's available CPUs; use a Ray this process initialised
    already. True when this call started or joined it (so `close` shuts it down)."""
    if ray.is_initialized():
        return False
    args: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    if "address" not in init_args and not os.environ.get("RAY_ADDRESS"):
        args["num_cpus"] = available_cpus()
    args.update(init_args)
    try:
        ray.init(**args)
    except (ConnectionError, ValueError, TypeError) as exc:
        where = args.get("address") or os.environ.get("RAY_ADDRESS") or "a local Ray"
        raise ConfigurationError(
            f"--backend ray: could not start or join {where} ({exc}); check "
            "backend_config.init_args and RAY_ADDRESS"
        ) from None
    return True


def cluster_capacity(ray: Any) -> tuple[float, float, float, float]:
    """CPUs and GPUs of the whole cluster, and the most of each on any one machine
    (an actor cannot span two)."""
    total = ray.cluster_resources()
    machines = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((m.get("CPU", 0.0) for m in machines), default=0.0)
    most_gpus = max((m.get("GPU", 0.0) for m in machines), default=0.0)
    return total.get("CPU", 0.0), total.get("GPU", 0.0), most_cpus, most_gpus


class RayGrid(SharedBlobGrid[Any]):
    """``num_nodes`` virtual nodes running ``app`` on Ray actors holding ``resources``
    each. Call `close` when the run is over."""

    def __init__(
        self,
        app: ClientApp,
        num_nodes: int,
        node_config: NodeConfigFn = partition_config,
        resources: ClientResources | None = None,
        init_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(app, num_nodes, node_config)
        self._ray = import_ray()
        self._owns_ray = connect(self._ray, init_args or {})
        try:
            self._start_actors(app, num_nodes, resources or ClientResources())
        except BaseException:
            self._disconnect()
            raise

    def _start_actors(self, app: ClientApp, num_nodes: int, resources: ClientResources) -> None:
        ray = self._ray
        cpus, gpus, most_cpus, most_gpus = cluster_capacity(ray)
        resources.check_fits(most_cpus, most_gpus, "any machine of the Ray cluster has")
        self.size = resources.concurrency(cpus, gpus, num_nodes)
        self._actor_class = ray.remote(NodeRunner).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus
        )
        try:
            self._app_bytes = ray.cloudpickle.dumps(app)
        except Exception as exc:
            raise ConfigurationError(
                f"--backend ray: the ClientApp cannot be sent to Ray's workers ({exc}); make "
                "what it holds picklable, or use the in-process or process-pool backend"
            ) from None
        self._actors = [self._new_actor() for _ in range(self.size)]
        self._idle: asyncio.Queue[Any] | None = None
        self.closed = False
        self._check_loads(self._actors[0])

    def _check_loads(self, actor: Any) -> None:
        """ConfigurationError when a worker cannot load the ClientApp (its module is not
        importable there, say): every task would fail the same way."""
        try:
            self._ray.get(actor.ready.remote(), timeout=_READY_SECONDS)
        except self._ray.exceptions.GetTimeoutError:
            raise ConfigurationError(
                f"--backend ray: no Ray worker started within {_READY_SECONDS} s; check that the "
                "cluster has the CPUs and GPUs client_resources asks for free"
            ) from None
        except self._ray.exceptions.RayError as exc:
            raise ConfigurationError(
                f"--backend ray: a Ray worker could not load the ClientApp ({_last_line(exc)}); "
                "install the app's code on the cluster or ship it with "
                'init_args={"runtime_env": {"working_dir": "."}}'
            ) from None

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._app_bytes, list(sys.path))

    def _publish(self, digest: str, blob: bytes) -> Any:
        return self._ray.put(np.frombuffer(blob, np.uint8))  # read in place by every actor

    def _withdraw(self, handle: Any) -> None:
        del handle  # Ray frees the object once no reference to it is left

    async def _free_actor(self) -> Any:
        if self._idle is None:  # made on the event loop that runs the simulation
            self._idle = asyncio.Queue()
            for actor in self._actors:
                self._idle.put_nowait(actor)
        return await self._idle.get()

    async def _execute_off_loop(self, node: _Node, run: _Run, message: Message) -> Message:
        context = self._context(node, run, message.run_id)
        try:
            names = list(message.content.arrays)
            blobs = [self._share(message.content.arrays[name]) for name in names]
        except KeyError as exc:
            return message.reply(error=f"blob {str(exc)[:14]} is not stored")
        actor = await self._free_actor()
        try:
            reply: _Reply = await actor.run.remote(message, context, names, *blobs)
        except self._ray.exceptions.RayActorError as exc:
            return message.reply(error=self._replace(actor, exc))
        except self._ray.exceptions.RayError as exc:
            self._back_to_idle(actor)
            return message.reply(error=f"the task failed on Ray: {type(exc).__name__}: {exc}")
        self._back_to_idle(actor)
        if reply.state is not None:
            context.state = reply.state
        if reply.error:
            return message.reply(error=reply.error)
        answer, sent = message.reply(reply.content), message.content.blobs()
        for name, encoded in reply.arrays.items():
            answer.content.arrays[name] = self._store(encoded.tobytes(), message.run_id, sent)
        return answer

    def _back_to_idle(self, actor: Any) -> None:
        if self._idle is not None and not self.closed:
            self._idle.put_nowait(actor)

    def _replace(self, actor: Any, exc: BaseException) -> str:
        if actor in self._actors:
            self._actors.remove(actor)
        if self.closed:
            return "the simulation ended"
        fresh = self._new_actor()
        self._actors.append(fresh)
        self._back_to_idle(fresh)
        return f"{_DIED} ({_first_line(exc)})"

    def close(self) -> None:
        """End every actor, free the shared blobs, and shut down a Ray this grid started."""
        self.closed = True
        super().close()
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors.clear()
        self._withdraw_all()
        self._disconnect()

    def _disconnect(self) -> None:
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
