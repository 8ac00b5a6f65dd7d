"""The store's rows: labels.parquet (one line per row, in array order: ids, votes, targets, folds,
statuses, the raw index) and the row table in _rows/ (each row's last CSV line; hms_prep/build/rows.py).
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hms_prep.store.layout import LABELS_FILE, ROWS_FOLDER, StoreError, digest

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
            return pq.read_table(f)
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
    return ~labels.column(DROPPED).to_numpy(zero_copy_only=False).astype(bool)


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
            return pq.read_table(f)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{url}/{LABELS_FILE}: unreadable ({err}); hms-prep build rewrites it") from None
