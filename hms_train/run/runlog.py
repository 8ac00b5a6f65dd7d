"""RUN/log.txt: what other libraries say during a training run, kept out of its console.

mlflow's INFO lines ("Creating initial MLflow database tables...") and the warnings of timm, torch and
the rest ("Mapping deprecated model name ...") say nothing a user must act on mid-run, and break the
progress bar; they go to the run's own log file, one line each with its time. The project's own
warnings and errors still reach the console; the run's progress lines are written here too. Until the run's folder is ready (a fresh run clears it
first) the lines are held; a run refused before then prints them where they would have gone.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import warnings
from contextlib import suppress
from pathlib import Path

RUN_LOG = "log.txt"
# Loggers that print lines of their own: mlflow gives its logger a stderr handler at import; timm's
# schedulers warn through logging ("Cosine annealing scheduler will have no effect ...").
THIRD_PARTY_LOGGERS = ("mlflow", "alembic", "timm")
OURS = tuple(str(Path(__import__(name).__file__).parent) + os.sep for name in ("hms_prep", "hms_train"))


class ThirdPartyLog:
    """A context in which third-party log records and warnings are written to `into(path)`'s file.
    `trackers`: their libraries are imported first (mlflow replaces its logger's handlers at import)."""

    def __init__(self, trackers=()):
        self.trackers = trackers

    def __enter__(self) -> ThirdPartyLog:
        from hms_train.run.tracking import EXTRAS

        for name in (n for n in self.trackers if n in EXTRAS):
            with suppress(ImportError):  # a missing extra is refused by check_trackers, in one line
                importlib.import_module(EXTRAS[name])
        self.path, self.held = None, []
        self.handler = _Handler(self)
        self.saved = {}
        for name in THIRD_PARTY_LOGGERS:
            logger = logging.getLogger(name)
            self.saved[name] = (logger.handlers[:], logger.propagate)
            logger.handlers, logger.propagate = [self.handler], False
        self.showwarning = warnings.showwarning
        warnings.showwarning = self._warning
        return self

    def into(self, path: Path) -> None:
        """From now on (and what was held) into `path`, appended to."""
        self.path = path
        held, self.held = self.held, []
        for line in held:
            self.write(line)

    def note(self, text: str) -> None:
        """One line of the run's own (its progress), with its time."""
        self.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO progress: {text}\n")

    def write(self, line: str) -> None:
        if self.path is None:
            self.held.append(line)
            return
        with open(self.path, "a", encoding="utf-8") as f:  # opened per line: rare, and never left open
            f.write(line)

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if str(filename).startswith(OURS):  # the project's own warnings are for the user
            self.showwarning(message, category, filename, lineno, file, line)
            return
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
        self.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING {text}\n")

    def __exit__(self, *exc) -> bool:
        warnings.showwarning = self.showwarning
        for name, (handlers, propagate) in self.saved.items():
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate
        if self.path is None and self.held:  # refused before the run's folder was ready
            sys.stderr.write("".join(self.held))
        return False


class _Handler(logging.Handler):
    def __init__(self, log: ThirdPartyLog):
        super().__init__()
        self.log = log
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
