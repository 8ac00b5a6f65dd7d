"""Where the chunk tasks run: threads of this process, or Dask workers, behind one small interface.

    start()                  the workers: a LocalCluster started, or a scheduler's workers connected
    require_parts(kinds)     the compiled parts and the kinds' modules load where the tasks will run
    run(jobs)                ChunkReports as the tasks finish (a task that raised is a crashed report)
    cancel()                 stop what has not finished (Ctrl-C); those chunks stay not done

`Executors` picks one by how many rows a build computes: a `--device` build, or one of at most
IN_PROCESS_ROWS rows, runs here (a cluster takes longer to start than those take to compute); any other
on Dask. A remote scheduler is reached first, so an unreachable one is refused in seconds; a
LocalCluster starts only when first used, so a build with nothing to compute starts none.
"""

from __future__ import annotations

import logging
import multiprocessing.resource_tracker
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from hms_prep import doctor
from hms_prep.building.config import BuildConfig
from hms_prep.building.interrupts import interrupt_deferred
from hms_prep.building.task import ChunkJob, ChunkReport, Failure, build_chunk
from hms_prep.kinds import ArrayKind

# Up to this many rows to compute, one process computing them itself finishes before a local cluster
# has started (docs/performance.md measures the crossover).
IN_PROCESS_ROWS = 400


class BuildError(RuntimeError):
    """The build cannot start (e.g. the scheduler cannot be reached)."""


class Executor:
    """Runs chunk tasks; see the module's docstring."""

    def start(self) -> None:
        pass

    def require_parts(self, kinds: Iterable[ArrayKind]) -> None:
        raise NotImplementedError

    def run(self, jobs: list[ChunkJob]) -> Iterator[ChunkReport]:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcess(Executor):
    """Threads of this process. A --device build overlaps the reads and writes of `threads` tasks with
    the device's work; a small CPU build runs its tasks one after another (torch uses one thread)."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(threads)

    def require_parts(self, kinds: Iterable[ArrayKind]) -> None:
        doctor.require(doctor.BUILD_PARTS)  # the kinds' modules are imported here already: they made them

    def run(self, jobs: list[ChunkJob]) -> Iterator[ChunkReport]:
        job_of = {self.pool.submit(build_chunk, job): job for job in jobs}
        for future in as_completed(job_of):
            yield _report(job_of[future], future)

    def cancel(self) -> None:
        # Tasks not started never start; a running one finishes its chunk before this returns, so no
        # thread of this process writes to the store after the build lets go of it.
        self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class OnDask(Executor):
    """A Dask cluster: the scheduler at `config.scheduler` (connected by `connect`), or a LocalCluster of
    `config.workers` single-threaded processes started on first use."""

    def __init__(self, config: BuildConfig, say):
        self.config, self.say = config, say
        self.client, self.cluster, self.futures = None, None, []

    def connect(self) -> OnDask:
        """Reach the remote scheduler now; BuildError within --connect-timeout when it cannot be reached."""
        from distributed import Client

        address, timeout_s = self.config.scheduler, self.config.connect_timeout_s
        try:
            _probe_scheduler(address, timeout_s)  # a closed port answers at once; Dask would retry until its timeout
        except (OSError, ValueError) as err:  # socket.timeout is an OSError
            raise BuildError(f"--scheduler {address}: cannot reach the Dask scheduler within {timeout_s:g} s "
                             f"({type(err).__name__}: {err}); is `dask scheduler` running there, and is the port "
                             "open?") from None
        except NotAScheduler as err:
            raise BuildError(f"--scheduler {address}: not a Dask scheduler ({err}); give the address `dask "
                             "scheduler` prints (tcp://HOST:8786)") from None
        try:
            self.client = Client(address, timeout=f"{timeout_s}s")
        except Exception as err:  # whatever Dask makes of an odd peer: one line, never its traceback
            raise BuildError(f"--scheduler {address}: connecting failed ({type(err).__name__}: {err})") from None
        _announce_dashboard(self.client, self.say)
        return self

    def start(self) -> None:
        if self.client is None:
            self._start_local_cluster()

    def _start_local_cluster(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        workers = self.config.workers or os.cpu_count() or 1
        # In-memory stores live in this process only, so their workers must be threads here.
        processes = not self.config.store_url.startswith("memory://")
        # The nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers by default, which sends every large
        # numpy/torch allocation through mmap: the build ran 3x slower with it (docs/performance.md).
        allocator = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
        # Ctrl-C held until the cluster is up, and never seen by its workers (building/interrupts.py): one line
        # from this driver, which then closes them, instead of a traceback from every process. The workers
        # inherit a blocked SIGINT from the threads that spawn them, so multiprocessing's resource tracker must
        # be running first: starting it, it blocks and then unblocks SIGINT in the thread that asked for it.
        self.say(f"starting a Dask cluster of {workers} worker {'processes' if processes else 'threads'}")
        if processes:
            multiprocessing.resource_tracker.ensure_running()
        with dask.config.set(allocator), interrupt_deferred(from_children=True):
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                        dashboard_address=_dashboard_address(), silence_logs=logging.CRITICAL)
            self.client = Client(self.cluster)
        _announce_dashboard(self.client, self.say)

    def require_parts(self, kinds: Iterable[ArrayKind]) -> None:
        """BrokenInstall unless every worker loads the compiled parts, and the workers and the scheduler
        (it unpickles the tasks too) import the kinds' modules (a plug-in must be importable there): a
        cluster may have another environment than this driver, which then imports none of the parts."""
        self.start()
        try:
            self.client.wait_for_workers(1, timeout=self.config.connect_timeout_s)
        except TimeoutError:
            raise BuildError(f"--scheduler {self.config.scheduler}: no Dask worker connected within "
                             f"{self.config.connect_timeout_s:g} s; start `dask worker` processes there") from None
        modules = sorted({type(kind).__module__ for kind in kinds})
        lines = [f"Dask scheduler: {line}" for line in self.client.run_on_scheduler(_broken_lines, modules, ())]
        broken = self.client.run(_broken_lines, modules, doctor.BUILD_PARTS)
        lines += [f"Dask worker {worker}: {line}" for worker, found in sorted(broken.items()) for line in found]
        if lines:
            raise doctor.BrokenInstall(lines)

    def run(self, jobs: list[ChunkJob]) -> Iterator[ChunkReport]:
        from distributed import as_completed as dask_completed

        self.start()
        self.futures = self.client.map(build_chunk, jobs, pure=False)
        job_of = {future.key: job for future, job in zip(self.futures, jobs)}
        for future in dask_completed(self.futures):
            yield _report(job_of[future.key], future)

    def cancel(self) -> None:
        if self.futures:
            self.client.cancel(self.futures, force=True)

    def close(self) -> None:
        with interrupt_deferred():  # a second Ctrl-C must not leave the workers half closed
            if self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()


class Executors:
    """`for_rows(rows)`: where a build computing `rows` rows runs its tasks (module docstring). Entered
    first in a build: a remote scheduler is reached then, or refused."""

    def __init__(self, config: BuildConfig, say):
        self.config, self.dask, self.here = config, OnDask(config, say), None

    def __enter__(self) -> Executors:
        if self.config.scheduler:
            self.dask.connect()
        return self

    def for_rows(self, rows: int) -> Executor:
        if not runs_here(self.config, rows):
            return self.dask
        if self.here is None:
            threads = (self.config.workers or os.cpu_count() or 1) if self.config.device is not None else 1
            self.here = InProcess(threads)
        return self.here

    def __exit__(self, *exc) -> bool:
        for executor in (self.here, self.dask):
            if executor is not None:
                executor.close()
        return False


def runs_here(config: BuildConfig, rows: int) -> bool:
    """Whether the chunk tasks run on threads of this process (a --device build, or a small one: no
    cluster is started) rather than on Dask workers."""
    in_process = config.in_process if config.in_process is not None else rows <= IN_PROCESS_ROWS
    return config.scheduler is None and (config.device is not None or in_process)


def _report(job: ChunkJob, future) -> ChunkReport:
    """The task's report; a task that raised (in a Dask worker, or a worker that died: KilledWorker) fails
    every row it was to compute with the first line of the reason. Its chunk stays not done: the next
    build computes it again."""
    try:
        return future.result()
    except Exception as err:
        text = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
        failures = tuple(Failure(row, job.planned(row).label_id, array.name, f"chunk {job.chunk} task crashed: {reason}")
                         for array in job.arrays for row in array.rows)
        return ChunkReport(job.chunk, {}, failures, {}, crashed=reason)


def _broken_lines(modules: list[str], parts) -> list[str]:
    """Where it runs (a Dask worker, the scheduler): one line per compiled part of `parts` that does not
    work and per kind's module that does not import."""
    import importlib

    lines = doctor.broken_lines(parts) if parts else []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:
            lines.append(f"cannot import {module}, which defines an array kind of this build "
                         f"({type(err).__name__}: {err}); install it there, or put it on the PYTHONPATH of "
                         "every Dask process")
    return lines


