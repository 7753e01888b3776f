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

class ReportRoundRequest(_message.Message):
    __slots__ = ("run_id", "round", "record_json", "num_rounds", "output_dir", "summary")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    round: int
    record_json: str
    num_rounds: int
    output_dir: str
    summary: str
    def __init__(self, run_id: _Optional[int] = ..., round: _Optional[int] = ..., record_json: _Optional[str] = ..., num_rounds: _Optional[int] = ..., output_dir: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...

class ReportRoundReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "app", "status", "owner", "created_at", "finished_at", "rounds_done", "num_rounds", "message")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    app: str
    status: str
    owner: str
    created_at: float
    finished_at: float
    rounds_done: int
    num_rounds: int
    message: str
    def __init__(self, run_id: _Optional[int] = ..., app: _Optional[str] = ..., status: _Optional[str] = ..., owner: _Optional[str] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., rounds_done: _Optional[int] = ..., num_rounds: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsReply(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class RoundReport(_message.Message):
    __slots__ = ("round", "record_json", "reported_at")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    round: int
    record_json: str
    reported_at: float
    def __init__(self, round: _Optional[int] = ..., record_json: _Optional[str] = ..., reported_at: _Optional[float] = ...) -> None: ...

class GetRunDetailsRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class RunDetails(_message.Message):
    __slots__ = ("summary", "run_config", "output_dir", "rounds")
    class RunConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Scalar, _Mapping]] = ...) -> None: ...
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    summary: RunSummary
    run_config: _containers.MessageMap[str, _common_pb2.Scalar]
    output_dir: str
    rounds: _containers.RepeatedCompositeFieldContainer[RoundReport]
    def __init__(self, summary: _Optional[_Union[RunSummary, _Mapping]] = ..., run_config: _Optional[_Mapping[str, _common_pb2.Scalar]] = ..., output_dir: _Optional[str] = ..., rounds: _Optional[_Iterable[_Union[RoundReport, _Mapping]]] = ...) -> None: ...

class StreamRunLogRequest(_message.Message):
    __slots__ = ("run_id", "follow")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    follow: bool
    def __init__(self, run_id: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class RunLogLine(_message.Message):
    __slots__ = ("at", "text")
    AT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    at: float
    text: str
    def __init__(self, at: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class NodeSummary(_message.Message):
    __slots__ = ("node_id", "fingerprint", "status", "last_seen", "tasks_done", "tasks_failed", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    fingerprint: str
    status: str
    last_seen: float
    tasks_done: int
    tasks_failed: int
    address: str
    def __init__(self, node_id: _Optional[int] = ..., fingerprint: _Optional[str] = ..., status: _Optional[str] = ..., last_seen: _Optional[float] = ..., tasks_done: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeSummary]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeSummary, _Mapping]]] = ...) -> None: ...
