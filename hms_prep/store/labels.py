"""The store's rows: labels.parquet (one line per row, in array order: ids, votes, targets, folds,
statuses, the raw index) and the row table in _rows/ (each row's last CSV line; hms_prep/building/placement.py),
and the definition of their columns: the key and identity of a row, and the columns every build derives
from the CSV (`with_targets`: total votes, targets, patient-grouped folds), which `verify` checks.
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hms_prep.columns import arrow_column, numpy_column
from hms_prep.domain import TARGET_COLUMNS, VOTE_COLUMNS
from hms_prep.store.layout import LABELS_FILE, ROWS_FOLDER, StoreError

# labels.parquet's index of each row into the arrays stored per segment: its label window's first sample,
# and the bounds of its recording's stored segment (a jittered window never leaves them).
RAW_INDEX_COLUMNS = ("raw_start", "raw_lo", "raw_hi")
# labels.parquet: true for a row whose key (label_id; test: eeg_id) has left the CSV since the store took it.
# The row keeps its place and values; no reader uses it (`live_rows`). Absent in older stores: none is.
DROPPED = "dropped"


def row_table_file(digest: str) -> str:
    return f"{ROWS_FOLDER}/{digest}.parquet"


def write_row_table(url: str, table: pa.Table, digest: str) -> None:
    """The row table under the name its digest gives, atomically where the filesystem allows; the root
    names it only afterwards (`commit_layout`), so a reader never sees a table half written."""
    fs, path = fsspec.core.url_to_fs(url)
    final = f"{path.rstrip('/')}/{row_table_file(digest)}"
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(final + ".tmp", "wb") as f:
        pq.write_table(table, f, compression="zstd")
    fs.mv(final + ".tmp", final)


def read_row_table(url: str, digest: str) -> pa.Table | None:
    """The row table named `digest`; None when it is missing or unreadable."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(f"{path.rstrip('/')}/{row_table_file(digest)}", "rb") as f:
            return pq.ParquetFile(f).read()  # not read_table: its pyarrow.dataset imports pandas (0.5 s)
    except (OSError, pa.ArrowException):
        return None


def remove_other_row_tables(url: str, digest: str) -> None:
    """Every row table but the one the root names (left by earlier row changes, or a killed one)."""
    fs, path = fsspec.core.url_to_fs(url)
    folder = f"{path.rstrip('/')}/{ROWS_FOLDER}"
    if fs.exists(folder):
        for file in fs.ls(folder, detail=False):
            if file.rstrip("/").rsplit("/", 1)[-1] != f"{digest}.parquet":
                fs.rm_file(file)


def remove_labels(url: str) -> None:
    """labels.parquet gone until the build that changes the rows has written it again from them."""
    fs, path = fsspec.core.url_to_fs(url)
    target = f"{path.rstrip('/')}/{LABELS_FILE}"
    if fs.exists(target):
        fs.rm_file(target)


def write_labels(url: str, table: pa.Table) -> None:
    """Write labels.parquet atomically where the filesystem allows (temp file, then rename)."""
    fs, path = fsspec.core.url_to_fs(url)
    final = f"{path.rstrip('/')}/{LABELS_FILE}"
    temp = final + ".tmp"
    with fs.open(temp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    fs.mv(temp, final)


def live_rows(labels: pa.Table) -> np.ndarray:
    """(rows,) bool: the rows of labels.parquet still in the CSV (not `dropped`)."""
    if DROPPED not in labels.column_names:
        return np.ones(labels.num_rows, dtype=bool)
    return ~numpy_column(labels.column(DROPPED)).astype(bool)


def read_labels_if_readable(url: str) -> pa.Table | None:
    """labels.parquet, or None when it is missing or unreadable (a build rewrites it then)."""
    try:
        return read_labels(url)
    except StoreError:
        return None


def read_labels(url: str) -> pa.Table:
    """labels.parquet; StoreError naming it when it is missing or unreadable (every build rewrites it from
    train.csv and the build state)."""
    fs, path = fsspec.core.url_to_fs(url)
    target = f"{path.rstrip('/')}/{LABELS_FILE}"
    if not fs.exists(target):
        raise StoreError(f"{url}: {LABELS_FILE} is missing (the build has not finished); run hms-prep build")
    try:
        with fs.open(target, "rb") as f:
            return pq.ParquetFile(f).read()  # not read_table: its pyarrow.dataset imports pandas (0.5 s)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{url}/{LABELS_FILE}: unreadable ({err}); hms-prep build rewrites it") from None


# --- the rows' columns: what each row is keyed and computed by, and the columns every build derives ----

EEG_OFFSET = "eeg_label_offset_seconds"
SPEC_OFFSET = "spectrogram_label_offset_seconds"
# The column a split's rows are identified by: a store keeps each row where it first put it, by this.
ROW_KEY = {"train": "label_id", "test": "eeg_id"}
ROW_IDENTITY = ("eeg_id", EEG_OFFSET, "spectrogram_id", SPEC_OFFSET)  # what a row's values are computed from
# Columns the build derives from the CSV on every build; the row table stores the rest (the CSV's line).
DERIVED_COLUMNS = ("source_index", "total_votes", *TARGET_COLUMNS, "fold")


def with_targets(table: pa.Table, split: str, n_folds: int) -> pa.Table:
    """A store-ordered row table with, for train, `total_votes`, the targets (votes / total) and the
    patient-grouped `fold` over the rows still in the CSV (-1 for dropped ones): functions of the CSV
    alone, so a store built in steps gets the folds of one built at once."""
    if split != "train":
        return table
    votes = np.stack([numpy_column(table.column(c)) for c in VOTE_COLUMNS], 1).astype(np.float64)
    total = votes.sum(1)
    table = table.append_column("total_votes", arrow_column(total.astype(np.int64)))
    for j, name in enumerate(TARGET_COLUMNS):
        # A row without votes has no target (NaN); it is reported failed in labels.parquet.
        share = np.divide(votes[:, j], total, out=np.full_like(total, np.nan), where=total > 0)
        table = table.append_column(name, arrow_column(share.astype(np.float32)))
    live = live_rows(table)
    folds = np.full(table.num_rows, -1, dtype=np.int8)
    folds[live] = patient_folds(numpy_column(table.column("patient_id"))[live], n_folds)
    return table.append_column("fold", arrow_column(folds))


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


def row_table_of(labels: pa.Table) -> pa.Table:
    """labels.parquet's row table: every column but those each build derives (targets, folds, statuses)."""
    derived = set(DERIVED_COLUMNS) | {"status", "error"}
    keep = [c for c in labels.column_names if c not in derived and not c.startswith(("status_", "repaired_"))]
    table = labels.select(keep)
    if DROPPED not in table.column_names:
        table = table.append_column(DROPPED, arrow_column(np.zeros(table.num_rows, dtype=bool)))
    return table
