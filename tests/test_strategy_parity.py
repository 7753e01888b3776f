"""Every strategy gives the global models Flower 1.42's class of that name gives, round by round.

One seeded set of inputs (an initial model of three float32 arrays; per round
and node a delta, node 3's 50 times larger than the others'; examples per node)
goes through Flower 1.42's legacy ``flwr.server.strategy`` classes in Flower's
own virtualenv (``benchmarks/peers/flower_strategies.py``, one subprocess for
every case) and through Pollen's strategies here, three rounds each. Each round
a node returns *its side's* current global model plus its delta, so stateful
strategies (momentum, server optimizer moments, QFedAvg's pre-round weights)
see the same sequence a real run would.

Tolerance: ``rtol=1e-5, atol=1e-6``, about 80 float32 ulps of values near 1:
the two sides sum float32 arrays in a different order (Flower scales each
result by its share first, Pollen accumulates ``weight x result`` and divides
once), so the last bits of each aggregated value differ, and stateful
strategies carry that difference on to the next rounds.

Flower's venv is created on first use (``ensure_flower_venv``, about 20 s; CI
installs it); when it cannot be, the tests fail and say why: they never skip.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pollen.server.strategy as pollen_strategies
from pollen.records.replies import FitRes
from pollen.records.typing import NDArrays

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from peers.flower import FLOWER_VERSION, ensure_flower_venv  # noqa: E402
from peers.flower_strategies import parity_loss  # noqa: E402

HARNESS = REPO / "benchmarks" / "peers" / "flower_strategies.py"
ROUNDS = 3
NODES = 8
OUTLIER = 3
SHAPES = [(8, 5), (5,), (3,)]
RTOL, ATOL = 1e-5, 1e-6


@dataclass(frozen=True)
class Case:
    strategy: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    nodes: int = NODES
    evaluate_fn: bool = False
    failures: tuple[tuple[int, int], ...] = ()
    """(round, node) pairs: that node's result fails in that round."""
    label: str = "defaults"

    @property
    def id(self) -> str:
        return f"{self.strategy}-{self.label}"

    def failed(self, server_round: int) -> set[int]:
        return {n for r, n in self.failures if r == server_round}

    def arguments(self) -> dict[str, Any]:
        """Both sides' keyword arguments: every round samples all the case's nodes
        (Krum and Bulyan refuse a setting that could sample too few for their f) and
        needs the results of all but the failing ones."""
        worst = max((self.failed(r) for r in range(1, ROUNDS + 1)), key=len)
        usable = self.nodes - len(worst)
        return {"min_fit_clients": usable, "min_available_clients": self.nodes, **self.kwargs}

    def spec(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "strategy": self.strategy,
            "kwargs": self.arguments(),
            "nodes": self.nodes,
            "evaluate_fn": self.evaluate_fn,
            "failures": [list(pair) for pair in self.failures],
        }


