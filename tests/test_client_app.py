"""ClientApp running NumPyClients and Clients: what a task returns, and what is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from pollen.client import Client, ClientApp, EvaluateRes, FitRes, NumPyClient
from pollen.errors import ClientAppError, RecordError
from pollen.records import fit_evaluate
from pollen.records.context import Context
from pollen.records.messages import Records

WEIGHTS = [np.array([1.0, 2.0], np.float32), np.array([[3]], np.int64)]


class LinearClient(NumPyClient):
    """Adds ``config['step']`` to every weight; 'trained' on 10 examples."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition

    def get_parameters(self, config):
        return [w.copy() for w in WEIGHTS]

    def fit(self, parameters, config):
        step = config.get("step", 1)
        return [p + step for p in parameters], 10, {"partition": self.partition}

    def evaluate(self, parameters, config):
        return float(sum(p.sum() for p in parameters)), 5, {"acc": 0.5}


class ReturnsClient(NumPyClient):
    """A NumPyClient whose fit and evaluate return whatever it is given."""

    def __init__(self, fit_value: Any = None, evaluate_value: Any = None) -> None:
        self.fit_value = fit_value
        self.evaluate_value = evaluate_value

    def fit(self, parameters, config):
        return self.fit_value

    def evaluate(self, parameters, config):
        return self.evaluate_value


@dataclass
class Reply:
    """What a 1.8-era reply says, read back from its records."""

    parameters: Any
    num_examples: int
    loss: float
    metrics: dict[str, Any]


TYPES = {"get_parameters": fit_evaluate.GET_PARAMETERS, "fit": "train", "evaluate": "evaluate"}


def run_task(app: ClientApp, kind: str, weights: Any, config: Any, ctx: Context) -> Reply:
    """Run one message of the 1.8-era kind ``kind`` as a SuperNode would hand it over."""
    model = weights if kind != "get_parameters" else None
    content = app.handle(TYPES[kind], fit_evaluate.instruction(model, config), ctx)
    counted = fit_evaluate.METRICS in content.metrics
    return Reply(
        fit_evaluate.model_of(content),
        fit_evaluate.num_examples(content) if counted else 0,
        fit_evaluate.loss_of(content) if fit_evaluate.EVALUATION in content.metrics else 0.0,
        fit_evaluate.metrics_of(content),
    )


def context(node_id: int = 7, **node_config: Any) -> Context:
    return Context(node_id=node_id, node_config=node_config, run_id=3, run_config={"r": 1})


def app_of(client: NumPyClient | Client) -> ClientApp:
    return ClientApp(client_fn=lambda context: client)


def run_fit(fit_value: Any):
    return run_task(app_of(ReturnsClient(fit_value=fit_value)), "fit", WEIGHTS, {}, context())


def run_evaluate(evaluate_value: Any):
    client = ReturnsClient(evaluate_value=evaluate_value)
    return run_task(app_of(client), "evaluate", WEIGHTS, {}, context())


# --- the three tasks ------------------------------------------------------------------------


