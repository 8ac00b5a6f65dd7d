"""The store's rows across train.csv changes: read the row table the root names, place the CSV's rows by
label_id (`assign_rows`), lay out the raw segments, and commit a change.

A row keeps its position once given one. A corrected line (the same label_id, another EEG, spectrogram or
offset) is computed again in place; a new line is appended; a line gone from the CSV stays, marked dropped,
and no reader uses it. Everything else is reused. A change takes effect in one metadata write, the root's
layout naming the new row table, after the arrays have grown and the rows and raw chunks to recompute have
been marked not done: a build killed at any point before leaves the old rows in force, with nothing
marked that the old rows need, and the next build makes the same change again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import zarr

from hms_prep.building.plan import check_params, segment_margin
from hms_prep.kinds import ArrayKind
from hms_prep.columns import arrow_column, numpy_column
from hms_prep.sources.rows import (RawSegment, RowAssignment, assign_rows, legacy_rows_digest, plan_raw_segments,
                                   rows_digest)
from hms_prep.store.arrays import describe_arrays
from hms_prep.store.build_state import STATUS_PENDING, open_build_state
from hms_prep.store.labels import (RAW_INDEX_COLUMNS, read_labels_if_readable, read_row_table, remove_labels,
                                   remove_other_row_tables, row_table_file, row_table_of, with_targets, write_row_table)
from hms_prep.store.layout import LAYOUT_VERSION, StoreError, StoreLayout, commit_layout


@dataclass(frozen=True, eq=False)
class RowPlan:
    """The CSV's rows placed in the store, their raw segments, and the layout that holds them."""

    layout: StoreLayout  # the store's layout with these rows (the current one when nothing changes)
    planned: pa.Table  # every row in store order, with targets and folds (hms_prep.store.labels.with_targets)
    table: pa.Table  # the row table to store: the CSV's lines, row, dropped, the raw index when laid out
    assignment: RowAssignment
    margin: int | None  # margin_s of the raw segment layout; None: no array is stored in segments
    segments: list[list[RawSegment]]  # per chunk of rows
    raw_index: np.ndarray  # per row: raw_start, raw_lo, raw_hi
    raw_length: int  # samples along axis 1 of an array stored in segments
    relocated: tuple[int, ...]  # chunks whose raw segments are laid out anew (their rows changed)
    commit: bool  # the row table differs from the one the root names
    described: dict = field(repr=False)  # the store's arrays as placing found them (`describe_arrays`)


def stored_row_table(url: str, layout: StoreLayout, csv: pa.Table, say) -> pa.Table | None:
    """The row table of the store (None: it has no rows yet). A layout-2 store's is the file its root names,
    rewritten from labels.parquet when that file is lost; a layout-1 store's, the CSV's rows when its digest
    still matches, else labels.parquet's. StoreError when neither can be had."""
    if layout.n_rows == 0:
        return None
    if layout.layout_version >= 2:
        table = read_row_table(url, layout.rows_digest)
        if table is not None and np.array_equal(numpy_column(table.column("row")), np.arange(layout.n_rows)):
            return table
        labels = read_labels_if_readable(url)
        if labels is not None and rows_digest(row_table_of(labels), layout.split) == layout.rows_digest:
            write_row_table(url, row_table_of(labels), layout.rows_digest)
            say(f"{url}/{row_table_file(layout.rows_digest)}: missing or unreadable; rewrote it from labels.parquet")
            return row_table_of(labels)
        raise StoreError(f"{url}/{row_table_file(layout.rows_digest)}: missing or unreadable, and labels.parquet "
                         "cannot stand in for it; the store's rows are lost with it: build into a new --store")
    fresh = assign_rows(csv, layout.split).table
    if legacy_rows_digest(fresh) == layout.rows_digest:
        return fresh
    labels = read_labels_if_readable(url)
    if labels is not None and labels.num_rows == layout.n_rows and legacy_rows_digest(labels) == layout.rows_digest:
        return row_table_of(labels)
    raise StoreError(f"{url}: built from another {layout.split}.csv by an older hms-prep (layout 1), and its "
                     "labels.parquet, which would say which rows it holds, is missing or unreadable: build into a "
                     "new --store")


