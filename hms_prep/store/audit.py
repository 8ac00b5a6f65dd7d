"""`hms-prep info` and `hms-prep verify`: what a store holds, and whether it can be trusted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from hms_prep.store.codecs import ChunkError, ChunkSource, codec_of
from hms_prep.domain import TARGET_COLUMNS
from hms_prep.store.arrays import (STORAGES, ArrayDescription, data_array_order, describe_arrays, store_problems,
                                   survey_arrays)
from hms_prep.store.build_state import (STATUS_FAILED, STATUS_NAMES, STATUS_OK, STATUS_PENDING,
                                        damaged_state_chunks, open_build_state, read_state)
from hms_prep.store.labels import (RAW_INDEX_COLUMNS, ROW_IDENTITY, ROW_KEY, live_rows, read_labels,
                                   read_labels_if_readable, read_row_table, row_table_file, row_table_of, with_targets)
from hms_prep.store.layout import StoreError, StoreLayout, digest, open_store, store_nbytes


@dataclass(frozen=True)
class DamagedChunk:
    """A stored chunk that fails its checksum, cannot be decoded, or is missing though its rows are done."""

    array: str
    coords: tuple[int, ...]
    reason: str
    row_chunks: tuple[int, ...]  # the build's chunks of rows that rewrite it
    rows: tuple[int, int]  # first and last row whose values it holds

    def line(self) -> str:
        return f"{self.reason}; rows {self.rows[0]}-{self.rows[1]} (rebuild with hms-prep build --repair)"


def damaged_chunks(url: str, group, name: str, layout: StoreLayout, raw_bounds: np.ndarray | None = None,
                   values_check=None) -> list[DamagedChunk]:
    """Every done chunk of array `name` read back and checked (checksum, size, presence) through the
    same fast path the trainer reads with. `raw_bounds`: (rows, 2) [raw_lo, raw_hi) of each row, for an
    array stored in segments. `values_check(block)` may add a reason for a chunk that decodes."""
    array = group[name]
    done, _ = read_state(open_build_state(group, name).done)
    status, _ = read_state(open_build_state(group, name).status)
    source, codec = ChunkSource(url, array), codec_of(array)
    damaged = []
    for coords, row_chunks, rows in _stored_chunks(array, layout, raw_bounds):
        if not row_chunks or not all(done[c] for c in row_chunks):
            continue  # not built yet: nothing to trust
        where = source.where(coords)
        try:
            block = _read_chunk(array, source, codec, coords, where)
            if block is None and (status[rows[0] : rows[1] + 1] == STATUS_OK).any():
                raise ChunkError(f"{where} is missing, though its rows are built")
            reason = values_check(block) if values_check is not None and block is not None else None
            if reason:
                raise ChunkError(f"{where} holds {reason}")
        except ChunkError as err:
            damaged.append(DamagedChunk(name, coords, str(err), tuple(row_chunks), rows))
    return damaged


def _stored_chunks(array, layout: StoreLayout, raw_bounds):
    """(chunk coords, row chunks that write it, (first row, last row)) of every chunk of the array."""
    if array.shape[0] == layout.n_rows and raw_bounds is None:  # per-row: chunk c holds rows of chunk c
        for c in range(layout.n_chunks):
            rows = layout.chunk_slice(c)
            yield (c,) + (0,) * (array.ndim - 1), (c,), (rows.start, rows.stop - 1)
        return
    step = array.chunks[1]
    lo, hi = raw_bounds[:, 0], raw_bounds[:, 1]
    for j in range(-(-array.shape[1] // step)):
        rows = np.flatnonzero((lo < (j + 1) * step) & (hi > j * step))
        row_chunks = sorted({int(r) // layout.chunk_rows for r in rows})
        span = (int(rows[0]), int(rows[-1])) if rows.size else (0, -1)
        yield (0, j), row_chunks, span


def _read_chunk(array, source: ChunkSource, codec, coords, where: str) -> np.ndarray | None:
    if codec is not None:
        return source.read(coords, codec, np.empty(array.chunks, dtype=array.dtype))
    if source(coords) is None:
        return None
    try:  # a codec chain we do not decode ourselves: through zarr
        index = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, array.chunks))
        return array[index]
    except Exception as err:
        raise ChunkError(f"{where} cannot be read ({type(err).__name__}: {err})") from None


def store_info(url: str) -> dict:
    """Rows, arrays (shape, chunks, codec, completeness, what they are and how to read them) and size of
    a store, JSON-able; arrays whose metadata is damaged are listed apart, each with its problems."""
    group, layout = open_store(url)
    states = survey_arrays(group)
    complete = [name for name in data_array_order(states) if states[name].complete]
    arrays = {}
    for name, described in describe_arrays(group, complete).items():
        array = group[name]
        state = open_build_state(group, name)
        status, _ = read_state(state.status)
        arrays[name] = {
            "shape": list(array.shape),
            "chunks": list(array.chunks),
            "dtype": str(array.dtype),
            "codec": [type(c).__name__ + _codec_detail(c) for c in array.compressors],
            "chunks_done": int(read_state(state.done)[0].sum()),
            "chunks_total": int(layout.n_chunks),
            "rows_ok": int((status == STATUS_OK).sum()),
            "rows_failed": int((status == STATUS_FAILED).sum()),
            "kind": described.kind,
            "storage": described.storage,
            "role": described.role,
            "normalise": described.normalise,
            "params": described.params,
            "params_digest": described.params_digest,
        }
    return {
        "store": url,
        "layout_version": layout.layout_version,
        "split": layout.split,
        "rows": layout.n_rows,
        "rows_dropped": _dropped(url),
        "chunk_rows": layout.chunk_rows,
        "folds": layout.n_folds,
        "bytes": store_nbytes(url),
        "arrays": arrays,
        "damaged": [problem.line() for problem in metadata_problems(group, states)],
    }


def _dropped(url: str) -> int:
    """Rows kept as dropped (their label_id left the CSV), by labels.parquet; 0 when it cannot be read."""
    labels = read_labels_if_readable(url)
    return 0 if labels is None else int((~live_rows(labels)).sum())


def _codec_detail(codec) -> str:
    for attr in ("cname", "level", "clevel"):
        if hasattr(codec, attr):
            value = getattr(codec, attr)
            return f"({getattr(value, 'value', value)})"
    return ""


def verify_store(url: str) -> list[str]:
    """Problems found, one line each naming the file or array, chunk and rows (empty when the store is
    complete and consistent). Everything is checked whatever else is wrong: a store whose build was
    stopped lists what is not done."""
    group, layout = open_store(url)
    states = survey_arrays(group)
    problems = [f"{problem.line()}; hms-prep build --repair rewrites it" for problem in metadata_problems(group, states)]
    try:
        labels = read_labels(url)
    except StoreError as err:
        labels = None
        problems.append(str(err).removeprefix(f"{url}: ").removeprefix(f"{url}/"))
    if labels is not None:
        problems += _verify_labels(labels, layout)
    row_table = read_row_table(url, layout.rows_digest) if layout.layout_version >= 2 and layout.n_rows else None
    if layout.layout_version >= 2 and layout.n_rows and row_table is None:
        problems.append(f"{row_table_file(layout.rows_digest)}: missing or unreadable; hms-prep build rewrites it from "
                        "labels.parquet")
    complete = [name for name in data_array_order(states) if states[name].complete]
    described = describe_arrays(group, complete)
    if not described and not any(state.damaged for state in states.values()):
        problems.append("the store holds no arrays")
    raw_bounds = None
    if labels is not None and all(c in labels.column_names for c in RAW_INDEX_COLUMNS) and labels.num_rows == layout.n_rows:
        raw_bounds = np.stack([labels.column(c).to_numpy() for c in RAW_INDEX_COLUMNS[1:]], 1)
    if labels is not None and row_table is not None and labels.num_rows == layout.n_rows:
        problems += labels_against_store(labels, row_table, layout, group, list(described))
    changing = _rows_in_change(group, described, layout)
    if changing:  # resized for other rows than the layout names: chunks cannot be mapped to rows yet
        problems.append(f"{', '.join(changing)}: resized for a change of rows that stopped before it took effect "
                        f"(the store's layout names {layout.n_rows} rows); hms-prep build finishes the change, or "
                        "with the old train.csv rolls it back")
    for description in described.values():
        if description.name not in changing:
            problems += _verify_array(url, group, description, layout, raw_bounds, labels is not None)
    if labels is not None and "status" in labels.column_names:
        failed = int(np.sum(labels.column("status").to_numpy(zero_copy_only=False) == "failed"))
        if failed:
            problems.append(f"{failed} rows failed to build (see the 'error' column of labels.parquet)")
    return problems


def _rows_in_change(group, described: dict, layout: StoreLayout) -> list[str]:
    """The arrays whose rows or build state were resized by a change of rows (hms_prep/building/placement.py
    `commit_rows`) that was stopped before the root's layout named the new rows."""
    changing = []
    for name, description in described.items():
        state = open_build_state(group, name)
        sizes = [state.done.shape[0] == layout.n_chunks, state.status.shape[0] == layout.n_rows]
        if description.per_row:
            sizes.append(description.shape[0] == layout.n_rows)
        if not all(sizes):
            changing.append(name)
    return changing