def test_get_parameters_returns_the_clients_arrays() -> None:
    app = ClientApp(client_fn=lambda context: LinearClient().to_client())

    reply = run_task(app, "get_parameters", [], {}, context())

    assert len(reply.parameters) == 2
    for got, expected in zip(reply.parameters, WEIGHTS, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert reply.num_examples == 0


def test_fit_returns_new_weights_examples_and_metrics() -> None:
    app = ClientApp(client_fn=lambda context: LinearClient(partition=2).to_client())

    reply = run_task(app, "fit", WEIGHTS, {"step": 10}, context())

    np.testing.assert_array_equal(reply.parameters[0], [11.0, 12.0])
    np.testing.assert_array_equal(reply.parameters[1], [[13]])
    assert reply.num_examples == 10
    assert reply.metrics == {"partition": 2}


def test_evaluate_returns_loss_examples_and_metrics_without_parameters() -> None:
    app = ClientApp(client_fn=lambda context: LinearClient().to_client())

    reply = run_task(app, "evaluate", WEIGHTS, {}, context())

    assert reply.parameters is None
    assert reply.loss == 6.0
    assert type(reply.loss) is float
    assert reply.num_examples == 5
    assert reply.metrics == {"acc": 0.5}


def test_fit_and_evaluate_receive_the_config() -> None:
    seen = []

    class Recorder(LinearClient):
        def fit(self, parameters, config):
            seen.append(("fit", config))
            return super().fit(parameters, config)

        def evaluate(self, parameters, config):
            seen.append(("evaluate", config))
            return super().evaluate(parameters, config)

    app = app_of(Recorder())
    run_task(app, "fit", WEIGHTS, {"lr": 0.1}, context())
    run_task(app, "evaluate", WEIGHTS, {"batch": 32}, context())

    assert seen == [("fit", {"lr": 0.1}), ("evaluate", {"batch": 32})]


# --- client_fn ------------------------------------------------------------------------------


def test_client_fn_receives_the_context() -> None:
    received = []

    def client_fn(context: Context) -> Client:
        received.append(context)
        return LinearClient(partition=context.node_config["partition-id"]).to_client()

    ctx = context(node_id=7, **{"partition-id": 4})
    reply = run_task(ClientApp(client_fn=client_fn), "fit", WEIGHTS, {}, ctx)

    assert received == [ctx]
    assert reply.metrics == {"partition": 4}


def test_client_fn_with_a_cid_parameter_gets_the_node_id_as_a_string() -> None:
    received = []

    def client_fn(cid: str) -> Client:
        received.append(cid)
        return LinearClient(partition=int(cid)).to_client()

    reply = run_task(ClientApp(client_fn=client_fn), "fit", WEIGHTS, {}, context(node_id=1234))

    assert received == ["1234"]
    assert reply.metrics == {"partition": 1234}


def test_client_fn_may_return_a_numpy_client_without_to_client() -> None:
    app = ClientApp(client_fn=lambda context: LinearClient(partition=1))

    reply = run_task(app, "fit", WEIGHTS, {"step": 1}, context())

    np.testing.assert_array_equal(reply.parameters[0], [2.0, 3.0])
    assert reply.metrics == {"partition": 1}


def test_client_sees_its_context() -> None:
    seen = []

    class ContextAware(LinearClient):
        def fit(self, parameters, config):
            seen.append(self.context)
            return super().fit(parameters, config)

    ctx = context(node_id=99)
    run_task(ClientApp(client_fn=lambda context: ContextAware()), "fit", WEIGHTS, {}, ctx)

    assert seen == [ctx]


def test_context_state_survives_between_tasks() -> None:
    class Counter(LinearClient):
        def fit(self, parameters, config):
            state = self.context.state
            state["fits"] = state.get("fits", 0) + 1
            return parameters, 1, {"fits": state["fits"]}

    app = ClientApp(client_fn=lambda context: Counter())
    ctx = context()

    replies = [run_task(app, "fit", WEIGHTS, {}, ctx) for _ in range(3)]

    assert [r.metrics["fits"] for r in replies] == [1, 2, 3]


def test_a_plain_client_works() -> None:
    class Plain(Client):
        def fit(self, parameters, config):
            return FitRes(parameters, 4, {"ok": True})

        def evaluate(self, parameters, config):
            return EvaluateRes(0.25, 4, {})

    app = app_of(Plain())

    fit = run_task(app, "fit", WEIGHTS, {}, context())
    evaluation = run_task(app, "evaluate", WEIGHTS, {}, context())

    assert (fit.num_examples, fit.metrics) == (4, {"ok": True})
    assert (evaluation.loss, evaluation.num_examples) == (0.25, 4)


@pytest.mark.parametrize("made", [None, "client", 42, object()])
def test_client_fn_returning_something_else_is_refused(made: Any) -> None:
    app = ClientApp(client_fn=lambda context: made)

    with pytest.raises(ClientAppError, match=f"returned a {type(made).__name__}"):
        run_task(app, "fit", WEIGHTS, {}, context())


def test_client_app_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="client_fn"):
        ClientApp(client_fn=LinearClient())  # type: ignore[arg-type]


def test_unimplemented_method_says_which_class_and_method() -> None:
    class OnlyFit(NumPyClient):
        pass

    with pytest.raises(NotImplementedError, match="OnlyFit does not implement evaluate"):
        run_task(app_of(OnlyFit()), "evaluate", WEIGHTS, {}, context())


# --- what fit and evaluate may return -------------------------------------------------------


def test_fit_may_return_a_list_instead_of_a_tuple_and_none_metrics() -> None:
    reply = run_fit([WEIGHTS, 3, None])

    assert reply.num_examples == 3
    assert reply.metrics == {}


