"""The row plan: which label row goes where in the store, its fold and targets, and its raw segment.

Pure functions of train.csv / test.csv and the store's row table. A new store sorts its rows by
(eeg_id, offset, label_id) so rows sharing an EEG are adjacent: a Dask task owns whole chunks of rows and
reads each parquet file it needs once. After that a row keeps its position by its label_id, whatever the
CSV becomes: changed rows are computed again in place, new rows appended, removed rows kept as dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hms_prep.columns import arrow_column, numpy_column
from hms_prep.domain import LABEL_WINDOW_S, SAMPLE_RATE
from hms_prep.store.labels import (DROPPED, EEG_OFFSET, RAW_INDEX_COLUMNS, ROW_IDENTITY, ROW_KEY, SPEC_OFFSET,
                                   live_rows, with_targets)
from hms_prep.store.layout import digest


def plan_rows(labels: pa.Table, split: str, n_folds: int) -> pa.Table:
    """The label table in a new store's order with `row`, `source_index`, `dropped` and, for train, votes,
    targets, fold."""
    return with_targets(assign_rows(csv_rows(labels, split), split).table, split, n_folds)


def csv_rows(labels: pa.Table, split: str) -> pa.Table:
    """The CSV's lines with `source_index` (the line's position), in the order a new store puts them:
    by (eeg_id, offset, label_id), so rows sharing an EEG are adjacent and a build task reads each file
    once (test: by eeg_id, then test.csv order; test rows get offset 0, test EEGs being exactly 50 s and
    test spectrograms exactly 10 min)."""
    table = labels.append_column("source_index", arrow_column(np.arange(labels.num_rows, dtype=np.int64)))
    if split == "test":
        zeros = arrow_column(np.zeros(labels.num_rows))
        table = table.append_column(EEG_OFFSET, zeros).append_column(SPEC_OFFSET, zeros)
        order = pc.sort_indices(table, [("eeg_id", "ascending"), ("source_index", "ascending")])
    else:
        order = pc.sort_indices(
            table, [("eeg_id", "ascending"), (EEG_OFFSET, "ascending"), ("label_id", "ascending")]
        )
    return table.take(order)


@dataclass(frozen=True)
class RowAssignment:
    """Where each row of the CSV goes in a store that may hold rows already, and what that changes.

    A row keeps the position it was first given, found by its key (label_id; test: eeg_id): `changed`
    rows (the same key, another EEG, spectrogram or offset) are computed again in place, `added` ones
    appended in `csv_rows` order, and rows whose key left the CSV stay where they are, `dropped` (their
    last line kept, never read)."""

    table: pa.Table  # store order: the CSV's columns (dropped rows: their last line), row, source_index, dropped
    changed: np.ndarray  # rows whose identity changed
    added: np.ndarray  # rows new to the store
    dropped: np.ndarray  # rows newly dropped
    undropped: np.ndarray  # dropped rows whose key is back, as it was

    @property
    def changes(self) -> bool:
        return bool(self.changed.size or self.added.size or self.dropped.size or self.undropped.size)

    def line(self, split: str) -> str:
        """'2 changed (first label_ids [...]), 1 removed (...), 3 added (...)'."""
        key = self.table.column(ROW_KEY[split]).to_numpy()
        groups = (("changed", self.changed), ("removed", self.dropped), ("added", self.added),
                  ("back", self.undropped))
        return ", ".join(f"{len(rows)} {what} (first {ROW_KEY[split]}s {key[rows[:3]].tolist()})"
                         for what, rows in groups if len(rows))


def assign_rows(csv: pa.Table, split: str, stored: pa.Table | None = None) -> RowAssignment:
    """`csv` (`csv_rows`) placed in a store whose row table is `stored` (None: a new store)."""
    key = ROW_KEY[split]
    _check_unique(csv, key, split)
    none = np.empty(0, dtype=np.int64)
    if stored is None:
        table = csv.append_column("row", arrow_column(np.arange(csv.num_rows, dtype=np.int64)))
        table = table.append_column(DROPPED, arrow_column(np.zeros(csv.num_rows, dtype=bool)))
        return RowAssignment(table, none, none, none, none)
    old_keys = numpy_column(stored.column(key))
    position = dict(zip(old_keys.tolist(), numpy_column(stored.column("row")).tolist()))
    new_keys = numpy_column(csv.column(key))
    known = np.array([k in position for k in new_keys.tolist()], dtype=bool)
    rows = np.empty(csv.num_rows, dtype=np.int64)
    rows[known] = [position[k] for k in new_keys[known].tolist()]
    rows[~known] = stored.num_rows + np.arange(int((~known).sum()))
    live = csv.append_column("row", arrow_column(rows)).append_column(
        DROPPED, arrow_column(np.zeros(csv.num_rows, dtype=bool)))
    gone = stored.filter(arrow_column(~np.isin(old_keys, new_keys)))
    gone = pa.table({field.name: gone.column(field.name).cast(field.type) if field.name in gone.column_names
                     else pa.nulls(gone.num_rows, field.type) for field in live.schema})
    gone = gone.set_column(gone.schema.get_field_index("source_index"), "source_index",
                           arrow_column(np.full(gone.num_rows, -1, dtype=np.int64)))
    gone = gone.set_column(gone.schema.get_field_index(DROPPED), DROPPED, arrow_column(np.ones(gone.num_rows, dtype=bool)))
    table = pa.concat_tables([live, gone]).sort_by("row")
    was_dropped = ~live_rows(stored)
    kept = rows[known]
    same = np.ones(len(kept), dtype=bool)
    for column in ROW_IDENTITY:
        same &= _values(stored, column)[kept] == _values(csv, column)[known]
    gone_rows = numpy_column(gone.column("row"))
    return RowAssignment(table, changed=np.sort(kept[~same]), added=np.sort(rows[~known]),
                         dropped=np.sort(gone_rows[~was_dropped[gone_rows]]),
                         undropped=np.sort(kept[same & was_dropped[kept]]))


def _values(table: pa.Table, column: str) -> np.ndarray:
    return numpy_column(table.column(column))


def _check_unique(csv: pa.Table, key: str, split: str) -> None:
    ids = numpy_column(csv.column(key))
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = unique[counts > 1]
        lines = csv.column("source_index").to_numpy()[np.isin(ids, dup)] + 2
        raise ValueError(f"{split}.csv: {key} {', '.join(map(str, dup[:5]))} appears more than once (lines "
                         f"{', '.join(map(str, sorted(lines.tolist())[:10]))}); a store identifies its rows by {key}")


@dataclass(frozen=True)
class PlannedRow:
    """One label row in store order, with what a build task needs to compute it."""

    row: int
    label_id: int  # test rows have none: their eeg_id stands in
    eeg_id: int
    eeg_offset_s: float
    spectrogram_id: int
    spectrogram_offset_s: float


def planned_rows(planned: pa.Table, rows: slice) -> tuple[PlannedRow, ...]:
    """The records of `planned` rows [rows.start, rows.stop)."""
    part = planned.slice(rows.start, rows.stop - rows.start)
    label_ids = part.column("label_id" if "label_id" in part.column_names else "eeg_id").to_pylist()
    columns = [part.column(c).to_pylist() for c in ("row", "eeg_id", EEG_OFFSET, "spectrogram_id", SPEC_OFFSET)]
    return tuple(PlannedRow(row, label_id, eeg_id, float(eeg_offset), spectrogram_id, float(spec_offset))
                 for label_id, (row, eeg_id, eeg_offset, spectrogram_id, spec_offset)
                 in zip(label_ids, zip(*columns)))


def rows_digest(table: pa.Table, split: str) -> str:
    """Identity of a store's row table (layout 2): every row's key, ids, offsets, whether it is dropped and
    its raw index (when laid out), in store order. The root names it; the table is `_rows/{digest}.parquet`."""
    columns = (ROW_KEY[split], *ROW_IDENTITY, DROPPED, *(c for c in RAW_INDEX_COLUMNS if c in table.column_names))
    return digest([table.column(c).to_pylist() for c in columns])


def legacy_rows_digest(table: pa.Table) -> str:
    """A layout-1 store's `rows_digest`: the ids and offsets of every row in store order."""
    return digest([table.column(c).to_pylist() for c in ROW_IDENTITY])


