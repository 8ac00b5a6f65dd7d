"""Each array's build state under _build/{array}/: per chunk whether it is done, per row its status,
error and repaired fraction. A reader refuses an array with chunks not done (`require_finished`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from hms_prep.store.codecs import checksum_failures, read_whole
from hms_prep.store.layout import StoreError, StoreLayout

BUILD_GROUP = "_build"

STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = ("pending", "ok", "failed")  # labels.parquet's status columns, by code


BUILD_STATE_ARRAYS = ("done", "status", "error", "repaired")


@dataclass(frozen=True)
class BuildState:
    """Per-array completion bookkeeping, each piece chunked so a task only writes chunks it owns."""

    done: zarr.Array
    status: zarr.Array
    error: zarr.Array
    repaired: zarr.Array


def create_build_state(group: zarr.Group, name: str, layout: StoreLayout) -> BuildState:
    """The array's build state, checksummed like the data: a damaged flag or status chunk is found
    (`read_state`) and its chunk recomputed, never trusted."""
    sub = group.require_group(f"{BUILD_GROUP}/{name}")
    checked = dict(compressors=(ZstdCodec(level=0), Crc32cCodec()))
    # dimensions named, so that xarray's open_datatree opens the whole store (open_zarr skips this group)
    per_row = dict(shape=(layout.n_rows,), chunks=(layout.chunk_rows,), dimension_names=("row",), **checked)
    return BuildState(
        done=sub.create_array("done", shape=(layout.n_chunks,), chunks=(1,), dimension_names=("chunk",),
                              dtype="uint8", fill_value=0, **checked),
        status=sub.create_array("status", dtype="uint8", fill_value=STATUS_PENDING, **per_row),
        error=sub.create_array("error", dtype=str, **per_row),
        repaired=sub.create_array("repaired", dtype="float32", fill_value=0.0, **per_row),
    )


# Attribute of `_build/{name}`: when (unix seconds) the last build that computed rows of the array started.
# A failed row is computed again only when a file it is cut from changed after that (hms_prep/building/plan.py).
FAILURES_TRIED_AT = "failures_tried_at"


def failures_tried_at(group: zarr.Group, name: str) -> float | None:
    """None for arrays built before this was recorded: their failed rows are all retried once."""
    value = group[f"{BUILD_GROUP}/{name}"].attrs.get(FAILURES_TRIED_AT)
    return float(value) if value is not None else None


def record_failures_tried(group: zarr.Group, name: str, started: float) -> None:
    group[f"{BUILD_GROUP}/{name}"].attrs[FAILURES_TRIED_AT] = started


def open_build_state(group: zarr.Group, name: str) -> BuildState:
    sub = group[f"{BUILD_GROUP}/{name}"]
    return BuildState(done=sub["done"], status=sub["status"], error=sub["error"], repaired=sub["repaired"])


def chunks_not_done(group: zarr.Group, name: str) -> tuple[list[int], int]:
    """The chunks of array `name` whose done flag is unset or unreadable (a build has still to compute
    them), and how many chunks it has."""
    done, damaged = read_state(open_build_state(group, name).done)
    return sorted({*np.flatnonzero(done == 0).tolist(), *damaged}), len(done)


def require_finished(url: str, group: zarr.Group, names) -> None:
    """StoreError naming every array of `names` with chunks not done (a build crashed, was killed or is
    still running): a reader never takes their unwritten values for data."""
    unfinished = []
    for name in names:
        missing, total = chunks_not_done(group, name)
        if missing:
            unfinished.append(f"{name} {len(missing)} of {total}")
    if unfinished:
        raise StoreError(f"{url}: not finished, chunks not done in {', '.join(unfinished)}; run `hms-prep build` "
                         "(the command that made it) again to finish it")


def read_errors(state: BuildState, rows) -> dict[int, str]:
    """The error string of each of `rows` ("" for a row without one, or in a damaged chunk). Only the
    chunks holding them are read: a store of the real data has thousands, a handful with failures."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    step, n = state.error.chunks[0], state.error.shape[0]
    reasons = {}
    for chunk in np.unique(rows // step).tolist():
        try:
            values = state.error[chunk * step : min((chunk + 1) * step, n)]
        except Exception:  # zarr raises plain ValueError/RuntimeError for a bad chunk
            values = None
        for row in rows[rows // step == chunk].tolist():
            value = None if values is None else values[row - chunk * step]
            reasons[row] = "" if value is None else str(value)
    return reasons


def damaged_state_chunks(array: zarr.Array) -> list[int]:
    """The chunks of a build-state array that cannot be trusted (checksum, truncation): by their checksums
    alone where the store allows, which the error strings need (read whole through zarr, they would cost a
    no-op build of the real data seconds)."""
    damaged = checksum_failures(array)
    return read_state(array)[1] if damaged is None else damaged


def read_state(array: zarr.Array) -> tuple[np.ndarray, list[int]]:
    """All values of a build-state array and the chunks that could not be read (damaged: checksum
    mismatch or truncated), read as the fill value. Local stores: every chunk file read directly, on
    threads (`codecs.read_whole`); otherwise one zarr read when nothing is damaged."""
    fast = read_whole(array)
    if fast is not None:
        return fast
    try:
        return array[:], []
    except Exception:  # zarr raises plain ValueError/RuntimeError for a bad chunk; find which
        pass
    values = np.full(array.shape, array.fill_value, dtype=array.dtype)
    step, damaged = array.chunks[0], []
    for chunk, start in enumerate(range(0, array.shape[0], step)):
        try:
            values[start : start + step] = array[start : start + step]
        except Exception:
            damaged.append(chunk)
    return values, damaged
