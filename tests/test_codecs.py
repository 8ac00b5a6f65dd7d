"""The build's own chunk writer (codecs.ChunkSink) writes what zarr writes, byte for byte."""

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, GzipCodec, ZstdCodec

from hms_prep.store.codecs import CODECS, ChunkSink, Codec, write_rows

SHAPE, CHUNKS = (13, 3, 40), (4, 3, 40)  # the last chunk holds one row: zarr pads it with the fill value


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "c").rglob("*")) if p.is_file()}


def _twins(tmp_path: Path, shape, chunks, dtype, compressors, fill_value=0):
    make = lambda name: zarr.create_array(str(tmp_path / name), shape=shape, chunks=chunks, dtype=dtype,  # noqa: E731
                                          fill_value=fill_value, compressors=compressors,
                                          config={"write_empty_chunks": True})  # as the build writes
    return make("by_zarr.zarr"), make("by_sink.zarr")


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_declared_codec_writes_the_bytes_zarr_writes(tmp_path, name):
    by_zarr, by_sink = _twins(tmp_path, SHAPE, CHUNKS, "float16", CODECS[name].write())
    values = np.random.default_rng(0).normal(size=SHAPE).astype(np.float16)
    values[4:8] = 0  # an all-fill chunk is stored too (as the build stores every chunk)
    assert ChunkSink.of(by_sink) is not None
    for start in range(0, SHAPE[0], CHUNKS[0]):
        by_zarr[start : start + CHUNKS[0]] = values[start : start + CHUNKS[0]]
        write_rows(by_sink, start, values[start : start + CHUNKS[0]])
    written = _chunk_files(tmp_path / "by_sink.zarr")
    assert len(written) == 4 and written == _chunk_files(tmp_path / "by_zarr.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "by_sink.zarr"))[:], values)
    assert not list((tmp_path / "by_sink.zarr").rglob("*.partial"))


@pytest.mark.parametrize("dtype, fill", [("uint8", 2), ("float32", 0.0)])
def test_build_state_arrays_are_written_as_zarr_writes_them(tmp_path, dtype, fill):
    """status, repaired and done (zstd level 0 and a checksum, hms_prep.store.build_state.create_build_state)."""
    by_zarr, by_sink = _twins(tmp_path, (10,), (4,), dtype, (ZstdCodec(level=0), Crc32cCodec()), fill)
    values = np.arange(10).astype(dtype)
    for start in (0, 4, 8):
        by_zarr[start : start + 4] = values[start : start + 4]
        write_rows(by_sink, start, values[start : start + 4])
    assert _chunk_files(tmp_path / "by_sink.zarr") == _chunk_files(tmp_path / "by_zarr.zarr")


def test_anything_but_one_whole_chunk_of_a_local_store_goes_through_zarr(tmp_path, monkeypatch):
    values = np.random.default_rng(1).normal(size=SHAPE).astype(np.float16)
    local = zarr.create_array(str(tmp_path / "a.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="float16",
                              compressors=CODECS["lz4"].write())
    write_rows(local, 2, values[2:9])  # not aligned with the chunks
    write_rows(local, 9, values[9:])
    np.testing.assert_array_equal(local[2:], values[2:])
    gzip = zarr.create_array(str(tmp_path / "g.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="float16",
                             compressors=GzipCodec(level=1))
    memory = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS, dtype="float16",
                               compressors=CODECS["lz4"].write())
    CODECS.register("gzip-read", Codec("gzip-read", "gzip", lambda: GzipCodec(level=1),
                                       lambda encoded, out: out))  # declared without an encoder
    try:
        for array in (gzip, memory):  # a codec we only read, a store that is not local files
            assert ChunkSink.of(array) is None
            write_rows(array, 0, values[:4])
            np.testing.assert_array_equal(array[:4], values[:4])
    finally:
        CODECS.unregister("gzip-read")


def test_read_whole_reads_what_zarr_reads_and_names_damaged_chunks(tmp_path):
    """Build-state arrays are read chunk file by chunk file (codecs.read_whole): never-written chunks are
    the fill value, a damaged one is named and read as the fill value too."""
    from hms_prep.store.codecs import read_whole

    array = zarr.create_array(str(tmp_path / "status.zarr"), shape=(10,), chunks=(4,), dtype="uint8", fill_value=0,
                              compressors=(ZstdCodec(level=0), Crc32cCodec()))
    array[:8] = np.arange(1, 9, dtype=np.uint8)  # chunk 2 (rows 8, 9) never written
    values, damaged = read_whole(array)
    np.testing.assert_array_equal(values, array[:])
    assert damaged == []
    chunk = tmp_path / "status.zarr" / "c" / "1"
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 1]))
    values, damaged = read_whole(array)
    assert damaged == [1] and values[4:8].tolist() == [0, 0, 0, 0] and values[:4].tolist() == [1, 2, 3, 4]
    assert read_whole(zarr.create_array(zarr.storage.MemoryStore(), shape=(4,), chunks=(2,), dtype="uint8")) is None
