"""q-FedAvg: fair resource allocation (Li et al., "Fair Resource Allocation in Federated
Learning", ICLR 2020)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from pollen.aggregation.qffl import QFFLAggregate
from pollen.errors import RunError
from pollen.records.replies import FitRes
from pollen.records.typing import Metrics, NDArray, NDArrays, Parameters
from pollen.server.strategy.arguments import check, positive
from pollen.server.strategy.fedavg import ConfigFn, EvaluateFn, FedAvg, MetricsAggregationFn
from pollen.server.strategy.strategy import FitAggregator


class _QFFLAggregator(FitAggregator):
    def __init__(self, rule: QFFLAggregate, metrics_fn: MetricsAggregationFn) -> None:
        self._rule = rule
        self._metrics: list[tuple[int, Metrics]] = []
        self._metrics_fn = metrics_fn

    def add(self, node_id: int, result: FitRes) -> None:
        self._rule.add(result.parameters)
        self._metrics.append((result.num_examples, result.metrics))

    def finish(self) -> tuple[NDArrays | None, Metrics]:
        return self._rule.result(), self._metrics_fn(self._metrics) if self._metrics else {}


class QFedAvg(FedAvg):
    """q-FFL's update: nodes with a higher loss weigh more as ``q_param`` grows
    (``q_param=0`` is the unweighted mean of the returned models).

    Rule: `pollen.aggregation.qffl` (its docstring has the formula), with
    ``qffl_learning_rate`` the ``lr`` of the nodes' gradients ``(w - w_k) / lr``.
    The loss ``L`` is Flower 1.42's: at each round, the server-side evaluation
    (``evaluate_fn``, or an ``evaluate`` override) of the model the round starts
    from, one loss for every node. So QFedAvg needs server-side evaluation: without
    it this is a ConfigurationError at construction (Flower fails at round 1), and a
    round whose evaluation gives no loss, or a negative one, stops the run.

    Stateless across rounds (a resumed run behaves as an uninterrupted one).
    Memory: the model the round started from, one running sum and one result.
    """

    def __init__(
        self,
        *,
        q_param: float = 0.2,
        qffl_learning_rate: float = 0.1,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int = 1,
        min_evaluate_clients: int = 1,
        min_available_clients: int = 1,
        evaluate_fn: EvaluateFn | None = None,
        on_fit_config_fn: ConfigFn | None = None,
        on_evaluate_config_fn: ConfigFn | None = None,
        accept_failures: bool = True,
        initial_parameters: Parameters | NDArrays | Mapping[str, NDArray] | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = None,
    ) -> None:
        check("QFedAvg", "q_param", q_param, q_param >= 0, "must be >= 0")
        positive("QFedAvg", "qffl_learning_rate", qffl_learning_rate)
        super().__init__(
            fraction_fit=fraction_fit,
            fraction_evaluate=fraction_evaluate,
            min_fit_clients=min_fit_clients,
            min_evaluate_clients=min_evaluate_clients,
            min_available_clients=min_available_clients,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=on_fit_config_fn,
            on_evaluate_config_fn=on_evaluate_config_fn,
            accept_failures=accept_failures,
            initial_parameters=initial_parameters,
            fit_metrics_aggregation_fn=fit_metrics_aggregation_fn,
            evaluate_metrics_aggregation_fn=evaluate_metrics_aggregation_fn,
        )
        check(
            "QFedAvg",
            "evaluate_fn",
            evaluate_fn,
            self.evaluates_on_server(),
            "q-FFL weighs updates by the loss of the global model, which QFedAvg takes "
            "from server-side evaluation; pass evaluate_fn(server_round, parameters, config) "
            "returning (loss, metrics)",
        )
        self.q_param = q_param
        self.learning_rate = qffl_learning_rate
        """``qffl_learning_rate`` (Flower's attribute name)."""

    def __repr__(self) -> str:
        return f"QFedAvg(q_param={self.q_param}, qffl_learning_rate={self.learning_rate})"

    def fit_aggregator(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        evaluated = self.evaluate(server_round, parameters)
        if evaluated is None:
            raise RunError(
                f"round {server_round}: QFedAvg's server-side evaluation returned no loss; "
                "q-FFL needs one: make evaluate_fn return (loss, metrics)"
            )
        loss = float(evaluated[0])
        if not (math.isfinite(loss) and loss >= 0):
            raise RunError(
                f"round {server_round}: QFedAvg's server-side loss is {loss}; q-FFL raises it "
                f"to the power q_param={self.q_param}, which needs a finite loss >= 0"
            )
        rule = QFFLAggregate(parameters, loss, self.q_param, self.learning_rate)
        return _QFFLAggregator(rule, self.fit_metrics_aggregation_fn)
