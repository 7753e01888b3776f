"""Config strings, configs as JSON, scalar checks and Flower-style Parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollen.errors import ConfigurationError, RecordError
from pollen.records.config_json import config_from_json, config_to_json
from pollen.records.config_string import parse_config_string
from pollen.records.typing import (
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
    to_scalar,
    to_scalars,
)

# --- parse_config_string ------------------------------------------------------------------


def test_ints_floats_and_plain_strings_get_their_types() -> None:
    config = parse_config_string("partition-id=0,lr=0.1,name=alice,epochs=-3,eps=1e-3")

    assert config == {"partition-id": 0, "lr": 0.1, "name": "alice", "epochs": -3, "eps": 0.001}
    assert type(config["partition-id"]) is int
    assert type(config["lr"]) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("True", True), ("FALSE", False)],
)
def test_booleans_are_case_insensitive(text: str, expected: bool) -> None:
    assert parse_config_string(f"flag={text}") == {"flag": expected}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"42"', "42"),
        ("'true'", "true"),
        ('"hello world"', "hello world"),
        ('""', ""),
        ("'0.5'", "0.5"),
    ],
)
def test_quoted_values_stay_strings(text: str, expected: str) -> None:
    value = parse_config_string(f"key={text}")["key"]

    assert value == expected
    assert type(value) is str


def test_spaces_around_items_keys_and_values_are_ignored() -> None:
    assert parse_config_string("  a = 1 ,  b=two words , c= true ") == {
        "a": 1,
        "b": "two words",
        "c": True,
    }


@pytest.mark.parametrize("text", ["", "   ", ",", " , ,"])
def test_empty_string_gives_empty_config(text: str) -> None:
    assert parse_config_string(text) == {}


def test_trailing_comma_is_allowed() -> None:
    assert parse_config_string("a=1,") == {"a": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('query="a=b"', "a=b"),
        ("path='data;v2'", "data;v2"),
        ('name="a,b;c=d",x=1', "a,b;c=d"),
        ('name = " spaced, out " ', " spaced, out "),
    ],
)
def test_a_quoted_value_may_hold_separators_on_purpose(text: str, expected: str) -> None:
    config = parse_config_string(text)

    assert next(iter(config.values())) == expected
    assert len(config) == (2 if "x=1" in text else 1)


def test_an_apostrophe_inside_a_value_is_not_a_quote() -> None:
    assert parse_config_string("owner=O'Brien,lr=0.1") == {"owner": "O'Brien", "lr": 0.1}


def test_empty_value_is_an_empty_string() -> None:
    assert parse_config_string("a=") == {"a": ""}


TWO_SETTINGS = "partition-id=0,num-partitions=2"


@pytest.mark.parametrize(
    ("text", "value", "fix"),
    [
        # issue 12: this became partition-id="0;num-partitions=2" and the node failed every round
        ("partition-id=0;num-partitions=2", "'0;num-partitions=2'", f"({TWO_SETTINGS})"),
        ("partition-id=0 num-partitions=2", "'0 num-partitions=2'", f"({TWO_SETTINGS})"),
        ("query=a=b", "'a=b'", "'query=\"a=b\"'"),
        ("lr=0.1;0.2", "'0.1;0.2'", "'lr=\"0.1;0.2\"'"),
    ],
)
def test_an_unquoted_value_that_looks_like_a_mistaken_separator_is_refused(
    text: str, value: str, fix: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_config_string(text, option="--node-config")

    message = str(info.value)
    assert message.startswith(f"--node-config {text}: the value {value} holds")
    assert "separate settings with commas" in message and "quote a value" in message
    assert fix in message


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_config_string("a=1,b=0,a=2", option="--run-config")

    assert str(info.value) == "--run-config a: given twice (a=1 and a=2); give each setting once"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [('name="abc', 'the quote " is not closed'), ('name="a"b', "text follows the closing quote")],
)
def test_a_broken_quote_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_config_string(text)


@pytest.mark.parametrize("item", ["lr", "=0.1", " = 3", "a b"])
def test_malformed_item_names_the_option_and_the_item(item: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_config_string(f"ok=1,{item}", option="--run-config")

    message = str(info.value)
    assert "--run-config" in message
    assert item.strip() in message


def test_default_option_name_is_node_config() -> None:
    with pytest.raises(ConfigurationError, match="--node-config"):
        parse_config_string("oops")


# --- config_json --------------------------------------------------------------------------


def test_config_json_round_trips_every_scalar_type() -> None:
    config = {
        "int": 3,
        "neg": -1,
        "float": 0.25,
        "bool": True,
        "off": False,
        "str": 'héllo, "world"',
        "bytes": b"\x00\xffraw",
        "empty_bytes": b"",
    }

    decoded = config_from_json(config_to_json(config))

    assert decoded == config
    assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in config.items()}


def test_config_json_round_trips_an_empty_config() -> None:
    assert config_from_json(config_to_json({})) == {}


def test_config_json_keeps_non_finite_floats() -> None:
    decoded = config_from_json(config_to_json({"inf": math.inf, "nan": math.nan}))

    assert decoded["inf"] == math.inf
    assert math.isnan(decoded["nan"])  # type: ignore[arg-type]


def test_config_json_refuses_non_scalars_naming_the_key() -> None:
    with pytest.raises(RecordError, match="'layers'"):
        config_to_json({"ok": 1, "layers": [1, 2]})  # type: ignore[dict-item]


# --- to_scalar ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 3, 2.5, "text", b"raw"])
def test_python_scalars_pass_through_unchanged(value: object) -> None:
    result = to_scalar("k", value)

    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(np.float32(0.5), 0.5, id="float32"),
        pytest.param(np.float64(0.25), 0.25, id="float64"),
        pytest.param(np.float16(1.5), 1.5, id="float16"),
        pytest.param(np.int64(7), 7, id="int64"),
        pytest.param(np.int8(-2), -2, id="int8"),
        pytest.param(np.uint32(9), 9, id="uint32"),
        pytest.param(np.bool_(True), True, id="bool_"),
    ],
)
def test_numpy_scalars_become_python_scalars(value: object, expected: object) -> None:
    result = to_scalar("k", value)

    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([1, 2], id="list"),
        pytest.param((1,), id="tuple"),
        pytest.param({"a": 1}, id="dict"),
        pytest.param(None, id="none"),
        pytest.param(np.array([1.0, 2.0]), id="ndarray"),
        pytest.param(np.complex64(1 + 2j), id="numpy-complex"),
    ],
)
def test_non_scalars_are_refused_naming_the_key(value: object) -> None:
    with pytest.raises(RecordError, match="'accuracy'"):
        to_scalar("accuracy", value)


def test_to_scalars_converts_every_value() -> None:
    assert to_scalars({"a": np.int32(1), "b": "x"}) == {"a": 1, "b": "x"}


def test_to_scalars_refuses_a_list_value() -> None:
    with pytest.raises(RecordError, match="'history'"):
        to_scalars({"acc": 0.9, "history": [0.1, 0.2]})


# --- Parameters ---------------------------------------------------------------------------


def test_parameters_round_trip_keeps_values_dtypes_and_shapes() -> None:
    arrays = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([1, -2, 3], dtype=np.int64),
        np.array(True),
        np.zeros((0, 4), dtype=np.float16),
        np.arange(4, dtype=">i4"),
    ]

    parameters = ndarrays_to_parameters(arrays)
    decoded = parameters_to_ndarrays(parameters)

    assert parameters.tensor_type == "numpy.ndarray"
    assert len(parameters.tensors) == len(arrays)
    assert all(isinstance(t, bytes) for t in parameters.tensors)
    for got, expected in zip(decoded, arrays, strict=True):
        assert got.dtype == expected.dtype
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_parameters_round_trip_of_a_non_contiguous_array() -> None:
    view = np.arange(12.0).reshape(3, 4).T[::2]

    (decoded,) = parameters_to_ndarrays(ndarrays_to_parameters([view]))

    np.testing.assert_array_equal(decoded, view)


def test_empty_parameters_give_no_arrays() -> None:
    assert parameters_to_ndarrays(Parameters()) == []
    assert ndarrays_to_parameters([]).tensors == []
