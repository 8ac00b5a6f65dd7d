"""A synthetic dataset in the exact Kaggle HMS layout, with planted, learnable class patterns: `synthesize`
(or `synthesize_like_competition`) plans it (manifest.py, competition.py), makes its signals (signals.py)
and writes every file here.

The real data (about 22 GB) cannot travel with the code, yet every stage (build, train, predict) must
run end to end on files that look like Kaggle's in every detail that code can depend on: file and
column names, column order, dtypes, 0.01 uV rounding, NaNs, label-window geometry, vote counts.

What is planted, and where. The geometry and scale were measured on the genuine pair in
shared/real-sample: its Kaggle spectrogram best matches a centred 1024-sample Hann STFT of its EEG
(log-power correlation 0.93, PSD scale within 10 %) when the EEG starts 275 s into the spectrogram.

- Every EEG carries ONE class (all its label rows share it; votes vary per row). Its pattern covers
  [first offset + 5 s, last offset + 45 s], so every row's central 30 s sees it at full strength.
- An EEG starts at an odd second `start` of its spectrogram, so a row with EEG offset `o` has
  spectrogram offset `start + o - 275` and its 50 s EEG window sits in the middle of its 10 min
  spectrogram window, as in the real data.
- Spectrogram rows whose 1024-sample window lies inside an EEG are that EEG's chain-averaged bipolar
  power (two-sided PSD in uV^2/Hz at FFT bins 3..102, the real files' scale); the other rows are
  background power of the same level with the chi-square-like spread of a periodogram.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hms_prep.domain import SAMPLE_RATE, SPEC_ROW_S, VOTE_COLUMNS
from hms_prep.sources.kaggle import EEG_COLUMNS, SPEC_COLUMNS, TEST_COLUMNS, TRAIN_COLUMNS, eeg_path, spectrogram_path
from hms_prep.synth.competition import competition_plan
from hms_prep.synth.manifest import PlannedSpectrogram, plan_dataset
from hms_prep.synth.signals import background_eeg, chain_power, planted_pattern, spectrogram_power, with_nan_rows, with_nan_spans


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote. `seconds` is the wall-clock time it took."""

    out_dir: Path
    train_rows: int
    train_eegs: int
    test_eegs: int
    patients: int  # train patients (test patients are separate ones)
    seconds: float
    train_spectrograms: int
    eeg_seconds: float  # total length of all EEG files written, train and test


