"""structlog set-up: JSON in the cluster, console on a TTY, stdlib loggers bridged."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure_logging(
    component: str, level: str = "INFO", *, json: bool | None = None, **context: Any
) -> structlog.stdlib.BoundLogger:
    """Configure process-wide logging once; returns a logger bound to ``component``."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (aiohttp access logs, kubernetes client) stays at WARNING.
    for noisy in ("aiohttp.access", "kubernetes_asyncio", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(component=component, **context)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component)
    return logger