def place_rows(url: str, group: zarr.Group, layout: StoreLayout, csv: pa.Table, stored: pa.Table | None,
               requested: dict[str, ArrayKind], n_folds: int) -> RowPlan:
    """Where the CSV's rows go and what that changes; reads only. StoreError before anything is written
    when an asked array exists with other params, or the raw arrays would disagree on their segments."""
    check_params(url, group, requested)
    described = describe_arrays(group)
    margin = segment_margin(url, described, requested)
    assignment = assign_rows(csv, layout.split, stored)
    planned = with_targets(assignment.table, layout.split, n_folds)
    n_rows = planned.num_rows
    table = assignment.table.drop_columns(["source_index"])
    relocated: tuple[int, ...] = ()
    segments, raw_index, raw_length = [[] for _ in range(-(-n_rows // layout.chunk_rows))], \
        np.zeros((n_rows, 3), dtype=np.int64), layout.raw_chunk_samples
    if margin is not None:
        has_segments = any(not d.per_row for d in described.values())
        stored_index = stored_raw_index(stored, layout, margin) if has_segments else None
        if stored_index is not None:
            touched = np.concatenate([assignment.changed, assignment.added])
            relocated = tuple(sorted(set((touched // layout.chunk_rows).tolist())))
        segments, raw_index, raw_length = plan_raw_segments(planned, layout.chunk_rows, margin,
                                                            layout.raw_chunk_samples, stored_index, relocated)
        for j, column in enumerate(RAW_INDEX_COLUMNS):
            table = table.append_column(column, arrow_column(raw_index[:, j]))
    digest = rows_digest(table, layout.split)
    if layout.layout_version < 2:
        commit = assignment.changes  # a layout-1 store stays as it is until its rows change
    else:
        commit = digest != layout.rows_digest
    new_layout = dataclasses.replace(layout, n_rows=n_rows, rows_digest=digest, layout_version=LAYOUT_VERSION) \
        if commit else layout
    return RowPlan(new_layout, planned, table, assignment, margin, segments, raw_index, raw_length, relocated, commit,
                   described)


def stored_raw_index(stored: pa.Table | None, layout: StoreLayout, margin: int) -> np.ndarray | None:
    """The raw index the store's segments were written with (it has an array stored in segments): its row
    table's, or for a store that never recorded one (layout 1), the one-pass layout of its rows that it
    was built with."""
    if stored is None:
        return None
    if all(c in stored.column_names for c in RAW_INDEX_COLUMNS):
        return np.stack([numpy_column(stored.column(c)) for c in RAW_INDEX_COLUMNS], 1)
    return plan_raw_segments(stored, layout.chunk_rows, margin, layout.raw_chunk_samples)[1]


def fit_arrays(group: zarr.Group, described: dict, layout: StoreLayout, raw_length: int, grow: bool = True) -> None:
    """Every complete array (`described`) and its build state resized to `layout`'s rows and chunks
    (`raw_length` samples for signal arrays), only shrunk when not `grow`: a change of rows killed before it
    took effect grew them, and a build with the old rows fits them back."""
    for name, description in described.items():
        array, state = group[name], open_build_state(group, name)
        wanted = [(array, (layout.n_rows, *array.shape[1:]) if description.per_row else (array.shape[0], raw_length)),
                  (state.done, (layout.n_chunks,)),
                  *((part, (layout.n_rows,)) for part in (state.status, state.error, state.repaired))]
        for part, shape in wanted:
            if tuple(part.shape) != shape and (grow or all(a <= b for a, b in zip(shape, part.shape))):
                part.resize(shape)


def commit_rows(url: str, group: zarr.Group, old: StoreLayout, rows: RowPlan) -> StoreLayout:
    """Make `rows` the store's rows: the row table written under its own name; every array grown to the
    new rows and raw length; the changed and new rows of image arrays, and the relocated chunks of signal
    arrays, marked to compute; labels.parquet removed (it lists the old rows); then the root's layout
    rewritten to name the new table (the one write that makes the change), and the old table removed."""
    new = rows.layout
    write_row_table(url, rows.table, new.rows_digest)
    pending_rows = np.concatenate([rows.assignment.changed, np.arange(old.n_rows, new.n_rows)]).astype(np.int64)
    with zarr.config.set({"array.write_empty_chunks": True}):  # state chunks stay stored (codecs.py)
        fit_arrays(group, rows.described, new, rows.raw_length)
        for name, description in rows.described.items():
            state = open_build_state(group, name)
            if len(pending_rows):
                state.status.oindex[pending_rows] = STATUS_PENDING
            if new.n_chunks > old.n_chunks:
                state.done[old.n_chunks:] = 0
            if not description.per_row and rows.relocated:
                state.done.oindex[np.asarray(rows.relocated)] = 0
    if rows.assignment.changes:
        remove_labels(url)  # it lists the old rows
    commit_layout(group, new)
    remove_other_row_tables(url, new.rows_digest)
    return new
