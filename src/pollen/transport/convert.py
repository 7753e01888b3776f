"""Conversion between protocol messages and records; the only place that does it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from google.protobuf.internal.containers import MessageMap

from pollen.errors import RecordError
from pollen.proto import common_pb2 as pb
from pollen.records.content_address import is_content_digest
from pollen.records.messages import TASK_KINDS, BlobRef, Result, RunInfo, Task, TaskKind
from pollen.records.typing import Scalar, to_scalar


def scalar_to_proto(key: str, value: object, out: pb.Scalar) -> None:
    scalar = to_scalar(key, value)
    if isinstance(scalar, bool):
        out.bool_value = scalar
    elif isinstance(scalar, int):
        out.int_value = scalar
    elif isinstance(scalar, float):
        out.double_value = scalar
    elif isinstance(scalar, str):
        out.string_value = scalar
    else:
        out.bytes_value = scalar


def scalar_from_proto(message: pb.Scalar) -> Scalar:
    which = message.WhichOneof("value")
    if which is None:
        raise RecordError("a config or metric value is empty")
    return cast(Scalar, getattr(message, which))


def fill_map(target: MessageMap[str, pb.Scalar], values: Mapping[str, object]) -> None:
    for key, value in values.items():
        scalar_to_proto(key, value, target[key])


def map_from_proto(source: Mapping[str, pb.Scalar]) -> dict[str, Scalar]:
    return {key: scalar_from_proto(value) for key, value in source.items()}


def blob_ref_to_proto(ref: BlobRef | None, out: pb.BlobRef) -> None:
    if ref is not None:
        out.digest = ref.digest
        out.size = ref.size


def blob_ref_from_proto(message: pb.BlobRef) -> BlobRef | None:
    if not message.digest:
        return None
    if not is_content_digest(message.digest):
        raise RecordError(
            f"{message.digest[:80]!r} is not a content digest (64 lowercase hex digits)"
        )
    return BlobRef(message.digest, message.size)


def _kind(text: str) -> TaskKind:
    if text not in TASK_KINDS:
        raise RecordError(f"unknown task kind {text!r}; expected one of {', '.join(TASK_KINDS)}")
    return text


def task_to_proto(task: Task) -> pb.Task:
    message = pb.Task(
        task_id=task.task_id,
        run_id=task.run_id,
        node_id=task.node_id,
        kind=task.kind,
        created_at=task.created_at,
    )
    blob_ref_to_proto(task.parameters, message.parameters)
    fill_map(message.config, task.config)
    return message


def task_from_proto(message: pb.Task) -> Task:
    return Task(
        run_id=message.run_id,
        node_id=message.node_id,
        kind=_kind(message.kind),
        parameters=blob_ref_from_proto(message.parameters),
        config=map_from_proto(message.config),
        task_id=message.task_id,
        created_at=message.created_at,
    )


def result_to_proto(result: Result) -> pb.Result:
    message = pb.Result(
        task_id=result.task_id,
        run_id=result.run_id,
        node_id=result.node_id,
        kind=result.kind,
        num_examples=result.num_examples,
        loss=result.loss,
        error=result.error,
        created_at=result.created_at,
    )
    blob_ref_to_proto(result.parameters, message.parameters)
    fill_map(message.metrics, result.metrics)
    return message


def result_from_proto(message: pb.Result) -> Result:
    return Result(
        task_id=message.task_id,
        run_id=message.run_id,
        node_id=message.node_id,
        kind=_kind(message.kind),
        parameters=blob_ref_from_proto(message.parameters),
        num_examples=message.num_examples,
        loss=message.loss,
        metrics=map_from_proto(message.metrics),
        error=message.error,
        created_at=message.created_at,
    )


def run_to_proto(run: RunInfo) -> pb.Run:
    message = pb.Run(run_id=run.run_id, app=run.app, status=run.status)
    fill_map(message.run_config, run.run_config)
    return message


def run_from_proto(message: pb.Run) -> RunInfo:
    return RunInfo(message.run_id, message.app, map_from_proto(message.run_config), message.status)
