"""The Kaggle HMS folder layout: names, column orders, dtypes, and validated readers.

Every reader fails with a `KaggleDataError` that names the file and says what is wrong, so a
broken download is diagnosed from one line rather than a pyarrow traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hms_prep.domain import CHAINS, SAMPLE_RATE, VOTE_COLUMNS
from hms_prep.columns import numpy_column

EEG_COLUMNS = (
    "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz",
    "Pz", "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2", "EKG",
)
# FFT bins 3..102 of a 1024-point FFT at 200 Hz, spelled exactly as in the real files' column names
SPEC_FREQ_NAMES = tuple(
    """
    0.59 0.78 0.98 1.17 1.37 1.56 1.76 1.95 2.15 2.34 2.54 2.73 2.93 3.13 3.32 3.52 3.71 3.91 4.1 4.3
    4.49 4.69 4.88 5.08 5.27 5.47 5.66 5.86 6.05 6.25 6.45 6.64 6.84 7.03 7.23 7.42 7.62 7.81 8.01 8.2
    8.4 8.59 8.79 8.98 9.18 9.38 9.57 9.77 9.96 10.16 10.35 10.55 10.74 10.94 11.13 11.33 11.52 11.72 11.91 12.11
    12.3 12.5 12.7 12.89 13.09 13.28 13.48 13.67 13.87 14.06 14.26 14.45 14.65 14.84 15.04 15.23 15.43 15.63 15.82 16.02
    16.21 16.41 16.6 16.8 16.99 17.19 17.38 17.58 17.77 17.97 18.16 18.36 18.55 18.75 18.95 19.14 19.34 19.53 19.73 19.92
    """.split()
)
SPEC_FREQS = np.arange(3, 103) * SAMPLE_RATE / 1024  # Hz
SPEC_COLUMNS = ("time",) + tuple(f"{c}_{f}" for c in CHAINS for f in SPEC_FREQ_NAMES)

TRAIN_COLUMNS = {
    "eeg_id": pa.int64(),
    "eeg_sub_id": pa.int64(),
    "eeg_label_offset_seconds": pa.float64(),
    "spectrogram_id": pa.int64(),
    "spectrogram_sub_id": pa.int64(),
    "spectrogram_label_offset_seconds": pa.float64(),
    "label_id": pa.int64(),
    "patient_id": pa.int64(),
    "expert_consensus": pa.string(),
    **{c: pa.int64() for c in VOTE_COLUMNS},
}
TEST_COLUMNS = {"spectrogram_id": pa.int64(), "eeg_id": pa.int64(), "patient_id": pa.int64()}
SPLITS = ("train", "test")


class KaggleDataError(ValueError):
    """A file of the Kaggle layout is missing or malformed; the message names the file."""


def labels_path(data_dir: str | Path, split: str) -> Path:
    _check_split(split)
    return Path(data_dir) / f"{split}.csv"


def eeg_path(data_dir: str | Path, split: str, eeg_id: int) -> Path:
    _check_split(split)
    return Path(data_dir) / f"{split}_eegs" / f"{int(eeg_id)}.parquet"


def spectrogram_path(data_dir: str | Path, split: str, spectrogram_id: int) -> Path:
    _check_split(split)
    return Path(data_dir) / f"{split}_spectrograms" / f"{int(spectrogram_id)}.parquet"


def read_labels(data_dir: str | Path, split: str) -> pa.Table:
    """train.csv or test.csv as a table with the documented columns and types."""
    path = labels_path(data_dir, split)
    expected = TRAIN_COLUMNS if split == "train" else TEST_COLUMNS
    if not path.is_file():
        raise KaggleDataError(f"{path}: file not found (expected the Kaggle {split}.csv)")
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=expected))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise KaggleDataError(f"{path}: cannot parse as CSV with the expected column types: {err}") from None
    _check_columns(path, table.column_names, tuple(expected))
    if table.num_rows == 0:
        raise KaggleDataError(f"{path}: no rows")
    for name in ("eeg_id", "patient_id"):
        if table.column(name).null_count:
            raise KaggleDataError(f"{path}: column {name!r} has empty values")
    if split == "train":
        votes = np.stack([numpy_column(table.column(c)) for c in VOTE_COLUMNS], 1)
        bad = np.flatnonzero((votes < 0).any(1))  # rows without votes fail alone (hms_prep/building/record.py)
        if bad.size:
            raise KaggleDataError(f"{path}: line {int(bad[0]) + 2} has negative votes")
        ids = numpy_column(table.column("label_id"))
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = unique[counts > 1]
            lines = ", ".join(str(int(i) + 2) for i in np.flatnonzero(np.isin(ids, dup))[:10])
            raise KaggleDataError(f"{path}: label_id {', '.join(map(str, dup[:5]))} appears more than once "
                                  f"(lines {lines}); every label row needs its own label_id")
    return table


def read_eeg(path: str | Path) -> np.ndarray:
    """One EEG recording as float32 (samples, 20) in EEG_COLUMNS order; NaNs are kept."""
    table = _read_parquet(path)
    _check_columns(path, table.column_names, EEG_COLUMNS)
    _check_float_columns(path, table, EEG_COLUMNS)
    return _as_matrix(table, EEG_COLUMNS)


def read_spectrogram(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A Kaggle spectrogram file as (time int64 (rows,), power float32 (rows, 400)); NaNs kept."""
    table = _read_parquet(path)
    _check_columns(path, table.column_names, SPEC_COLUMNS)
    time_type = table.schema.field("time").type
    if not (pa.types.is_integer(time_type) or pa.types.is_floating(time_type)):
        raise KaggleDataError(f"{path}: column 'time' has type {time_type}, expected an integer")
    _check_float_columns(path, table, SPEC_COLUMNS[1:])
    time = table.column("time").to_numpy(zero_copy_only=False)
    if np.isnan(time.astype(np.float64)).any():
        raise KaggleDataError(f"{path}: column 'time' has empty values")
    return time.astype(np.int64), _as_matrix(table, SPEC_COLUMNS[1:])


