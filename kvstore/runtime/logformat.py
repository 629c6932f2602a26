"""Log output of a node: today's text lines, or JSON lines with stable keys.

JSON keys, always present: ``ts`` (RFC 3339 UTC, milliseconds), ``level``, ``node``,
``logger``, ``event`` (the formatted message). Added when there is one: ``exc`` (the
traceback) and any ``extra={...}`` fields the call passed. One object a line, so that
``jq``, Loki or any log shipper reads it without a parser of its own.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: what is not among them came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "node": self.node,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and k not in doc:
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup_logging(
    level: str = "INFO", *, fmt: str = "text", node: str = "", module_levels: Mapping[str, str] | None = None
) -> None:
    """Configure the root logger on stderr; ``module_levels`` override ``level`` per logger
    (``kvstore.gossip`` and everything under it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name, lvl in (module_levels or {}).items():
        logging.getLogger(name).setLevel(lvl)
