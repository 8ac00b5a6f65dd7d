"""`hms-prep compact STORE`: reclaim the raw regions that row changes left behind.

A chunk of rows whose rows change gets its raw segments laid out again after the last stored segment
(hms_prep/building/placement.py), so its old region stays in the signal arrays, unread. Compaction moves every
chunk's region (its segments, from its first raw_lo to the raw chunk boundary after its last raw_hi) to
where a store built in one pass would put it: chunk after chunk from sample 0, each on a raw chunk
boundary. A region moves whole, so its values are copied, never recomputed: bit for bit those the reader
read before.

Crash safety follows the row change's rule: data is written only where the row table in force points
nowhere, and a move takes effect in one metadata write, the root's layout naming a row table with the
new raw index. A region whose target another live region still holds is first staged after the last live
sample and committed there; then every region goes to its target, committed again; then the arrays are
shrunk. labels.parquet (which repeats the raw index) follows each commit: the new one is written beside the
new row table before the commit (`_rows/{digest}.labels.parquet`), the current one moved beside its own
table, and after the commit the new one moved into place. A compaction killed at any write leaves the
store at its old or its new rows with the data they name; the next `hms-prep compact` (or a build) puts
labels.parquet back and finishes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from hms_prep.sources.rows import rows_digest
from hms_prep.store.arrays import describe_arrays
from hms_prep.store.build_state import require_finished
from hms_prep.store.labels import (
    RAW_INDEX_COLUMNS, read_labels_if_readable, read_row_table, remove_other_row_tables, row_table_file, write_row_table,
)
from hms_prep.store.layout import (
    LABELS_FILE, ROWS_FOLDER, StoreError, StoreLayout, commit_layout, normalize_url, open_store, store_nbytes,
)
from hms_prep.store.lock import build_lock


@dataclass(frozen=True)
class Region:
    """The raw samples [start, end) one chunk of rows holds: its segments, to the next raw chunk boundary."""

    chunk: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Compaction:
    """What `compact` did: the signal arrays' length along the sample axis before and after, the regions
    moved, and the store's size on disk before and after."""

    arrays: tuple[str, ...]
    samples_before: int
    samples_after: int
    regions_moved: int
    bytes_before: int
    bytes_after: int

    def line(self, url: str) -> str:
        if not self.regions_moved and self.samples_before == self.samples_after:
            return f"{url}: nothing to compact ({', '.join(self.arrays) or 'no raw array'})"
        return (f"{url}: compacted {', '.join(self.arrays)}: {self.regions_moved} chunk regions moved, "
                f"{self.samples_before:,} -> {self.samples_after:,} samples; store "
                f"{self.bytes_before / 2**20:.1f} -> {self.bytes_after / 2**20:.1f} MiB")


def compact_store(url: str) -> Compaction:
    """Move every chunk's raw region to its one-pass place and shrink the signal arrays (see the module's
    doc). StoreError, before anything is written, for a store that is not finished or whose labels.parquet
    does not match its rows; StoreLocked when a build holds it."""
    url = normalize_url(url)
    open_store(url)  # StoreError naming the URL when no store is there (before the lock file is made)
    with build_lock(url):
        group, layout = open_store(url, mode="r+")
        signals = [d.name for d in describe_arrays(group).values() if not d.image]
        before = store_nbytes(url)
        if not signals or layout.layout_version < 2 or not layout.n_rows:
            return Compaction(tuple(signals), 0, 0, 0, before, before)  # one-pass layout: nothing left behind
        _restore_labels(url, layout)
        require_finished(url, group, signals)
        table, labels = _row_table_and_labels(url, layout)
        samples_before = group[signals[0]].shape[1]
        index = _raw_index(table)
        regions = chunk_regions(index, layout)
        targets = one_pass_regions(regions, layout.raw_chunk_samples)
        if any(r.start != t.start for r, t in zip(regions, targets)):
            live_end = max(r.end for r in regions)
            blocked = [r for r, t in zip(regions, targets) if r.start != t.start and r.start < targets[-1].end]
            if blocked:  # staged after every live sample, where nothing points
                staged, position = list(regions), max(live_end, targets[-1].end)
                for r in blocked:
                    staged[r.chunk] = Region(r.chunk, position, position + r.length)
                    position += r.length
                table, labels, layout = _move(url, group, signals, layout, table, labels, regions, staged)
                regions = staged
            table, labels, layout = _move(url, group, signals, layout, table, labels, regions, targets)
        length = max(targets[-1].end, layout.raw_chunk_samples)
        with zarr.config.set({"array.write_empty_chunks": True}):
            for name in signals:
                if group[name].shape[1] != length:
                    group[name].resize((group[name].shape[0], length))  # drops the chunks past the end
        moved = sum(r.start != t.start for r, t in zip(chunk_regions(index, layout), targets))
        return Compaction(tuple(signals), samples_before, length, moved, before, store_nbytes(url))


