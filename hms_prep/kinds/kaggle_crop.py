"""The crop of a Kaggle spectrogram for one label row: 10 minutes by default, or any window of S
seconds centred on the same point (the centre of the label's 10-minute window).

Transform (KAGGLE_TRANSFORM = "log1p"): NaN power is set to 0, then log1p. A time row missing from
the file stays at the padding value 0 (= log1p of zero power) at its own position, so the time axis
is never shifted by a gap or by the end of the file.
"""

from __future__ import annotations

import numpy as np

from hms_prep.domain import CHAINS, SPEC_ROW_S, SPEC_WINDOW_S
from hms_prep.sources.kaggle import SPEC_FREQ_NAMES

KAGGLE_TRANSFORM = "log1p"
CROP_ROWS = SPEC_WINDOW_S // SPEC_ROW_S  # 300 time columns of 2 s in the default crop


def kaggle_crop(time: np.ndarray, power: np.ndarray, offset_s: float,
                window_s: int = SPEC_WINDOW_S) -> tuple[np.ndarray, int, float]:
    """Crop rows with time in [start, start + window_s) -> (crop, n_rows, nan_fraction), where
    start = offset + (600 - window_s) / 2 (= offset for the 10-minute crop).

    `time` (rows,) seconds and `power` (rows, 400) as returned by `read_spectrogram`.
    `crop` is float32 (4, 100, window_s / 2): chain (LL, RL, LP, RP) x frequency ascending x time, with
    row `time` at column (time - start) // 2. `n_rows` counts the real rows found (window_s / 2 when
    complete); `nan_fraction` is the fraction of NaN values among them. ValueError when no row falls in
    the window or every value of those that do is NaN: the row fails, and is computed again once its file
    changes.
    """
    start = offset_s + (SPEC_WINDOW_S - window_s) // 2
    columns_total = window_s // SPEC_ROW_S
    inside = (time >= start) & (time < start + window_s)
    n_rows = int(inside.sum())
    if n_rows == 0:
        raise ValueError(_no_rows_message(time, offset_s, start, window_s))
    found = power[inside]
    nan = np.isnan(found)
    if nan.all():  # nothing to crop: all zeros would pass for a quiet recording (the EEG kinds fail it too)
        raise ValueError(f"spectrogram is all NaN in [{start}, {start + window_s}) s ({n_rows} rows): nothing to "
                         "crop")
    columns = ((time[inside] - start) // SPEC_ROW_S).astype(np.int64)
    by_time = np.zeros((columns_total, power.shape[1]), dtype=np.float32)
    by_time[columns] = np.log1p(np.where(nan, np.float32(0), found))
    crop = by_time.reshape(columns_total, len(CHAINS), len(SPEC_FREQ_NAMES)).transpose(1, 2, 0)
    return np.ascontiguousarray(crop), n_rows, float(nan.mean())


def _no_rows_message(time: np.ndarray, offset_s: float, start: float, window_s: int) -> str:
    first, last = int(time.min()), int(time.max())
    if start > last:
        where = "past the end of"
    elif start + window_s <= first:
        where = "before the start of"
    else:
        where = "inside a gap of"
    return (
        f"spectrogram offset {offset_s} s is {where} the spectrogram: no rows with time in "
        f"[{start}, {start + window_s}) s; the file covers time {first}..{last} s"
    )
