"""The bot's logs as Cloud Logging reads them: one JSON object a line on stdout, with
``severity``, ``message`` and what the line is about (delivery id, job id, repository,
PR), configured by ``create_app`` (gunicorn, App Engine's entrypoint, never runs
``python -m bot``).

What a line is about comes from ``context(...)``, which binds fields for the current
task and every task it starts (asyncio copies the context into a new task).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("log_context", default=MappingProxyType({}))


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (those not None) to every log line written inside the block and by
    the tasks started in it."""
    bound = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(bound)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonLines(logging.Formatter):
    """A record as one JSON line: severity, message (and traceback), logger, time, and
    the fields bound by ``context``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry = {
            "severity": record.levelname,
            "message": message,
            "logger": record.name,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            **_CONTEXT.get(),
        }
        return json.dumps(entry, default=str)


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is when a record comes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonLines())

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure() -> None:
    """Send INFO and above as JSON lines to stdout, once per process."""
    root = logging.getLogger()
    if not any(isinstance(handler, _Stdout) for handler in root.handlers):
        root.addHandler(_Stdout())
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
