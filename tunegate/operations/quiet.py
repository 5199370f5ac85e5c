"""What reaches the terminal: tunegate's own lines and progress bars, not the libraries' warnings.

Deprecation notices and other Python warnings that torch, transformers, peft, TRL, MLflow or Prefect
raise on every run (``gradient_checkpointing`` is deprecated, ``ensure_weight_tying``, ...) say nothing
a user can act on. :func:`warnings_to_log` sends every Python warning of the process to
``$TUNEGATE_HOME/logs/warnings.log`` instead of the console: kept, with time, process and source line,
for whoever upgrades the stack.
"""

from __future__ import annotations

import logging
from pathlib import Path

LOGGER = "py.warnings"  # where logging.captureWarnings sends them


def warnings_log() -> Path:
    from tunegate.paths import tunegate_home

    return tunegate_home() / "logs" / "warnings.log"


def warnings_to_log(path: Path | None = None) -> Path:
    """Route this process's Python warnings to ``path`` (default :func:`warnings_log`), not the console.
    Idempotent; returns the file."""
    path = path or warnings_log()
    logger = logging.getLogger(LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.resolve():
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s pid %(process)d %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # not to the root logger's console handler (Prefect's), nor logging's last resort
    logging.captureWarnings(True)
    return path
