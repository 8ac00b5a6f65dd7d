"""The row plan: which label row goes where in the store, its fold and targets, and its raw segment.

Pure functions of train.csv / test.csv. Rows are sorted by (eeg_id, offset, label_id) so rows sharing
an EEG are adjacent: a Dask task owns whole chunks of rows and reads each parquet file it needs once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hms_prep.domain import LABEL_WINDOW_S, SAMPLE_RATE, TARGET_COLUMNS, VOTE_COLUMNS
from hms_prep.store.format import RAW_INDEX_COLUMNS, digest  # noqa: F401 (the build's import)

EEG_OFFSET = "eeg_label_offset_seconds"
SPEC_OFFSET = "spectrogram_label_offset_seconds"


def plan_rows(labels: pa.Table, split: str, n_folds: int) -> pa.Table:
    """The label table in store order with `row`, `source_index` and, for train, votes, targets, fold.

    Test rows get offset 0 (test EEGs are exactly 50 s and test spectrograms exactly 10 min).
    """
    table = labels.append_column("source_index", pa.array(np.arange(labels.num_rows), pa.int64()))
    if split == "test":
        zeros = pa.array(np.zeros(labels.num_rows), pa.float64())
        table = table.append_column(EEG_OFFSET, zeros).append_column(SPEC_OFFSET, zeros)
        order = pc.sort_indices(table, [("eeg_id", "ascending"), ("source_index", "ascending")])
    else:
        order = pc.sort_indices(
            table, [("eeg_id", "ascending"), (EEG_OFFSET, "ascending"), ("label_id", "ascending")]
        )
    table = table.take(order)
    table = table.append_column("row", pa.array(np.arange(table.num_rows), pa.int64()))
    if split == "train":
        votes = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1).astype(np.float64)
        total = votes.sum(1)
        table = table.append_column("total_votes", pa.array(total.astype(np.int64)))
        for j, name in enumerate(TARGET_COLUMNS):
            # A row without votes has no target (NaN); it is reported failed in labels.parquet.
            share = np.divide(votes[:, j], total, out=np.full_like(total, np.nan), where=total > 0)
            table = table.append_column(name, pa.array(share.astype(np.float32)))
        folds = patient_folds(table.column("patient_id").to_numpy(), n_folds)
        table = table.append_column("fold", pa.array(folds.astype(np.int8)))
    return table


def patient_folds(patient_ids: np.ndarray, n_folds: int) -> np.ndarray:
    """Deterministic patient-grouped folds balanced by row count.

    Patients are taken largest first (ties by id) and each goes to the fold with the fewest rows so
    far: the same greedy rule as scikit-learn's GroupKFold, without a random seed to forget.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    patients, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    fold_of_patient = np.empty(len(patients), dtype=np.int64)
    fold_sizes = np.zeros(n_folds, dtype=np.int64)
    for p in np.lexsort((patients, -counts)):
        fold = int(np.argmin(fold_sizes))
        fold_of_patient[p] = fold
        fold_sizes[fold] += counts[p]
    return fold_of_patient[inverse]


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


ROW_IDENTITY = ("eeg_id", EEG_OFFSET, "spectrogram_id", SPEC_OFFSET)  # what a store's rows are fixed by


def rows_digest(planned: pa.Table) -> str:
    """Identity of the row plan: the ids and offsets of every row in store order."""
    return digest([planned.column(c).to_pylist() for c in ROW_IDENTITY])


def rows_changes(stored: pa.Table, planned: pa.Table) -> str:
    """What differs between a store's label rows and a new plan, by label_id: "2 rows changed (first
    label_ids [...]), 1 removed (...), 3 added (...)"; "the row order" when only that differs."""
    def by_label(table: pa.Table) -> dict:
        values = zip(*(table.column(c).to_pylist() for c in ROW_IDENTITY))
        return dict(zip(table.column("label_id").to_pylist(), values))

    old, new = by_label(stored), by_label(planned)
    groups = (("changed", [l for l in new if l in old and new[l] != old[l]]),
              ("removed", [l for l in old if l not in new]), ("added", [l for l in new if l not in old]))
    parts = [f"{len(ids)} {what} (first label_ids {ids[:3]})" for what, ids in groups if ids]
    return ", ".join(parts) if parts else "the row order"


@dataclass(frozen=True)
class RawSegment:
    """Samples [file_start, file_start + length) of one EEG, stored at raw[:, position:position+length]."""

    eeg_id: int
    file_start: int
    length: int
    position: int


def plan_raw_segments(
    planned: pa.Table, chunk_rows: int, margin_s: int, raw_chunk_samples: int
) -> tuple[list[list[RawSegment]], np.ndarray, int]:
    """Lay out the raw signal segments chunk by chunk.

    Each row chunk gets, per EEG it contains, segments covering its label windows plus `margin_s`
    on each side (room for jitter); label windows further apart than a window plus both margins get
    separate segments, so sparse labels on a long recording (or a wild offset) cost only what they
    cover. A chunk's segments start on a raw-chunk boundary so that no two tasks ever write into the
    same raw chunk. Returns the segments per row chunk, the per-row index
    (raw_start, raw_lo, raw_hi) as an (n_rows, 3) int64 array, and the total raw length.
    """
    eeg_ids = planned.column("eeg_id").to_numpy()
    starts = np.round(planned.column(EEG_OFFSET).to_numpy() * SAMPLE_RATE).astype(np.int64)
    margin, window = margin_s * SAMPLE_RATE, LABEL_WINDOW_S * SAMPLE_RATE
    index = np.zeros((len(eeg_ids), 3), dtype=np.int64)
    segments: list[list[RawSegment]] = []
    position = 0
    for lo in range(0, len(eeg_ids), chunk_rows):
        hi = min(lo + chunk_rows, len(eeg_ids))
        chunk_segments = []
        new_eeg = np.diff(eeg_ids[lo:hi]) != 0
        far_apart = np.diff(starts[lo:hi]) > window + 2 * margin  # rows are sorted by offset per EEG
        boundaries = np.flatnonzero(new_eeg | far_apart) + 1
        for group in np.split(np.arange(lo, hi), boundaries):
            file_start = int(starts[group].min()) - margin
            length = int(starts[group].max()) + window + margin - file_start
            chunk_segments.append(RawSegment(int(eeg_ids[group[0]]), file_start, length, position))
            index[group, 0] = position + starts[group] - file_start
            index[group, 1] = position
            index[group, 2] = position + length
            position += length
        segments.append(chunk_segments)
        position = -(-position // raw_chunk_samples) * raw_chunk_samples  # next task starts aligned
    return segments, index, max(position, raw_chunk_samples)
