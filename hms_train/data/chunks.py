"""Decoding the store's chunks: one chunk of every input at a time, as the sampler's plan asks.

The fast path reads a chunk through fsspec and decodes it with the codec the array's metadata names,
as declared once in hms_prep/store/codecs.py (`codec_of`, `ChunkSource.read`; an uncompressed chunk of a local
store is read straight into the buffer), into a decode buffer reused from chunks already consumed: what
`array[...]` does, without its per-call machinery and its copy into a fresh output (3,360 -> 4,380
samples/s for the buffer reuse alone, docs/performance.md). Arrays the declaration does not cover (another codec chain, sharding, zarr v2,
chunks that are not whole rows) are read with `array[...]`.

A chunk that cannot be decoded (truncated, overwritten, deleted) raises `ChunkError` naming the array, the
chunk, the rows it holds and its file; the codecs check the checksum and the frame sizes first, so damaged
bytes never reach the decompressor. Signals arrays (the raw signals) are read the same way, chunk by chunk
of their segments, never through `array[...]`, which reads a deleted chunk as zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import zarr

from hms_prep.store.codecs import ChunkError  # noqa: F401 (part of this API)
from hms_prep.store.codecs import ChunkSource, codec_of, read_checked_chunk, read_region, read_with_zarr
from hms_prep.domain import LABEL_SAMPLES

RAW_WINDOW = LABEL_SAMPLES  # 50 s at 200 Hz: the label window a 1D model sees


@dataclass(frozen=True, eq=False)
class DecodedChunk:
    """Every input's values for the rows of chunk `chunk`: input `name`'s value for row `first + l` is
    `values[name][l]` (rows the visit did not ask for may hold anything)."""

    chunk: int
    first: int
    values: dict[str, np.ndarray]


class ChunkDecoder:
    """Decodes whole row chunks of one (rows, ...) array: chunk c as one array whose row i is row
    c * chunk_rows + i (a last, partial chunk comes padded to chunk_rows; padding rows are never used)."""

    def __init__(self, array: zarr.Array, chunk_rows: int, store_url: str):
        self.array = array
        self.chunk_shape = (chunk_rows, *array.shape[1:])
        whole_rows = tuple(array.chunks) == self.chunk_shape
        self.codec = codec_of(array) if whole_rows else None  # None: read with array[...]
        self.source = ChunkSource(store_url, array) if self.codec is not None else None
        if self.source is not None and not self.source.fs.exists(self.source.prefix + "zarr.json"):
            # a URL fsspec resolves elsewhere than zarr does would read every chunk as "never written"
            self.codec = self.source = None
        self.location = "/".join(part for part in (store_url.rstrip("/"), array.path) if part)
        self.name = array.path or self.location  # a store's arrays have a path; a lone array is its store

    @property
    def recycles(self) -> bool:
        """Whether chunks are decoded into buffers of ours that may be handed back through `spare`."""
        return self.codec is not None

    def __call__(self, chunk: int, spare: list[np.ndarray] | None = None) -> np.ndarray:
        """Chunk `chunk`, decoded into a buffer taken from `spare` when it has one."""
        rows = self.chunk_shape[0]
        if self.codec is None:
            return read_with_zarr(self.array, (slice(chunk * rows, (chunk + 1) * rows),), self.name,
                                  f"chunk {chunk} (rows {chunk * rows}-{(chunk + 1) * rows - 1})", self.location)
        coords = (chunk,) + (0,) * (self.array.ndim - 1)
        out = _pop(spare) if spare is not None else None
        if out is None:
            out = np.empty(self.chunk_shape, dtype=self.array.dtype)
        first = chunk * rows
        decoded = read_checked_chunk(self.source, self.codec, coords, out, self.name, chunk,
                             f"rows {first}-{min(first + rows, self.array.shape[0]) - 1}", self.location)
        if decoded is None:  # never written: zarr reads it as the fill value
            if spare is not None:
                spare.append(out)
            return np.full(self.chunk_shape, self.array.fill_value, dtype=self.array.dtype)
        return decoded


def _span(rows: np.ndarray) -> str:
    return f"{int(rows.min())}-{int(rows.max())}" if len(rows) else "none"


def _pop(spare: list[np.ndarray]) -> np.ndarray | None:
    try:  # not `if spare`: other decoding threads pop from the same list
        return spare.pop()
    except IndexError:
        return None


class RawWindows:
    """Label windows of a signals array (the raw bipolar signals), cut from one read of a chunk's stored
    segment: its chunks decoded through the declared codecs and checked (checksum, presence) like the
    image arrays', or through zarr for other codec chains.

    `index` holds each row's (raw_start, raw_lo, raw_hi): its window's start and the bounds of its
    recording's stored segment, which a jittered window never leaves."""

    def __init__(self, array: zarr.Array, index: np.ndarray, chunk_rows: int, store_url: str):
        self.array = array
        self.index = index
        self.chunk_rows = chunk_rows
        self.store_url = store_url

    def __call__(self, chunk: int, rows: np.ndarray, max_shift: int, key: tuple[int, int]) -> np.ndarray:
        """(chunk_rows, signals, RAW_WINDOW) windows for the chunk's `rows`, each shifted by a random
        amount within +-max_shift drawn from `key` and the chunk (the other rows' windows are unset)."""
        start, lo, hi = self.index[rows].T
        if max_shift:
            shift = np.random.default_rng([*key, chunk]).integers(-max_shift, max_shift + 1, len(rows))
            start = np.clip(start + shift, lo, hi - RAW_WINDOW)
        first, last = int(start.min()), int(start.max()) + RAW_WINDOW
        region = self._region(first, last, rows, start)
        windows = np.empty((self.chunk_rows, region.shape[0], RAW_WINDOW), dtype=region.dtype)
        for local, begin in zip(rows - chunk * self.chunk_rows, start - first):
            windows[local] = region[:, begin : begin + RAW_WINDOW]
        return windows

    def _region(self, first: int, last: int, rows: np.ndarray, start: np.ndarray) -> np.ndarray:
        """array[:, first:last], checked chunk by chunk; `rows` and their windows' `start`s name the rows
        a damaged chunk holds."""
        step = self.array.chunks[1]

        def held(coords) -> str:
            j = coords[1]
            return f"rows {_span(rows[(start < (j + 1) * step) & (start + RAW_WINDOW > j * step)])}"

        return read_region(self.store_url, self.array, (slice(None), slice(first, last)), held)


