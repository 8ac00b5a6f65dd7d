"""Ctrl-C while a console script (`hms-prep`, `hms-train`) is still importing its modules: one line and
exit 130, as a Ctrl-C later says, not an 8-line KeyboardInterrupt traceback from inside some import.

Each CLI module calls `quiet_interrupts()` before its imports and `imported()` after them; nothing else
runs meanwhile, so there is nothing to clean up. Only in the console script's own process (its argv[0]):
a library user's or a test's Ctrl-C is left alone."""

import os
import signal
import sys
import threading

SCRIPTS = ("hms-prep", "hms-train")


def quiet_interrupts() -> None:
    if (os.path.basename(sys.argv[0]) in SCRIPTS and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _interrupted)


def imported() -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(signum, frame) -> None:
    os.write(2, b"interrupted\n")
    os._exit(130)
