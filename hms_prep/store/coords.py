"""Coordinate arrays, so that xarray reads a store by label and in physical units:

    ds = xr.open_zarr(STORE)
    ds.sel(label_id=LABEL_ID)                 one row of every per-row array (test stores: eeg_id=...)
    ds.eeg_10s.sel(eeg_10s_frequency=slice(2, 8))   mel bands by centre frequency in Hz

Each is a 1-D array named as the dimension it labels (xarray makes it that dimension's index):

    label_id (test: eeg_id)   int64    the row's key, on the per-row dimension (named after the key)
    chain                     string   LL, RL, LP, RP
    {array}_frequency         float64  Hz: a mel band's centre (eeg_mel), a Kaggle column's frequency (kaggle)
    {array}_time              float64  s from the centre of the label's window to a frame's centre
    {array}_signal            string   a signals array's signal names (Fp1-F7, ...)

Signals arrays keep their own `sample` dimension (segments of recordings, indexed per row by
labels.parquet's raw_* columns): no coordinate is meaningful along it. A kind's own axes get what its
`ArrayKind.coordinates()` gives (a plug-in kind's: none unless it says). Arrays are created with the key's dimension name (kinds/base.py); every build writes the
coordinates that are missing or stale at its end (`write_coordinates`), computing nothing else, so a store
built before coordinates existed gets them, and its arrays the key's name, from its next `hms-prep build`
(decisions.md).
Each carries `COORDINATE_ATTRIBUTE`, by which the store's survey tells it from a data array.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import zarr

from hms_prep.columns import numpy_column
from hms_prep.domain import CHAINS
from hms_prep.store.labels import ROW_KEY
from hms_prep.store.arrays import COORDINATE_ATTRIBUTE, ArrayDescription, dimension_names
from hms_prep.store.layout import read_metadata_bytes, write_metadata

ROW_AXIS = "row"  # the axis the key's dimension replaces


def store_dimension_names(name: str, axes: tuple[str, ...], split: str) -> tuple[str, ...]:
    """An array's dimensions as a store with coordinates names them: the per-row one after the key."""
    return tuple(ROW_KEY[split] if dim == ROW_AXIS else dim for dim in dimension_names(name, axes))


def wanted_coordinates(split: str, labels: pa.Table, axes: dict[str, dict[str, tuple[np.ndarray, str]]]
                       ) -> dict[str, tuple[np.ndarray, str]]:
    """Every coordinate the store needs (`labels`: its labels.parquet; `axes`: each data array's own axes'
    values and units, as its kind gives them, `ArrayKind.coordinates`): {name: (values, units)}."""
    key = ROW_KEY[split]
    order = np.argsort(numpy_column(labels.column("row")))
    wanted = {key: (numpy_column(labels.column(key))[order].astype(np.int64), ""), "chain": (np.array(CHAINS), "")}
    for name, own in axes.items():
        wanted.update({f"{name}_{axis}": values for axis, values in own.items()})
    return wanted


def write_coordinates(group: zarr.Group, split: str, labels: pa.Table, descriptions: dict[str, ArrayDescription],
                      axes: dict[str, dict[str, tuple[np.ndarray, str]]]) -> list[str]:
    """Write the coordinates that are missing or differ (rows added), and name the per-row dimension of a
    data array built before them after the key; returns what was written. A store that has them all is
    not written to."""
    written = []
    for name, (values, units) in wanted_coordinates(split, labels, axes).items():
        if _stored(group, name, values):
            continue
        attrs = {COORDINATE_ATTRIBUTE: True, **({"units": units} if units else {})}
        dtype = str if values.dtype.kind == "U" else values.dtype  # names: zarr's variable-length strings
        array = group.create_array(name, shape=values.shape, chunks=values.shape, dtype=dtype,
                                   dimension_names=(name,), attributes=attrs, overwrite=True)
        array[...] = values
        written.append(name)
    for name, description in descriptions.items():
        path = f"{name}/zarr.json"
        metadata = json.loads(read_metadata_bytes(group, path))
        want = list(store_dimension_names(name, description.axes, split))
        if metadata.get("dimension_names") != want:
            metadata["dimension_names"] = want
            write_metadata(group, path, json.dumps(metadata, indent=2).encode())
            written.append(path)
    return written


def _stored(group: zarr.Group, name: str, values: np.ndarray) -> bool:
    """Whether the store holds coordinate `name` with exactly `values`."""
    data = read_metadata_bytes(group, f"{name}/zarr.json")
    if data is None or not json.loads(data).get("attributes", {}).get(COORDINATE_ATTRIBUTE):
        return False
    stored = group[name][...]
    return stored.shape == values.shape and bool(np.all(stored == values))
