from pollen.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateRunRequest(_message.Message):
    __slots__ = ("app", "run_config")
    class RunConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Scalar, _Mapping]] = ...) -> None: ...
    APP_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    app: str
    run_config: _containers.MessageMap[str, _common_pb2.Scalar]
    def __init__(self, app: _Optional[str] = ..., run_config: _Optional[_Mapping[str, _common_pb2.Scalar]] = ...) -> None: ...

class CreateRunReply(_message.Message):
    __slots__ = ("run_id", "superlink_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERLINK_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    superlink_id: str
    def __init__(self, run_id: _Optional[int] = ..., superlink_id: _Optional[str] = ...) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("run_id", "checkpoint_digest", "superlink_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SUPERLINK_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    checkpoint_digest: str
    superlink_id: str
    def __init__(self, run_id: _Optional[int] = ..., checkpoint_digest: _Optional[str] = ..., superlink_id: _Optional[str] = ...) -> None: ...

class ResumeRunReply(_message.Message):
    __slots__ = ("superlink_id",)
    SUPERLINK_ID_FIELD_NUMBER: _ClassVar[int]
    superlink_id: str
    def __init__(self, superlink_id: _Optional[str] = ...) -> None: ...

class GetNodesRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class GetNodesReply(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PushMessagesRequest(_message.Message):
    __slots__ = ("run_id", "messages")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.Message]
    def __init__(self, run_id: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.Message, _Mapping]]] = ...) -> None: ...

class PushMessagesReply(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamRepliesRequest(_message.Message):
    __slots__ = ("run_id", "message_ids")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[int] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class FinishRunRequest(_message.Message):
    __slots__ = ("run_id", "status", "message", "keep_digests")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KEEP_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    status: str
    message: str
    keep_digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[int] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., keep_digests: _Optional[_Iterable[str]] = ...) -> None: ...

class FinishRunReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseBlobsRequest(_message.Message):
    __slots__ = ("run_id", "digests")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[int] = ..., digests: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseBlobsReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class PruneRunsRequest(_message.Message):
    __slots__ = ("older_than_seconds", "abandoned")
    OLDER_THAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    older_than_seconds: float
    abandoned: bool
    def __init__(self, older_than_seconds: _Optional[float] = ..., abandoned: _Optional[bool] = ...) -> None: ...

class PruneRunsReply(_message.Message):
    __slots__ = ("run_ids", "blobs_deleted")
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_DELETED_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[int]
    blobs_deleted: int
    def __init__(self, run_ids: _Optional[_Iterable[int]] = ..., blobs_deleted: _Optional[int] = ...) -> None: ...
