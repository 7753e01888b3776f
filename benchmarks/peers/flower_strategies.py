"""Flower 1.42's legacy strategies run on Pollen's test inputs (runs in Flower's own venv).

Two modes, each run with the Python of ``ensure_flower_venv()``:

    .pollen/peers/flower-1.42.0/bin/python benchmarks/peers/flower_strategies.py \\
        parity INPUTS.npz CASES.json OUT.npz
    .pollen/peers/flower-1.42.0/bin/python benchmarks/peers/flower_strategies.py \\
        converge DATA.npz CASES.json OUT.json

**parity** (``tests/test_strategy_parity.py``). Inputs: ``initial_K`` the
initial model's arrays, ``delta_R_N_K`` what node N (0-based) adds to array K of
the global model in round R (1-based), ``num_examples`` (rounds x nodes). Each
round, node N's result is *the current global model* plus its delta, so a
stateful strategy (FedAvgM's momentum, FedAdam's moments, QFedAvg's pre-round
weights) sees the sequence a real run would show it. Cases: a list of ``{"id",
"strategy", "kwargs", "nodes", "evaluate_fn", "failures"}``: ``strategy`` names
a class of ``flwr.server.strategy`` built with ``kwargs`` and
``initial_parameters`` (the initial model); the rounds use the first ``nodes``
nodes; with ``evaluate_fn`` the strategy gets ``parity_loss`` (below);
``failures`` lists ``[round, node]`` pairs: that node's result in that round is
reported as a failure instead. What
runs, per case, as Flower's legacy server loop drives a strategy:
``initialize_parameters(client_manager)`` (the initial model when it returns
None), ``evaluate(0, ...)``, then per round ``configure_fit`` on a
``SimpleClientManager`` holding one stand-in ``ClientProxy`` per node (cid
``"N"``), ``aggregate_fit`` on ``(proxy, FitRes(Status OK, arrays,
num_examples, {}))`` pairs in node order, and ``evaluate`` of the new model.
Output: ``ID|R|K`` in ``OUT.npz`` for each round's aggregated array K (absent
when ``aggregate_fit`` returned None), and ``OUT.json``: per case the fit config
of each round (``{"configs": [...]}``) or ``{"error": "..."}`` when Flower raised.

**converge** (``benchmarks/strategies.py --peer flower``). Flower's own legacy
server loop (``flwr.server.Server.fit``) drives each case's strategy over
in-process nodes: a ``ClientProxy`` per node trains ``digits_mlp`` on its
partition (``x_N``, ``y_N`` in ``DATA.npz``; ``x_test``, ``y_test`` for the
server's ``evaluate_fn``). Cases: ``{"id", "strategy", "kwargs", "rounds"}``.
Output: per case ``{"accuracy": [round 1, ...], "seconds": ...}`` or
``{"error": "..."}``.

Only numpy is imported at the top, so that Pollen's side can import
``parity_loss`` from here without Flower installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def parity_loss(
    server_round: int, parameters: list[np.ndarray], config: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """A server-side "loss" both sides compute alike: 0.5 + the mean square of every array.

    Positive and different each round, which is all QFedAvg asks of a loss.
    """
    loss = 0.5 + sum(float(np.mean(np.square(np.asarray(a, np.float64)))) for a in parameters)
    return loss, {}


def load_inputs(
    path: Path,
) -> tuple[list[np.ndarray], dict[tuple[int, int], list[np.ndarray]], np.ndarray]:
    """(initial model, {(round, node): delta arrays}, num_examples[round - 1, node])."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    layers = len([name for name in arrays if name.startswith("initial_")])
    initial = [arrays[f"initial_{k}"] for k in range(layers)]
    num_examples = arrays["num_examples"]
    rounds, nodes = num_examples.shape
    deltas = {
        (r, n): [arrays[f"delta_{r}_{n}_{k}"] for k in range(layers)]
        for r in range(1, rounds + 1)
        for n in range(nodes)
    }
    return initial, deltas, num_examples