# Per strategy: Flower's defaults (with the arguments it requires), then a setting that matters.
CASES = [
    Case("FedAvg"),
    Case("FedAvg", {"inplace": False}, label="inplace=False"),
    Case(
        "FedAvg",
        {"accept_failures": False},
        failures=((2, 5),),
        label="accept_failures=False,round 2 fails",
    ),
    Case("FedProx", {"proximal_mu": 0.1}, label="proximal_mu=0.1"),
    Case("FedProx", {"proximal_mu": 2.0}, label="proximal_mu=2.0"),
    Case("FedAvgM"),
    Case("FedAvgM", {"server_momentum": 0.9}, label="server_momentum=0.9"),
    Case("FedAvgM", {"server_learning_rate": 0.5}, label="server_learning_rate=0.5"),
    Case(
        "FedAvgM",
        {"server_momentum": 0.9, "accept_failures": False},
        failures=((2, 5),),
        label="server_momentum=0.9,accept_failures=False,round 2 fails",
    ),
    Case("FedAdagrad"),
    Case("FedAdagrad", {"eta": 0.05, "tau": 1e-3}, label="eta=0.05,tau=1e-3"),
    Case("FedAdam"),
    Case("FedAdam", {"eta": 0.01, "tau": 1e-3}, label="eta=0.01,tau=1e-3"),
    Case(
        "FedAdam",
        {"accept_failures": False},
        failures=((2, 5),),
        label="accept_failures=False,round 2 fails",
    ),
    Case("FedYogi"),
    Case("FedYogi", {"eta": 0.1, "beta_2": 0.9}, label="eta=0.1,beta_2=0.9"),
    Case("QFedAvg", evaluate_fn=True),
    Case(
        "QFedAvg",
        {"q_param": 1.0, "qffl_learning_rate": 0.05},
        evaluate_fn=True,
        label="q_param=1.0,qffl_learning_rate=0.05",
    ),
    Case("FaultTolerantFedAvg"),
    Case(
        "FaultTolerantFedAvg",
        failures=((1, 5), (2, 5), (2, 6), (3, 5)),
        label="node 5 fails each round,node 6 in round 2",
    ),
    Case(
        "FaultTolerantFedAvg",
        {"min_completion_rate_fit": 0.9},
        failures=((2, 5),),
        label="min_completion_rate_fit=0.9,round 2 fails",
    ),
    Case("FedMedian"),
    Case("FedMedian", nodes=7, label="7 nodes (odd count)"),
    Case("FedTrimmedAvg"),
    Case("FedTrimmedAvg", {"beta": 0.3}, label="beta=0.3"),
    Case("Krum"),
    Case(
        "Krum",
        {"num_malicious_clients": 1, "num_clients_to_keep": 3},
        label="num_malicious_clients=1,num_clients_to_keep=3",
    ),
    # Flower's Bulyan() fails without the first rule's to_keep (aggregate_krum requires it).
    Case("Bulyan", {"to_keep": 0}, label="to_keep=0"),
    Case(
        "Bulyan",
        {"num_malicious_clients": 1, "to_keep": 0},
        nodes=7,
        label="num_malicious_clients=1,7 nodes",
    ),
]


@dataclass
class Inputs:
    initial: NDArrays
    deltas: dict[tuple[int, int], NDArrays]
    num_examples: np.ndarray


def make_inputs() -> Inputs:
    """Honest nodes move along one direction per round plus noise; node OUTLIER 50 x farther."""
    rng = np.random.default_rng(15)
    initial = [rng.normal(0.0, 1.0, shape).astype(np.float32) for shape in SHAPES]
    deltas = {}
    for r in range(1, ROUNDS + 1):
        direction = [rng.normal(0.0, 0.05, shape) for shape in SHAPES]
        for n in range(NODES):
            scale = 50.0 if n == OUTLIER else 1.0
            deltas[(r, n)] = [
                (scale * (d + rng.normal(0.0, 0.02, d.shape))).astype(np.float32) for d in direction
            ]
    num_examples = rng.integers(20, 200, size=(ROUNDS, NODES))
    return Inputs(initial, deltas, num_examples)


def save_inputs(inputs: Inputs, path: Path) -> None:
    arrays: dict[str, Any] = {f"initial_{k}": a for k, a in enumerate(inputs.initial)}
    for (r, n), delta in inputs.deltas.items():
        arrays.update({f"delta_{r}_{n}_{k}": a for k, a in enumerate(delta)})
    np.savez(path, num_examples=inputs.num_examples, **arrays)


@dataclass
class Rounds:
    """One side's outcome of a case: each round's global model (None: kept) and fit config."""

    models: list[NDArrays | None]
    configs: list[dict[str, Any]]


