"""Peak resident memory of this process and its descendants (Dask workers), sampled in a thread.

Shared by the build benchmarks: `driver_bytes` (this process), `peak_bytes` and `peak_processes` (the
largest sum over this process and every descendant, and how many processes that sum held; a sum of
RSS counts shared library pages once per process), and each descendant's own peak by pid
(`dask_workers()` keeps the worker processes).
"""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.driver_bytes = 0
        self.peak_bytes = 0
        self.peak_processes = 0
        self.by_pid: dict[int, int] = {}  # descendant pid -> its peak RSS
        self.names: dict[int, str] = {}  # descendant pid -> its command line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def dask_workers(self) -> dict[int, int]:
        """Peaks of the worker processes (the nannies' children run the tasks; other helpers skipped)."""
        return {pid: rss for pid, rss in self.by_pid.items() if "spawn_main" in self.names.get(pid, "")
                and "resource_tracker" not in self.names.get(pid, "")}

    def _run(self) -> None:
        me = psutil.Process()
        while True:
            self._sample(me)
            if self._stop.wait(self.interval):
                return

    def _sample(self, me: psutil.Process) -> None:
        mine = me.memory_info().rss
        self.driver_bytes = max(self.driver_bytes, mine)
        total, count = mine, 1
        for child in me.children(recursive=True):
            try:
                rss = child.memory_info().rss
                self.names.setdefault(child.pid, " ".join(child.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # a process that just ended
                continue
            self.by_pid[child.pid] = max(self.by_pid.get(child.pid, 0), rss)
            total, count = total + rss, count + 1
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count
