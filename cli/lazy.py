"""A click group whose subcommands are imported when used, not when ``kv`` starts.

``kv get`` must not pay for importing ``kv cluster``'s, ``kv bench``'s or the data types'
modules (and what they import: asyncio, rich, the node's settings). Each lazy command is
named with ``"module:attribute"`` or a function that builds it; ``kv --help`` loads them all
to show their one-line help, which is fine: it prints no value.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import click

Loader = str | Callable[[str], click.Command | None]


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, Loader] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, Loader] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.lazy:
            return cmd
        cmd = self._load(cmd_name)
        if cmd is not None:
            self.add_command(cmd, cmd_name)
        return cmd

    def _load(self, name: str) -> click.Command | None:
        loader = self.lazy[name]
        if callable(loader):
            return loader(name)
        module, _, attr = loader.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{loader} is not a click command")
        return cmd