def run_flower(tmp: Path, inputs: Inputs) -> dict[str, Rounds | str]:
    try:
        python = ensure_flower_venv()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.fail(
            f"could not create Flower {FLOWER_VERSION}'s virtualenv for the parity tests ({exc}); "
            "they need the package index once: run `.venv/bin/python benchmarks/peers/flower.py "
            "install` where pip can reach it (CI does)",
            pytrace=False,
        )
    save_inputs(inputs, tmp / "inputs.npz")
    (tmp / "cases.json").write_text(json.dumps([case.spec() for case in CASES]))
    done = subprocess.run(
        [
            str(python),
            str(HARNESS),
            "parity",
            *(str(tmp / n) for n in ("inputs.npz", "cases.json", "out.npz")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"the Flower harness failed:\n{done.stderr[-3000:]}"
    report = json.loads((tmp / "out.json").read_text())
    outcomes: dict[str, Rounds | str] = {}
    with np.load(tmp / "out.npz") as out:
        for case in CASES:
            entry = report[case.id]
            if "error" in entry:
                outcomes[case.id] = entry["error"]
                continue
            models: list[NDArrays | None] = []
            for r in range(1, ROUNDS + 1):
                keys = [f"{case.id}|{r}|{k}" for k in range(len(SHAPES))]
                models.append([out[key] for key in keys] if keys[0] in out.files else None)
            outcomes[case.id] = Rounds(models, entry["configs"])
    return outcomes


def run_pollen(case: Case, inputs: Inputs) -> Rounds:
    """The rounds a RoundLoop would run, with every result folded in as it arrives."""
    kwargs = case.arguments()
    if case.evaluate_fn:
        kwargs["evaluate_fn"] = parity_loss
    strategy = getattr(pollen_strategies, case.strategy)(
        initial_parameters=[a.copy() for a in inputs.initial], **kwargs
    )
    node_ids = list(range(1, case.nodes + 1))
    current = strategy.initialize_parameters() or [a.copy() for a in inputs.initial]
    strategy.evaluate(0, current)
    models: list[NDArrays | None] = []
    configs: list[dict[str, Any]] = []
    for r in range(1, ROUNDS + 1):
        instructions = strategy.configure_fit(r, current, node_ids, random.Random(r))
        assert sorted(node for node, _ in instructions) == node_ids
        configs.append(dict(instructions[0][1].config))
        aggregator = strategy.fit_aggregator(r, current)
        for node in node_ids:
            n = node - 1
            if n in case.failed(r):
                continue
            update = [c + d for c, d in zip(current, inputs.deltas[(r, n)], strict=True)]
            aggregator.add(node, FitRes(update, int(inputs.num_examples[r - 1, n])))
        failed = len(case.failed(r))
        refusal = strategy.fit_round_refusal(r, len(node_ids) - failed, failed)
        new = aggregator.finish()[0] if refusal is None else None
        models.append(new)
        if new is not None:
            current = new
        strategy.evaluate(r, current)
    return Rounds(models, configs)


def max_abs_diff(pollen: Rounds, flower: Rounds) -> float:
    return max(
        float(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(f, np.float64))))
        for pm, fm in zip(pollen.models, flower.models, strict=True)
        if pm is not None and fm is not None
        for p, f in zip(pm, fm, strict=True)
    )


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    return make_inputs()


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory, inputs: Inputs) -> dict[str, Rounds | str]:
    return run_flower(tmp_path_factory.mktemp("flower-parity"), inputs)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_global_models_match_flower_round_by_round(
    case: Case, inputs: Inputs, flower: dict[str, Rounds | str]
) -> None:
    if not hasattr(pollen_strategies, case.strategy):
        pytest.skip(f"pollen.server.strategy has no {case.strategy} yet")
    theirs = flower[case.id]
    assert isinstance(theirs, Rounds), f"Flower {FLOWER_VERSION} raised on {case.id}: {theirs}"

    ours = run_pollen(case, inputs)

    for r, (mine, reference) in enumerate(zip(ours.models, theirs.models, strict=True), 1):
        assert (mine is None) == (reference is None), (
            f"round {r}: Pollen {'kept' if mine is None else 'replaced'} the model, "
            f"Flower {'kept' if reference is None else 'replaced'} it"
        )
        if mine is None or reference is None:
            continue
        for k, (a, b) in enumerate(zip(mine, reference, strict=True)):
            np.testing.assert_allclose(
                a, b, rtol=RTOL, atol=ATOL, err_msg=f"{case.id}, round {r}, array {k}"
            )
            # Flower's FedAdam and QFedAvg return float64 (a float64 scalar times a
            # float32 array under NumPy 2's promotion rules); Pollen keeps the model's dtype.
            assert a.dtype == inputs.initial[k].dtype, f"round {r}, array {k}: {a.dtype}"
    assert ours.configs == theirs.configs


def test_the_outlier_moves_fedavg_far_from_the_honest_nodes(inputs: Inputs) -> None:
    """The inputs do what the cases need: without a robust rule, node 3 drags the mean."""
    honest = [n for n in range(NODES) if n != OUTLIER]
    ours = run_pollen(Case("FedAvg"), inputs).models[0]
    assert ours is not None
    step = ours[0] - inputs.initial[0]
    honest_mean = np.mean([inputs.deltas[(1, n)][0] for n in honest], axis=0)
    assert np.max(np.abs(step - honest_mean)) > 5 * np.max(np.abs(honest_mean))
