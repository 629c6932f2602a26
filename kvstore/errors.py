"""The one error hierarchy of kvstore, with a stable wire code for each class.

    KVError                      code "internal"      base: anything kvstore raises on purpose
    ├── InvalidRequest           code "invalid_request" malformed params, wrong types, bad key
    │   ├── TooLarge             code "too_large"     key, value or frame over its limit
    │   ├── UnknownMethod        code "unknown_method" no such RPC method
    │   ├── Conflict             code "conflict"      one value asked of a key that has siblings
    │   ├── UnknownBucket        code "unknown_bucket" a bucket that was never created
    │   └── ForeignCluster       code "foreign_cluster" a view or join of another cluster (its id differs)
    ├── PreconditionFailed       code "precondition_failed" a conditional write whose condition
    │                                                 did not hold (``reason``: exists, modified)
    ├── ChangeRefused            code "change_refused" a bucket change that cannot be made live
    ├── ProtocolError            code "protocol"      bytes on the wire that are not msgpack-RPC
    ├── Unavailable              code "unavailable"   fewer than R/W replicas answered in time
    ├── DotConflict              code "dot_conflict"  two versions of a key under one dot: refused
    ├── NotOwner                 code "not_owner"     a replica asked for a partition it does not replicate
    ├── Timeout                  code "timeout"       a call got no answer before its deadline
    ├── Unreachable              code "unreachable"   cannot connect to a peer (refused, down);
    │                                                 ``sent`` says whether the request left
    ├── AuthError                code "auth"          no cluster key, a wrong one, or a peer that proved none
    ├── ConfigError              code "config"        a setting is missing, malformed or out of range
    ├── StorageError             code "storage"       the local store failed (disk full, corrupt, locked)
    └── InternalError            code "internal"      a bug: an unexpected exception in a handler

On the wire an error is the map ``{"code": str, "message": str, **extra}``; ``to_wire`` and
``from_wire`` turn an exception into that map and back into the same class, so a client
catches ``kvstore.errors.Unavailable`` whichever node raised it.

storage/ sits below kvstore/ and cannot subclass anything here, so its own
``storage.errors.StorageError`` is a separate class: the runtime converts it where it calls
the engine, and ``to_wire`` reports any that slips through under code "storage". This module
imports nothing of storage/, so the pure core can use these errors without loading LevelDB.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "ChangeRefused",
    "ConfigError",
    "Conflict",
    "DotConflict",
    "ForeignCluster",
    "InternalError",
    "InvalidRequest",
    "KVError",
    "NotOwner",
    "PreconditionFailed",
    "ProtocolError",
    "StorageError",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "UnknownBucket",
    "UnknownMethod",
    "Unreachable",
    "from_wire",
    "to_wire",
    "was_sent",
]


class KVError(Exception):
    """Base of every error kvstore raises on purpose."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def __str__(self) -> str:
        return self.message


class InvalidRequest(KVError):
    code = "invalid_request"


class TooLarge(InvalidRequest):
    code = "too_large"


class UnknownMethod(InvalidRequest):
    code = "unknown_method"


class Conflict(InvalidRequest):
    """``GetResult.value`` was asked for but the key has several sibling values: read
    ``.values``, or give the client a resolver."""

    code = "conflict"


class UnknownBucket(InvalidRequest):
    """A request named a bucket that no node has heard of (``kv bucket create`` makes one)."""

    code = "unknown_bucket"


class ForeignCluster(InvalidRequest):
    """A ring view, or a join, that comes from another cluster than this node's: each cluster
    has an id made when it is founded, and a node that belongs to one takes nothing of
    another's (a reused address, a seed pointing at the wrong cluster). Nothing changed."""

    code = "foreign_cluster"


class PreconditionFailed(KVError):
    """A conditional write was refused: ``if_none_match`` found a live value (``reason``
    "exists"), or ``if_not_modified`` found the key changed since the given context
    ("modified"). Nothing was written. Not retried: the same request fails the same way."""

    code = "precondition_failed"


class ChangeRefused(KVError):
    """A bucket change that cannot be made on a live cluster (the N or datatype of a bucket
    that holds keys); the bucket is left as it was."""

    code = "change_refused"