class ChunkReader:
    """Decodes one chunk of every input; decode buffers of consumed chunks come back through `recycle`.

    The spare buffers outlive an epoch (fresh multi-MB buffers cost page faults on every chunk) and
    keep what the read-ahead needs at its peak, about 3 * buffer_chunks chunks of the inputs."""

    def __init__(self, decoders: Mapping[str, ChunkDecoder], signals: Mapping[str, RawWindows], chunk_rows: int):
        self.decoders = dict(decoders)
        self.chunk_rows = chunk_rows
        self.signals = dict(signals)
        self.spare = {name: [] for name, decoder in self.decoders.items() if decoder.recycles}

    def __call__(self, chunk: int, rows: np.ndarray, max_shift: int = 0,
                 key: tuple[int, int] = (0, 0)) -> DecodedChunk:
        """Chunk `chunk` of every image input; the signal windows of `rows` (jittered by `max_shift`, from
        `key`) of every signals input."""
        values = {name: decode(chunk, self.spare.get(name)) for name, decode in self.decoders.items()}
        for name, windows in self.signals.items():
            values[name] = windows(chunk, rows, max_shift, key)
        return DecodedChunk(chunk, chunk * self.chunk_rows, values)

    def recycle(self, decoded: DecodedChunk) -> None:
        """Hand `decoded`'s buffers back for later chunks; nothing may read them afterwards."""
        for name, buffers in self.spare.items():
            buffers.append(decoded.values[name])
