"""One-line structured logs: `ts level event key=value ...`, or JSON objects with --log-format json."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    def __init__(self, stream: TextIO | None = None, fmt: str = "text", level: str = "info"):
        self.stream = stream or sys.stderr
        self.fmt = fmt
        self.level = _LEVELS[level]
        self._lock = threading.Lock()

    def log(self, level: str, event: str, **fields: Any) -> None:
        if _LEVELS[level] < self.level:
            return
        now = time.time()
        if self.fmt == "json":
            line = json.dumps({"ts": round(now, 3), "level": level, "event": event, **fields}, default=str)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
            parts = [stamp, level.upper(), event]
            parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
            line = " ".join(parts)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


class LibraryLogHandler(logging.Handler):
    """Routes a library's `logging` records (aiohttp's "Error handling request", bad encodings from
    clients) into our one-line logs: no multi-line tracebacks in the output a client can trigger."""

    def __init__(self, log: "Logger"):
        super().__init__(level=logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        level = "error" if record.levelno >= logging.ERROR else "warning"
        fields = {"source": record.name, "message": record.getMessage()[:300]}
        if error is not None:
            fields["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        self.log.log(level, "library", **fields)


def route_library_logs(log: "Logger", *names: str) -> None:
    for name in names or ("aiohttp", "asyncio"):
        lib = logging.getLogger(name)
        lib.handlers = [LibraryLogHandler(log)]
        lib.propagate = False


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in " \"=\n\t"):
        return json.dumps(text)
    return text


NULL = Logger(stream=open("/dev/null", "w"), level="error")