def _parity_case(case: dict[str, Any], inputs: Path) -> tuple[dict[str, np.ndarray], list[Any]]:
    import flwr.server.strategy as strategies
    from flwr.common import (
        Code,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy

    class StandInProxy(ClientProxy):  # type: ignore[misc]  # Any where flwr is absent
        """A node that is never called: the results are made here."""

        def _unused(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("the parity harness makes results itself")

        get_properties = get_parameters = fit = evaluate = reconnect = _unused

    initial, deltas, num_examples = load_inputs(inputs)
    rounds = num_examples.shape[0]
    nodes = int(case["nodes"])
    failures = {(int(r), int(n)) for r, n in case.get("failures", [])}
    kwargs = dict(case["kwargs"])
    if case.get("evaluate_fn"):
        kwargs["evaluate_fn"] = parity_loss
    strategy = getattr(strategies, case["strategy"])(
        initial_parameters=ndarrays_to_parameters(initial), **kwargs
    )
    manager = SimpleClientManager()
    proxies = [StandInProxy(str(n)) for n in range(nodes)]
    for proxy in proxies:
        manager.register(proxy)

    parameters = strategy.initialize_parameters(client_manager=manager)
    if parameters is None:
        parameters = ndarrays_to_parameters(initial)
    strategy.evaluate(0, parameters=parameters)
    out: dict[str, np.ndarray] = {}
    configs: list[Any] = []
    for r in range(1, rounds + 1):
        instructions = strategy.configure_fit(r, parameters, manager)
        sampled = sorted(int(proxy.cid) for proxy, _ in instructions)
        if sampled != list(range(nodes)):
            raise RuntimeError(f"round {r}: Flower sampled nodes {sampled}, not all {nodes}")
        configs.append(dict(instructions[0][1].config))
        current = parameters_to_ndarrays(parameters)
        results = []
        failed: list[BaseException] = []
        for n, proxy in enumerate(proxies):
            if (r, n) in failures:
                failed.append(RuntimeError(f"node {n} failed"))
                continue
            update = [c + d for c, d in zip(current, deltas[(r, n)], strict=True)]
            results.append(
                (
                    proxy,
                    FitRes(
                        status=Status(code=Code.OK, message=""),
                        parameters=ndarrays_to_parameters(update),
                        num_examples=int(num_examples[r - 1, n]),
                        metrics={},
                    ),
                )
            )
        aggregated, _ = strategy.aggregate_fit(r, results, failed)
        if aggregated is not None:
            parameters = aggregated
            for k, array in enumerate(parameters_to_ndarrays(parameters)):
                out[f"{case['id']}|{r}|{k}"] = array
        strategy.evaluate(r, parameters=parameters)
    return out, configs


def _converge_case(case: dict[str, Any], data: dict[str, np.ndarray]) -> dict[str, Any]:
    import time

    import flwr.server.strategy as strategies
    from flwr.common import (
        Code,
        FitIns,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.server import Server
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import digits_mlp

    class TrainingProxy(ClientProxy):  # type: ignore[misc]  # Any where flwr is absent
        """Node N trains ``digits_mlp`` on its partition, in this process."""

        def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
            node = int(self.cid)
            x, y = data[f"x_{node}"], data[f"y_{node}"]
            weights = digits_mlp.train(
                parameters_to_ndarrays(ins.parameters), x, y, ins.config, node
            )
            return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), len(y), {})

        def _unused(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("the benchmark evaluates on the server only")

        get_properties = get_parameters = evaluate = reconnect = _unused

    def evaluate_fn(
        server_round: int, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        loss, accuracy = digits_mlp.evaluate(parameters, data["x_test"], data["y_test"])
        return loss, {"accuracy": accuracy}

    nodes = len([name for name in data if name.startswith("y_") and name != "y_test"])
    strategy = getattr(strategies, case["strategy"])(
        initial_parameters=ndarrays_to_parameters(digits_mlp.initial_model()),
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
        **case["kwargs"],
    )
    manager = SimpleClientManager()
    for node in range(nodes):
        manager.register(TrainingProxy(str(node)))
    started = time.perf_counter()
    history, _ = Server(client_manager=manager, strategy=strategy).fit(
        int(case["rounds"]), timeout=None
    )
    accuracy = [value for r, value in history.metrics_centralized["accuracy"] if r > 0]
    return {"accuracy": accuracy, "seconds": time.perf_counter() - started}


def converge(data_path: Path, cases_path: Path, out_path: Path) -> None:
    with np.load(data_path) as loaded:
        data = {name: loaded[name] for name in loaded.files}
    report: dict[str, Any] = {}
    for case in json.loads(cases_path.read_text()):
        try:
            report[case["id"]] = _converge_case(case, data)
        except Exception as exc:  # one case's failure is reported, the others still run
            report[case["id"]] = {"error": f"{type(exc).__name__}: {exc}"}
    out_path.write_text(json.dumps(report, indent=1))


def parity(inputs: Path, cases_path: Path, out_path: Path) -> None:
    cases = json.loads(cases_path.read_text())
    arrays: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for case in cases:
        try:
            out, configs = _parity_case(case, inputs)
        except Exception as exc:  # one case's failure is reported, the others still run
            report[case["id"]] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        arrays.update(out)
        report[case["id"]] = {"configs": configs}
    np.savez(out_path, **arrays)
    out_path.with_suffix(".json").write_text(json.dumps(report, indent=1))


def main(argv: list[str]) -> int:
    modes = {"parity": parity, "converge": converge}
    if len(argv) != 4 or argv[0] not in modes:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    first, second, third = (Path(a) for a in argv[1:])
    modes[argv[0]](first, second, third)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