@dataclass(frozen=True)
class RawSegment:
    """Samples [file_start, file_start + length) of one EEG, stored at raw[:, position:position+length]."""

    eeg_id: int
    file_start: int
    length: int
    position: int


def plan_raw_segments(
    planned: pa.Table, chunk_rows: int, margin_s: int, raw_chunk_samples: int,
    stored_index: np.ndarray | None = None, relocate=(),
) -> tuple[list[list[RawSegment]], np.ndarray, int]:
    """Lay out the raw signal segments chunk by chunk.

    Each row chunk gets, per EEG it contains, segments covering its label windows plus `margin_s`
    on each side (room for jitter); label windows further apart than a window plus both margins get
    separate segments, so sparse labels on a long recording (or a wild offset) cost only what they
    cover. A chunk's segments start on a raw-chunk boundary so that no two tasks ever write into the
    same raw chunk. With `stored_index` (the per-row index a store holds), a chunk keeps its segments
    unless it is in `relocate` or new: those are laid out after the last stored segment (a chunk whose
    rows changed never overwrites what the others read). Returns the segments per row chunk, the per-row
    index (raw_start, raw_lo, raw_hi) as an (n_rows, 3) int64 array, and the total raw length.
    """
    eeg_ids = numpy_column(planned.column("eeg_id"))
    starts = np.round(numpy_column(planned.column(EEG_OFFSET)) * SAMPLE_RATE).astype(np.int64)
    margin = margin_s * SAMPLE_RATE
    index = np.zeros((len(eeg_ids), 3), dtype=np.int64)
    kept = stored_index if stored_index is not None else np.zeros((0, 3), dtype=np.int64)
    position = _aligned(int(kept[:, 2].max()) if len(kept) else 0, raw_chunk_samples)
    segments: list[list[RawSegment]] = []
    for chunk, lo in enumerate(range(0, len(eeg_ids), chunk_rows)):
        rows = np.arange(lo, min(lo + chunk_rows, len(eeg_ids)))
        if rows[-1] < len(kept) and chunk not in relocate:
            index[rows] = kept[rows]
            segments.append(_stored_segments(eeg_ids, starts, index, rows))
            continue
        chunk_segments, position = _lay_out(eeg_ids, starts, rows, margin, position, index)
        segments.append(chunk_segments)
        position = _aligned(position, raw_chunk_samples)  # the next task starts on a raw-chunk boundary
    end = max(int(index[:, 2].max(initial=0)), position)
    return segments, index, max(_aligned(end, raw_chunk_samples), raw_chunk_samples)


