"""One Dask task: compute the pending arrays of one chunk of rows and write them to the store.

The task owns its chunk of every array (and its aligned region of `raw`), so it writes without locks.
Order matters for resumability: data first, then per-row status and errors, then the chunk's done
flag. A chunk whose flag is not set is recomputed whole on the next build.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import zarr

from hms_prep.kaggle import (
    LABEL_WINDOW_S,
    SAMPLE_RATE,
    KaggleDataError,
    eeg_path,
    read_eeg,
    read_spectrogram,
    spectrogram_path,
)
from hms_prep.kaggle_crop import kaggle_crop
from hms_prep.montage import BIPOLAR_PAIRS, bipolar_signals, fill_nan, pair_names
from hms_prep.plan import RawSegment
from hms_prep.signal_filter import RawParams, band_pass, scale_raw
from hms_prep.spectrogram import MelParams, mel_windows
from hms_prep.store import STATUS_FAILED, STATUS_OK, open_build_state

LABEL_SAMPLES = LABEL_WINDOW_S * SAMPLE_RATE
FILTER_CONTEXT = 10 * SAMPLE_RATE  # samples read beyond the needed span so filter edges settle


@dataclass(frozen=True)
class ArrayJob:
    """Rows of one array to compute in this chunk; `whole` means every row of the chunk."""

    name: str
    params: MelParams | RawParams | None  # None for the kaggle crops
    rows: tuple[int, ...]
    whole: bool


@dataclass(frozen=True)
class ChunkJob:
    store_url: str
    data_dir: str
    split: str
    chunk: int
    first_row: int
    eeg_ids: np.ndarray  # per row of the chunk
    eeg_offsets: np.ndarray
    spectrogram_ids: np.ndarray
    spectrogram_offsets: np.ndarray
    label_ids: np.ndarray
    raw_segments: tuple[RawSegment, ...]
    arrays: tuple[ArrayJob, ...]


@dataclass
class ChunkReport:
    chunk: int
    rows_computed: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[int, int, str, str]] = field(default_factory=list)  # row, label_id, array, reason
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class _ArrayResult:
    values: dict[int, np.ndarray] = field(default_factory=dict)  # row -> its values
    errors: dict[int, str] = field(default_factory=dict)
    repaired: dict[int, float] = field(default_factory=dict)
    # raw only: segment position -> its samples, or None for a segment whose recording is unreadable
    segments: dict[int, np.ndarray | None] = field(default_factory=dict)


def build_chunk(job: ChunkJob) -> ChunkReport:
    torch.set_num_threads(1)  # one thread per Dask worker process: processes give the parallelism
    report = ChunkReport(job.chunk)
    results = {a.name: _ArrayResult() for a in job.arrays}
    eeg_jobs = [a for a in job.arrays if isinstance(a.params, (MelParams, RawParams))]
    if eeg_jobs:
        _compute_eeg_arrays(job, eeg_jobs, results, report)
    kaggle_jobs = [a for a in job.arrays if a.params is None]
    for array in kaggle_jobs:
        _compute_kaggle(job, array, results[array.name], report)
    with _timed(report, "write"):
        group = zarr.open_group(job.store_url, mode="r+")
        for array in job.arrays:
            _write_array(job, group, array, results[array.name])
            report.rows_computed[array.name] = len(array.rows)
    for array in job.arrays:
        for row, reason in sorted(results[array.name].errors.items()):
            report.failures.append((row, int(job.label_ids[row - job.first_row]), array.name, reason))
    report.seconds = dict(report.seconds)
    return report


def _compute_eeg_arrays(job: ChunkJob, arrays: list[ArrayJob], results, report: ChunkReport) -> None:
    mel_arrays = [a for a in arrays if isinstance(a.params, MelParams)]
    raw_array = next((a for a in arrays if isinstance(a.params, RawParams)), None)
    pending = sorted({r for a in arrays for r in a.rows})
    windows = {a.name: ([], []) for a in mel_arrays}  # rows, (16, W*200) windows
    for eeg_id, rows in _group_rows(job, pending, job.eeg_ids).items():
        path = eeg_path(job.data_dir, job.split, eeg_id)
        segments = [s for s in job.raw_segments if s.eeg_id == eeg_id and raw_array is not None]
        try:
            with _timed(report, "read"):
                eeg = read_eeg(path)
            _process_recording(job, eeg, path, rows, segments, arrays, mel_arrays, raw_array, windows, results, report)
        except Exception as err:  # one broken recording fails its own rows, never the chunk
            reason = str(err) if isinstance(err, KaggleDataError) else f"{path}: unexpected error: {err!r}"
            _fail(arrays, rows, reason, results)
            if raw_array is not None:  # the segments keep zeros; their rows are marked failed
                results[raw_array.name].segments.update({s.position: None for s in segments})
    for a in mel_arrays:
        rows, batch = windows[a.name]
        if rows:
            with _timed(report, "spectrogram"):
                images = mel_windows(np.stack(batch), a.params)
            results[a.name].values.update(zip(rows, images))


def _process_recording(job, eeg, path, rows, segments, arrays, mel_arrays, raw_array, windows, results, report):
    """Check each row's label window, repair NaN, filter, and cut mel windows and raw segments."""
    midline = bool(raw_array and raw_array.params.midline)
    starts = {r: int(round(job.eeg_offsets[r - job.first_row] * SAMPLE_RATE)) for r in rows}
    with _timed(report, "montage"):
        # Work on the span these rows need (plus filter context), not the whole recording.
        wanted = [(s.file_start, s.file_start + s.length) for s in segments]
        wanted += [(st, st + LABEL_SAMPLES) for st in starts.values()]
        lo = max(0, min(a for a, _ in wanted) - FILTER_CONTEXT)
        hi = min(len(eeg), max(b for _, b in wanted) + FILTER_CONTEXT)
        signals = bipolar_signals(eeg[lo:hi], midline=midline)
        good = []
        for row in rows:
            reason, nan_fraction = _check_label_window(signals, starts[row] - lo, len(eeg), path, job, row)
            if reason:
                _fail(arrays, [row], reason, results)
            else:
                good.append(row)
                for a in arrays:
                    results[a.name].repaired[row] = nan_fraction
        if not good and not any(_overlaps(s, lo, hi) for s in segments):
            return  # nothing of this recording is usable here: every row already failed
        filled = fill_nan(signals)
        filtered = {}
        for a in mel_arrays:
            band = a.params.band_pass
            if band not in filtered:
                filtered[band] = band_pass(filled[: len(BIPOLAR_PAIRS)], band, SAMPLE_RATE)
            half = a.params.window_s * SAMPLE_RATE // 2
            for row in good:
                if row in a.rows:
                    centre = starts[row] - lo + LABEL_SAMPLES // 2
                    windows[a.name][0].append(row)
                    windows[a.name][1].append(filtered[band][:, centre - half : centre + half])
        if raw_array is not None:
            raw = scale_raw(band_pass(filled, raw_array.params.band_pass, SAMPLE_RATE), raw_array.params)
            for s in segments:
                results[raw_array.name].segments[s.position] = _cut(raw, s.file_start - lo, s.length)


