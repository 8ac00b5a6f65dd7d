"""The files array kinds are cut from, opened once per chunk: one EEG recording around the chunk's rows
(bipolar, label windows checked, NaN repaired), or one Kaggle spectrogram.

A build task groups its rows by file (`spans`), opens each file once (`open_file`) and hands the
opened file to every kind of that source.

A value must never depend on what else a task computes (which arrays, which rows: a repair of one
chunk, an array added later): NaNs are repaired with each signal's mean over the whole recording, and
a band-pass runs over a span fixed by what is cut (`band_passed`): a row's label window
(`label_window`), or the raw segments of the recording in the chunk, the store's layout (`segments`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hms_prep.domain import LABEL_SAMPLES, LABEL_WINDOW_S, SAMPLE_RATE
from hms_prep.registry import Registry
from hms_prep.sources.kaggle import eeg_path, read_eeg, read_spectrogram, spectrogram_path
from hms_prep.sources.montage import BIPOLAR_PAIRS, bipolar_signals, fill_nan, finite_means, pair_names
from hms_prep.sources.rows import PlannedRow, RawSegment
from hms_prep.sources.signal_filter import band_pass

EEG, SPECTROGRAM = "eeg", "spectrogram"  # the Kaggle file an array kind's values are cut from
# source -> its opener `open(span, midline, timer)`; details: `path_of(data_dir, split, file_id)` and
# `file_of(row)` (a row's file id). Registered below, in this order (a chunk's task opens them so).
SOURCES: Registry[Callable] = Registry("source", "sources", settings=False)

FILTER_CONTEXT = 10 * SAMPLE_RATE  # samples filtered beyond a span either side, so its edges settle
# The span a band-pass of an EEG kind runs over, recorded in its params.
LABEL_WINDOW_SPAN = f"each row's 50 s label window and {FILTER_CONTEXT // SAMPLE_RATE} s either side"
SEGMENTS_SPAN = (f"a chunk's raw segments of a recording, first to last, and {FILTER_CONTEXT // SAMPLE_RATE} s "
                 "either side")


@dataclass(frozen=True)
class RecordingSpan:
    """The rows of one chunk that share a file, and (EEG) the raw segments cut from that recording."""

    source: str  # EEG or SPECTROGRAM
    path: Path
    rows: tuple[PlannedRow, ...]
    segments: tuple[RawSegment, ...] = ()


def source_path(source: str, data_dir: str, split: str, row: PlannedRow) -> Path:
    """The Kaggle file that `row`'s values of `source` are cut from."""
    details = SOURCES.entry(source).details
    return details["path_of"](data_dir, split, details["file_of"](row))


def spans(source: str, data_dir: str, split: str, rows, segments: tuple[RawSegment, ...]) -> list[RecordingSpan]:
    """`rows` grouped by their file of `source`, in order of first appearance; an EEG span takes the
    `segments` of its recording."""
    path_of, file_of = SOURCES.entry(source).details["path_of"], SOURCES.entry(source).details["file_of"]
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
    n_samples: int  # the recording's length
    signals: np.ndarray | None  # (16 or 18, samples) float32, NaN repaired with the recording's means
    good: tuple[PlannedRow, ...]  # rows whose label window is usable
    errors: dict[int, str]  # row -> why its label window is unusable
    repaired: dict[int, float]  # row -> NaN fraction of its label window
    midline_errors: dict[int, str] = field(default_factory=dict)  # row -> Fz-Cz/Cz-Pz all NaN (fails raw only)
    _band_passed: dict = field(default_factory=dict, repr=False)

    @property
    def usable(self) -> bool:
        return self.signals is not None

    def band_passed(self, band: tuple[float, float] | None, start: int, stop: int) -> np.ndarray:
        """Recording samples [start, stop) (inside the recording and the span read) band-passed (None: as
        they are), filtered over exactly them and FILTER_CONTEXT either side: equal requests give equal
        values, whatever else the task reads. Once per (band, span) for every kind that asks."""
        key = (band, start, stop)
        if key not in self._band_passed:
            lo, hi = max(0, start - FILTER_CONTEXT), min(self.n_samples, stop + FILTER_CONTEXT)
            span = self.signals[:, lo - self.first_sample : hi - self.first_sample]
            self._band_passed[key] = band_pass(span, band, SAMPLE_RATE)[:, start - lo : stop - lo]
        return self._band_passed[key]

    def label_window(self, row: PlannedRow, band: tuple[float, float] | None = None) -> np.ndarray:
        """(16 or 18, LABEL_SAMPLES): the row's 50 s label window (a row of `good`), band-passed over
        LABEL_WINDOW_SPAN; a W-second window centred on the label is its middle W seconds."""
        start = _label_start(row)
        return self.band_passed(band, start, start + LABEL_SAMPLES)

    def centred_window(self, row: PlannedRow, window_s: int, band: tuple[float, float] | None = None) -> np.ndarray:
        """(16 or 18, window_s * 200): the middle window_s seconds of the row's label window."""
        first = LABEL_SAMPLES // 2 - window_s * SAMPLE_RATE // 2
        return self.label_window(row, band)[:, first : first + window_s * SAMPLE_RATE]

    def segments(self, band: tuple[float, float] | None) -> tuple[int, np.ndarray | None]:
        """(first recording sample, signals) of the part of the recording that the span's raw segments
        cover, first to last, band-passed over SEGMENTS_SPAN; signals None when no segment overlaps it."""
        start = max(0, min(s.file_start for s in self.span.segments))
        stop = min(self.n_samples, max(s.file_start + s.length for s in self.span.segments))
        return start, self.band_passed(band, start, stop) if stop > start else None


@dataclass(frozen=True)
class SpectrogramFile:
    span: RecordingSpan
    time: np.ndarray  # (rows,) seconds
    power: np.ndarray  # (rows, 400)
    errors: dict[int, str] = field(default_factory=dict)  # nothing is checked per row on opening
    repaired: dict[int, float] = field(default_factory=dict)
    usable = True


def open_eeg(span: RecordingSpan, midline: bool, timer) -> EegRecording:
    """Read the recording, check each row's label window, repair NaN over the needed span with the means
    of the whole recording (montage.NAN_REPAIR)."""
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
        filled = None
        if usable:  # the means of the whole recording only when there is anything to repair
            means = finite_means(bipolar_signals(eeg, midline=midline)) if np.isnan(signals).any() else None
            filled = fill_nan(signals, means)
    return EegRecording(span, lo, len(eeg), filled, good, errors, repaired, midline_errors)


def open_spectrogram(span: RecordingSpan, midline: bool, timer) -> SpectrogramFile:
    with timer("read"):
        return SpectrogramFile(span, *read_spectrogram(span.path))


SOURCES.register(EEG, open_eeg, path_of=eeg_path, file_of=lambda row: row.eeg_id)
SOURCES.register(SPECTROGRAM, open_spectrogram, path_of=spectrogram_path, file_of=lambda row: row.spectrogram_id)


def open_file(span: RecordingSpan, midline: bool, timer) -> EegRecording | SpectrogramFile:
    """Open the span's file for the kinds of its source; `midline`: EEG kinds need Fz-Cz, Cz-Pz."""
    return SOURCES[span.source](span, midline, timer)


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
