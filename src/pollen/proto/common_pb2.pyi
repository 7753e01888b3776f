from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scalar(_message.Message):
    __slots__ = ("double_value", "int_value", "bool_value", "string_value", "bytes_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int_value: int
    bool_value: bool
    string_value: str
    bytes_value: bytes
    def __init__(self, double_value: _Optional[float] = ..., int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ..., bytes_value: _Optional[bytes] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("digest", "size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ScalarRecord(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.MessageMap[str, Scalar]
    def __init__(self, values: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...

class Records(_message.Message):
    __slots__ = ("arrays", "metrics", "configs")
    class ArraysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: BlobRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[BlobRef, _Mapping]] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScalarRecord
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScalarRecord, _Mapping]] = ...) -> None: ...
    class ConfigsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScalarRecord
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScalarRecord, _Mapping]] = ...) -> None: ...
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    arrays: _containers.MessageMap[str, BlobRef]
    metrics: _containers.MessageMap[str, ScalarRecord]
    configs: _containers.MessageMap[str, ScalarRecord]
    def __init__(self, arrays: _Optional[_Mapping[str, BlobRef]] = ..., metrics: _Optional[_Mapping[str, ScalarRecord]] = ..., configs: _Optional[_Mapping[str, ScalarRecord]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "run_id", "node_id", "message_type", "content", "reply_to", "error", "created_at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    run_id: int
    node_id: int
    message_type: str
    content: Records
    reply_to: str
    error: str
    created_at: float
    def __init__(self, message_id: _Optional[str] = ..., run_id: _Optional[int] = ..., node_id: _Optional[int] = ..., message_type: _Optional[str] = ..., content: _Optional[_Union[Records, _Mapping]] = ..., reply_to: _Optional[str] = ..., error: _Optional[str] = ..., created_at: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "app", "run_config", "status")
    class RunConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    app: str
    run_config: _containers.MessageMap[str, Scalar]
    status: str
    def __init__(self, run_id: _Optional[int] = ..., app: _Optional[str] = ..., run_config: _Optional[_Mapping[str, Scalar]] = ..., status: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("digest", "total_size", "offset", "data", "node_id", "run_id")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    digest: str
    total_size: int
    offset: int
    data: bytes
    node_id: int
    run_id: int
    def __init__(self, digest: _Optional[str] = ..., total_size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., node_id: _Optional[int] = ..., run_id: _Optional[int] = ...) -> None: ...

class DownloadBlobRequest(_message.Message):
    __slots__ = ("digest", "offset", "node_id")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    node_id: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., node_id: _Optional[int] = ...) -> None: ...
