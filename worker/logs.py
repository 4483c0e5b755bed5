"""structlog configured for one JSON object per line on stderr.

The kafka client logs through the standard library; those records are rendered by the
same processors so an operator's log pipeline sees one format.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import structlog

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


_configured_level = logging.INFO


def configure_logging(level: str = "info") -> None:
    global _configured_level
    numeric = logging.getLevelName(level.upper())
    _configured_level = numeric
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # kafka-python is chatty at INFO; its warnings and errors still come through.
    root.setLevel(max(numeric, logging.WARNING))


class _DropRecordsOf(logging.Filter):
    """Drops the records of one logger tree (`kafka`, `kafka.net.manager`, …)."""

    def __init__(self, logger_name: str) -> None:
        super().__init__()
        self.logger_name = logger_name

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return not (name == self.logger_name or name.startswith(self.logger_name + "."))


@contextlib.contextmanager
def client_logs_quieted(logger_name: str = "kafka") -> Iterator[None]:
    """Keeps the Kafka client's own log lines off stderr while the worker first connects.

    Bootstrapping against an unreachable broker made kafka-python log 17 lines in 2 s
    (each retry: connection failed, lost, backing off, waiting; more with a longer
    MODSTREAM_STARTUP_TIMEOUT_S) before the worker's own one-line diagnosis
    (worker/clients.py), which says the same and why. Only the root handlers, which
    write stderr, drop them: handlers on the client's own loggers (the handshake
    recorder of worker/refusal.py) still see every record. At log level debug they
    come through.
    """
    handlers = list(logging.getLogger().handlers) if _configured_level > logging.DEBUG else []
    drop = _DropRecordsOf(logger_name)
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)