class ProtocolError(KVError):
    code = "protocol"


class Unavailable(KVError):
    """Fewer replicas than required answered; ``answered`` and ``required`` say how many."""

    code = "unavailable"

    def __init__(self, message: str = "", *, answered: int = 0, required: int = 0, **extra: Any) -> None:
        super().__init__(message, answered=answered, required=required, **extra)
        self.answered = answered
        self.required = required


class DotConflict(KVError):
    """Two different versions of a key carry the same dot. Dots are minted once (fresh actor
    epochs after any loss of local state), so this is a bug or a restored old data
    directory; the merge is refused rather than keep one and silently lose the other."""

    code = "dot_conflict"


class NotOwner(KVError):
    """A replica was sent a read or write of a partition it does not replicate in its view
    of the ring (the sender's view is stale, or this node's is). Refused: data stored there
    would never be served or handed off, and data kept there is stale. Not an invalid
    request: the same call is right once the views agree."""

    code = "not_owner"


class Timeout(KVError):
    code = "timeout"


class Unreachable(KVError):
    """No answer could be had from a peer. ``sent`` is False only when the request certainly
    never left this process (safe to send elsewhere, even a write); otherwise its outcome is
    unknown. It describes one hop, so it is not sent on the wire: a peer's Unreachable
    arrives with ``sent`` True."""

    code = "unreachable"

    def __init__(self, message: str = "", *, sent: bool = True, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.sent = sent


def was_sent(exc: BaseException) -> bool:
    """Whether a failed call may have reached the peer (True unless known otherwise)."""
    return bool(getattr(exc, "sent", True))


class AuthError(KVError):
    """The other end wants the cluster key, refused ours, or could not prove it has it."""

    code = "auth"


class ConfigError(KVError):
    code = "config"


class StorageError(KVError):
    code = "storage"

    def __init__(self, message: str = "", *, path: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.path = path


class InternalError(KVError):
    code = "internal"


_BY_CODE: dict[str, type[KVError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        TooLarge,
        UnknownMethod,
        Conflict,
        UnknownBucket,
        ForeignCluster,
        PreconditionFailed,
        ChangeRefused,
        ProtocolError,
        Unavailable,
        DotConflict,
        NotOwner,
        Timeout,
        Unreachable,
        AuthError,
        ConfigError,
        StorageError,
        InternalError,
    )
}


def to_wire(exc: BaseException) -> dict[str, Any]:
    """The wire form of an exception; anything not a KVError is reported as ``internal``."""
    if isinstance(exc, KVError):
        out: dict[str, Any] = {"code": exc.code, "message": exc.message}
        for k, v in exc.extra.items():
            if isinstance(v, (str, int, float, bool, bytes)) or v is None:
                out[k] = v
        return out
    if _is_raw_storage_error(exc):
        return {"code": StorageError.code, "message": str(exc)}
    return {"code": InternalError.code, "message": f"{type(exc).__name__}: {exc}"}


def _is_raw_storage_error(exc: BaseException) -> bool:
    # An instance can only exist once its module is loaded, so looking the module up (instead
    # of importing it) answers exactly, and keeps this module free of storage/ and LevelDB.
    mod = sys.modules.get("storage.errors")
    return mod is not None and isinstance(exc, mod.StorageError)


def from_wire(err: Any) -> KVError:
    """Rebuild the exception a peer sent; unknown shapes become a ProtocolError or InternalError."""
    if isinstance(err, dict):
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in err.items()}
        code = fields.pop("code", "internal")
        message = fields.pop("message", "")
        if isinstance(code, bytes):
            code = code.decode("utf-8", "replace")
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        cls = _BY_CODE.get(str(code), InternalError)
        extra = {str(k): v for k, v in fields.items()}
        if cls is Unavailable:
            answered = extra.pop("answered", 0)
            required = extra.pop("required", 0)
            return Unavailable(str(message), answered=int(answered or 0), required=int(required or 0), **extra)
        if cls is StorageError:
            path = extra.pop("path", None)
            return StorageError(str(message), path=path if isinstance(path, str) else None, **extra)
        return cls(str(message), **extra)
    if isinstance(err, bytes):
        return InternalError(err.decode("utf-8", "replace"))
    return InternalError(str(err))