def _read_parquet(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise KaggleDataError(f"{path}: file not found")
    try:
        # One file is small; pyarrow's thread pool costs more than it gains here (2x slower per file),
        # and the build's parallelism comes from worker processes. ParquetFile without pre-buffering
        # skips read_table's dataset layer: 1.6-2 ms instead of 2.6-5 per EEG file, 9.7 instead of 11-14
        # per spectrogram file (docs/performance.md).
        with pq.ParquetFile(path, pre_buffer=False) as parquet:
            table = parquet.read(use_threads=False)
    except (pa.ArrowException, OSError) as err:
        raise KaggleDataError(f"{path}: unreadable parquet ({err})") from None
    if table.num_rows == 0:
        raise KaggleDataError(f"{path}: empty file (0 rows)")
    return table


def _check_columns(path, actual, expected) -> None:
    actual = [c for c in actual if not c.startswith("__index_level_")]  # pandas index, if saved
    if tuple(actual) == tuple(expected):
        return
    missing = [c for c in expected if c not in actual]
    extra = [c for c in actual if c not in expected]
    if missing or extra:
        raise KaggleDataError(
            f"{path}: columns do not match the Kaggle layout"
            + (f"; missing {missing[:5]}" if missing else "")
            + (f"; unexpected {extra[:5]}" if extra else "")
        )
    first = next(i for i, (a, e) in enumerate(zip(actual, expected)) if a != e)
    raise KaggleDataError(
        f"{path}: columns are out of order: position {first} is {actual[first]!r}, expected {expected[first]!r}"
    )


def _check_float_columns(path, table: pa.Table, names) -> None:
    for name in names:
        kind = table.schema.field(name).type
        if not pa.types.is_floating(kind):
            raise KaggleDataError(f"{path}: column {name!r} has type {kind}, expected float32")


def _as_matrix(table: pa.Table, names) -> np.ndarray:
    out = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        # to_numpy turns nulls into NaN for float columns; chunked columns are concatenated
        out[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