def chunk_regions(index: np.ndarray, layout: StoreLayout) -> list[Region]:
    """Per chunk of rows, the raw region its rows' segments occupy (`index`: per row raw_start, raw_lo, raw_hi)."""
    step, regions = layout.raw_chunk_samples, []
    for chunk, lo in enumerate(range(0, layout.n_rows, layout.chunk_rows)):
        rows = index[lo: lo + layout.chunk_rows]
        start, end = int(rows[:, 1].min()), int(rows[:, 2].max())
        regions.append(Region(chunk, start, -(-end // step) * step))
    return regions


def one_pass_regions(regions: list[Region], step: int) -> list[Region]:
    """The regions one after the other from sample 0, as a one-pass build lays them out (each starts on a
    raw chunk boundary: hms_prep/sources/rows.py `plan_raw_segments`)."""
    placed, position = [], 0
    for r in regions:
        placed.append(Region(r.chunk, position, position + r.length))
        position += r.length  # lengths are whole raw chunks
    return placed


def _move(url: str, group: zarr.Group, signals: list[str], layout: StoreLayout, table: pa.Table, labels: pa.Table,
          regions: list[Region], targets: list[Region]):
    """Copy each region that moves to its target (where the row table in force points nowhere), then make
    the targets the store's raw index: the new row table and labels.parquet written beside it, the current
    labels.parquet moved beside its table, the root's layout rewritten (the moment the move takes effect),
    the new labels.parquet moved into place."""
    end = max(t.end for t in targets)
    with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk stays stored (codecs.py)
        for name in signals:
            array = group[name]
            if array.shape[1] < end:
                array.resize((array.shape[0], end))
            for r, t in zip(regions, targets):
                if r.start != t.start:
                    array[:, t.start: t.end] = array[:, r.start: r.end]
    shift = np.zeros(layout.n_rows, dtype=np.int64)
    for r, t in zip(regions, targets):
        shift[r.chunk * layout.chunk_rows: (r.chunk + 1) * layout.chunk_rows] = t.start - r.start
    index = _raw_index(table) + shift[:, None]
    table, labels = _with_raw_index(table, index), _with_raw_index(labels, index)
    new = dataclasses.replace(layout, rows_digest=rows_digest(table, layout.split))
    write_row_table(url, table, new.rows_digest)
    fs, path = _fs(url)
    stash = f"{path}/{_stashed_labels(new.rows_digest)}"
    with fs.open(stash + ".tmp", "wb") as f:
        pq.write_table(labels, f, compression="zstd")
    fs.mv(stash + ".tmp", stash)
    fs.mv(f"{path}/{LABELS_FILE}", f"{path}/{_stashed_labels(layout.rows_digest)}")
    commit_layout(group, new)
    fs.mv(f"{path}/{_stashed_labels(new.rows_digest)}", f"{path}/{LABELS_FILE}")
    remove_other_row_tables(url, new.rows_digest)
    return table, labels, new


def _restore_labels(url: str, layout: StoreLayout) -> None:
    """labels.parquet put back from beside the row table in force, where a killed compaction left it."""
    fs, path = _fs(url)
    stashed = f"{path}/{_stashed_labels(layout.rows_digest)}"
    if not fs.exists(f"{path}/{LABELS_FILE}") and fs.exists(stashed):
        fs.mv(stashed, f"{path}/{LABELS_FILE}")
    remove_other_row_tables(url, layout.rows_digest)


def _row_table_and_labels(url: str, layout: StoreLayout) -> tuple[pa.Table, pa.Table]:
    table = read_row_table(url, layout.rows_digest)
    labels = read_labels_if_readable(url)
    if table is None or labels is None or labels.num_rows != layout.n_rows:
        raise StoreError(f"{url}: its row table or labels.parquet is missing or stale; run `hms-prep build` (the "
                         "command that made it) first, then compact")
    if not all(c in table.column_names and c in labels.column_names for c in RAW_INDEX_COLUMNS) \
            or not np.array_equal(_raw_index(table), _raw_index(labels)):
        raise StoreError(f"{url}: labels.parquet's {', '.join(RAW_INDEX_COLUMNS)} differ from the row table's; run "
                         "`hms-prep build` (the command that made it) first, then compact")
    return table, labels


def _raw_index(table: pa.Table) -> np.ndarray:
    return np.stack([table.column(c).to_numpy() for c in RAW_INDEX_COLUMNS], 1).astype(np.int64)


def _with_raw_index(table: pa.Table, index: np.ndarray) -> pa.Table:
    for j, column in enumerate(RAW_INDEX_COLUMNS):
        position = table.column_names.index(column)
        table = table.set_column(position, column, pa.array(index[:, j], table.schema.field(column).type))
    return table


def _stashed_labels(digest: str) -> str:
    """Where labels.parquet waits while the root names another row table (beside the table it goes with)."""
    return f"{ROWS_FOLDER}/{digest}.{LABELS_FILE}"


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")
