"""`run_simulation` and `start_simulation`: a whole run on virtual nodes, Flower's way.

Both run the ServerApp through `pollen.server.run.run_on_grid` on an
`InProcessGrid`: the round loop, strategies, checkpoints and outputs are a
deployment's; only the way messages reach the ClientApp differs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pollen.client.client import Client
from pollen.client.client_app import ClientApp
from pollen.client.numpy_client import NumPyClient
from pollen.errors import ConfigurationError
from pollen.records.context import Context
from pollen.records.typing import UserConfig
from pollen.server.history import History
from pollen.server.round_loop import RunOutcome
from pollen.server.round_progress import NO_PROGRESS, RoundProgress
from pollen.server.run import ServerAppConfig, run_on_grid
from pollen.server.server_app import ServerApp, ServerConfig
from pollen.server.strategy.strategy import Strategy
from pollen.simulation.backends import (
    IN_PROCESS,
    PROCESS_POOL,
    RAY,
    check_backend,
    check_backend_config,
)
from pollen.simulation.in_process_grid import InProcessGrid
from pollen.simulation.pool_grid import ProcessPoolGrid
from pollen.simulation.ray_grid import RayGrid
from pollen.simulation.resources import ClientResources, available_cpus, visible_gpus
from pollen.transport.addresses import Address

T = TypeVar("T")

DEFAULT_OUTPUT_DIR = Path(".pollen") / "runs"
_TF_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
_NO_SUPERLINK = Address("in-process", 0)  # run_on_grid never connects to it


def check_num_supernodes(num: int, strategy: Strategy, option: str = "num_supernodes") -> int:
    """``num`` when it is an int >= 1 that meets the strategy's minimums, which a
    simulation knows before any round (a deployment waits for nodes instead)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigurationError(f"{option} {num!r}: give at least 1 virtual node")
    minimums = {
        "min_available_clients": strategy.min_available_clients,
        "min_fit_clients": strategy.min_fit_clients,
    }
    for minimum, needed in minimums.items():  # the Strategy interface's, no FedAvg attribute
        if needed > num:
            raise ConfigurationError(
                f"{option} {num}: fewer virtual nodes than the strategy's {minimum} "
                f"({needed}); give at least {needed} or lower {minimum}"
            )
    return num


async def simulate(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    *,
    backend_name: str = IN_PROCESS,
    backend_config: Mapping[str, Any] | None = None,
    run_config: UserConfig | None = None,
    output_dir: Path = DEFAULT_OUTPUT_DIR,
    app_name: str = "simulation",
    stop: asyncio.Event | None = None,
    progress: RoundProgress = NO_PROGRESS,
) -> tuple[RunOutcome, Path]:
    """One run of ``server_app`` on ``num_supernodes`` virtual nodes running ``client_app``;
    the outcome and the folder its outputs went to. Everything is checked before any
    round (ConfigurationError); setting ``stop`` ends the run as a signal does;
    ``progress`` is told of each round's tasks as they finish."""
    check_backend(backend_name)
    settings = check_backend_config(backend_config or {}, backend=backend_name)
    resources = ClientResources.from_config(settings.get("client_resources", {}))
    if backend_name != RAY:  # a Ray cluster's machines are checked once it is joined
        resources.check_fits(available_cpus(), len(visible_gpus()), "this machine has")
    merged = server_app.merged_run_config(dict(run_config or {}))
    server_app = server_app.for_run(merged)
    check_num_supernodes(num_supernodes, server_app.strategy)
    config = ServerAppConfig(
        _NO_SUPERLINK,
        app_name=app_name,
        run_config=merged,
        output_root=Path(output_dir),
        command="",  # the virtual nodes end with the run: no --resume to offer
        progress=progress,
    )
    grid = _grid(backend_name, client_app, num_supernodes, resources, settings)
    try:
        return await run_on_grid(server_app, config, grid, stop)
    finally:  # cancelled or not: no worker and no shared blob outlives the run
        grid.close()


def _grid(
    backend_name: str,
    client_app: ClientApp,
    num_supernodes: int,
    resources: ClientResources,
    settings: Mapping[str, Any],
) -> InProcessGrid:
    if backend_name == PROCESS_POOL:
        return ProcessPoolGrid(client_app, num_supernodes, resources=resources)
    if backend_name == RAY:
        init_args = settings.get("init_args", {})
        return RayGrid(client_app, num_supernodes, resources=resources, init_args=init_args)
    threads = resources.concurrency(available_cpus(), len(visible_gpus()), num_supernodes)
    return InProcessGrid(client_app, num_supernodes, threads=threads)


