"""What a build computes, read from the store and the data folder; nothing here writes.

Per requested array: created (missing, or an unfinished creation to redo) or checked against the params
its name stands for; per chunk, the rows to compute: every row of a chunk whose done flag is unset or
whose build state (or, with --repair, stored data) is damaged; failed rows of a done chunk when a file
they are cut from changed since the build that failed them (or with --retry-failed). Plus the raw
segment layout that every array stored in segments shares.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from hms_prep.building.config import BuildConfig
from hms_prep.building.task import UNEXPECTED, ArrayJob, ChunkJob
from hms_prep.kinds import ArrayKind
from hms_prep.sources.recordings import source_path
from hms_prep.sources.rows import RawSegment, planned_rows
from hms_prep.store.arrays import STORAGE_SEGMENT, array_complete, describe_arrays
from hms_prep.store.build_state import (STATUS_FAILED, STATUS_PENDING, damaged_state_chunks, failures_tried_at,
                                        open_build_state, read_errors, read_state)
from hms_prep.store.layout import StoreError, StoreLayout
from hms_prep.store.lock import is_local

if TYPE_CHECKING:
    from hms_prep.building.placement import RowPlan


@dataclass(frozen=True)
class BuildPlan:
    """The arrays to create and, per array and chunk, the rows to compute."""

    kinds: dict[str, ArrayKind]  # every requested array, by name
    create: tuple[str, ...]  # arrays to create before computing (missing, or an unfinished creation)
    pending: dict[str, dict[int, ArrayJob]]  # array -> chunk -> its rows of that chunk to compute
    margin: int | None  # margin_s of the store's raw segment layout; None: no array is stored in segments
    segments: list[list[RawSegment]]  # per chunk of rows, the raw segments it writes
    raw_index: np.ndarray  # per row: raw_start, raw_lo, raw_hi
    raw_length: int  # samples along axis 1 of an array stored in segments
    # status and repaired fraction per row of each array this build does not write to, as planning read
    # them: labels.parquet is made from them (record.py) instead of reading the build state again (at the
    # real data's size each read is 3,338 chunk files, docs/performance.md)
    unchanged_state: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def computed(self) -> list[str]:
        return [name for name in self.kinds if self.pending[name]]

    @property
    def reused(self) -> list[str]:
        return [name for name in self.kinds if not self.pending[name]]

    @property
    def rows_to_compute(self) -> int:
        """Rows of the chunks to compute, each chunk counted by its array with the most pending rows."""
        chunks = {chunk for jobs in self.pending.values() for chunk in jobs}
        return sum(max(len(jobs[chunk].rows) for jobs in self.pending.values() if chunk in jobs) for chunk in chunks)

    @property
    def raw_columns(self) -> np.ndarray | None:
        """labels.parquet's raw index columns, when the store has an array stored in segments."""
        return self.raw_index if self.margin is not None else None

    def chunk_jobs(self, config: BuildConfig, planned: pa.Table, layout: StoreLayout) -> list[ChunkJob]:
        """One task per chunk with anything to compute, in chunk order."""
        chunks = sorted({chunk for jobs in self.pending.values() for chunk in jobs})
        return [ChunkJob(store_url=config.store_url, data_dir=config.data_url, split=config.split, chunk=chunk,
                         rows=planned_rows(planned, layout.chunk_slice(chunk)),
                         raw_segments=tuple(self.segments[chunk]),
                         arrays=tuple(jobs[chunk] for jobs in self.pending.values() if chunk in jobs),
                         device=config.device or "cpu")
                for chunk in chunks]


def plan_build(config: BuildConfig, group, layout: StoreLayout, requested: dict[str, ArrayKind],
               rows: RowPlan, say) -> BuildPlan:
    """The plan for `requested` on the opened store, its rows placed (`rows`, whose placing checked the
    params). `say` gets a line per array whose chunks are found damaged."""
    url, planned = config.store_url, rows.planned
    damaged = damaged_data_chunks(url, group, layout, rows.raw_index) if config.repair else {}
    create = tuple(name for name in requested if not array_complete(group, name))
    pending, state_read = {}, {}
    for name, kind in requested.items():
        if name in create:
            jobs = {chunk: _whole(layout, chunk) for chunk in range(layout.n_chunks)}
        else:
            retry = changed_rows(config, planned, kind, failures_tried_at(group, name))
            jobs = pending_rows(group, name, layout, damaged.get(name, set()), say, retry, state_read)
        pending[name] = {chunk: ArrayJob(kind, chunk_rows, whole) for chunk, (chunk_rows, whole) in jobs.items()}
    unchanged = {name: values for name, values in state_read.items() if not pending[name]}
    return BuildPlan(dict(requested), create, pending, rows.margin, rows.segments, rows.raw_index, rows.raw_length,
                     unchanged)


def _whole(layout: StoreLayout, chunk: int) -> tuple[tuple[int, ...], bool]:
    rows = layout.chunk_slice(chunk)
    return tuple(range(rows.start, rows.stop)), True


def check_params(url: str, group, requested: dict[str, ArrayKind]) -> None:
    """`check_same_params` for every asked array the store holds whole."""
    for name, kind in requested.items():
        if array_complete(group, name):
            check_same_params(url, group[name], kind)