def _overlaps(segment: RawSegment, lo: int, hi: int) -> bool:
    return segment.file_start < hi and segment.file_start + segment.length > lo


def _check_label_window(signals, start, n_samples, path, job: ChunkJob, row) -> tuple[str, float]:
    """Reason the row's 50 s window is unusable ('' if usable) and its NaN fraction."""
    offset = job.eeg_offsets[row - job.first_row]
    if start < 0 or start + LABEL_SAMPLES > signals.shape[1] or offset < 0:
        return (
            f"{path}: recording is {n_samples / SAMPLE_RATE:.1f} s long; the label window "
            f"[{offset:g}, {offset + LABEL_WINDOW_S:g}) s does not fit",
            0.0,
        )
    nan = np.isnan(signals[: len(BIPOLAR_PAIRS), start : start + LABEL_SAMPLES])
    all_nan = np.flatnonzero(nan.all(axis=1))
    if all_nan.size:
        names = ", ".join(pair_names()[i] for i in all_nan[:4])
        return f"{path}: bipolar signal {names} is all NaN in the label window at {offset:g} s", 0.0
    return "", float(nan.mean())


def _compute_kaggle(job: ChunkJob, array: ArrayJob, result: _ArrayResult, report: ChunkReport) -> None:
    for spectrogram_id, rows in _group_rows(job, array.rows, job.spectrogram_ids).items():
        path = spectrogram_path(job.data_dir, job.split, spectrogram_id)
        try:
            with _timed(report, "read"):
                time_s, power = read_spectrogram(path)
        except Exception as err:  # one broken file fails its own rows, never the chunk
            reason = str(err) if isinstance(err, KaggleDataError) else f"{path}: unexpected error: {err!r}"
            _fail([array], rows, reason, {array.name: result})
            continue
        with _timed(report, "kaggle"):
            for row in rows:
                offset = float(job.spectrogram_offsets[row - job.first_row])
                try:
                    crop, n_rows, nan_fraction = kaggle_crop(time_s, power, offset)
                except ValueError as err:
                    result.errors[row] = f"{path}: {err}"
                    continue
                result.values[row] = crop
                full = crop.shape[-1]
                result.repaired[row] = ((full - n_rows) + nan_fraction * n_rows) / full


