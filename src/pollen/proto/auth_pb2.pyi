from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChallengeRequest(_message.Message):
    __slots__ = ("public_key",)
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    def __init__(self, public_key: _Optional[str] = ...) -> None: ...

class ChallengeReply(_message.Message):
    __slots__ = ("challenge",)
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    challenge: bytes
    def __init__(self, challenge: _Optional[bytes] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("public_key", "challenge", "client_ephemeral", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    challenge: bytes
    client_ephemeral: bytes
    signature: bytes
    def __init__(self, public_key: _Optional[str] = ..., challenge: _Optional[bytes] = ..., client_ephemeral: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class OpenSessionReply(_message.Message):
    __slots__ = ("session_id", "server_ephemeral", "server_signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    SERVER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    server_ephemeral: bytes
    server_signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., server_ephemeral: _Optional[bytes] = ..., server_signature: _Optional[bytes] = ...) -> None: ...
