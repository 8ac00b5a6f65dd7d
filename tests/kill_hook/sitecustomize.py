"""Loaded by every process of a build under test (PYTHONPATH, with HMS_KILL_LOG set when the process
starts): numbers each file the build writes into the store, globally across processes, in the folder
HMS_KILL_LOG names, and right after the write numbered
  HMS_KILL_AT         sends the whole process group HMS_KILL_SIGNAL (default KILL: as a power cut at that
                      instant would; INT: a Ctrl-C at exactly that moment);
  HMS_KILL_ON         the same, at the first write whose path contains this text (once per build): the
                      same moment whatever order the processes of a Dask build happen to write in;
  HMS_KILL_WORKER_AT  kills (SIGKILL) the Dask worker process that wrote it, once per build: the first
                      write at or after that number made in a worker (the nanny starts a new worker);
and, independently,
  HMS_FAIL_ON         raises OSError (EIO) from the first write whose path contains this text, once per
                      build, as a failing disk would: the task that made it crashes;
  HMS_PAUSE_ON        pauses the process that makes the first write whose path contains this text, right
                      after it, until it is killed (the file LOG.paused, holding its pid, says it is there):
                      a build caught holding its lock at a known moment;
  HMS_INTERRUPT_ON_SPAWN  sends the process group SIGINT from the first Dask worker process as it starts
                      (while the build's LocalCluster is starting up), once per build.
The settings are read at each write, not at start, so one process can serve several builds
(tests/kill_hook/zygote.py forks them with their own). Used by tests/test_reliability.py, tests/test_kill.py
and tests/test_install.py."""

import os
import signal
import sys

if os.environ.get("HMS_KILL_LOG"):
    from pathlib import Path

    import fsspec.implementations.local
    import zarr.storage._local as local

    def _in_worker() -> bool:
        try:
            from distributed import get_worker

            get_worker()
            return True
        except (ImportError, ValueError):
            return False

    def _once(name: str) -> bool:
        log = Path(os.environ["HMS_KILL_LOG"])
        try:
            os.close(os.open(log.parent / f"{log.name}.{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def _written(path) -> None:
        log = Path(os.environ["HMS_KILL_LOG"])
        if not log.is_dir():
            return  # a process serving builds (the zygote) between them
        at, worker_at = int(os.environ.get("HMS_KILL_AT", "-1")), int(os.environ.get("HMS_KILL_WORKER_AT", "-1"))
        fail_on, kill_on = os.environ.get("HMS_FAIL_ON"), os.environ.get("HMS_KILL_ON")
        index = 0
        while True:  # O_EXCL numbering: one global order over every process of the build
            try:
                fd = os.open(log / f"{index:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                index += 1
        os.write(fd, str(path).encode())
        os.close(fd)
        if index == at or (kill_on and kill_on in str(path) and _once("killed-on")):
            os.killpg(os.getpgid(0), getattr(signal, f"SIG{os.environ.get('HMS_KILL_SIGNAL', 'KILL')}"))
        pause_on = os.environ.get("HMS_PAUSE_ON")
        if pause_on and pause_on in str(path) and _once("paused-once"):
            marker = log.parent / f"{log.name}.paused"
            marker.with_suffix(".tmp").write_text(str(os.getpid()))
            os.replace(marker.with_suffix(".tmp"), marker)
            while True:
                import time

                time.sleep(3600)
        if 0 <= worker_at <= index and _in_worker() and _once("worker-killed"):
            os.kill(os.getpid(), signal.SIGKILL)
        if fail_on and fail_on in str(path) and _once("failed"):
            import errno

            raise OSError(errno.EIO, "Input/output error (HMS_FAIL_ON)", str(path))

    _put = local._put

    def put(path, value, exclusive=False):
        written = _put(path, value, exclusive)
        _written(path)
        return written

    local._put = put
    import hms_prep.store.codecs as codecs

    _sink_write = codecs.ChunkSink.write

    def sink_write(self, coords, values):  # whole chunks the build writes without zarr (codecs.ChunkSink)
        _sink_write(self, coords, values)
        _written(self.path(coords))

    codecs.ChunkSink.write = sink_write
    _mv = fsspec.implementations.local.LocalFileSystem.mv

    def mv(self, path1, path2, *args, **kwargs):
        _written(path1)  # labels.parquet.tmp complete, not yet renamed
        result = _mv(self, path1, path2, *args, **kwargs)
        _written(path2)
        return result

    fsspec.implementations.local.LocalFileSystem.mv = mv

    spawned = any("spawn_main" in arg for arg in getattr(sys, "orig_argv", ()))  # a Dask worker process
    if spawned and os.environ.get("HMS_INTERRUPT_ON_SPAWN") and _once("spawn-interrupted"):
        os.killpg(os.getpgid(0), signal.SIGINT)
