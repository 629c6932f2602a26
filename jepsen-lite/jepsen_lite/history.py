"""The history of a run: one JSON object per line, in the order events happened.

Every client operation is an ``invoke`` followed by exactly one completion from the same
process: ``ok`` (it happened), ``fail`` (it certainly did not happen) or ``info`` (outcome
unknown: it may have happened, now or later). As in Jepsen, a process whose operation ended
in ``info`` is never reused, because it may still have that operation in flight; the worker
continues under a fresh process id. Nemesis actions use process ``"nemesis"`` and final reads
use ``"final-<i>"`` (several run at once), so the whole run can be re-checked from the file
alone.

Times are integer nanoseconds of one monotonic clock since the start of the run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "COMPLETIONS",
    "Event",
    "History",
    "Op",
    "Window",
    "fault_windows",
    "is_final",
    "pair_ops",
    "read_history",
]

COMPLETIONS = ("ok", "fail", "info")
_TYPES = ("invoke", *COMPLETIONS)


@dataclass(slots=True)
class Event:
    type: str
    process: int | str
    f: str
    time: int = 0
    key: str | None = None
    value: Any = None
    error: str | None = None
    client: int | None = None
    index: int = -1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"event type must be one of {_TYPES}, got {self.type!r}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "time": self.time,
            "type": self.type,
            "process": self.process,
            "f": self.f,
        }
        if self.client is not None:
            out["client"] = self.client
        if self.key is not None:
            out["key"] = self.key
        if self.value is not None:
            out["value"] = self.value
        if self.error is not None:
            out["error"] = self.error
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        known = {"index", "time", "type", "process", "f", "client", "key", "value", "error"}
        return cls(
            type=d["type"],
            process=d["process"],
            f=d["f"],
            time=int(d.get("time", 0)),
            key=d.get("key"),
            value=d.get("value"),
            error=d.get("error"),
            client=d.get("client"),
            index=int(d.get("index", -1)),
            extra={k: v for k, v in d.items() if k not in known},
        )


class History:
    """Appends events with a shared clock and index; optionally mirrors them to a JSONL file.

    Thread-safe, because the nemesis may run shell commands from worker threads while the
    clients record from the event loop. Each line is flushed as written so a crashed run
    still leaves a history that can be checked.
    """

    def __init__(self, path: Path | None = None, *, t0_ns: int | None = None) -> None:
        self.events: list[Event] = []
        self.t0_ns = time.monotonic_ns() if t0_ns is None else t0_ns
        self._lock = threading.Lock()
        self._fh: IO[str] | None = path.open("a", encoding="utf-8") if path else None

    def now(self) -> int:
        return time.monotonic_ns() - self.t0_ns

    def append(self, event: Event) -> Event:
        with self._lock:
            event.index = len(self.events)
            if event.time == 0:
                event.time = self.now()
            self.events.append(event)
            if self._fh is not None:
                self._fh.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
                self._fh.flush()
        return event

    def invoke(self, process: int | str, f: str, *, key: str | None = None, value: Any = None,
               client: int | None = None, **extra: Any) -> Event:
        return self.append(Event("invoke", process, f, key=key, value=value, client=client, extra=extra))

    def complete(self, inv: Event, type_: str, *, value: Any = ..., error: str | None = None,
                 **extra: Any) -> Event:
        """The completion of ``inv``; its value defaults to the invocation's."""
        return self.append(Event(type_, inv.process, inv.f, key=inv.key, client=inv.client,
                                 value=inv.value if value is ... else value, error=error, extra=extra))

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_history(path: Path) -> list[Event]:
    """Events of a JSONL history; a torn last line (the writer was killed) is ignored."""
    events: list[Event] = []
    with path.open(encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(Event.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError):
            if i == len(lines) - 1:
                break
            raise
    return events


def is_final(process: int | str) -> bool:
    """Whether a process id is one of the final readers (not a client, not the nemesis)."""
    return isinstance(process, str) and process.startswith("final")


@dataclass(slots=True)
class Op:
    """An invocation paired with its completion; ``type`` is ``info`` if none was recorded."""

    process: int | str
    f: str
    key: str | None
    value: Any
    type: str
    invoke_time: int
    complete_time: int | None
    result: Any = None
    error: str | None = None
    client: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_ns(self) -> int | None:
        return None if self.complete_time is None else self.complete_time - self.invoke_time


def pair_ops(events: Iterable[Event]) -> list[Op]:
    """Client and final operations, invoke paired with completion, in invocation order.

    Raises ValueError on a malformed history (a completion without an invocation, or a
    process invoking twice without completing), since checking such a history would be a lie.
    """
    open_: dict[int | str, Op] = {}
    ops: list[Op] = []
    for ev in events:
        if ev.process == "nemesis":
            continue
        if ev.type == "invoke":
            if ev.process in open_:
                raise ValueError(f"process {ev.process!r} invoked twice without completing (event {ev.index})")
            op = Op(ev.process, ev.f, ev.key, ev.value, "info", ev.time, None, client=ev.client)
            open_[ev.process] = op
            ops.append(op)
        else:
            op_or_none = open_.pop(ev.process, None)
            if op_or_none is None:
                raise ValueError(f"completion without invocation for process {ev.process!r} (event {ev.index})")
            op_or_none.type = ev.type
            op_or_none.complete_time = ev.time
            op_or_none.result = ev.value
            op_or_none.error = ev.error
            op_or_none.extra = dict(ev.extra)
    return ops


@dataclass(frozen=True, slots=True)
class Window:
    """A fault's span: from the invocation that starts it to the completion of its heal."""

    id: int
    kind: str
    label: str
    start: int
    end: int


def fault_windows(events: Iterable[Event], *, end_time: int | None = None) -> list[Window]:
    """Fault windows from nemesis ``start``/``stop`` events; one never healed ends at end_time."""
    starts: dict[int, tuple[int, str, str]] = {}
    windows: list[Window] = []
    last = 0
    for ev in events:
        last = max(last, ev.time)
        if ev.process != "nemesis" or not isinstance(ev.value, dict):
            continue
        fid = ev.value.get("id")
        if not isinstance(fid, int):
            continue
        if ev.f == "start" and ev.type == "invoke":
            starts[fid] = (ev.time, str(ev.value.get("kind", "?")), str(ev.value.get("label", "")))
        elif ev.f == "stop" and ev.type != "invoke" and fid in starts:
            t0, kind, label = starts.pop(fid)
            windows.append(Window(fid, kind, label, t0, ev.time))
    for fid, (t0, kind, label) in starts.items():
        windows.append(Window(fid, kind, label, t0, end_time if end_time is not None else last))
    windows.sort(key=lambda w: w.start)
    return windows


def iter_lines(events: Iterable[Event]) -> Iterator[str]:
    for ev in events:
        yield json.dumps(ev.to_json(), separators=(",", ":"))
