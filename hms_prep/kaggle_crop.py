"""The 10-minute crop of a Kaggle spectrogram for one label row.

Transform (KAGGLE_TRANSFORM = "log1p"): NaN power is set to 0, then log1p. A time row missing from
the file stays at the padding value 0 (= log1p of zero power) at its own position, so the time axis
is never shifted by a gap or by the end of the file.
"""

from __future__ import annotations

import numpy as np

from hms_prep.kaggle import CHAINS, SPEC_FREQ_NAMES, SPEC_ROW_S, SPEC_WINDOW_S

KAGGLE_TRANSFORM = "log1p"
CROP_ROWS = SPEC_WINDOW_S // SPEC_ROW_S  # 300 time columns of 2 s


def kaggle_crop(time: np.ndarray, power: np.ndarray, offset_s: float) -> tuple[np.ndarray, int, float]:
    """Crop rows with time in [offset, offset + 600) -> (crop, n_rows, nan_fraction).

    `time` (rows,) seconds and `power` (rows, 400) as returned by `read_spectrogram`.
    `crop` is float32 (4, 100, 300): chain (LL, RL, LP, RP) x frequency ascending x time, with row
    `time` at column (time - offset) // 2. `n_rows` counts the real rows found (300 when complete);
    `nan_fraction` is the fraction of NaN values among them.
    """
    inside = (time >= offset_s) & (time < offset_s + SPEC_WINDOW_S)
    n_rows = int(inside.sum())
    if n_rows == 0:
        raise ValueError(_no_rows_message(time, offset_s))
    found = power[inside]
    nan = np.isnan(found)
    columns = ((time[inside] - offset_s) // SPEC_ROW_S).astype(np.int64)
    by_time = np.zeros((CROP_ROWS, power.shape[1]), dtype=np.float32)
    by_time[columns] = np.log1p(np.where(nan, np.float32(0), found))
    crop = by_time.reshape(CROP_ROWS, len(CHAINS), len(SPEC_FREQ_NAMES)).transpose(1, 2, 0)
    return np.ascontiguousarray(crop), n_rows, float(nan.mean())


def _no_rows_message(time: np.ndarray, offset_s: float) -> str:
    first, last = int(time.min()), int(time.max())
    if offset_s > last:
        where = "past the end of"
    elif offset_s + SPEC_WINDOW_S <= first:
        where = "before the start of"
    else:
        where = "inside a gap of"
    return (
        f"spectrogram offset {offset_s} s is {where} the spectrogram: no rows with time in "
        f"[{offset_s}, {offset_s + SPEC_WINDOW_S}) s; the file covers time {first}..{last} s"
    )