def run_simulation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    backend_name: str = IN_PROCESS,
    backend_config: Mapping[str, Any] | None = None,
    enable_tf_gpu_growth: bool = False,
    verbose_logging: bool = False,
    *,
    run_config: UserConfig | None = None,
    output_dir: Path = DEFAULT_OUTPUT_DIR,
) -> RunOutcome:
    """Run ``server_app`` on ``num_supernodes`` virtual nodes, each running ``client_app``
    (Flower's ``flwr.simulation.run_simulation``; Flower returns None, Pollen the outcome).

    Virtual node ``i`` (0..N-1) has node id ``i + 1``, ``node_config``
    ``{"partition-id": i, "num-partitions": N}`` and its own ``Context.state``, kept
    across rounds. Outputs (``final_model.npz``, ``metrics.json``, checkpoints) go to
    ``output_dir/RUN_ID/`` as a deployed run's do. ``backend_name``: ``"in-process"``
    (threads of this process, the default), ``"process-pool"`` (forked worker
    processes) or ``"ray"`` (Ray actors; ``pip install 'pollen[ray]'``).
    ``backend_config``: ``{"client_resources": {"num_cpus": .., "num_gpus": ..},
    "init_args": {..}}``, checked: ``client_resources`` is what each virtual node in
    flight holds (the process pool and Ray run CPUs / ``num_cpus`` and GPUs /
    ``num_gpus`` at once, each on its share of the GPUs); ``init_args`` go to
    ``ray.init`` (``address`` joins a cluster, as ``RAY_ADDRESS`` does). ``run_config``
    overrides the ServerApp's declared settings, as ``--run-config`` does.

    ``verbose_logging`` lets Pollen's debug messages through (to the handlers the
    caller installed); ``enable_tf_gpu_growth`` sets ``TF_FORCE_GPU_ALLOW_GROWTH`` for
    the run, which the virtual nodes' TensorFlow reads (on Ray: the local cluster's).
    Works from a notebook too: under a running event loop it runs in a thread of its
    own.
    """
    if verbose_logging:
        logging.getLogger("pollen").setLevel(logging.DEBUG)
    with _tf_gpu_growth(enable_tf_gpu_growth):
        return _blocking(
            lambda: simulate(
                server_app,
                client_app,
                num_supernodes,
                backend_name=backend_name,
                backend_config=backend_config,
                run_config=run_config,
                output_dir=output_dir,
            )
        )[0]


def start_simulation(
    *,
    client_fn: Callable[[str], Client | NumPyClient],
    num_clients: int | None = None,
    clients_ids: list[str] | None = None,
    client_resources: Mapping[str, float] | None = None,
    server: object = None,
    config: ServerConfig | None = None,
    strategy: Strategy | None = None,
    client_manager: object = None,
    ray_init_args: Mapping[str, Any] | None = None,
    output_dir: Path = DEFAULT_OUTPUT_DIR,
) -> History:
    """Flower 1.8's ``flwr.simulation.start_simulation``: ``num_clients`` virtual clients
    built by ``client_fn(cid)``, with cid the client's partition, ``"0"`` to
    ``str(num_clients - 1)``; ``config`` and ``strategy`` as a ServerApp's. Returns the
    run's `History`, whose ``losses_distributed``, ``losses_centralized``,
    ``metrics_distributed_fit``, ``metrics_distributed`` and ``metrics_centralized``
    are Flower's. It runs on the in-process backend, or on Ray when ``ray_init_args``
    are given (``ray.init``'s arguments, as in Flower); ``client_resources`` as
    `run_simulation`'s. Flower's ``server``, ``client_manager`` and ``clients_ids``
    have no counterpart here and are refused.
    """
    for name, value in (
        ("server", server),
        ("client_manager", client_manager),
        ("clients_ids", clients_ids),
    ):
        if value is not None:
            raise ConfigurationError(
                f"start_simulation({name}=...): not supported by Pollen's simulation; "
                "leave it out (give config=ServerConfig(...) and strategy=... instead)"
            )
    if num_clients is None:
        raise ConfigurationError("start_simulation: give num_clients, the number of clients")
    settings: dict[str, Any] = {}
    if client_resources:
        settings["client_resources"] = dict(client_resources)
    if ray_init_args is not None:
        settings["init_args"] = dict(ray_init_args)

    def from_context(context: Context) -> Client | NumPyClient:
        return client_fn(str(context.node_config["partition-id"]))

    app = ServerApp(config=config, strategy=strategy)
    outcome = _blocking(
        lambda: simulate(
            app,
            ClientApp(client_fn=from_context),
            num_clients,
            backend_name=RAY if ray_init_args is not None else IN_PROCESS,
            backend_config=settings,
            output_dir=output_dir,
            app_name="start_simulation",
        )
    )[0]
    return outcome.history


@contextlib.contextmanager
def _tf_gpu_growth(enabled: bool) -> Iterator[None]:
    """``TF_FORCE_GPU_ALLOW_GROWTH=true`` while the run lasts, when ``enabled``."""
    if not enabled:
        yield
        return
    before = os.environ.get(_TF_GROWTH)
    os.environ[_TF_GROWTH] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_TF_GROWTH, None)
        else:
            os.environ[_TF_GROWTH] = before


def _blocking(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())``, in a thread of its own when this thread runs an event
    loop already (a notebook), where asyncio.run would refuse."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(main())).result()
