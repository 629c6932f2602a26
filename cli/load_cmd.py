"""``kv load``: write the keys of a file (or standard input) through the client library, with
a progress bar (kvstore.bulk).

The whole input is checked before anything is written: a malformed line stops the load with
its file and line number, and the cluster is left as it was. A file is read twice for that
(checked, then streamed to the cluster); standard input is held in memory in between.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from cli import output as out
from cli.options import bucket_option, connection_options, json_option
from kvstore.bulk import FORMATS, parse_line, put_all
from kvstore.errors import InvalidRequest

# Not a terminal (a pipe, a log file): a plain line this often instead of the bar.
PLAIN_PROGRESS_S = 5.0


def _lines(path: str) -> Iterator[tuple[int, str]]:
    # Bytes, split at b"\n" alone (a text stream would also end a line at a lone \r inside a
    # value), each line decoded on its own: bytes that are not UTF-8 reach parse_line as
    # surrogates, which it refuses with the line's number.
    with contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb") as stream:
        for n, line in enumerate(stream, 1):
            yield n, line.decode("utf-8", "surrogateescape")


def _items(path: str, fmt: str) -> Iterator[tuple[bytes, bytes]]:
    where = "<stdin>" if path == "-" else path
    for n, line in _lines(path):
        item = parse_line(fmt, line, f"{where}:{n}")
        if item is not None:
            yield item


@click.command("load")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="tsv", show_default=True,
              help='tsv: KEY<TAB>VALUE per line (as kv get-many prints); jsonl: {"key": ..., "value": ...} '
                   'per line ("value_b64" for bytes that are not text).')
@click.option("--concurrency", type=click.IntRange(1), default=512, show_default=True, help="Puts in flight.")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Keys per put_many call.")
@click.option("--ttl", "ttl_s", type=click.FloatRange(0), default=None, help="Expire the values after this many seconds.")
@click.option("--replace", is_flag=True,
              help="Read each key first and write with what the read saw, so the loaded value supersedes it "
                   "(a second load of the same file leaves one value per key, not two siblings; twice the requests).")
@json_option("Print the outcome as one JSON object.")
@bucket_option
@connection_options
@click.pass_context
def load(
    ctx: click.Context, path: str, fmt: str, concurrency: int, batch: int, ttl_s: float | None, replace: bool,
    as_json: bool, bucket: str | None, node_after: str | None, timeout_after: float | None,
) -> None:
    """Write every key of FILE ('-': standard input), concurrently, with a progress bar.
    The input is checked whole first (a bad line changes nothing). Exit 3 if any put failed
    (its outcome is unknown, as a single put's would be)."""
    # Checked (and counted, for the bar) before the first write.
    held: list[tuple[bytes, bytes]] = []
    try:
        if path == "-":
            held = list(_items(path, fmt))
            total = len(held)
        else:
            total = sum(1 for _ in _items(path, fmt))
    except InvalidRequest as e:
        out.fail(str(e), out.EXIT_USAGE)
    except OSError as e:
        out.fail(f"cannot read {path}: {e.strerror or e}", out.EXIT_USAGE)
    items = iter(held) if path == "-" else _items(path, fmt)
    b = None if bucket == "default" else bucket
    res = _run(ctx, items, total, as_json, concurrency=concurrency, batch=batch, bucket=b, ttl_s=ttl_s, replace=replace)
    if as_json:
        out.print_json({"keys": total, "written": res.written, "failed": res.failed, "first_error": res.first_error,
                        "stopped": res.stopped, "last_error": res.last_error, "secs": round(res.secs, 3),
                        "keys_per_s": round(res.written / res.secs) if res.secs else 0})
    else:
        rate = f"{res.written / res.secs:,.0f} keys/s" if res.secs else "-"
        click.echo(f"loaded {res.written:,} of {total:,} keys in {res.secs:.1f} s ({rate})", err=True)
    if res.stopped == "failures":
        left = total - res.written - res.failed
        click.echo(f"kv: gave up after {res.failed:,} failed puts, {left:,} keys not sent (last: {res.last_error})",
                   err=True)
        sys.exit(out.EXIT_UNAVAILABLE)
    if res.failed:
        click.echo(f"kv: {res.failed:,} puts failed (first: {res.first_error})", err=True)
        sys.exit(out.EXIT_UNAVAILABLE)


def _run(ctx: click.Context, items: Iterator[tuple[bytes, bytes]], total: int, quiet: bool, **how: Any) -> Any:
    """put_all over ``items`` with ``how`` (its keyword arguments), behind the progress bar."""
    from cli.session import run_client

    with progress_bar(total, "kv load", quiet=quiet) as progress:

        async def go(kv: Any) -> Any:
            return await put_all(kv, items, on_progress=progress, **how)

        return run_client(ctx, go)


@contextlib.contextmanager
def progress_bar(total: int, label: str, *, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """put_all's ``on_progress`` for ``total`` keys: a bar on stderr when it is a terminal, a
    line every PLAIN_PROGRESS_S otherwise (a pipe, a log file), nothing when ``quiet``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    bar_on = console.is_terminal and not quiet
    columns = (TextColumn("loading"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:>9,.0f} keys/s"), TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    t0 = time.perf_counter()
    said = [t0]
    with Progress(*columns, console=console, refresh_per_second=5, disable=not bar_on) as bar:
        task = bar.add_task("load", total=total, rate=0.0)

        def progress(written: int, failed: int) -> None:
            now = time.perf_counter()
            rate = written / (now - t0) if now > t0 else 0.0
            bar.update(task, completed=written + failed, rate=rate)
            if not bar_on and not quiet and now - said[0] >= PLAIN_PROGRESS_S:
                said[0] = now
                click.echo(f"{label}: {written + failed:,} / {total:,} keys, {rate:,.0f} keys/s, {now - t0:.0f} s",
                           err=True)

        yield progress