def _dashboard_address() -> str:
    """Dask's usual :8787 for the dashboard when bokeh can serve it and the port is free; else any free
    port (the scheduler serves its HTTP routes even without a dashboard): on a taken port Dask would say
    so in a warning, a second line on a quiet interruption, whenever two builds run at once."""
    import importlib.util
    import socket

    if importlib.util.find_spec("bokeh") is None:
        return ":0"
    with socket.socket() as probe:
        try:
            probe.bind(("", 8787))
        except OSError:
            return ":0"
    return ":8787"


def _announce_dashboard(client, say) -> None:
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        say("Dask dashboard: not available (pip install 'hms-cache[dashboard]' for it)")
    else:
        say(f"Dask dashboard: {client.dashboard_link}")


class NotAScheduler(Exception):
    """Something answers at the address, but not as a Dask scheduler does."""


# A Dask scheduler's first message on a connection (its handshake) is a few hundred bytes; anything that
# announces more is not one (an HTTP server's "HTTP/1.0 400" read as a length made Dask allocate 3.07 EiB).
HANDSHAKE_MAX_BYTES = 1 << 20


def _probe_scheduler(address: str, timeout_s: float) -> None:
    """At a tcp:// address, the start of a Dask conversation, within `timeout_s` in all: a scheduler
    sends its handshake as soon as a connection opens (distributed.comm.core), an 8-byte little-endian
    length and that many bytes. OSError when nothing listens (or no connection is made in time);
    NotAScheduler for any other answer, or none in time (an HTTP server waits for a request, and Dask would
    wait with it, for ever)."""
    import socket
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        return  # other transports (tls://, ucx://): Dask's own timeout
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as connection:

        def received(n: int) -> bytes:
            data = b""
            while len(data) < n:
                connection.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    more = connection.recv(n - len(data))
                except socket.timeout:  # it listens, but says nothing: an HTTP server awaits a request
                    raise NotAScheduler(f"it accepted the connection but sent no Dask handshake in "
                                        f"{timeout_s:g} s ({len(data)} bytes)") from None
                if not more:
                    raise NotAScheduler(f"it closed the connection after {len(data)} bytes")
                data += more
            return data

        size = int.from_bytes(received(8), "little")
        if not 0 < size <= HANDSHAKE_MAX_BYTES:
            raise NotAScheduler(f"its first 8 bytes announce a message of {size} bytes")
        received(size)
