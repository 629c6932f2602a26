"""Options every command accepts after its name as well as before it: ``kv get a --node H:P``,
``kv cluster status --json``.

The group's ``--node``, ``--timeout`` and ``--json`` land in ``ctx.obj``; the same options
given after a subcommand overwrite them there (the later word wins, as a user reads it), so a
command reads ``ctx.obj`` alone and never has to know where an option was typed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _into_obj(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None:
            ctx.ensure_object(dict)[name] = value
        return value

    return callback


def _json_from_obj(f: F) -> F:
    """An ``as_json`` argument left False becomes True when ``--json`` came before the
    command (``kv --json fetch k``)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "as_json" in kwargs and not kwargs["as_json"]:
            obj = click.get_current_context().obj or {}
            kwargs["as_json"] = bool(obj.get("json"))
        return f(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def connection_options(f: F) -> F:
    """``--node`` and ``--timeout`` after a data command; passed on as ``node_after`` and
    ``timeout_after`` too (the data type commands take them)."""
    f = _json_from_obj(f)
    f = click.option("--timeout", "timeout_after", type=float, default=None, callback=_into_obj("timeout"),
                     help="Seconds to wait for an answer.")(f)
    f = click.option("--node", "node_after", default=None, callback=_into_obj("nodes"),
                     help="HOST:PORT of the node(s) to talk to (as before the command).")(f)
    return f


def after_options(f: F) -> F:
    """``--node``, ``--timeout`` and ``--json`` after any other command; they only set
    ``ctx.obj`` (the command's own ``as_json``, if it has one, is ORed with the group's)."""
    f = _json_from_obj(f)
    f = click.option("--timeout", type=float, default=None, expose_value=False, callback=_into_obj("timeout"),
                     help="Seconds to wait for an answer.")(f)
    f = click.option("--node", default=None, expose_value=False, callback=_into_obj("nodes"),
                     help="HOST:PORT of the node(s) to talk to (as before the command).")(f)
    return f


def json_option(help: str) -> Callable[[F], F]:
    """A command's ``--json``; also set by ``kv --json COMMAND``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def nodes_of(ctx: click.Context) -> list[str]:
    return [a.strip() for a in str(ctx.obj["nodes"]).split(",") if a.strip()]


def bucket_option(f: Any) -> Any:
    return click.option(
        "--bucket", "-b", default=None,
        help="Bucket of the key(s) (default: BUCKET/KEY names one when BUCKET exists, else the default bucket).",
    )(f)
