"""The one exception hierarchy of Pollen.

Every message names the cause and, where there is one, the fix. The CLI turns a
`PollenError` into one line on stderr and the exit code of its class.
"""

from __future__ import annotations


class PollenError(Exception):
    """Base of every error Pollen raises on purpose."""

    exit_code = 1


class ConfigurationError(PollenError):
    """A command-line option, config string or file is wrong; the user must fix it."""

    exit_code = 2


class AppLoadError(ConfigurationError):
    """A `module:attribute` app reference cannot be loaded."""


class RecordError(PollenError):
    """A record (arrays blob, config, metrics) is malformed or does not match."""


class BlobError(PollenError):
    """A blob is missing, incomplete or does not match its digest."""


class ConnectionFailed(PollenError):
    """The SuperLink could not be reached within the allowed time."""


class CallRefused(PollenError):
    """The SuperLink answered a call with a refusal that calling again would not change.

    ``status`` is the gRPC status in lower case (``"not_found"``,
    ``"failed_precondition"``, ``"permission_denied"``...), ``details`` the
    SuperLink's reason, which names the fix.
    """

    def __init__(self, superlink: object, status: str, details: str) -> None:
        super().__init__(f"SuperLink at {superlink}: {status} ({details})")
        self.status = status
        self.details = details


class RunError(PollenError):
    """A federated run could not continue (no results, too few nodes, ...)."""


class ClientAppError(PollenError):
    """The ClientApp returned something Pollen cannot send back."""


class JoinRefused(PollenError):
    """The SuperLink refused this node's key: retrying would not help."""


class KeyInUse(ConfigurationError):
    """Another process joined with this node's key and replaced it."""


class ServerIdentityError(PollenError):
    """The SuperLink did not prove the identity the client pinned."""


class RequestRejected(PollenError):
    """The SuperLink refused a request's authentication; the message says why (logged,
    not sent in full)."""


class RequestThrottled(RequestRejected):
    """The SuperLink refused a request for a bound, not for its authentication: retry later."""


class ChallengeRefused(PollenError):
    """The SuperLink gives no join challenge now: too many are outstanding for this
    address or this key."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageError(PollenError):
    """The SuperLink cannot write its state or its blobs (read-only, I/O error)."""


class StorageFull(StorageError):
    """The SuperLink's disk is full: nothing is lost, writes resume once space is freed."""


class SuperLinkFailed(PollenError):
    """A SuperLink's background loop kept failing: it stops rather than run without it."""


class TooManyOpenFiles(StorageError):
    """The SuperLink has no file descriptor left: the request may succeed once others end."""


STORAGE_FULL = "SuperLink storage full"
"""How a `StorageFull` message starts, also in the status clients get: they retry on it."""

OUT_OF_DESCRIPTORS = "SuperLink out of file descriptors"
"""How a `TooManyOpenFiles` message starts, also in the status clients get: they retry on it."""
