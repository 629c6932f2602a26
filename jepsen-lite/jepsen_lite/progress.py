"""What the terminal shows while a run goes: elapsed/total, operations so far by outcome,
the fault in force. A live line on a terminal (rich); a plain line every few seconds
otherwise, so CI logs show progress without control characters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["Progress", "Stats"]


@dataclass
class Stats:
    ok: int = 0
    fail: int = 0
    info: int = 0
    fault: str | None = None
    phase: str = "starting"
    notes: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def total(self) -> int:
        return self.ok + self.fail + self.info


class Progress:
    def __init__(self, stats: Stats, total_s: float, console: Console | None = None,
                 plain_every_s: float = 10.0) -> None:
        self.stats = stats
        self.total_s = total_s
        self.console = console or Console(stderr=True)
        self.plain_every_s = plain_every_s
        self._t0 = time.monotonic()
        self._live: Live | None = None
        self._last_plain = 0.0

    def start(self, t0: float | None = None) -> None:
        self._t0 = t0 if t0 is not None else time.monotonic()
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def _line(self) -> str:
        s = self.stats
        el = min(time.monotonic() - self._t0, 1e9)
        fault = s.fault or "none"
        return (f"[{s.phase}] {el:5.0f}s / {self.total_s:.0f}s  ops {s.total} "
                f"(ok {s.ok}, fail {s.fail}, info {s.info})  fault: {fault}")

    def _render(self) -> Any:
        s = self.stats
        el = time.monotonic() - self._t0
        width = 30
        done = int(width * min(1.0, el / self.total_s)) if self.total_s > 0 else width
        t = Text()
        t.append(f"{s.phase:<11}", style="bold")
        t.append("[" + "#" * done + "." * (width - done) + "] ")
        t.append(f"{el:4.0f}s/{self.total_s:.0f}s  ")
        t.append(f"ops {s.total}  ")
        t.append(f"ok {s.ok} ", style="green")
        t.append(f"fail {s.fail} ", style="red")
        t.append(f"info {s.info}  ", style="yellow")
        t.append("fault: ")
        t.append(s.fault or "none", style="bold magenta" if s.fault else "dim")
        return t

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_plain >= self.plain_every_s:
            self._last_plain = time.monotonic()
            self.console.print(self._line(), highlight=False, markup=False, soft_wrap=True)

    def log(self, message: str, style: str = "") -> None:
        self.console.print(message, style=style or None, highlight=False, markup=False, soft_wrap=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None
        else:
            self.console.print(self._line(), highlight=False, markup=False, soft_wrap=True)
