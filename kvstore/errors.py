"""The one error hierarchy of kvstore, with a stable wire code for each class.

    KVError                      code "internal"      base: anything kvstore raises on purpose
    ├── InvalidRequest           code "invalid_request" malformed params, wrong types, bad key
    │   ├── TooLarge             code "too_large"     key, value or frame over its limit
    │   └── UnknownMethod        code "unknown_method" no such RPC method
    ├── ProtocolError            code "protocol"      bytes on the wire that are not msgpack-RPC
    ├── Unavailable              code "unavailable"   fewer than R/W replicas answered in time
    ├── Timeout                  code "timeout"       a call got no answer before its deadline
    ├── Unreachable              code "unreachable"   cannot connect to a peer (refused, down)
    ├── AuthError                code "auth"          no cluster key, a wrong one, or a peer that proved none
    ├── ConfigError              code "config"        a setting is missing, malformed or out of range
    ├── StorageError             code "storage"       the local store failed (disk full, corrupt, locked)
    └── InternalError            code "internal"      a bug: an unexpected exception in a handler

On the wire an error is the map ``{"code": str, "message": str, **extra}``; ``to_wire`` and
``from_wire`` turn an exception into that map and back into the same class, so a client
catches ``kvstore.errors.Unavailable`` whichever node raised it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import storage.errors

__all__ = [
    "AuthError",
    "ConfigError",
    "InternalError",
    "InvalidRequest",
    "KVError",
    "ProtocolError",
    "StorageError",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "UnknownMethod",
    "Unreachable",
    "from_wire",
    "to_wire",
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


class ProtocolError(KVError):
    code = "protocol"


class Unavailable(KVError):
    """Fewer replicas than required answered; ``answered`` and ``required`` say how many."""

    code = "unavailable"

    def __init__(self, message: str = "", *, answered: int = 0, required: int = 0, **extra: Any) -> None:
        super().__init__(message, answered=answered, required=required, **extra)
        self.answered = answered
        self.required = required


class Timeout(KVError):
    code = "timeout"


class Unreachable(KVError):
    code = "unreachable"


class AuthError(KVError):
    """The other end wants the cluster key, refused ours, or could not prove it has it."""

    code = "auth"


class ConfigError(KVError):
    code = "config"


class StorageError(KVError, storage.errors.StorageError):
    code = "storage"

    def __init__(self, message: str = "", *, path: str | None = None, **extra: Any) -> None:
        KVError.__init__(self, message, **extra)
        self.path = path


class InternalError(KVError):
    code = "internal"


_BY_CODE: dict[str, type[KVError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        TooLarge,
        UnknownMethod,
        ProtocolError,
        Unavailable,
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
    if isinstance(exc, storage.errors.StorageError):
        return {"code": StorageError.code, "message": str(exc)}
    return {"code": InternalError.code, "message": f"{type(exc).__name__}: {exc}"}


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
