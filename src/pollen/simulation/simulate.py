"""`run_simulation` and `start_simulation`: a whole run on virtual nodes, Flower's way.

Both run the ServerApp through `pollen.server.run.run_on_grid` on an
`InProcessGrid`: the round loop, strategies, checkpoints and outputs are a
deployment's; only the way messages reach the ClientApp differs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine, Mapping
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
    check_backend,
    check_backend_config,
)
from pollen.simulation.in_process_grid import InProcessGrid
from pollen.simulation.pool_grid import ProcessPoolGrid, available_cpus, pool_size
from pollen.transport.addresses import Address

T = TypeVar("T")

DEFAULT_OUTPUT_DIR = Path(".pollen") / "runs"
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
    resources = check_backend_config(backend_config or {}).get("client_resources", {})
    num_cpus = float(resources.get("num_cpus", 1))
    if backend_name == PROCESS_POOL and num_cpus > available_cpus():
        raise ConfigurationError(
            f"client_resources.num_cpus={num_cpus:g}: more than the {available_cpus()} CPUs "
            "this process may use; ask for at most that many"
        )
    check_num_supernodes(num_supernodes, server_app.strategy)
    config = ServerAppConfig(
        _NO_SUPERLINK,
        app_name=app_name,
        run_config=server_app.merged_run_config(dict(run_config or {})),
        output_root=Path(output_dir),
        command="",  # the virtual nodes end with the run: no --resume to offer
        progress=progress,
    )
    if backend_name != PROCESS_POOL:
        grid = InProcessGrid(client_app, num_supernodes)
        return await run_on_grid(server_app, config, grid, stop)
    pool = ProcessPoolGrid(client_app, num_supernodes, workers=pool_size(num_cpus, num_supernodes))
    try:
        return await run_on_grid(server_app, config, pool, stop)
    finally:  # cancelled or not: no worker process and no shared blob outlives the run
        pool.close()


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
    (threads of this process, the default) or ``"process-pool"`` (forked worker
    processes, available CPUs / ``num_cpus`` of them). ``backend_config``:
    ``{"client_resources": {"num_cpus": .., "num_gpus": ..}}``, checked; ``num_cpus``
    sizes the process pool, ``num_gpus`` is not used yet. ``run_config`` overrides the ServerApp's
    declared settings, as ``--run-config`` does.

    ``verbose_logging`` lets Pollen's debug messages through (to the handlers the
    caller installed); ``enable_tf_gpu_growth`` is refused, this backend has no GPU
    settings yet. Works from a notebook too: under a running event loop it runs in a
    thread of its own.
    """
    if enable_tf_gpu_growth:
        raise ConfigurationError(
            "run_simulation(enable_tf_gpu_growth=True): the in-process backend has no GPU "
            "settings yet; leave it out and set TensorFlow's memory growth in the ClientApp"
        )
    if verbose_logging:
        logging.getLogger("pollen").setLevel(logging.DEBUG)
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
    are Flower's. ``client_resources`` is checked; the in-process backend does not
    use it yet. Flower's ``server``, ``client_manager``, ``clients_ids`` and
    ``ray_init_args`` have no counterpart here and are refused.
    """
    for name, value in (
        ("server", server),
        ("client_manager", client_manager),
        ("clients_ids", clients_ids),
        ("ray_init_args", ray_init_args),
    ):
        if value is not None:
            raise ConfigurationError(
                f"start_simulation({name}=...): not supported by Pollen's simulation; "
                "leave it out (give config=ServerConfig(...) and strategy=... instead)"
            )
    if num_clients is None:
        raise ConfigurationError("start_simulation: give num_clients, the number of clients")
    resources = {"client_resources": dict(client_resources)} if client_resources else {}

    def from_context(context: Context) -> Client | NumPyClient:
        return client_fn(str(context.node_config["partition-id"]))

    app = ServerApp(config=config, strategy=strategy)
    outcome = _blocking(
        lambda: simulate(
            app,
            ClientApp(client_fn=from_context),
            num_clients,
            backend_config=resources,
            output_dir=output_dir,
            app_name="start_simulation",
        )
    )[0]
    return outcome.history


def _blocking(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())``, in a thread of its own when this thread runs an event
    loop already (a notebook), where asyncio.run would refuse."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(main())).result()
