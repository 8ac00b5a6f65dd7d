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
    or booleans without nulls; anything else (strings, nulls) through pyarrow's own to_numpy."""
    if isinstance(column, pa.ChunkedArray):
        # no chunks: an empty array of its type (combine_chunks would import pandas to make one)
        column = (column.chunk(0) if column.num_chunks == 1 else column.combine_chunks() if column.num_chunks
                  else pa.nulls(0, column.type))
    if column.type == pa.bool_() and not column.null_count:  # bits, the first in the lowest
        bits = np.frombuffer(column.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, count=column.offset + len(column), bitorder="little")[column.offset:].view(bool)
    dtype = _NUMPY_TYPES.get(column.type)
    if dtype is None or column.null_count:
        return column.to_numpy(zero_copy_only=False)
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(column.buffers()[1], dtype=dtype, count=len(column), offset=column.offset * itemsize)


def arrow_column(values: np.ndarray) -> pa.Array:
    """A numpy array of numbers or booleans as an Arrow array without `pa.array`, whose check of its
    argument imports pandas (0.5 s of a no-op build, issue 27); the inverse of `numpy_column`."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:  # Arrow holds booleans as bits, the first in the lowest
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    arrow_type = pa.from_numpy_dtype(values.dtype)
    if arrow_type not in _NUMPY_TYPES:
        raise TypeError(f"arrow_column: {values.dtype} is not a fixed-width number or boolean")
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def string_column(values: list[str]) -> pa.Array:
    """Python strings as an Arrow string array without `pa.array` (which imports pandas, as above)."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def names_column(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """The string array whose row i is names[codes[i]] (a status column: "ok", "failed", ...), made without
    a Python string per row: `string_column` costs about 3 us a row, 2 s of a no-op build of the real data."""
    encoded = [name.encode() for name in names]
    sizes = np.array([len(e) for e in encoded], dtype=np.int32)
    table = np.zeros((len(encoded), max(int(sizes.max(initial=0)), 1)), dtype=np.uint8)
    for i, e in enumerate(encoded):
        table[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    codes = np.asarray(codes, dtype=np.intp)
    lengths = sizes[codes]
    offsets = np.zeros(len(codes) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = table[codes][np.arange(table.shape[1]) < lengths[:, None]]  # each row's name, in row order
    return pa.Array.from_buffers(pa.string(), len(codes), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def sparse_string_column(n: int, values: dict[int, str]) -> pa.Array:
    """A string array of `n` rows, "" except at the rows of `values` (the error column: few rows have one)."""
    rows = sorted(values)
    encoded = [values[row].encode() for row in rows]
    lengths = np.zeros(n, dtype=np.int32)
    lengths[rows] = [len(e) for e in encoded]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])
