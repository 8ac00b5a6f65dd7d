"""Arrow columns as numpy arrays without pyarrow's `to_numpy`, whose first call imports pandas: about 0.5 s
of a quiet machine's no-op build or `info` (issue 27), for columns this project reads as plain numbers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NUMPY_TYPES = {
    pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
    pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64,
    pa.float32(): np.float32, pa.float64(): np.float64,
}


def numpy_column(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of a fixed-width numeric column without nulls as numpy (a copy when it had several chunks);
    anything else (strings, booleans, nulls) through pyarrow's own to_numpy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dtype = _NUMPY_TYPES.get(column.type)
    if dtype is None or column.null_count:
        return column.to_numpy(zero_copy_only=False)
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(column.buffers()[1], dtype=dtype, count=len(column), offset=column.offset * itemsize)
