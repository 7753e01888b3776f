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

class Task(_message.Message):
    __slots__ = ("task_id", "run_id", "node_id", "kind", "parameters", "config", "created_at")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: int
    node_id: int
    kind: str
    parameters: BlobRef
    config: _containers.MessageMap[str, Scalar]
    created_at: float
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[int] = ..., node_id: _Optional[int] = ..., kind: _Optional[str] = ..., parameters: _Optional[_Union[BlobRef, _Mapping]] = ..., config: _Optional[_Mapping[str, Scalar]] = ..., created_at: _Optional[float] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("task_id", "run_id", "node_id", "kind", "parameters", "num_examples", "loss", "metrics", "error", "created_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: int
    node_id: int
    kind: str
    parameters: BlobRef
    num_examples: int
    loss: float
    metrics: _containers.MessageMap[str, Scalar]
    error: str
    created_at: float
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[int] = ..., node_id: _Optional[int] = ..., kind: _Optional[str] = ..., parameters: _Optional[_Union[BlobRef, _Mapping]] = ..., num_examples: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, Scalar]] = ..., error: _Optional[str] = ..., created_at: _Optional[float] = ...) -> None: ...

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
