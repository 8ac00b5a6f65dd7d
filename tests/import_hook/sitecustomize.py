"""Loaded by a console script under test (PYTHONPATH): sends its own process SIGINT, a Ctrl-C, as the module
HMS_INTERRUPT_ON_IMPORT starts being imported: the exact moment, never a timed sleep. Used by
tests/test_reliability.py."""

import os
import signal
import sys

if os.environ.get("HMS_INTERRUPT_ON_IMPORT"):
    class _InterruptOnImport:
        def find_spec(self, name, path=None, target=None):
            if name == os.environ["HMS_INTERRUPT_ON_IMPORT"]:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, _InterruptOnImport())
