"""The files array kinds are cut from, opened once per chunk: one EEG recording around the chunk's rows
(bipolar, label windows checked, NaN repaired, band-passed once per band), or one Kaggle spectrogram.

A build task groups its rows by file (`spans`), opens each file once (`open_file`) and hands the
opened file to every kind of that source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hms_prep.domain import LABEL_SAMPLES, LABEL_WINDOW_S, SAMPLE_RATE
from hms_prep.sources.kaggle import eeg_path, read_eeg, read_spectrogram, spectrogram_path
from hms_prep.sources.montage import BIPOLAR_PAIRS, bipolar_signals, fill_nan, pair_names
from hms_prep.sources.rows import PlannedRow, RawSegment
from hms_prep.sources.signal_filter import band_pass

EEG, SPECTROGRAM = "eeg", "spectrogram"  # the Kaggle file an array kind's values are cut from
SOURCES = (EEG, SPECTROGRAM)

FILTER_CONTEXT = 10 * SAMPLE_RATE  # samples read beyond the needed span so filter edges settle


@dataclass(frozen=True)
class RecordingSpan:
    """The rows of one chunk that share a file, and (EEG) the raw segments cut from that recording."""

    source: str  # EEG or SPECTROGRAM
    path: Path
    rows: tuple[PlannedRow, ...]
    segments: tuple[RawSegment, ...] = ()


FILES: dict[str, tuple[Callable, Callable[[PlannedRow], int]]] = {  # source -> (path of a file id, a row's file id)
    EEG: (eeg_path, lambda row: row.eeg_id),
    SPECTROGRAM: (spectrogram_path, lambda row: row.spectrogram_id),
}


def source_path(source: str, data_dir: str, split: str, row: PlannedRow) -> Path:
    """The Kaggle file that `row`'s values of `source` are cut from."""
    path_of, file_of = FILES[source]
    return path_of(data_dir, split, file_of(row))


def spans(source: str, data_dir: str, split: str, rows, segments: tuple[RawSegment, ...]) -> list[RecordingSpan]:
    """`rows` grouped by their file of `source`, in order of first appearance; an EEG span takes the
    `segments` of its recording."""
    path_of, file_of = FILES[source]
    grouped: dict[int, list[PlannedRow]] = {}
    for row in rows:
        grouped.setdefault(file_of(row), []).append(row)
    return [RecordingSpan(source, path_of(data_dir, split, file_id), tuple(group),
                          tuple(s for s in segments if s.eeg_id == file_id) if source == EEG else ())
            for file_id, group in grouped.items()]


@dataclass
class EegRecording:
    """Bipolar signals of one recording over the span its rows and segments need (plus filter context).

    `signals` is None when nothing here is usable (every row failed, no segment overlaps the file).
    """

    span: RecordingSpan
    first_sample: int  # the recording's sample held in column 0 of `signals`
    signals: np.ndarray | None  # (16 or 18, samples) float32, NaN repaired
    good: tuple[PlannedRow, ...]  # rows whose label window is usable
    errors: dict[int, str]  # row -> why its label window is unusable
    repaired: dict[int, float]  # row -> NaN fraction of its label window
    midline_errors: dict[int, str] = field(default_factory=dict)  # row -> Fz-Cz/Cz-Pz all NaN (fails raw only)
    _filtered: dict = field(default_factory=dict, repr=False)

    @property
    def usable(self) -> bool:
        return self.signals is not None

    def filtered(self, band: tuple[float, float] | None) -> np.ndarray:
        """The signals band-passed (None: as they are), once per band for every kind that asks."""
        if band not in self._filtered:
            self._filtered[band] = band_pass(self.signals, band, SAMPLE_RATE)
        return self._filtered[band]

    def label_centre(self, row: PlannedRow) -> int:
        """Column of `signals` at the centre of the row's 50 s label window."""
        return _label_start(row) - self.first_sample + LABEL_SAMPLES // 2


@dataclass(frozen=True)
class SpectrogramFile:
    span: RecordingSpan
    time: np.ndarray  # (rows,) seconds
    power: np.ndarray  # (rows, 400)
    errors: dict[int, str] = field(default_factory=dict)  # nothing is checked per row on opening
    repaired: dict[int, float] = field(default_factory=dict)
    usable = True


def open_eeg(span: RecordingSpan, midline: bool, timer) -> EegRecording:
    """Read the recording, check each row's label window, repair NaN over the needed span."""
    with timer("read"):
        eeg = read_eeg(span.path)
    with timer("montage"):
        # Work on the span these rows need (plus filter context), not the whole recording.
        wanted = [(s.file_start, s.file_start + s.length) for s in span.segments]
        wanted += [(_label_start(r), _label_start(r) + LABEL_SAMPLES) for r in span.rows]
        lo = max(0, min(a for a, _ in wanted) - FILTER_CONTEXT)
        hi = min(len(eeg), max(b for _, b in wanted) + FILTER_CONTEXT)
        signals = bipolar_signals(eeg[lo:hi], midline=midline)
        errors, repaired = {}, {}
        for row in span.rows:
            reason, nan_fraction = _check_label_window(signals, _label_start(row) - lo, len(eeg), span.path, row)
            if reason:
                errors[row.row] = reason
            else:
                repaired[row.row] = nan_fraction
        midline_errors = {}
        if midline:  # the midline pairs feed only the raw kind: an all-NaN one fails that kind's row
            for row in span.rows:
                start = _label_start(row) - lo
                window = signals[len(BIPOLAR_PAIRS):, max(start, 0) : start + LABEL_SAMPLES]
                dead = [pair_names(True)[len(BIPOLAR_PAIRS) + i] for i in np.flatnonzero(np.isnan(window).all(1))]
                if dead and row.row not in errors:
                    midline_errors[row.row] = (f"{span.path}: bipolar signal {', '.join(dead)} is all NaN in the "
                                               f"label window at {row.eeg_offset_s:g} s")
        good = tuple(r for r in span.rows if r.row not in errors)
        usable = good or any(s.file_start < hi and s.file_start + s.length > lo for s in span.segments)
        filled = fill_nan(signals) if usable else None
    return EegRecording(span, lo, filled, good, errors, repaired, midline_errors)


def open_spectrogram(span: RecordingSpan, midline: bool, timer) -> SpectrogramFile:
    with timer("read"):
        return SpectrogramFile(span, *read_spectrogram(span.path))


OPENERS: dict[str, Callable] = {EEG: open_eeg, SPECTROGRAM: open_spectrogram}


def open_file(span: RecordingSpan, midline: bool, timer) -> EegRecording | SpectrogramFile:
    """Open the span's file for the kinds of its source; `midline`: EEG kinds need Fz-Cz, Cz-Pz."""
    return OPENERS[span.source](span, midline, timer)


def _label_start(row: PlannedRow) -> int:
    return int(round(row.eeg_offset_s * SAMPLE_RATE))


def _check_label_window(signals, start: int, n_samples: int, path, row: PlannedRow) -> tuple[str, float]:
    """Reason the row's 50 s window is unusable ('' if usable) and its NaN fraction."""
    offset = row.eeg_offset_s
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
