"""Ctrl-C, held while the build does what must not be cut short, then raised as KeyboardInterrupt.

Two such moments: creating the store or an array (a few metadata writes: zarr's own IO thread went on
writing after the main thread was interrupted, and the clean-up raced it), and starting a LocalCluster
(its worker processes, spawned meanwhile, would each get the terminal's Ctrl-C and print their own
KeyboardInterrupt traceback, and a half-started cluster failed in distributed's exit hook with
`AssertionError: Status.init`). For the second, SIGINT is also blocked while the processes are spawned:
they inherit the blocked signal, so a Ctrl-C to the process group never reaches a worker; this driver
stops them.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def interrupt_deferred(from_children: bool = False):
    """A Ctrl-C during the block takes effect when it ends. `from_children`: processes started in the
    block (by this thread or threads it starts) never receive SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; Ctrl-C reaches only it
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    if from_children:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited by threads and processes made here
    try:
        yield
    finally:
        if from_children:
            if signal.SIGINT in signal.sigpending():  # held back by the mask: delivered (to the recorder) now
                received.append(True)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