def metadata_problems(group, states: dict) -> list:
    """The damaged metadata files of the store (an array's, its build state's, the `_build` group's)."""
    return [*store_problems(group), *(p for state in states.values() if state.damaged for p in state.problems)]


def _verify_labels(labels, layout: StoreLayout) -> list[str]:
    problems = []
    if labels.num_rows != layout.n_rows:
        problems.append(f"labels.parquet has {labels.num_rows} rows, the store {layout.n_rows}")
    elif "row" not in labels.column_names or not np.array_equal(labels.column("row").to_numpy(),
                                                                np.arange(layout.n_rows)):
        problems.append("labels.parquet column 'row' is not 0..n-1 in order")
    counted = labels.filter(pc.greater(labels["total_votes"], 0)) if "total_votes" in labels.column_names else labels
    if layout.split == "train" and counted.num_rows and all(c in labels.column_names for c in TARGET_COLUMNS):
        targets = np.stack([counted.column(c).to_numpy() for c in TARGET_COLUMNS], 1)
        if not np.allclose(targets.sum(1), 1.0, atol=1e-4):
            problems.append("targets do not sum to 1 on every row")
    return problems


def labels_against_store(labels, row_table, layout: StoreLayout, group=None, arrays=()) -> list[str]:
    """labels.parquet held against what the store says: the rows' keys, ids, offsets, dropped flags and raw
    index as its row table places them; the totals, targets and folds its own vote and patient columns give
    (`with_targets`: votes may be corrected in train.csv without moving a row, so the row table's are not
    the reference); with `group`, each array's row statuses in its build state (of `arrays`, those whose
    metadata is whole). One line per column that differs, naming its first differing row."""
    placed = ("row", ROW_KEY[layout.split], *ROW_IDENTITY, "dropped", *RAW_INDEX_COLUMNS)
    columns = {name: row_table.column(name).to_numpy(zero_copy_only=False) for name in placed
               if name in row_table.column_names}
    if layout.split == "train":
        try:
            derived = with_targets(row_table_of(labels), layout.split, layout.n_folds)
        except KeyError as err:  # a vote or patient column missing
            return [f"labels.parquet lacks column {err}; hms-prep build rewrites it"]
        for name in ("total_votes", *TARGET_COLUMNS, "fold"):
            columns[name] = derived.column(name).to_numpy(zero_copy_only=False)
    if group is not None:
        names = np.array(STATUS_NAMES, dtype=object)
        for name in arrays:
            status, _ = read_state(open_build_state(group, name).status)
            if status.shape[0] == layout.n_rows:  # else a change of rows in progress, named apart
                columns[f"status_{name}"] = names[status]
    problems = []
    for name, want in columns.items():
        if name not in labels.column_names:
            problems.append(f"labels.parquet lacks column {name!r} that the store's rows give; hms-prep build "
                            "rewrites it")
            continue
        have = labels.column(name).to_numpy(zero_copy_only=False)
        same = (have == want) | (_isnan(have) & _isnan(want)) if have.dtype.kind == "f" else have == want
        if not np.all(same):
            row = int(np.flatnonzero(~same)[0])
            problems.append(f"labels.parquet column {name!r} differs from what the store's rows and build state "
                            f"give (first at row {row}: {have[row]!r}, expected {want[row]!r}); hms-prep build "
                            "rewrites it")
    return problems