def synthesize(
    out_dir: str | Path, n_eegs: int = 200, seed: int = 0, n_test: int | None = None, jobs: int = 1
) -> SynthSummary:
    """Write a Kaggle-layout dataset with `n_eegs` train EEGs and `n_test` test EEGs into `out_dir`.

    `n_test` defaults to max(2, n_eegs // 20). The output is deterministic for a seed (identical
    CSV bytes and parquet contents), whatever `jobs` (processes writing files). `out_dir` must be
    empty or absent, so stale files of an earlier run can never be mistaken for part of this one.
    """
    began = time.perf_counter()
    n_test = max(2, n_eegs // 20) if n_test is None else n_test
    if n_eegs < 1 or n_test < 1:
        raise ValueError(f"need at least one train and one test EEG, got n_eegs={n_eegs}, n_test={n_test}")
    out = _empty_folder(out_dir)
    train, test, label_rows = plan_dataset(np.random.default_rng([seed, 0]), n_eegs, n_test)
    return _write_dataset(out, seed, train, test, label_rows, began, jobs)


def synthesize_like_competition(
    out_dir: str | Path, fraction: float = 1.0, seed: int = 0, n_test: int | None = None, jobs: int = 1
) -> SynthSummary:
    """A Kaggle-layout dataset whose train.csv has the real table's structure (COMPETITION) at `fraction`.

    `fraction` scales the number of EEGs, spectrograms, patients and rows (1.0: the full 106,800 rows);
    see `competition_plan` for how the distributions are kept. Signals, classes and votes are planted
    as in `synthesize`; every EEG is just long enough for its offsets (last offset + 50 s).
    """
    began = time.perf_counter()
    plan = competition_plan(fraction, seed)
    n_test = max(2, len(plan.rows_per_eeg) // 20) if n_test is None else n_test
    if n_test < 1:
        raise ValueError(f"need at least one test EEG, got n_test={n_test}")
    out = _empty_folder(out_dir)
    train, test, label_rows = plan_dataset(np.random.default_rng([seed, 0]), len(plan.rows_per_eeg), n_test, plan)
    return _write_dataset(out, seed, train, test, label_rows, began, jobs)


def _empty_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; synthesize writes into an empty or new folder")
    for folder in ("train_eegs", "train_spectrograms", "test_eegs", "test_spectrograms"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    return out


def _write_dataset(out: Path, seed: int, train, test, label_rows, began: float, jobs: int) -> SynthSummary:
    """Write every file of the plan: signal files (in `jobs` processes when > 1), then the CSVs."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    work = [(out, split, spectrogram, seed) for split, group in (("train", train), ("test", test)) for spectrogram in group]
    if jobs == 1:
        for item in work:
            _write_file_group(item)
    else:
        from concurrent.futures import ProcessPoolExecutor

        # the longest groups first, so no worker is left with a big one at the end
        work.sort(key=lambda item: -item[2].rows)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for _ in pool.map(_write_file_group, work, chunksize=max(1, len(work) // (32 * jobs))):
                pass
    test_recordings = [r for s in test for r in s.recordings]
    _write_csv(out / "train.csv", TRAIN_COLUMNS, label_rows)
    test_rows = [(s.spectrogram_id, r.eeg_id, r.patient_id) for s in test for r in s.recordings]
    _write_csv(out / "test.csv", TEST_COLUMNS, test_rows)
    uniform = (1 / len(VOTE_COLUMNS),) * len(VOTE_COLUMNS)
    submission_rows = [(r.eeg_id,) + uniform for r in test_recordings]
    _write_csv(out / "sample_submission.csv", ("eeg_id",) + VOTE_COLUMNS, submission_rows)

    train_recordings = [r for s in train for r in s.recordings]
    return SynthSummary(
        out_dir=out,
        train_rows=len(label_rows),
        train_eegs=len(train_recordings),
        test_eegs=len(test_recordings),
        patients=len({r.patient_id for r in train_recordings}),
        seconds=time.perf_counter() - began,
        train_spectrograms=len(train),
        eeg_seconds=float(sum(r.seconds for r in train_recordings + test_recordings)),
    )


def _write_file_group(item) -> None:
    out, split, spectrogram, seed = item
    # one generator per file, keyed by its id: a file's content does not depend on the others
    rng = np.random.default_rng([seed, 1, spectrogram.spectrogram_id])
    _write_spectrogram_and_eegs(out, split, spectrogram, rng)


def _write_spectrogram_and_eegs(out: Path, split: str, spectrogram: PlannedSpectrogram, rng) -> None:
    """Synthesize the EEGs a spectrogram covers, write them, then write the spectrogram.

    The spectrogram is computed from the EEGs before NaN spans are punched into the files (Kaggle's
    came from the full recordings); its own NaN rows are planted separately.
    """
    eegs, backgrounds = [], []
    for recording in spectrogram.recordings:
        background = background_eeg(rng, recording.seconds * SAMPLE_RATE)
        eeg = np.round(background + planted_pattern(rng, recording), 2).astype(np.float32)
        eegs.append(eeg)
        backgrounds.append(chain_power(background).mean(axis=0))
        if recording.with_nans:
            eeg = with_nan_spans(rng, eeg)
        _write_eeg(eeg_path(out, split, recording.eeg_id), eeg)
    power = spectrogram_power(rng, spectrogram, eegs, np.mean(backgrounds, axis=0))
    if spectrogram.with_nans:
        power = with_nan_rows(rng, power)
    _write_spectrogram(spectrogram_path(out, split, spectrogram.spectrogram_id), power, split)


# ---------------------------------------------------------------------------------------------------
# Writers: pyarrow parquet with snappy, NaN stored as null (as pandas writes it), plain CSV.


# Dictionary pages on noise-like floats cost a third of the writing time and save nothing; readers
# cannot tell the difference (values, types and nulls are the same).
_DICTIONARY = False


def _write_eeg(path: Path, eeg: np.ndarray) -> None:
    table = pa.Table.from_arrays(_float_columns(eeg), names=list(EEG_COLUMNS))
    pq.write_table(table, path, compression="snappy", use_dictionary=_DICTIONARY)


def _write_spectrogram(path: Path, power: np.ndarray, split: str) -> None:
    """Times 1, 3, 5, ... s: int64 in train files, int16 in test files, as Kaggle's."""
    time_type = pa.int64() if split == "train" else pa.int16()
    times = pa.array(np.arange(power.shape[0]) * SPEC_ROW_S + 1, type=time_type)
    table = pa.Table.from_arrays([times, *_float_columns(power)], names=list(SPEC_COLUMNS))
    pq.write_table(table, path, compression="snappy", use_dictionary=_DICTIONARY)


def _float_columns(matrix: np.ndarray) -> list[pa.Array]:
    """The columns of a (rows, columns) matrix as float32 arrays, NaN turned into null."""
    columns = np.ascontiguousarray(matrix.T, dtype=np.float32)
    return [_float_array(column) for column in columns]


def _float_array(column: np.ndarray) -> pa.Array:
    """A float32 arrow array over the column's own buffer, with a validity bitmap only where NaNs are."""
    missing = np.isnan(column)
    if not missing.any():
        return pa.Array.from_buffers(pa.float32(), column.size, [None, pa.py_buffer(column)])
    valid = pa.py_buffer(np.packbits(~missing, bitorder="little"))
    return pa.Array.from_buffers(pa.float32(), column.size, [valid, pa.py_buffer(column)], null_count=int(missing.sum()))


def _write_csv(path: Path, header, rows) -> None:
    """Plain comma-separated lines; floats as Python writes them (0.0, 0.16666666666666666) like pandas."""
    lines = [",".join(header)]
    lines += [",".join(repr(v) if isinstance(v, float) else str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