def _write_array(job: ChunkJob, group: zarr.Group, array: ArrayJob, result: _ArrayResult) -> None:
    state = open_build_state(group, array.name)
    rows = np.asarray(array.rows)
    if isinstance(array.params, RawParams):
        _write_raw(job, group[array.name], array, result)
    else:
        target = group[array.name]
        values = np.zeros((len(rows),) + target.shape[1:], dtype=np.float16)
        for i, row in enumerate(rows):
            if row in result.values:
                values[i] = result.values[row]
        if array.whole:
            target[rows[0] : rows[-1] + 1] = values
        else:
            target.oindex[rows] = values
    status = np.array([STATUS_FAILED if r in result.errors else STATUS_OK for r in rows], dtype=np.uint8)
    errors = np.array([result.errors.get(r, "") for r in rows], dtype=object).astype(str)
    repaired = np.array([result.repaired.get(r, 0.0) for r in rows], dtype=np.float32)
    if array.whole:
        span = slice(int(rows[0]), int(rows[-1]) + 1)
        state.status[span], state.error[span], state.repaired[span] = status, errors, repaired
    else:
        state.status.oindex[rows], state.error.oindex[rows], state.repaired.oindex[rows] = status, errors, repaired
    state.done[job.chunk] = 1  # last: only now is the chunk trusted


def _write_raw(job: ChunkJob, target: zarr.Array, array: ArrayJob, result: _ArrayResult) -> None:
    segments = [s for s in job.raw_segments if s.position in result.segments]
    if array.whole and job.raw_segments:
        # One write of the chunk's whole aligned region: no read-modify-write of partial chunks.
        first, last = job.raw_segments[0], job.raw_segments[-1]
        region = np.zeros((target.shape[0], last.position + last.length - first.position), np.float16)
        for s in segments:
            values = result.segments[s.position]
            if values is not None:
                region[:, s.position - first.position : s.position - first.position + s.length] = values
        target[:, first.position : first.position + region.shape[1]] = region
        return
    for s in segments:  # a retry: rewrite only the segments of the rows being retried
        values = result.segments[s.position]
        if values is not None:
            target[:, s.position : s.position + s.length] = values


def _cut(signals: np.ndarray, start: int, length: int) -> np.ndarray:
    """signals[:, start:start+length], zero-padded where the span leaves the recording."""
    out = np.zeros((signals.shape[0], length), dtype=np.float16)
    lo, hi = max(start, 0), min(start + length, signals.shape[1])
    if hi > lo:
        out[:, lo - start : hi - start] = signals[:, lo:hi]
    return out


def _group_rows(job: ChunkJob, rows, ids: np.ndarray) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        groups[int(ids[row - job.first_row])].append(int(row))
    return groups


def _fail(arrays, rows, reason: str, results) -> None:
    for a in arrays:
        for row in rows:
            if row in a.rows:
                results[a.name].errors[row] = reason


@contextmanager
def _timed(report: ChunkReport, stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        report.seconds[stage] += time.perf_counter() - start
