"""Flower 1.42's legacy strategies fed fixed results, round by round (runs in Flower's venv).

``tests/test_strategy_parity.py`` runs this script with the Python of
``ensure_flower_venv()`` and runs the same rounds through Pollen's strategies::

    .pollen/peers/flower-1.42.0/bin/python benchmarks/peers/flower_strategies.py \\
        INPUTS.npz CASES.json OUT.npz

**Inputs** (``INPUTS.npz``): ``initial_K`` the initial model's arrays,
``delta_R_N_K`` what node N (0-based) adds to array K of the global model in
round R (1-based), ``num_examples`` (rounds x nodes). Each round, node N's
result is *the current global model* plus its delta, so a stateful strategy
(FedAvgM's momentum, FedAdam's moments, QFedAvg's pre-round weights) sees the
sequence a real run would show it.

**Cases** (``CASES.json``): a list of ``{"id", "strategy", "kwargs", "nodes",
"evaluate_fn", "failures"}``: ``strategy`` names a class of
``flwr.server.strategy`` built with ``kwargs`` and ``initial_parameters`` (the
initial model); the round uses the first ``nodes`` nodes; with ``evaluate_fn``
the strategy gets ``parity_loss`` (below) as its server-side evaluation;
``failures`` lists nodes whose result is reported as a failure instead.

**What runs**, per case, as Flower's legacy server loop drives a strategy:
``initialize_parameters(client_manager)`` (the initial model when it returns
None), ``evaluate(0, ...)``, then per round ``configure_fit`` on a
``SimpleClientManager`` holding one stand-in ``ClientProxy`` per node (cid
``"N"``), ``aggregate_fit`` on ``(proxy, FitRes(Status OK, arrays,
num_examples, {}))`` pairs in node order, and ``evaluate`` of the new model.

**Output** (``OUT.npz``): ``ID|R|K`` for each round's aggregated array K
(absent when ``aggregate_fit`` returned None), and ``OUT.json``: per case the
fit config each round (``{"configs": [...]}``) or ``{"error": "..."}`` when
Flower raised.

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


def _run_case(case: dict[str, Any], inputs: Path) -> tuple[dict[str, np.ndarray], list[Any]]:
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
    failures = set(case.get("failures", []))
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
            if n in failures:
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


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    inputs, cases_path, out_path = (Path(a) for a in argv)
    cases = json.loads(cases_path.read_text())
    arrays: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for case in cases:
        try:
            out, configs = _run_case(case, inputs)
        except Exception as exc:  # one case's failure is reported, the others still run
            report[case["id"]] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        arrays.update(out)
        report[case["id"]] = {"configs": configs}
    np.savez(out_path, **arrays)
    out_path.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
