"""Kind `kaggle`: crops of Kaggle's own spectrograms, (rows, 4 chains, 100 frequencies, S/2 columns).

`kaggle` is the 10-minute crop of the label's window; `kaggle_{S}s` a crop of S seconds centred on the
same point (hms_prep/kinds/kaggle_crop.py). Rows outside the file are padded with 0 and counted as repaired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hms_prep.domain import CHAINS, SPEC_ROW_S, SPEC_WINDOW_S
from hms_prep.sources.kaggle import SPEC_FREQ_NAMES
from hms_prep.kinds.kaggle_crop import KAGGLE_TRANSFORM, kaggle_crop
from hms_prep.kinds.base import KindParams, SPECTROGRAM, ArrayKind, Cut, register_kind, variant_name
from hms_prep.store.arrays import NORMALISE_ZSCORE


@dataclass(frozen=True)
class KaggleParams(KindParams):
    """The crop window; the transform and padding are fixed parts of the recipe."""

    window_s: int = SPEC_WINDOW_S

    def __post_init__(self):
        window = self.window_s
        if not isinstance(window, int) or isinstance(window, bool) or window < SPEC_ROW_S or window % SPEC_ROW_S:
            raise ValueError(f"Kaggle crop window_s must be a positive multiple of {SPEC_ROW_S} s, got {window!r}")

    @property
    def columns(self) -> int:
        return self.window_s // SPEC_ROW_S

    def to_dict(self) -> dict:
        return {"transform": KAGGLE_TRANSFORM, "nan_power": 0.0, "pad_value": 0.0, "window_s": self.window_s,
                "columns": self.columns, "freqs_hz": list(SPEC_FREQ_NAMES)}


@register_kind
@dataclass(frozen=True)
class KaggleCrop(ArrayKind):
    params: KaggleParams
    kind = "kaggle"
    params_type = KaggleParams
    source = SPECTROGRAM
    default_codec = "zstd"
    stage = "kaggle"
    normalise = NORMALISE_ZSCORE  # log1p power, unscaled: readers z-score each sample's crop

    @property
    def name(self) -> str:
        return variant_name("kaggle", self.params, KaggleParams(), {"window_s": "{}s"})

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (len(CHAINS), len(SPEC_FREQ_NAMES), self.params.columns)

    def coordinates(self) -> dict[str, tuple[np.ndarray, str]]:
        """Kaggle's frequency of each spectrogram row in Hz; each 2 s column's centre in s from the centre of
        the label's window."""
        columns = self.params.columns
        return {"frequency": (np.array([float(f) for f in SPEC_FREQ_NAMES]), "Hz"),
                "time": ((np.arange(columns) + 0.5) * SPEC_ROW_S - self.params.window_s / 2, "s")}

    def cut(self, spectrogram, rows: frozenset[int]) -> Cut:
        cut = Cut()
        for row in spectrogram.span.rows:
            if row.row not in rows:
                continue
            try:
                crop, n_rows, nan_fraction = kaggle_crop(spectrogram.time, spectrogram.power,
                                                         row.spectrogram_offset_s, self.params.window_s)
            except ValueError as err:
                cut.errors[row.row] = f"{spectrogram.span.path}: {err}"
                continue
            cut.values[row.row] = crop
            full = crop.shape[-1]
            cut.repaired[row.row] = ((full - n_rows) + nan_fraction * n_rows) / full
        return cut

    @staticmethod
    def title(params: dict) -> str:
        seconds = params["window_s"]
        span = f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"
        freqs = params["freqs_hz"]
        return f"Kaggle {span} · log1p power, z-scored · {freqs[0]}-{freqs[-1]} Hz"