def test_fit_returning_a_2_tuple_is_refused() -> None:
    with pytest.raises(ClientAppError, match="fit must return a tuple of 3 values"):
        run_fit((WEIGHTS, 10))


def test_fit_returning_only_arrays_is_refused() -> None:
    with pytest.raises(ClientAppError, match="fit must return a tuple of 3 values"):
        run_fit(WEIGHTS[0])


@pytest.mark.parametrize("num_examples", [10.0, "10", None, True, -1])
def test_fit_with_a_bad_number_of_examples_is_refused(num_examples: Any) -> None:
    with pytest.raises(ClientAppError, match="number of examples as an int"):
        run_fit((WEIGHTS, num_examples, {}))


def test_numpy_integer_number_of_examples_becomes_an_int() -> None:
    reply = run_fit((WEIGHTS, np.int64(12), {}))

    assert reply.num_examples == 12
    assert type(reply.num_examples) is int


@pytest.mark.parametrize(
    "arrays",
    [
        pytest.param(np.zeros(3), id="one-array"),
        pytest.param([np.zeros(3), [1.0, 2.0]], id="list-inside"),
        pytest.param(None, id="none"),
    ],
)
def test_fit_with_arrays_that_are_not_a_list_of_numpy_arrays_is_refused(arrays: Any) -> None:
    with pytest.raises(ClientAppError, match="fit must return a list of numpy arrays"):
        run_fit((arrays, 1, {}))


def test_a_list_inside_the_arrays_is_named_by_its_position() -> None:
    with pytest.raises(ClientAppError, match=r"item 1 is a list \(convert it with numpy.asarray"):
        run_fit(([np.zeros(3), [1.0, 2.0]], 1, {}))


def test_numpy_scalars_among_the_arrays_are_sent_as_0d_arrays() -> None:
    # `[p + 1 for p in parameters]` makes a numpy scalar of a 0-d array (BatchNorm's counter)
    counter = np.array(3, np.int64) + 1

    reply = run_fit(([np.zeros(3), counter], 1, {}))

    assert isinstance(reply.parameters[1], np.ndarray)
    assert reply.parameters[1].shape == () and reply.parameters[1] == 4


def test_fit_metrics_with_a_list_value_are_refused_naming_the_metric() -> None:
    with pytest.raises(ClientAppError, match=r"fit returned bad metrics.*'losses'"):
        run_fit((WEIGHTS, 10, {"acc": 0.9, "losses": [0.3, 0.2]}))


def test_fit_metrics_that_are_not_a_dict_are_refused() -> None:
    with pytest.raises(ClientAppError, match="fit must return metrics as a dict"):
        run_fit((WEIGHTS, 10, [("acc", 0.9)]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(np.float32(0.75), 0.75, id="float32"),
        pytest.param(np.mean([0.5, 1.0]), 0.75, id="float64-from-np.mean"),
    ],
)
def test_numpy_scalar_metrics_become_python_floats(value: Any, expected: float) -> None:
    reply = run_fit((WEIGHTS, 10, {"acc": value}))

    assert reply.metrics == {"acc": expected}
    assert type(reply.metrics["acc"]) is float


def test_numpy_int_and_bool_metrics_become_python_int_and_bool() -> None:
    reply = run_fit((WEIGHTS, 10, {"correct": np.int64(8), "done": np.bool_(True)}))

    assert reply.metrics == {"correct": 8, "done": True}
    assert type(reply.metrics["correct"]) is int
    assert type(reply.metrics["done"]) is bool


def test_evaluate_returning_a_2_tuple_is_refused() -> None:
    with pytest.raises(ClientAppError, match="evaluate must return a tuple of 3 values"):
        run_evaluate((0.5, 10))


@pytest.mark.parametrize("loss", ["0.5", None, True, [0.5], 1 + 2j])
def test_evaluate_with_a_loss_that_is_not_a_number_is_refused(loss: Any) -> None:
    with pytest.raises(ClientAppError, match="loss as a float"):
        run_evaluate((loss, 10, {}))


@pytest.mark.parametrize("loss", [np.float32(0.5), np.float64(0.5), 1, np.int32(1)])
def test_evaluate_numeric_loss_becomes_a_python_float(loss: Any) -> None:
    reply = run_evaluate((loss, 10, {}))

    assert reply.loss == float(loss)
    assert type(reply.loss) is float


