"""How the CLI talks to people: one-line errors, exit codes, contexts as text."""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import Any, NoReturn

import click

from kvstore.errors import (
    AuthError,
    ConfigError,
    InvalidRequest,
    KVError,
    PreconditionFailed,
    Timeout,
    Unavailable,
    Unreachable,
)

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_PRECONDITION = 4


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"kv: {message}", err=True)
    sys.exit(code)


def exit_code_for(e: KVError) -> int:
    if isinstance(e, (Unavailable, Timeout, Unreachable)):
        return EXIT_UNAVAILABLE
    if isinstance(e, PreconditionFailed):
        return EXIT_PRECONDITION
    if isinstance(e, (InvalidRequest, ConfigError, AuthError)):
        return EXIT_USAGE
    return 1


def fail_for(e: KVError) -> NoReturn:
    fail(str(e) or e.code, exit_code_for(e))


def encode_context(ctx: bytes) -> str:
    return base64.urlsafe_b64encode(ctx).decode("ascii")


def decode_context(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        fail(f"--context {text!r} is not a context printed by kv get", EXIT_USAGE)


def show_bytes(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=None, sort_keys=True))


def console() -> Any:
    """A rich console; when output is not a terminal (piped, logged) tables get 160
    columns instead of rich's 80, so addresses are not cut short."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=160)
