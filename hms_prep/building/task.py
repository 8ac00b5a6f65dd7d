"""One Dask task: compute the pending arrays of one chunk of rows and write them to the store.

The task owns its chunk of every array (and its aligned region of the raw arrays), so it writes without
locks. It opens each file its rows need once (hms_prep/sources/recordings.py) and hands it to every array kind of
that file's source; each kind returns its `Cut`, and batched work runs once per chunk (`finish`).
Order matters for resumability: data first, then per-row status and errors, then the chunk's done
flag. A chunk whose flag is not set is recomputed whole on the next build.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import zarr

from hms_prep.store.codecs import write_rows
from hms_prep.sources.kaggle import KaggleDataError
from hms_prep.kinds import ArrayKind, Cut
from hms_prep.kinds.base import SOURCES
from hms_prep.sources.rows import PlannedRow, RawSegment
from hms_prep.sources.recordings import RecordingSpan, open_file, spans
from hms_prep.store.arrays import STORAGE_SEGMENT
from hms_prep.store.build_state import STATUS_FAILED, STATUS_OK, open_build_state


@dataclass(frozen=True)
class ArrayJob:
    """Rows of one array to compute in this chunk; `whole` means every row of the chunk."""

    kind: ArrayKind
    rows: tuple[int, ...]
    whole: bool

    @property
    def name(self) -> str:
        return self.kind.name


@dataclass(frozen=True)
class ChunkJob:
    store_url: str
    data_dir: str
    split: str
    chunk: int
    rows: tuple[PlannedRow, ...]  # every row of the chunk, in order
    raw_segments: tuple[RawSegment, ...]
    arrays: tuple[ArrayJob, ...]
    device: str = "cpu"  # where the kinds' batched torch work runs ("cuda", "cuda:1", ...)

    def planned(self, row: int) -> PlannedRow:
        return self.rows[row - self.rows[0].row]


@dataclass(frozen=True, order=True)
class Failure:
    """One array that could not be computed for one row, and why."""

    row: int
    label_id: int
    array: str
    reason: str


@dataclass(frozen=True)
class ChunkReport:
    chunk: int
    rows_computed: dict[str, int]
    failures: tuple[Failure, ...]
    seconds: dict[str, float]  # by build stage
    crashed: str | None = None  # the task raised (first line of why): nothing of its chunk was marked done


class StageTimer:
    """Seconds spent per stage of the task ("read", "montage", a kind's stage, "write")."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


# Marks a row's failure that is not the data's (a transient read error, a bug): every build retries it,
# where a failure of the data waits for its file to change (hms_prep/building/plan.py).
UNEXPECTED = "unexpected error"


def build_chunk(job: ChunkJob) -> ChunkReport:
    import torch  # 2 s of imports: in the tasks, not in the driver of a build with nothing to do

    torch.set_num_threads(1)  # one thread per Dask worker process: processes give the parallelism
    timer = StageTimer()
    cuts: dict[str, Cut] = {}
    for source in SOURCES:
        arrays = [a for a in job.arrays if a.kind.source == source]
        if arrays:
            cuts.update(_source_cuts(job, source, arrays, timer))
    # Every chunk stored, all-zero ones too: a missing chunk of a built row is then damage (codecs.py).
    with timer("write"), zarr.config.set({"array.write_empty_chunks": True}):
        group = zarr.open_group(job.store_url, mode="r+")
        for array in job.arrays:
            _write_array(job, group, array, cuts[array.name])
    failures = tuple(Failure(row, job.planned(row).label_id, array.name, reason)
                     for array in job.arrays for row, reason in sorted(cuts[array.name].errors.items()))
    return ChunkReport(job.chunk, {a.name: len(a.rows) for a in job.arrays}, failures, dict(timer.seconds))


def _source_cuts(job: ChunkJob, source: str, arrays: list[ArrayJob], timer: StageTimer) -> dict[str, Cut]:
    """Each array's cut of the chunk: every file of `source` its pending rows need, opened once."""
    pending = {r for a in arrays for r in a.rows}
    segments = job.raw_segments if any(a.kind.storage == STORAGE_SEGMENT for a in arrays) else ()
    per_file = [_file_cuts(span, arrays, timer)
                for span in spans(source, job.data_dir, job.split, [r for r in job.rows if r.row in pending], segments)]
    finished = {}
    for array in arrays:
        with timer(array.kind.stage):
            finished[array.name] = array.kind.finish(Cut.merge(cuts[array.name] for cuts in per_file), job.device)
    return finished


def _file_cuts(span: RecordingSpan, arrays: list[ArrayJob], timer: StageTimer) -> dict[str, Cut]:
    """Every array's cut of one file; a broken file fails its own rows, never the chunk (the raw
    segments of an unreadable recording keep zeros)."""
    try:
        opened = open_file(span, any(a.kind.needs_midline for a in arrays), timer)
        cuts = {}
        for array in arrays:
            rows = frozenset(array.rows)
            with timer(array.kind.stage):
                cut = array.kind.cut(opened, rows) if opened.usable else Cut()
            cuts[array.name] = Cut(cut.values,
                                   {**_only(opened.errors, rows), **cut.errors},
                                   {**_only(opened.repaired, rows), **cut.repaired})
        return cuts
    except Exception as err:
        reason = str(err) if isinstance(err, KaggleDataError) else f"{span.path}: {UNEXPECTED}: {err!r}"
        return {a.name: Cut(errors={r.row: reason for r in span.rows if r.row in a.rows}) for a in arrays}


def _only(by_row: dict, rows: frozenset[int]) -> dict:
    return {row: value for row, value in by_row.items() if row in rows}


def _write_array(job: ChunkJob, group: zarr.Group, array: ArrayJob, cut: Cut) -> None:
    array.kind.write(group[array.name], array.rows, array.whole, cut, job.raw_segments)
    state = open_build_state(group, array.name)
    rows = np.asarray(array.rows)
    status = np.array([STATUS_FAILED if r in cut.errors else STATUS_OK for r in rows], dtype=np.uint8)
    errors = np.array([cut.errors.get(r, "") for r in rows], dtype=object).astype(str)
    repaired = np.array([cut.repaired.get(r, 0.0) for r in rows], dtype=np.float32)
    if array.whole:
        first = int(rows[0])
        write_rows(state.status, first, status)
        state.error[first : first + len(rows)] = errors  # variable-length strings: through zarr
        write_rows(state.repaired, first, repaired)
    else:
        state.status.oindex[rows], state.error.oindex[rows], state.repaired.oindex[rows] = status, errors, repaired
    write_rows(state.done, job.chunk, np.ones(1, np.uint8))  # last: only now is the chunk trusted
