"""Log lines as text or JSON, for uvicorn's loggers and the service's own, in every worker.

The access line is the service's (one per request, with its id, route, status, latency,
images, model version, client and key id), written by ``service.access_log`` in these same
formats; uvicorn's own access log stays off. Bodies and keys are never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

ACCESS_LOGGER = "service.access"
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def json_line(
    created: float, level: str, logger: str, message: str, fields: Iterable[tuple[str, Any]]
) -> str:
    """One JSON log line: time, level, logger, message, then ``fields``."""
    document: dict[str, Any] = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    document.update(fields)
    return json.dumps(document, default=str)


def access_text(fields: Mapping[str, Any]) -> str:
    """The access line in text: client, method and route, status, latency, then what is known."""
    extras = " ".join(
        f"{name}={fields[name]}"
        for name in ("images", "model_version", "key_id", "request_id")
        if fields.get(name) is not None
    )
    return (
        f'INFO:     {fields.get("client")} - "{fields.get("method")} {fields.get("route")}" '
        f"{fields.get('status')} {fields.get('latency_ms')} ms {extras}"
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = [(key, value) for key, value in record.__dict__.items() if key not in _STANDARD]
        if record.exc_info:
            fields.append(("exception", self.formatException(record.exc_info)))
        return json_line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), fields
        )


class AccessTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return access_text(record.__dict__)


def skip_unused_record_fields() -> None:
    """Stop logging from finding the caller's file and line, thread and process for each
    record: no format here prints them, and finding them cost the access line a few
    microseconds of the event loop a request (JSON c=32 1.02-1.04x req/s, c=1 1.05-1.07x).
    The logging HOWTO's "Optimization" section names these switches."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_config(log_format: Literal["text", "json"], level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn (which applies it in each worker)."""
    level = level.upper()
    if log_format == "json":
        formatters: dict[str, Any] = {
            "default": {"()": JsonFormatter},
            "access": {"()": JsonFormatter},
        }
    else:
        formatters = {
            "default": {
                "()": "uvicorn.logging.DefaultFormatter",
                "fmt": "%(levelprefix)s %(message)s",
            },
            "access": {"()": AccessTextFormatter},
        }
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {
            "default": {**handler, "formatter": "default"},
            "access": {**handler, "formatter": "access"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "service": {"handlers": ["default"], "level": level, "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
