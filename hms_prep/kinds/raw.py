"""Kind `raw`: the bipolar signals themselves for 1D models, (signals, samples), stored per recording
segment rather than per row (hms_prep/sources/rows.py lays the segments out; labels.parquet's raw_start,
raw_lo, raw_hi index them). Named `raw`, or `raw_{digest}` for other params.

Variants share one segment layout, so every raw array of a store has the same `margin_s`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import zarr

from hms_prep.domain import SAMPLE_RATE
from hms_prep.kinds.base import KindParams, EEG, ArrayKind, Cut, register_kind, variant_name
from hms_prep.sources.montage import NAN_REPAIR, pair_names
from hms_prep.sources.recordings import SEGMENTS_SPAN
from hms_prep.sources.rows import RawSegment
from hms_prep.store.labels import RAW_INDEX_COLUMNS
from hms_prep.sources.signal_filter import BAND_PASS_FILTER, check_band, scale_raw
from hms_prep.store.arrays import ROLE_SIGNALS, SIGNAL_AXES, STORAGE_SEGMENT
from hms_prep.store.layout import StoreLayout


@dataclass(frozen=True)
class RawParams(KindParams):
    """How the raw bipolar signals of the store are made (for 1D models)."""

    band_pass: tuple[float, float] | None = (0.5, 20.0)
    clip_uv: float = 1024.0
    divide_by: float = 32.0
    midline: bool = True  # 18 signals (16 + Fz-Cz, Cz-Pz) instead of 16
    margin_s: int = 10  # extra seconds kept each side of every label window, for jitter

    def __post_init__(self):
        # Normalise numbers so that equal parameters always give the same digest.
        if self.band_pass is not None:
            low, high = (float(f) for f in self.band_pass)
            check_band(low, high, SAMPLE_RATE)
            object.__setattr__(self, "band_pass", (low, high))
        object.__setattr__(self, "clip_uv", float(self.clip_uv))
        object.__setattr__(self, "divide_by", float(self.divide_by))
        if self.clip_uv <= 0 or self.divide_by <= 0:
            raise ValueError(f"clip_uv and divide_by must be positive, got {self.clip_uv}, {self.divide_by}")
        if not isinstance(self.margin_s, int) or isinstance(self.margin_s, bool) or self.margin_s < 0:
            raise ValueError(f"margin_s must be a non-negative integer, got {self.margin_s!r}")

    def to_dict(self) -> dict:
        """All fields plus the fixed parts of the recipe; JSON-able."""
        return {
            **asdict(self),
            "band_pass": list(self.band_pass) if self.band_pass is not None else None,
            "band_pass_filter": BAND_PASS_FILTER,
            "band_pass_span": SEGMENTS_SPAN if self.band_pass is not None else None,
            "nan_repair": NAN_REPAIR,
            "sample_rate": SAMPLE_RATE,
            "pairs": list(pair_names(self.midline)),
            "scaling": "clip(x, -clip_uv, clip_uv) / divide_by",
        }


@register_kind
@dataclass(frozen=True)
class RawSignals(ArrayKind):
    params: RawParams
    kind = "raw"
    params_type = RawParams
    source = EEG
    default_codec = "lz4"
    stage = "montage"
    storage = STORAGE_SEGMENT
    role = ROLE_SIGNALS

    @property
    def name(self) -> str:
        return variant_name("raw", self.params, RawParams(), {})

    @property
    def needs_midline(self) -> bool:
        return self.params.midline

    @property
    def signals(self) -> tuple[str, ...]:
        return pair_names(self.params.midline)

    def geometry(self) -> dict:
        return {"signals": list(self.signals), "axes": list(SIGNAL_AXES), "sample_rate": SAMPLE_RATE,
                "index_columns": list(RAW_INDEX_COLUMNS)}

    def coordinates(self) -> dict[str, tuple[np.ndarray, str]]:
        """The signals' names (Fp1-F7, ...); the sample axis runs over segments of recordings: none."""
        return {"signal": (np.array(self.signals), "")}

    def shape_and_chunks(self, layout: StoreLayout, segments_length: int) -> tuple[tuple, tuple]:
        """Every segment of the store's layout along axis 1, chunked by `layout.raw_chunk_samples`."""
        return (len(self.signals), segments_length), (len(self.signals), layout.raw_chunk_samples)

    def cut(self, recording, rows: frozenset[int]) -> Cut:
        """Every segment of the recording, filtered and scaled (values keyed by segment position; zeros
        where a segment leaves the recording)."""
        errors = {r: reason for r, reason in recording.midline_errors.items() if r in rows and self.params.midline}
        first, signals = recording.segments(self.params.band_pass)
        if signals is None:
            return Cut(errors=errors)
        raw = scale_raw(signals[: len(self.signals)], self.params)
        return Cut(values={s.position: _cut(raw, s.file_start - first, s.length) for s in recording.span.segments},
                   errors=errors)

    def write(self, target: zarr.Array, rows: tuple[int, ...], whole: bool, cut: Cut,
              segments: tuple[RawSegment, ...]) -> None:
        """The chunk's whole aligned region in one write; a retry rewrites only its rows' segments.
        Segments of unreadable recordings keep zeros (their rows are marked failed)."""
        if whole and segments:
            # One write of the whole region, to the end of its last chunk (zeros past the last segment, as a
            # fresh store holds; the next task's region starts on the next chunk): no read-modify-write of a
            # partial chunk, so --repair rewrites a damaged one instead of failing to decode it.
            first, last = segments[0], segments[-1]
            step = target.chunks[1]
            end = min(-(-(last.position + last.length) // step) * step, target.shape[1])
            region = np.zeros((target.shape[0], end - first.position), np.float16)
            for position, values in cut.values.items():
                region[:, position - first.position : position - first.position + values.shape[1]] = values
            target[:, first.position : end] = region
            return
        for position, values in cut.values.items():
            target[:, position : position + values.shape[1]] = values

    @staticmethod
    def title(params: dict) -> str:
        band = params.get("band_pass")
        band_text = f"band-pass {band[0]:g}-{band[1]:g} Hz, " if band else ""
        return f"{band_text}clipped to ±{params['clip_uv']:g} µV, divided by {params['divide_by']:g}"


def _cut(signals: np.ndarray, start: int, length: int) -> np.ndarray:
    """signals[:, start:start+length], zero-padded where the span leaves the recording."""
    out = np.zeros((signals.shape[0], length), dtype=np.float16)
    lo, hi = max(start, 0), min(start + length, signals.shape[1])
    if hi > lo:
        out[:, lo - start : hi - start] = signals[:, lo:hi]
    return out