def test_evaluate_with_a_bad_number_of_examples_is_refused() -> None:
    with pytest.raises(ClientAppError, match="evaluate must return the number of examples"):
        run_evaluate((0.5, 2.5, {}))


def test_evaluate_metrics_with_a_list_value_are_refused() -> None:
    with pytest.raises(ClientAppError, match=r"evaluate returned bad metrics.*'per_class'"):
        run_evaluate((0.5, 10, {"per_class": [0.1, 0.9]}))


def test_get_parameters_must_return_numpy_arrays() -> None:
    class Bad(NumPyClient):
        def get_parameters(self, config):
            return [[1.0, 2.0]]

    with pytest.raises(ClientAppError, match="get_parameters must return a list of numpy arrays"):
        run_task(app_of(Bad()), "get_parameters", [], {}, context())


def test_numpy_client_returned_via_to_client_sees_its_context() -> None:
    seen: list[object] = []

    class Recorder(NumPyClient):
        def get_parameters(self, config: dict) -> list[np.ndarray]:
            seen.append(self.context)
            return []

    app = ClientApp(client_fn=lambda context: Recorder().to_client())
    context = Context(node_id=5, node_config={"partition-id": 1})
    run_task(app, "get_parameters", [], {}, context)
    assert seen == [context]


def test_client_fn_with_one_str_parameter_gets_the_node_id_as_cid() -> None:
    received: list[object] = []

    def client_fn(node: str) -> NumPyClient:
        received.append(node)
        return NumPyClient()

    app = ClientApp(client_fn=client_fn)
    with pytest.raises(NotImplementedError):
        run_task(app, "get_parameters", [], {}, Context(node_id=42, node_config={}))
    assert received == ["42"]


def test_client_fn_of_a_cid_gets_the_partition_id_where_the_node_has_one() -> None:
    received: list[object] = []

    def client_fn(cid: str) -> NumPyClient:
        received.append(cid)
        return NumPyClient()

    app = ClientApp(client_fn=client_fn)
    with pytest.raises(NotImplementedError):
        run_task(app, "get_parameters", [], {}, Context(42, {"partition-id": 0}))
    assert received == ["0"]  # as Flower's simulation numbers its clients


# --- the handler registry ---------------------------------------------------------------------


def test_a_message_type_the_app_does_not_handle_is_refused_naming_what_it_handles() -> None:
    app = app_of(LinearClient())

    with pytest.raises(ClientAppError, match=r"does not handle 'query' messages.*evaluate"):
        app.handle("query", Records(), context())


def test_a_handler_for_an_action_takes_its_messages_and_its_kind_takes_the_rest() -> None:
    app = app_of(LinearClient())
    app.register("train.fedprox", lambda content, ctx: Records(metrics={"m": {"prox": 1}}))

    own = app.handle("train.fedprox", fit_evaluate.instruction(WEIGHTS, {}), context())
    other = app.handle("train.other", fit_evaluate.instruction(WEIGHTS, {"step": 1}), context())

    assert own.metrics == {"m": {"prox": 1}}
    np.testing.assert_array_equal(fit_evaluate.model_of(other)[0], [2.0, 3.0])


def test_an_app_without_client_fn_handles_only_what_is_registered() -> None:
    app = ClientApp()
    app.register("query", lambda content, ctx: Records(configs={"c": {"node": ctx.node_id}}))

    assert app.handle("query", Records(), context(node_id=9)).configs == {"c": {"node": 9}}
    with pytest.raises(ClientAppError, match="handles: query"):
        app.handle("train", Records(), context())


@pytest.mark.parametrize("message_type", ["fit", "train.", "Train", "query.a b", ""])
def test_a_handler_for_an_unknown_message_type_is_refused(message_type: str) -> None:
    with pytest.raises(RecordError, match="unknown message type"):
        ClientApp().register(message_type, lambda content, ctx: content)


def test_a_message_type_is_handled_once() -> None:
    app = app_of(LinearClient())

    with pytest.raises(ClientAppError, match="already handles 'train'"):
        app.register("train", lambda content, ctx: content)


def test_a_metric_named_like_the_number_of_examples_is_refused() -> None:
    with pytest.raises(ClientAppError, match="'num-examples' is reserved"):
        run_fit((WEIGHTS, 3, {"num-examples": 4}))