def _isnan(values: np.ndarray) -> np.ndarray:
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, dtype=bool)


def _verify_array(url: str, group, described: ArrayDescription, layout, raw_bounds, has_labels: bool) -> list[str]:
    """The array checked from what it says of itself (storage, params): no kind's code is needed, so a
    store with a plug-in kind verifies without the plug-in (whatever its role: that is the model's concern)."""
    name = described.name
    if described.storage not in STORAGES:
        return [f"{name}: storage {described.storage!r} is not one of {', '.join(STORAGES)}; this hms-prep cannot "
                "read it"]
    problems = []
    if described.params_digest != digest(described.params):
        problems.append(f"{name}: params_digest {described.params_digest} does not match its params "
                        f"({digest(described.params)}); the array was edited by hand")
    state = open_build_state(group, name)
    for part in ("done", "status", "error", "repaired"):
        bad = damaged_state_chunks(getattr(state, part))
        if bad:
            problems.append(f"{name}: build state _build/{name}/{part} chunks {bad} damaged "
                            "(checksum mismatch); hms-prep build recomputes them")
    done, _ = read_state(state.done)
    missing = np.flatnonzero(done == 0)
    if missing.size:
        problems.append(f"{name}: {missing.size} of {layout.n_chunks} chunks not complete (first: {missing[0]})")
    status, _ = read_state(state.status)
    in_done = np.repeat(done, layout.chunk_rows)[: layout.n_rows].astype(bool)
    pending = np.flatnonzero(in_done & (status[: layout.n_rows] == STATUS_PENDING))
    if pending.size:
        problems.append(f"{name}: {pending.size} rows not computed (first: row {pending[0]}); hms-prep build "
                        "computes them")
    if not described.per_row and raw_bounds is None:
        if not has_labels:  # labels.parquet itself is named missing: an unfinished build, not damage
            return problems + [f"{name}: its chunks are checked once hms-prep build has rewritten labels.parquet"]
        return problems + [f"{name}: labels.parquet lacks {', '.join(RAW_INDEX_COLUMNS)}; its chunks cannot be "
                           "mapped to rows"]

    def finite(block):
        return None if np.isfinite(block).all() else "non-finite values"

    bounds = None if described.per_row else raw_bounds
    problems += [f"{name}: {d.line()}" for d in damaged_chunks(url, group, name, layout, bounds, finite)]
    return problems
