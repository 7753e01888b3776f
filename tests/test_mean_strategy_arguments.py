"""The mean-based strategies take Flower 1.42's keyword arguments with its defaults, and
refuse bad ones at construction, in one line naming the strategy, argument and rule."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from pollen.errors import ConfigurationError
from pollen.server.strategy import (
    FaultTolerantFedAvg,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedOpt,
    FedProx,
    FedYogi,
    QFedAvg,
)

REQUIRED = object()

SAMPLING = [
    ("fraction_fit", 1.0),
    ("fraction_evaluate", 1.0),
    ("min_fit_clients", 2),
    ("min_evaluate_clients", 2),
    ("min_available_clients", 2),
    ("evaluate_fn", None),
    ("on_fit_config_fn", None),
    ("on_evaluate_config_fn", None),
]
TAIL = [
    ("accept_failures", True),
    # Flower's FedOpt family has no default: Pollen's None makes leaving it out a
    # ConfigurationError (one line, exit code 2) instead of a TypeError
    ("initial_parameters", None),
    ("fit_metrics_aggregation_fn", None),
    ("evaluate_metrics_aggregation_fn", None),
]

FLOWER_1_42: dict[type, list[tuple[str, object]]] = {
    FedProx: [*SAMPLING, *TAIL, ("proximal_mu", REQUIRED)],
    FedAvgM: [*SAMPLING, *TAIL, ("server_learning_rate", 1.0), ("server_momentum", 0.0)],
    FedOpt: [
        *SAMPLING,
        *TAIL,
        ("eta", 0.1),
        ("eta_l", 0.1),
        ("beta_1", 0.0),
        ("beta_2", 0.0),
        ("tau", 1e-9),
    ],
    FedAdagrad: [
        *SAMPLING,
        ("fit_metrics_aggregation_fn", None),
        ("evaluate_metrics_aggregation_fn", None),
        ("accept_failures", True),
        ("initial_parameters", None),
        ("eta", 0.1),
        ("eta_l", 0.1),
        ("tau", 1e-9),
    ],
    FedAdam: [
        *SAMPLING,
        *TAIL,
        ("eta", 0.1),
        ("eta_l", 0.1),
        ("beta_1", 0.9),
        ("beta_2", 0.99),
        ("tau", 1e-9),
    ],
    FedYogi: [
        *SAMPLING,
        *TAIL,
        ("eta", 0.01),
        ("eta_l", 0.0316),
        ("beta_1", 0.9),
        ("beta_2", 0.99),
        ("tau", 1e-3),
    ],
    QFedAvg: [
        ("q_param", 0.2),
        ("qffl_learning_rate", 0.1),
        ("fraction_fit", 1.0),
        ("fraction_evaluate", 1.0),
        ("min_fit_clients", 1),
        ("min_evaluate_clients", 1),
        ("min_available_clients", 1),
        ("evaluate_fn", None),
        ("on_fit_config_fn", None),
        ("on_evaluate_config_fn", None),
        *TAIL,
    ],
    FaultTolerantFedAvg: [
        ("fraction_fit", 1.0),
        ("fraction_evaluate", 1.0),
        ("min_fit_clients", 1),
        ("min_evaluate_clients", 1),
        ("min_available_clients", 1),
        ("evaluate_fn", None),
        ("on_fit_config_fn", None),
        ("on_evaluate_config_fn", None),
        ("min_completion_rate_fit", 0.5),
        ("min_completion_rate_evaluate", 0.5),
        ("initial_parameters", None),
        ("fit_metrics_aggregation_fn", None),
        ("evaluate_metrics_aggregation_fn", None),
    ],
}


@pytest.mark.parametrize("strategy", list(FLOWER_1_42), ids=lambda cls: cls.__name__)
def test_keyword_arguments_and_defaults_are_flowers(strategy: type) -> None:
    parameters = list(inspect.signature(strategy).parameters.values())

    got = [
        (p.name, REQUIRED if p.default is inspect.Parameter.empty else p.default)
        for p in parameters
    ]

    assert got == FLOWER_1_42[strategy]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)


MODEL = [np.zeros(2, np.float32)]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FedAdam(), r"FedAdam\(initial_parameters=None\): the server optimizer"),
        (lambda: FedYogi(), r"FedYogi\(initial_parameters=None\)"),
        (lambda: FedAdagrad(), r"FedAdagrad\(initial_parameters=None\)"),
        (lambda: FedOpt(), r"FedOpt\(initial_parameters=None\)"),
        (lambda: FedAvgM(server_momentum=0.9), r"FedAvgM\(initial_parameters=None\)"),
        (lambda: FedAvgM(server_learning_rate=0.5), r"FedAvgM\(initial_parameters=None\)"),
        (lambda: FedAdam(initial_parameters=MODEL, eta=0.0), r"FedAdam\(eta=0.0\): must be > 0"),
        (lambda: FedAdam(initial_parameters=MODEL, eta_l=-1.0), r"FedAdam\(eta_l=-1.0\)"),
        (
            lambda: FedAdam(initial_parameters=MODEL, beta_1=1.0),
            r"FedAdam\(beta_1=1.0\): must be in \[0, 1\)",
        ),
        (lambda: FedYogi(initial_parameters=MODEL, beta_2=-0.1), r"FedYogi\(beta_2=-0.1\)"),
        (lambda: FedAdagrad(initial_parameters=MODEL, tau=0.0), r"FedAdagrad\(tau=0.0\)"),
        (
            lambda: FedAvgM(initial_parameters=MODEL, server_learning_rate=0.0),
            r"FedAvgM\(server_learning_rate=0.0\): must be > 0",
        ),
        (
            lambda: FedAvgM(initial_parameters=MODEL, server_momentum=-0.5),
            r"FedAvgM\(server_momentum=-0.5\): must be in \[0, 1\)",
        ),
        (lambda: FedAvgM(initial_parameters=MODEL, server_momentum=1.0), r"server_momentum=1.0"),
        (lambda: FedProx(proximal_mu=-1.0), r"FedProx\(proximal_mu=-1.0\)"),
        (lambda: FaultTolerantFedAvg(min_completion_rate_fit=2.0), r"min_completion_rate_fit"),
    ],
)
def test_bad_arguments_are_configuration_errors_in_one_line(build: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as error:
        build()  # type: ignore[operator]

    assert "\n" not in str(error.value)


def test_a_fedavg_argument_refused_in_a_subclass_names_the_subclass() -> None:
    from pollen.server.strategy import FedProx

    with pytest.raises(ConfigurationError, match=r"^FedProx\(fraction_fit=2\)"):
        FedProx(proximal_mu=0.1, fraction_fit=2)
