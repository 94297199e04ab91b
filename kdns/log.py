"""One-line structured logs: `ts level event key=value ...`, or JSON objects with --log-format json."""

from __future__ import annotations

import json
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


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in " \"=\n\t"):
        return json.dumps(text)
    return text


NULL = Logger(stream=open("/dev/null", "w"), level="error")
