"""Conversion between protocol messages and records; the only place that does it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from google.protobuf.internal.containers import MessageMap

from pollen.errors import RecordError
from pollen.proto import common_pb2 as pb
from pollen.records.content_address import is_content_digest
from pollen.records.messages import BlobRef, Message, Records, RunInfo, check_message_type
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


def records_to_proto(records: Records[BlobRef], out: pb.Records) -> None:
    for name, ref in records.arrays.items():
        blob_ref_to_proto(ref, out.arrays[name])
    for name, metrics in records.metrics.items():
        fill_map(out.metrics[name].values, metrics)
    for name, config in records.configs.items():
        fill_map(out.configs[name].values, config)


def records_from_proto(message: pb.Records) -> Records[BlobRef]:
    arrays: dict[str, BlobRef] = {}
    for name, blob in message.arrays.items():
        ref = blob_ref_from_proto(blob)
        if ref is None:
            raise RecordError(f"array record {name[:80]!r} names no blob")
        arrays[name] = ref
    return Records(
        arrays=arrays,
        metrics={name: map_from_proto(r.values) for name, r in message.metrics.items()},
        configs={name: map_from_proto(r.values) for name, r in message.configs.items()},
    )


def message_to_proto(message: Message) -> pb.Message:
    out = pb.Message(
        message_id=message.message_id,
        run_id=message.run_id,
        node_id=message.node_id,
        message_type=message.message_type,
        reply_to=message.reply_to,
        error=message.error,
        created_at=message.created_at,
    )
    records_to_proto(message.content, out.content)
    return out


def message_from_proto(message: pb.Message) -> Message:
    return Message(
        run_id=message.run_id,
        node_id=message.node_id,
        message_type=check_message_type(message.message_type),
        content=records_from_proto(message.content),
        reply_to=message.reply_to,
        error=message.error,
        message_id=message.message_id,
        created_at=message.created_at,
    )


def run_to_proto(run: RunInfo) -> pb.Run:
    message = pb.Run(run_id=run.run_id, app=run.app, status=run.status)
    fill_map(message.run_config, run.run_config)
    return message


def run_from_proto(message: pb.Run) -> RunInfo:
    return RunInfo(message.run_id, message.app, map_from_proto(message.run_config), message.status)
