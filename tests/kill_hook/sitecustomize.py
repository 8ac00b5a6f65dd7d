"""Loaded by every process of a build under test (PYTHONPATH): numbers each file the build writes into
the store, globally across processes, and right after the write numbered
  HMS_KILL_AT         kills the whole process group, as a power cut at that instant would;
  HMS_KILL_WORKER_AT  kills (SIGKILL) the Dask worker process that wrote it, once per build: the first
                      write at or after that number made in a worker (the nanny starts a new worker);
and, independently,
  HMS_FAIL_ON         raises OSError (EIO) from the first write whose path contains this text, once per
                      build, as a failing disk would: the task that made it crashes.
Used by tests/test_reliability.py and tests/test_install.py."""

import os
import signal

if os.environ.get("HMS_KILL_LOG"):
    from pathlib import Path

    import fsspec.implementations.local
    import zarr.storage._local as local

    LOG, AT = Path(os.environ["HMS_KILL_LOG"]), int(os.environ.get("HMS_KILL_AT", "-1"))
    WORKER_AT, FAIL_ON = int(os.environ.get("HMS_KILL_WORKER_AT", "-1")), os.environ.get("HMS_FAIL_ON")

    def _in_worker() -> bool:
        try:
            from distributed import get_worker

            get_worker()
            return True
        except (ImportError, ValueError):
            return False

    def _once(name: str) -> bool:
        try:
            os.close(os.open(LOG.parent / f"{LOG.name}.{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def _written(path) -> None:
        index = 0
        while True:  # O_EXCL numbering: one global order over every process of the build
            try:
                fd = os.open(LOG / f"{index:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                index += 1
        os.write(fd, str(path).encode())
        os.close(fd)
        if index == AT:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        if 0 <= WORKER_AT <= index and _in_worker() and _once("worker-killed"):
            os.kill(os.getpid(), signal.SIGKILL)
        if FAIL_ON and FAIL_ON in str(path) and _once("failed"):
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