def _aligned(position: int, step: int) -> int:
    return -(-position // step) * step


def _lay_out(eeg_ids: np.ndarray, starts: np.ndarray, rows: np.ndarray, margin: int, position: int,
             index: np.ndarray) -> tuple[list[RawSegment], int]:
    """The segments of one chunk's `rows` from `position` on (their index filled in), and where they end."""
    window = LABEL_WINDOW_S * SAMPLE_RATE
    rows = rows[np.lexsort((starts[rows], eeg_ids[rows]))]  # by recording, then offset
    new_eeg = np.diff(eeg_ids[rows]) != 0
    far_apart = np.diff(starts[rows]) > window + 2 * margin
    segments = []
    for group in np.split(rows, np.flatnonzero(new_eeg | far_apart) + 1):
        file_start = int(starts[group].min()) - margin
        length = int(starts[group].max()) + window + margin - file_start
        segments.append(RawSegment(int(eeg_ids[group[0]]), file_start, length, position))
        index[group] = np.stack([position + starts[group] - file_start, np.full(len(group), position),
                                 np.full(len(group), position + length)], 1)
        position += length
    return segments, position


def _stored_segments(eeg_ids: np.ndarray, starts: np.ndarray, index: np.ndarray, rows: np.ndarray) -> list[RawSegment]:
    """A chunk's segments as its rows' stored index places them (one per distinct raw_lo)."""
    segments = {}
    # each column as Python numbers at once: indexing numpy per row cost 0.5 s of planning the real data
    for eeg_id, start, (raw_start, raw_lo, raw_hi) in zip(eeg_ids[rows].tolist(), starts[rows].tolist(),
                                                         index[rows].tolist()):
        segments.setdefault(raw_lo, RawSegment(eeg_id, start - (raw_start - raw_lo), raw_hi - raw_lo, raw_lo))
    return [segments[lo] for lo in sorted(segments)]
