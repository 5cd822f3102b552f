"""Log output: text (the default) or JSON, one object per line.

A log call where a call or a route is in scope passes its fields as
`extra=` (FIELDS): `log.warning("...", extra={"route": "main",
"generation": 3, "call_id": cid})`. The JSON format writes them as keys of
the line's object; the text format's lines already say them in the message.
A script's own lines come from the logger `babelsip.route.<name>`, so their
route is known even when a call site passes nothing.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

LOG_FORMATS = ("text", "json")
FIELDS = ("call_id", "route", "generation")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ROUTE_LOGGER = "babelsip.route."


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, RFC 3339 with milliseconds),
    level, logger, message, the FIELDS the record carries, and the traceback
    as `exception` when there is one."""

    def __init__(self, worker: int | None = None):
        super().__init__()
        self.worker = worker   # one process of --workers N: every line says which

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
                    + f".{int((record.created - seconds) * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if "route" not in line and record.name.startswith(ROUTE_LOGGER):
            line["route"] = record.name[len(ROUTE_LOGGER):]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        # default=str: a field that is not JSON (a Path) is written as text, never lost.
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str, log_format: str = "text", stream=None, *,
                      worker: int | None = None) -> None:
    """The root logger writes `level` and above to `stream` (stderr) in
    `log_format`; a worker of --workers N marks its lines with its index."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        text = TEXT_FORMAT if worker is None else TEXT_FORMAT.replace(
            "%(name)s", f"[w{worker}] %(name)s")
        handler.setFormatter(logging.Formatter(text))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
