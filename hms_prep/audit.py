"""`hms-prep info` and `hms-prep verify`: what a store holds, and whether it can be trusted."""

from __future__ import annotations

import numpy as np

from hms_prep.domain import TARGET_COLUMNS
from hms_prep.kinds import kind_named
from hms_prep.store import (
    STATUS_FAILED,
    STATUS_OK,
    digest,
    data_array_names,
    open_build_state,
    open_store,
    read_labels,
    store_nbytes,
)


def store_info(url: str) -> dict:
    """Rows, arrays (shape, chunks, codec, completeness, parameters) and size of a store, JSON-able."""
    group, layout = open_store(url)
    arrays = {}
    for name in data_array_names(group):
        array = group[name]
        state = open_build_state(group, name)
        status = state.status[:]
        attrs = array.attrs.asdict()
        arrays[name] = {
            "shape": list(array.shape),
            "chunks": list(array.chunks),
            "dtype": str(array.dtype),
            "codec": [type(c).__name__ + _codec_detail(c) for c in array.compressors],
            "chunks_done": int(state.done[:].sum()),
            "chunks_total": int(layout.n_chunks),
            "rows_ok": int((status == STATUS_OK).sum()),
            "rows_failed": int((status == STATUS_FAILED).sum()),
            "kind": attrs.get("kind"),
            "params": attrs.get("params", {}),
            "params_digest": attrs.get("params_digest"),
        }
    return {
        "store": url,
        "layout_version": layout.layout_version,
        "split": layout.split,
        "rows": layout.n_rows,
        "chunk_rows": layout.chunk_rows,
        "folds": layout.n_folds,
        "bytes": store_nbytes(url),
        "arrays": arrays,
    }


def _codec_detail(codec) -> str:
    for attr in ("cname", "level", "clevel"):
        if hasattr(codec, attr):
            value = getattr(codec, attr)
            return f"({getattr(value, 'value', value)})"
    return ""


def verify_store(url: str) -> list[str]:
    """Problems found (empty when the store is complete and consistent)."""
    group, layout = open_store(url)
    problems = []
    labels = read_labels(url)
    if labels.num_rows != layout.n_rows:
        problems.append(f"labels.parquet has {labels.num_rows} rows, the store {layout.n_rows}")
    elif not np.array_equal(labels.column("row").to_numpy(), np.arange(layout.n_rows)):
        problems.append("labels.parquet column 'row' is not 0..n-1 in order")
    if layout.split == "train" and labels.num_rows:
        targets = np.stack([labels.column(c).to_numpy() for c in TARGET_COLUMNS], 1)
        if not np.allclose(targets.sum(1), 1.0, atol=1e-4):
            problems.append("targets do not sum to 1 on every row")
    names = data_array_names(group)
    if not names:
        problems.append("the store holds no arrays")
    for name in names:
        problems += _verify_array(group, name, layout)
    if "status" in labels.column_names:
        failed = int(np.sum(labels.column("status").to_numpy(zero_copy_only=False) == "failed"))
        if failed:
            problems.append(f"{failed} rows failed to build (see the 'error' column of labels.parquet)")
    return problems


def _verify_array(group, name: str, layout) -> list[str]:
    array = group[name]
    attrs = array.attrs.asdict()
    try:
        kind = kind_named(attrs.get("kind"))
    except KeyError as err:
        return [f"{name}: {err.args[0]}"]
    problems = []
    if attrs.get("params_digest") != digest(attrs.get("params")):
        problems.append(f"{name}: params_digest {attrs.get('params_digest')} does not match its params "
                        f"({digest(attrs.get('params'))}); the array was edited by hand")
    state = open_build_state(group, name)
    missing = np.flatnonzero(state.done[:] == 0)
    if missing.size:
        problems.append(f"{name}: {missing.size} of {layout.n_chunks} chunks not complete (first: {missing[0]})")
    if kind.per_row and array.shape[0] != layout.n_rows:
        problems.append(f"{name}: {array.shape[0]} rows, the store has {layout.n_rows}")
    axis = 0 if kind.per_row else 1  # rows, or the sample axis of segment-stored signals
    step, length = array.chunks[axis], array.shape[axis]
    for start in range(0, length, step):  # one chunk at a time keeps memory flat
        block = array[start : start + step] if axis == 0 else array[:, start : start + step]
        if not np.isfinite(block).all():
            problems.append(f"{name}: non-finite values in the chunk starting at {start}")
            break
    return problems
