"""Logging for the `atmx` command: atmx's own lines at the chosen level, libraries' only when they matter."""

from __future__ import annotations

import logging
import warnings

# Libraries whose INFO lines are chatter to an operator: pgserver narrates every pg_ctl call
# and the whole initdb output; asyncio and aiohttp's access log add a line per event.
QUIET_LOGGERS = ("pgserver", "asyncio", "aiohttp.access", "aiohttp.server", "websockets")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str) -> None:
    numeric = getattr(logging, level)
    logging.basicConfig(level=numeric, format=FORMAT, force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    if numeric > logging.DEBUG:
        # Python warnings (platformdirs' RuntimeDirWarning when XDG_RUNTIME_DIR is unset, library
        # deprecations) say nothing an operator can act on; at DEBUG they go through logging.
        warnings.simplefilter("ignore")
    else:
        logging.captureWarnings(True)
