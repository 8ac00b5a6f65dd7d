"""The store reader: select rows, stream shuffled batches of whole decoded chunks.

Three layers, each its own module, joined here:
  sampler.py   which rows, in which order, for which rank: a pure plan of an epoch (`ChunkSampler`)
  chunks.py    one chunk of every input decoded, through the store's declared codecs (`ChunkReader`)
  assembly.py  a batch: each row copied once from its decoded chunk into the batch tensor
`batches` walks the plan: it decodes the plan's chunks ahead on a thread pool (in reading order),
assembles each batch once its chunks are in, and hands a chunk's decode buffers back for reuse after
the last batch that needs it; all of that on a background thread (prefetch.py).

Where the time went (eeg_10s + eeg_30s + kaggle, 650 KB a row, batch 32, 2 shared cores, page-cached
store; samples/s and CPU us per sample, medians): concatenating decoded buffers and indexing them again
1,630 and 836; copying each row once, straight from its decoded chunk into the batch tensor (pinned when
asked), 2,740 and 485; fetching a chunk's bytes and decoding them with the codec its metadata names
instead of `array[...]`, 3,360 and 436; reusing the decode buffers, 4,380 and 320. What is left is
mostly Blosc itself (~40%), the kernel's copy of the file (~20%) and the one copy into the batch (~10%).

The reader imports only the store's format definition from hms_prep, never its preprocessing math.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from hms_prep.domain import TARGET_COLUMNS
from hms_prep.store.arrays import data_array_names, describe_arrays
from hms_prep.store.build_state import require_finished
from hms_prep.store.labels import RAW_INDEX_COLUMNS, live_rows, read_labels
from hms_prep.store.layout import StoreError, open_store
from hms_train.data.assembly import BatchAssembler, to_device  # noqa: F401 (part of the reader's API)
from hms_train.data.chunks import RAW_WINDOW, ChunkDecoder, ChunkReader, DecodedChunk, RawWindows  # noqa: F401
from hms_train.data.prefetch import in_background
from hms_train.data.sampler import ChunkSampler, EpochPlan, SamplerState, rows_per_rank


@dataclass
class Selection:
    """Which rows to use: folds to keep or drop, minimum total votes, and only rows built ok."""

    folds: Sequence[int] | None = None
    exclude_folds: Sequence[int] | None = None
    min_votes: int | None = None
    only_ok: bool = True


class StoreReader:
    def __init__(self, url: str, inputs: Sequence[str], threads: int = 4):
        self.url = url
        self.group, self.layout = open_store(url)
        self.labels = read_labels(url)
        present = data_array_names(self.group)
        missing = [name for name in inputs if name not in present]
        if missing:
            raise StoreError(f"inputs: {missing} not in {url}; it has {present}")
        require_finished(url, self.group, inputs)  # unwritten chunks read as zeros: never train on them
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.inputs = tuple(inputs)
        self.arrays = {name: self.group[name] for name in self.inputs}
        described = describe_arrays(self.group)
        self.descriptions = {name: described[name] for name in self.inputs}  # storage, role, normalisation, shape
        self.threads = threads
        self.n_rows = self.layout.n_rows
        self.live = live_rows(self.labels)  # rows still in the CSV: the only ones ever selected
        self.targets = self._targets()
        self.votes = (self.labels.column("total_votes").to_numpy().astype(np.float32)
                      if "total_votes" in self.labels.column_names else np.zeros(self.n_rows, np.float32))
        chunk_rows = self.layout.chunk_rows
        decoders, signals = {}, {}
        for name, array in self.arrays.items():
            if not self.descriptions[name].per_row:  # stored per segment: windows cut per row
                index = np.stack([self.column(c) for c in RAW_INDEX_COLUMNS], 1)
                signals[name] = RawWindows(array, index, chunk_rows, url)
            else:
                decoders[name] = ChunkDecoder(array, chunk_rows, url)
        self.read_chunk = ChunkReader(decoders, signals, chunk_rows)

    def column(self, name: str) -> np.ndarray:
        return self.labels.column(name).to_numpy(zero_copy_only=False)

    def usable(self) -> np.ndarray:
        """(n_rows,) bool: rows whose labels and every array this reader reads were built ok. Stores
        without per-array statuses (older builds) have only the overall one."""
        columns = self.labels.column_names
        per_array = [f"status_{name}" for name in self.inputs]
        if "status_labels" in columns and all(column in columns for column in per_array):
            return np.logical_and.reduce([self.column(c) == "ok" for c in ("status_labels", *per_array)])
        if "status" in columns:
            return self.column("status") == "ok"
        return np.ones(self.n_rows, dtype=bool)

    def select(self, selection: Selection = Selection()) -> np.ndarray:
        """Row indices (ascending) that satisfy the selection; never a dropped row (one whose label_id
        has left the CSV: hms_prep/building/placement.py)."""
        keep = self.live.copy()
        if selection.only_ok:
            keep &= self.usable()
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
        state: SamplerState = SamplerState(),
        shuffle: bool = True,
        drop_last: bool = False,
        buffer_chunks: int = 8,
        raw_jitter: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches as dicts of CPU tensors: each input (float16) and `row` (int64, the store rows; a run's
        targets and votes are its plan's, looked up by row: hms_train/run/step.py `RowLabels`).

        Every row comes once per epoch, in an order fixed by the `state`'s seed, fold, stage and epoch
        (sampler.py). Each data-parallel rank (`state.rank` of `state.world`) gets an equal share of the
        epoch's rows, `min_shard_rows(rows, world)` of them: disjoint pieces that together hold every row,
        a short piece repeating one of its rows. `state.batch` resumes the epoch after that many batches.
        `raw_jitter` (samples) shifts each row's raw window by a random amount within +-raw_jitter,
        kept inside the recording's stored segment. With `pin_memory` the batch tensors are allocated
        in pinned memory, ready for `to_device`'s asynchronous copy.
        """
        self._check_rows(rows)
        sampler = ChunkSampler(self.layout.chunk_rows, batch_size, shuffle, drop_last, buffer_chunks)
        plan = sampler.plan(rows, state)
        assemble = BatchAssembler(self.inputs, self.layout.chunk_rows, pin_memory)
        return in_background(lambda: self._produce(plan, assemble, 2 * buffer_chunks, raw_jitter))

    def min_shard_rows(self, rows: np.ndarray, world: int) -> int:
        """Rows every one of `world` data-parallel ranks yields per epoch (the same on every rank, in
        every epoch): ceil(len(rows) / world)."""
        return rows_per_rank(len(rows), world)

    def _check_rows(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 1 or (len(rows) and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"rows must be a 1-D array of row indices, got shape {rows.shape} of {rows.dtype}")
        outside = rows[(rows < 0) | (rows >= self.n_rows)]
        if len(outside):
            raise IndexError(f"{self.url}: row {int(outside[0])} is outside the store's rows 0..{self.n_rows - 1}")

    def _produce(self, plan: EpochPlan, assemble: BatchAssembler, ahead: int, raw_jitter: int):
        """The plan's batches, its chunks decoded `ahead` chunks ahead on the pool."""
        pool = ThreadPoolExecutor(self.threads)
        key = plan.state.plan_key  # the raw windows' jitter: a function of the epoch's identity
        try:
            upcoming = iter(plan.visits)
            reading: deque = deque()  # (chunk, future), in the plan's reading order

            def read_next():
                visit = next(upcoming, None)
                if visit is not None:
                    future = pool.submit(self.read_chunk, visit.chunk, visit.rows, raw_jitter, key)
                    reading.append((visit.chunk, future))

            for _ in range(ahead):
                read_next()
            decoded: dict[int, DecodedChunk] = {}
            for rows, finished in zip(plan.batches, plan.finished):
                for chunk in np.unique(rows // self.layout.chunk_rows).tolist():
                    while chunk not in decoded:  # the chunks before it in reading order come in first
                        done, future = reading.popleft()
                        decoded[done] = future.result()
                        read_next()
                batch = assemble(rows, decoded)
                for chunk in finished:  # no later batch needs it
                    self.read_chunk.recycle(decoded.pop(chunk))
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _targets(self) -> np.ndarray:
        if TARGET_COLUMNS[0] not in self.labels.column_names:
            return np.full((self.n_rows, len(TARGET_COLUMNS)), 1 / len(TARGET_COLUMNS), dtype=np.float32)
        return np.stack([self.column(c) for c in TARGET_COLUMNS], 1).astype(np.float32)
