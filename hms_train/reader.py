"""The store reader: select rows, stream shuffled batches of whole decoded chunks.

Chunk-aware shuffling: each epoch visits the chunks holding selected rows in a fresh random order,
decodes `buffer_chunks` of them ahead on a thread pool (Blosc and zstd release the GIL), and yields
batches drawn at random from the rows of the chunks in the buffer. Every selected row comes exactly
once per epoch, no chunk is decoded twice in an epoch, and the order is deterministic for
(seed, epoch).

Threads, not processes: Blosc decoding, file reads and large copies release the GIL, and zarr's event
loop thread does not survive a fork.

Where the time went (eeg_10s + eeg_30s + kaggle, 650 KB a row, batch 32, 2 shared cores, page-cached
store; samples/s and CPU us per sample, medians): concatenating decoded buffers and indexing them again
1,630 and 836; copying each row once, straight from its decoded chunk into the batch tensor (pinned when
asked), 2,740 and 485; fetching a chunk's bytes through the array's own store and decoding them with
numcodecs' Blosc (the codec its metadata names) instead of `array[...]`, 3,360 and 436; reusing the
decode buffers, 4,380 and 320. What is left is mostly Blosc itself (~40%), the kernel's copy of the
file (~20%) and the one copy into the batch (~10%). Any other codec or layout is read with `array[...]`.

The reader imports only the store's format definition from hms_prep, never its preprocessing math.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numcodecs
import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Endian, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from hms_prep.store import TARGET_COLUMNS, data_array_names, open_store, read_labels

RAW_WINDOW = 10_000  # 50 s at 200 Hz: the label window a 1D model sees


@dataclass
class Selection:
    """Which rows to use: folds to keep or drop, minimum total votes, and only rows built ok."""

    folds: Sequence[int] | None = None
    exclude_folds: Sequence[int] | None = None
    min_votes: int | None = None
    only_ok: bool = True


class ChunkDecoder:
    """Decodes whole row chunks of one (rows, ...) array: chunk c as one array whose row i is row
    c * chunk_rows + i (a last, partial chunk may come padded to chunk_rows; padding rows are never used).

    The fast path, for a zarr v3 array chunked by rows only whose codecs are little-endian bytes,
    optionally followed by Blosc: read the chunk's bytes through the array's own store (zarr's `sync`
    bridges to the store's async API, as `array[...]` does) and decode them with numcodecs' Blosc, the
    codec the metadata names, into a reusable buffer; raw bytes are used as read. That is what
    `array[...]` does, without its per-call machinery and its copy into a fresh output. Any other
    layout or codec is read with `array[...]`.
    """

    def __init__(self, array: zarr.Array, chunk_rows: int):
        self.array = array
        self.chunk_rows = chunk_rows
        self.chunk_shape = (chunk_rows, *array.shape[1:])
        self.path = _fast_path(array, self.chunk_shape)  # "blosc", "zstd", "bytes" or None (array[...])
        # numcodecs' decoders read their parameters from each chunk's frame header
        self.decoder = {"blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd}.get(self.path, lambda: None)()

    def __call__(self, chunk: int, spare: list[np.ndarray] | None = None) -> np.ndarray:
        """Chunk `chunk`; Blosc decodes into a buffer taken from `spare` when it has one."""
        if self.path is None:
            return self.array[chunk * self.chunk_rows : (chunk + 1) * self.chunk_rows]
        key = self.array.metadata.encode_chunk_key((chunk,) + (0,) * (self.array.ndim - 1))
        encoded = sync((self.array.store_path / key).get(prototype=default_buffer_prototype()))
        if encoded is None:  # never written: zarr reads it as the fill value
            return np.full(self.chunk_shape, self.array.fill_value, dtype=self.array.dtype)
        data = encoded.as_numpy_array()
        expected = int(np.prod(self.chunk_shape)) * self.array.dtype.itemsize
        if self.decoder is None:
            if len(data) != expected:
                raise ValueError(f"{self.array.path}: chunk {chunk} holds {len(data)} bytes, expected {expected}")
            return data.view(self.array.dtype).reshape(self.chunk_shape)
        if self.path == "blosc":  # Blosc's header records the decoded size in bytes 4-7
            size = int.from_bytes(data[4:8].tobytes(), "little")
            if size != expected:
                raise ValueError(f"{self.array.path}: chunk {chunk} decodes to {size} bytes, expected {expected}")
        out = _pop(spare) if spare is not None else None
        if out is None:
            out = np.empty(self.chunk_shape, dtype=self.array.dtype)
        self.decoder.decode(data, out=out)  # zstd checks the frame's content size against `out` itself
        return out

    @property
    def recycles(self) -> bool:
        """Whether chunks are decoded into buffers of ours that may be handed back through `spare`."""
        return self.decoder is not None


def _pop(spare: list[np.ndarray]) -> np.ndarray | None:
    try:  # not `if spare`: other decoding threads pop from the same list
        return spare.pop()
    except IndexError:
        return None


def _fast_path(array: zarr.Array, chunk_shape: tuple[int, ...]) -> str | None:
    """"bytes" when a stored chunk is the chunk's native little-endian bytes, "blosc" when it is those
    bytes through Blosc, None for anything else (other codecs, sharding, v2, chunks not whole rows)."""
    metadata = array.metadata
    if metadata.zarr_format != 3 or tuple(array.chunks) != chunk_shape or sys.byteorder != "little":
        return None
    codecs = list(metadata.codecs)
    plain = codecs and isinstance(codecs[0], BytesCodec) and (codecs[0].endian in (None, Endian.little))
    if not plain:
        return None
    if len(codecs) == 1:
        return "bytes"
    if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        return "blosc"
    if len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
        return "zstd"
    return None


@dataclass
class ChunkRows:
    """The selected rows of one decoded chunk: each input's value for row `first + l` is `values[name][l]`."""

    first: int  # the chunk's first row
    local: np.ndarray  # selected rows, relative to `first`
    values: dict[str, np.ndarray]


class StoreReader:
    def __init__(self, url: str, inputs: Sequence[str], threads: int = 4):
        self.url = url
        self.group, self.layout = open_store(url)
        self.labels = read_labels(url)
        present = data_array_names(self.group)
        missing = [name for name in inputs if name not in present]
        if missing:
            raise KeyError(f"{url}: no array {missing} in the store; it has {present}")
        self.inputs = tuple(inputs)
        self.arrays = {name: self.group[name] for name in self.inputs}
        self.decoders = {name: ChunkDecoder(array, self.layout.chunk_rows)
                         for name, array in self.arrays.items() if name != "raw"}
        self.threads = threads
        # Decode buffers of fully used chunks, reused for later chunks (this epoch's and the next's):
        # fresh multi-MB buffers cost page faults on every chunk. They keep what the read-ahead needs
        # at its peak, about 3 * buffer_chunks chunks of the inputs.
        self.spare_buffers = {name: [] for name, decoder in self.decoders.items() if decoder.recycles}
        self.n_rows = self.layout.n_rows
        self.targets = self._targets()
        self.votes = (self.labels.column("total_votes").to_numpy().astype(np.float32)
                      if "total_votes" in self.labels.column_names else np.zeros(self.n_rows, np.float32))
        if "raw" in self.inputs:
            self.raw_index = np.stack([self.labels.column(c).to_numpy() for c in ("raw_start", "raw_lo", "raw_hi")], 1)

    def column(self, name: str) -> np.ndarray:
        return self.labels.column(name).to_numpy(zero_copy_only=False)

    def select(self, selection: Selection = Selection()) -> np.ndarray:
        """Row indices (ascending) that satisfy the selection."""
        keep = np.ones(self.n_rows, dtype=bool)
        if selection.only_ok and "status" in self.labels.column_names:
            keep &= self.column("status") == "ok"
        if selection.folds is not None:
            keep &= np.isin(self.column("fold"), list(selection.folds))
        if selection.exclude_folds is not None:
            keep &= ~np.isin(self.column("fold"), list(selection.exclude_folds))
        if selection.min_votes is not None:
            keep &= self.votes >= selection.min_votes
        return np.flatnonzero(keep)

    def batches(
        self,
        rows: np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        buffer_chunks: int = 8,
        raw_jitter: int = 0,
        pin_memory: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches as dicts of CPU tensors: each input (float16), `targets`, `votes`, `row`.

        `raw_jitter` (samples) shifts each row's raw window by a random amount within +-raw_jitter,
        kept inside the recording's stored segment. `shard=(rank, world)` keeps every world-th chunk
        of the epoch's order, so data-parallel ranks read disjoint chunks. With `pin_memory` the batch
        tensors are allocated in pinned memory, ready for `to_device`'s asynchronous copy.
        """
        rng, order, by_chunk = self._chunk_order(rows, shuffle, seed, epoch)
        rank, world = shard
        order = order[rank::world]
        jitter = (seed, epoch, raw_jitter)
        results: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()

        def offer(item) -> bool:
            """Put `item` for the consumer unless it has gone away; False when it has."""
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for batch in self._produce(order, by_chunk, batch_size, shuffle, rng, drop_last,
                                           buffer_chunks, jitter, pin_memory):
                    if not offer(batch):
                        return
                offer(None)
            except BaseException as err:  # surfaced in the consumer, never swallowed
                offer(err)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            while (item := results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)

    def min_shard_rows(self, rows: np.ndarray, world: int) -> int:
        """Rows the smallest of `world` shards gets in any epoch, whatever the shuffle: each rank gets
        at least floor(chunks / world) chunks, so at least that many of the smallest chunks' rows."""
        _, order, by_chunk = self._chunk_order(rows, False, 0, 0)
        sizes = np.sort([len(by_chunk[int(c)]) for c in order])
        return int(sizes[: len(sizes) // world].sum()) if world > 1 else int(sizes.sum())

    def _chunk_order(self, rows, shuffle: bool, seed: int, epoch: int):
        rng = np.random.default_rng([seed, epoch])
        rows = np.asarray(rows, dtype=np.int64)
        chunks = rows // self.layout.chunk_rows
        order = np.unique(chunks)
        if shuffle:
            order = rng.permutation(order)
        return rng, order, {int(c): rows[chunks == c] for c in order}

    def _produce(self, order, by_chunk, batch_size, shuffle, rng, drop_last, buffer_chunks, jitter, pin_memory):
        """Decode chunks ahead on the pool; shuffle rows within groups of `buffer_chunks` chunks."""
        pool = ThreadPoolExecutor(self.threads)
        spare = self.spare_buffers
        try:
            upcoming = iter(order)
            futures: deque = deque()

            def submit_next():
                chunk = next(upcoming, None)
                if chunk is not None:
                    futures.append(pool.submit(self._read_chunk, int(chunk), by_chunk[int(chunk)], jitter, spare))

            for _ in range(2 * buffer_chunks):  # decode ahead while the consumer works
                submit_next()
            carry: list[tuple[ChunkRows, np.ndarray]] = []  # (chunk, local rows) not yet emitted
            while futures:
                parts = [part for part, _ in carry]
                picks = [local for _, local in carry]
                for _ in range(buffer_chunks):
                    if not futures:
                        break
                    part = futures.popleft().result()
                    parts.append(part)
                    picks.append(part.local)
                    submit_next()
                # The buffer's rows as (index into parts, local row) pairs, in one shuffled order.
                part_of = np.concatenate([np.full(len(p), i) for i, p in enumerate(picks)])
                local = np.concatenate(picks)
                n = len(local)
                take = rng.permutation(n) if shuffle else np.arange(n)
                # Emit whole batches; a partial tail waits to be mixed with the next chunks.
                emit = n if not futures else (n // batch_size) * batch_size
                for start in range(0, emit, batch_size):
                    idx = take[start : start + batch_size]
                    if len(idx) < batch_size and drop_last:
                        break
                    yield self._gather(parts, part_of[idx], local[idx], pin_memory)
                rest = take[emit:]
                carried = set(np.unique(part_of[rest]).tolist())
                carry = [(parts[i], local[rest[part_of[rest] == i]]) for i in sorted(carried)]
                for i, part in enumerate(parts):
                    if i not in carried:  # every row of it is in a batch already
                        for name, buffers in spare.items():
                            buffers.append(part.values[name])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_chunk(self, chunk: int, rows: np.ndarray, jitter: tuple[int, int, int],
                    spare: dict[str, list[np.ndarray]]) -> ChunkRows:
        """Decode one chunk of every input once; the selected rows are picked from it later."""
        first = chunk * self.layout.chunk_rows
        values = {name: decode(chunk, spare.get(name)) for name, decode in self.decoders.items()}
        if "raw" in self.arrays:
            values["raw"] = self._raw_windows(rows, jitter, chunk)
        return ChunkRows(first=first, local=rows - first, values=values)

    def _raw_windows(self, rows: np.ndarray, jitter: tuple[int, int, int], chunk: int) -> np.ndarray:
        """(chunk_rows, signals, 10000) windows for the chunk's selected rows, cut from one read of the
        chunk's raw region (the other rows' windows are left unset and never read)."""
        start, lo, hi = self.raw_index[rows].T
        seed, epoch, max_shift = jitter
        if max_shift:
            shift = np.random.default_rng([seed, epoch, chunk]).integers(-max_shift, max_shift + 1, len(rows))
            start = np.clip(start + shift, lo, hi - RAW_WINDOW)
        first, last = int(start.min()), int(start.max()) + RAW_WINDOW
        region = self.arrays["raw"][:, first:last]
        windows = np.empty((self.layout.chunk_rows, region.shape[0], RAW_WINDOW), dtype=region.dtype)
        for local, begin in zip(rows - chunk * self.layout.chunk_rows, start - first):
            windows[local] = region[:, begin : begin + RAW_WINDOW]
        return windows

    def _gather(self, parts: list[ChunkRows], part_of: np.ndarray, local: np.ndarray,
                pin_memory: bool) -> dict[str, torch.Tensor]:
        """One batch: each row copied once, from its decoded chunk into a fresh (pinned) tensor."""
        rows = np.array([parts[p].first for p in part_of], dtype=np.int64) + local
        batch = {}
        for name in self.inputs:
            sample = parts[part_of[0]].values[name]
            tensor = torch.empty((len(rows), *sample.shape[1:]), dtype=_torch_dtype(sample.dtype),
                                 pin_memory=pin_memory)
            out = tensor.numpy()
            for i, (p, l) in enumerate(zip(part_of, local)):
                out[i] = parts[p].values[name][l]
            batch[name] = tensor
        batch["targets"] = _tensor(self.targets[rows], pin_memory)
        batch["votes"] = _tensor(self.votes[rows], pin_memory)
        batch["row"] = _tensor(rows, pin_memory)
        return batch

    def _targets(self) -> np.ndarray:
        if TARGET_COLUMNS[0] not in self.labels.column_names:
            return np.full((self.n_rows, len(TARGET_COLUMNS)), 1 / len(TARGET_COLUMNS), dtype=np.float32)
        return np.stack([self.column(c) for c in TARGET_COLUMNS], 1).astype(np.float32)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _tensor(values: np.ndarray, pin_memory: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    return tensor.pin_memory() if pin_memory else tensor


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Asynchronous host-to-device copy (pinned host memory makes it truly asynchronous)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