def check_same_params(url: str, array, kind: ArrayKind) -> None:
    """Refuse to add to an array whose recorded params differ from the ones its name stands for
    (only a hand-edited store can have that: names follow from params)."""
    name, have = kind.name, array.attrs.asdict()
    if have.get("params_digest") == kind.digest:
        return
    old, new = have.get("params", {}), kind.params.to_dict()
    diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
    raise StoreError(
        f"{url}: array {name} exists with other parameters ({changes}); its values are never mixed. "
        f"Build into another --store, or delete {name} and _build/{name} from this store to replace it"
    )


def segment_margin(url: str, described: dict, requested: dict[str, ArrayKind]) -> int | None:
    """The margin_s of the store's raw segment layout (None: no array is stored in segments), given its
    arrays (`describe_arrays`). Every raw array of a store shares one layout, so their margins must agree."""
    margins = {name: d.params.get("margin_s") for name, d in described.items() if not d.per_row}
    margins.update({name: k.params.margin_s for name, k in requested.items() if k.storage == STORAGE_SEGMENT})
    if len(set(margins.values())) > 1:
        listed = ", ".join(f"{name} margin_s={m}" for name, m in margins.items())
        raise StoreError(f"{url}: raw arrays of one store share one segment layout, so one margin_s ({listed}); "
                         "build the other margin into another --store")
    return next(iter(margins.values()), None)


def changed_rows(config: BuildConfig, planned: pa.Table, kind: ArrayKind, tried_at: float | None):
    """A filter of failed rows, given their recorded reasons: those to compute again. A failure of the data
    whose file of the kind's source is unchanged since the build that failed it started (its inode change
    time, which copying, editing or restoring a file sets and no tool sets back) would only repeat; a file
    still missing likewise. An unexpected error (not the data's) is always retried, and every failed row is
    with --retry-failed, for arrays built before the time was recorded, and when the data folder is not
    local files (no change times to trust)."""
    if config.retry_failed or tried_at is None or not is_local(config.data_dir):
        return lambda rows, reasons: rows

    def changed(row: int) -> bool:
        path = source_path(kind.source, config.data_dir, config.split, planned_rows(planned, slice(row, row + 1))[0])
        try:
            return os.stat(path).st_ctime >= tried_at
        except FileNotFoundError:
            return False

    return lambda rows, reasons: [row for row in rows if UNEXPECTED in reasons[row] or changed(row)]


def pending_rows(group, name: str, layout: StoreLayout, damaged: set[int], say,
                 retry=lambda rows, reasons: rows, state_read: dict | None = None
                 ) -> dict[int, tuple[tuple[int, ...], bool]]:
    """chunk -> (rows to compute, whether that is the whole chunk). A chunk is recomputed whole when its
    done flag is unset, or its build state or (with --repair) its data is damaged. Of a done chunk, the
    rows not computed (a changed or new row of train.csv: hms_prep/building/placement.py) are computed alone, and
    its failed rows again when `retry` (a filter of row numbers, given every row's failure reason) keeps
    them. `state_read[name]` gets the (status, repaired) read here."""
    state = open_build_state(group, name)
    done, bad_done = read_state(state.done)
    status, bad_status = read_state(state.status)
    repaired, bad_repaired = read_state(state.repaired)  # read whole: labels.parquet needs it (BuildPlan)
    bad_error = damaged_state_chunks(state.error)
    if state_read is not None:
        state_read[name] = (status, repaired)
    for what, chunks in (("done flag", bad_done), ("status", bad_status), ("error", bad_error),
                         ("repaired fraction", bad_repaired), ("data", sorted(damaged))):
        if chunks:
            say(f"{name}: {what} of chunks {', '.join(map(str, chunks))} damaged; recomputing them")
    redo = set(bad_done) | set(bad_status) | set(bad_error) | set(bad_repaired) | damaged
    reasons = read_errors(state, np.flatnonzero(status == STATUS_FAILED))
    # whole arrays at once, not chunk by chunk: the real data has 3,338 chunks, and few have anything to do
    whole = {*np.flatnonzero(done[: layout.n_chunks] == 0).tolist(), *(c for c in redo if c < layout.n_chunks),
             *range(len(done), layout.n_chunks)}  # a chunk without a flag is not done
    pending = {chunk: _whole(layout, chunk) for chunk in whole}
    step = layout.chunk_rows
    failed = [row for row in np.flatnonzero(status == STATUS_FAILED).tolist() if row // step not in whole]
    alone = {*retry(failed, reasons),
             *(row for row in np.flatnonzero(status == STATUS_PENDING).tolist() if row // step not in whole)}
    for chunk, rows in itertools.groupby(sorted(alone), key=lambda row: row // step):
        rows, span = tuple(rows), layout.chunk_slice(chunk)
        pending[chunk] = (rows, len(rows) == span.stop - span.start)
    return dict(sorted(pending.items()))


def damaged_data_chunks(url: str, group, layout: StoreLayout, raw_index: np.ndarray) -> dict[str, set[int]]:
    """Row chunks of each array whose stored data fails its checksum or is missing (--repair)."""
    from hms_prep.store.audit import damaged_chunks

    bounds = raw_index[:, 1:3]  # raw_lo, raw_hi: which rows a chunk of a segment-stored array holds
    return {name: {c for d in damaged_chunks(url, group, name, layout, None if a.per_row else bounds)
                   for c in d.row_chunks}
            for name, a in describe_arrays(group).items()}
