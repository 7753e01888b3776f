"""Numbers in a request must fit the SuperLink's state, for every method of both APIs.

Run, node and task ids, sizes, offsets and counts travel as protobuf ``uint64``
(up to 2^64-1); SQLite stores signed 64-bit integers (up to 2^63-1). A request
carrying a larger number is refused as INVALID_ARGUMENT, naming the field, before
a service sees it: it used to reach SQLite and end as ``Unexpected <class
'OverflowError'>``. Handlers are wrapped once, when a service is registered
(see `ids_checked`); per request the cost is a walk over the fields that can
hold a ``uint64``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from pollen.transport.chunk_codec import Chunk

LARGEST = 2**63 - 1
"""The largest number a request may carry (SQLite's largest integer)."""

_WIDE = frozenset({FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64})
_CHUNK_NUMBERS = ("node_id", "run_id", "offset", "total_size")

Context = grpc.aio.ServicerContext[Any, Any]


def out_of_range(request: object) -> str | None:
    """Why ``request`` cannot be served (a number above `LARGEST`), or None."""
    if isinstance(request, Chunk):
        numbers: Iterator[tuple[str, int]] = ((n, getattr(request, n)) for n in _CHUNK_NUMBERS)
    elif isinstance(request, Message):
        numbers = _numbers(request, "")
    else:
        return None
    for path, value in numbers:
        if value > LARGEST:
            return f"{path} {value} is out of range: at most {LARGEST} (2^63-1)"
    return None


def _numbers(message: Message, prefix: str) -> Iterator[tuple[str, int]]:
    """Every ``uint64`` in ``message`` with its path (``tasks[0].node_id``)."""
    for field, nested in _plan(message.DESCRIPTOR):
        path = prefix + field.name
        value = getattr(message, field.name)
        if not field.is_repeated:
            items: Iterator[tuple[str, Any]] = iter(((path, value),))
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            items = ((f"{path}[{key!r}]", item) for key, item in value.items())
        else:
            items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
        for where, item in items:
            if nested:
                yield from _numbers(item, where + ".")
            else:
                yield where, item


@functools.cache
def _plan(descriptor: Descriptor) -> tuple[tuple[FieldDescriptor, bool], ...]:
    """The fields of ``descriptor`` that are, or can contain, a ``uint64``;
    True for a message to walk into (a map: its values)."""
    plan: list[tuple[FieldDescriptor, bool]] = []
    for field in descriptor.fields:
        inner = _message_type(field)
        if inner is not None and inner.GetOptions().map_entry:
            field_or_value = inner.fields_by_name["value"]  # a map's keys are never wide here
            inner = _message_type(field_or_value)
        else:
            field_or_value = field
        if field_or_value.type in _WIDE:
            plan.append((field, False))
        elif inner is not None and _reaches(inner):
            plan.append((field, True))
    return tuple(plan)


def _message_type(field: FieldDescriptor) -> Descriptor | None:
    return field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None


def _reaches(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a message of this type can contain a ``uint64``."""
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        inner = _message_type(field)
        if field.type in _WIDE or (inner is not None and _reaches(inner, seen)):
            return True
    return False


async def _refuse_out_of_range(request: object, context: Context) -> None:
    reason = out_of_range(request)
    if reason is not None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)


def _checked(handler: Any) -> Any:
    """``handler`` with every request it receives checked first."""
    if handler.unary_unary is not None:
        unary: Any = handler.unary_unary

        async def unary_unary(request: object, context: Context) -> Any:
            await _refuse_out_of_range(request, context)
            return await unary(request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        streaming: Any = handler.unary_stream

        async def unary_stream(request: object, context: Context) -> AsyncIterator[Any]:
            await _refuse_out_of_range(request, context)
            async for reply in streaming(request, context):
                yield reply

        return handler._replace(unary_stream=unary_stream)
    if handler.stream_unary is not None:
        receiving: Any = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    await _refuse_out_of_range(request, context)
                    yield request

            return await receiving(checked(), context)

        return handler._replace(stream_unary=stream_unary)
    return handler


class _IdChecking:
    """Stands before a registrar (see `RequestVerifier.registrar`) while generated
    code registers a service: each handler checks its requests' numbers, after
    the registrar's own checks (well-formed, authenticated)."""

    def __init__(self, registrar: Any) -> None:
        self._registrar = registrar

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored, as by the registrar: `add_registered_method_handlers` registers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        checked = {name: _checked(handler) for name, handler in handlers.items()}
        self._registrar.add_registered_method_handlers(service, checked)


def ids_checked(registrar: Any) -> Any:
    """Pass this instead of ``registrar`` to a generated ``add_*Servicer_to_server``."""
    return _IdChecking(registrar)
