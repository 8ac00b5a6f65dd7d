"""Loaded by every process of a build under test (PYTHONPATH): numbers each file the build writes into
the store, globally across processes, and kills the whole process group right after the write numbered
HMS_KILL_AT appears, as a power cut at that instant would. Used by tests/test_reliability.py only."""

import os
import signal

if os.environ.get("HMS_KILL_LOG"):
    from pathlib import Path

    import fsspec.implementations.local
    import zarr.storage._local as local

    LOG, AT = Path(os.environ["HMS_KILL_LOG"]), int(os.environ.get("HMS_KILL_AT", "-1"))

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

    _put = local._put

    def put(path, value, exclusive=False):
        written = _put(path, value, exclusive)
        _written(path)
        return written

    local._put = put
    import hms_prep.codecs as codecs

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
