"""What a build leaves behind once its tasks are over: when each computed array's failures were tried,
labels.parquet with every row's status per array, and the `BuildSummary` the CLI reports."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from hms_prep.building.config import BuildConfig
from hms_prep.building.plan import BuildPlan
from hms_prep.building.task import ChunkReport, Failure
from hms_prep.columns import arrow_column, names_column, numpy_column, sparse_string_column
from hms_prep.kinds.base import KINDS, kind_of_stored
from hms_prep.sources.rows import planned_rows
from hms_prep.store.arrays import ArrayDescription, data_array_names, describe_arrays
from hms_prep.store.build_state import (STATUS_FAILED, STATUS_NAMES, STATUS_OK, open_build_state, read_errors,
                                        read_state, record_failures_tried)
from hms_prep.store.coords import write_coordinates
from hms_prep.store.labels import RAW_INDEX_COLUMNS, ROW_KEY, live_rows, read_labels_if_readable, write_labels
from hms_prep.store.layout import store_nbytes


@dataclass(frozen=True)
class FailedRow:
    """A row that failed, with one reason and the arrays that failed for it."""

    row: int
    label_id: int
    reason: str
    arrays: tuple[str, ...]


@dataclass
class BuildSummary:
    store: str
    rows: int
    computed: list[str]
    reused: list[str]
    rows_computed: int
    failures: list[Failure]
    seconds: float
    stage_seconds: dict[str, float]
    store_bytes: int
    crashed: list[str] = field(default_factory=list)  # why each crashed chunk task raised: its chunk is not done
    # rows each array computed (`rows_computed` counts a chunk's rows once, by its busiest array): a change of
    # rows computes the changed rows of an image array alone, and whole chunks of a segment-stored one
    rows_by_array: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.crashed

    @property
    def complete(self) -> bool:
        """Every chunk of every asked array is done (rows may have failed): the store is usable."""
        return not self.crashed

    @property
    def rows_per_s(self) -> float:
        return rows_per_s(self.rows_computed, self.seconds)

    def failed_rows(self) -> list[FailedRow]:
        """The failures grouped by (row, reason), in row order."""
        grouped: dict[tuple[int, int, str], list[str]] = defaultdict(list)
        for failure in self.failures:
            grouped[(failure.row, failure.label_id, failure.reason)].append(failure.array)
        return [FailedRow(row, label_id, reason, tuple(arrays)) for (row, label_id, reason), arrays in grouped.items()]

    def line(self) -> str:
        what = f"computed {', '.join(self.computed)}" if self.computed else "nothing to compute"
        reused = f"; reused {', '.join(self.reused)}" if self.reused else ""
        return (
            f"{self.store}: {self.rows} rows; {what}{reused}; {self.rows_computed} rows in "
            f"{self.seconds:.1f} s ({self.rows_per_s:.1f} rows/s); {len(self.failed_rows())} rows failed; "
            f"{self.store_bytes / 2**20:.1f} MiB on disk"
        )

    def crash_line(self) -> str | None:
        """'3 chunk tasks crashed: OSError: ...' (the most frequent reason first), or None."""
        if not self.crashed:
            return None
        reasons = sorted(set(self.crashed), key=lambda r: (-self.crashed.count(r), r))
        others = len(reasons) - 1
        more = f" (and {others} other reason{'s' if others > 1 else ''})" if others else ""
        return f"{len(self.crashed)} chunk tasks crashed: {reasons[0]}{more}"


def rows_per_s(rows: int, seconds: float) -> float:
    """The build's rate, in its progress and its summary alike: rows computed over the seconds since the
    build started (reading the CSV, planning and a cluster's start included), so the two agree."""
    return rows / seconds if seconds > 0 else 0.0


def kinds_coordinates(descriptions: dict[str, ArrayDescription]) -> dict[str, dict]:
    """Each data array's own axes' coordinates, as its kind gives them (a kind not registered here: none)."""
    axes = {}
    for name, description in descriptions.items():
        kind = KINDS.get(description.kind)
        axes[name] = kind_of_stored(description.kind, description.params).coordinates() if kind else {}
    return axes


def record_build(config: BuildConfig, group, planned: pa.Table, plan: BuildPlan, reports: list[ChunkReport],
                 started: float, started_at: float, say=None) -> BuildSummary:
    """Record the finished build in the store (failures_tried_at, labels.parquet) and sum it up: every
    row of the asked arrays that stands failed, retried or not, as the store records it."""
    for name in plan.computed:  # not before the last chunk: a killed build leaves the older time
        record_failures_tried(group, name, started_at)
    label_failures = rows_without_votes(config, planned)
    labels, failed = labels_with_status(group, planned, plan.raw_columns, label_failures, ROW_KEY[config.split],
                                        plan.unchanged_state)
    write_labels_if_changed(config.store_url, labels, planned.column_names, say)
    # xarray's labels and units, also for a store built before them
    descriptions = describe_arrays(group)
    write_coordinates(group, config.split, labels, descriptions, kinds_coordinates(descriptions))
    stages: dict[str, float] = defaultdict(float)
    for report in reports:
        for stage, seconds in report.seconds.items():
            stages[stage] += seconds

    def label_id(row: int) -> int:
        return planned_rows(planned, slice(row, row + 1))[0].label_id

    return BuildSummary(
        store=config.store_url,
        rows=int(live_rows(planned).sum()),
        computed=plan.computed,
        reused=plan.reused,
        rows_computed=sum(max(r.rows_computed.values(), default=0) for r in reports),
        failures=sorted({*(Failure(row, label_id(row), name, reason)
                           for name in plan.kinds for row, reason in failed.get(name, {}).items()),
                         *label_failures, *(f for r in reports if r.crashed for f in r.failures)}),
        seconds=time.perf_counter() - started,
        stage_seconds=dict(stages),
        store_bytes=store_nbytes(config.store_url),
        crashed=[r.crashed for r in reports if r.crashed],
        rows_by_array={name: sum(r.rows_computed.get(name, 0) for r in reports) for name in plan.computed},
    )


def rows_without_votes(config: BuildConfig, planned: pa.Table) -> list[Failure]:
    """Rows whose train.csv line cannot be a training target (no votes): failed alone, never the build."""
    if "total_votes" not in planned.column_names:
        return []
    path = Path(config.data_dir) / f"{config.split}.csv"
    total = numpy_column(planned.column("total_votes"))
    without = np.flatnonzero((total == 0) & live_rows(planned))  # only these as Python objects: few of 106,800
    # taken by an Arrow array: pyarrow makes one of numpy indices with pa.array, which imports pandas (0.5 s)
    rows = planned.select(["row", "label_id", "source_index"]).take(arrow_column(without)).to_pylist()
    return [Failure(r["row"], r["label_id"], "labels",
                    f"{path}: line {r['source_index'] + 2} (label_id {r['label_id']}) has no votes, so no target")
            for r in rows]


DROPPED_CODE = len(STATUS_NAMES)  # labels.parquet's `dropped` status, after the build state's codes


def labels_with_status(group, planned: pa.Table, raw_index: np.ndarray | None, label_failures: list[Failure],
                       key: str, unchanged: dict | None = None) -> tuple[pa.Table, dict[str, dict[int, str]]]:
    """planned + per array its status and repaired fraction, the label-level status (a row without votes
    fails there), and the overall status and error, as labels.parquet; and each array's failed rows with
    their reasons. Per-array statuses let a reader of some arrays use a row that failed only in another
    (a 2D model needs no raw signal). A dropped row (its key left the CSV) stands `dropped` in
    `status_labels` and `status`, whatever its arrays hold: no reader uses it. `unchanged`: the (status,
    repaired) of arrays this build did not write to, as planning read them (BuildPlan.unchanged_state)."""
    table = planned
    if raw_index is not None:
        for j, column in enumerate(RAW_INDEX_COLUMNS):
            table = table.append_column(column, arrow_column(raw_index[:, j]))
    n = planned.num_rows
    overall = np.full(n, STATUS_OK, dtype=np.uint8)
    errors: dict[int, list[str]] = defaultdict(list)  # only rows with one: few of the real data's 106,800
    failed_rows: dict[str, dict[int, str]] = {}
    names = (*STATUS_NAMES, "dropped")  # by status code, then DROPPED_CODE
    for name in data_array_names(group):  # a stable order: array_keys() follows the filesystem
        state = open_build_state(group, name)
        status, repaired = (unchanged or {}).get(name) or (read_state(state.status)[0], None)
        overall = np.where(status == STATUS_FAILED, STATUS_FAILED,
                           np.where((status != STATUS_OK) & (overall == STATUS_OK), 0, overall))
        failed = np.flatnonzero(status == STATUS_FAILED)
        if failed.size:
            failed_rows[name] = read_errors(state, failed)
            for row, reason in failed_rows[name].items():
                errors[row].append(f"{name}: {reason}")
        repaired = read_state(state.repaired)[0] if repaired is None else repaired
        table = table.append_column(f"repaired_{name}", arrow_column(repaired))
        table = table.append_column(f"status_{name}", names_column(status, names))
    label_status = np.full(n, STATUS_OK, dtype=np.uint8)
    for failure in label_failures:
        overall[failure.row] = label_status[failure.row] = STATUS_FAILED
        errors[failure.row].append(failure.reason)
    for row in np.flatnonzero(~live_rows(planned)).tolist():
        label_status[row] = overall[row] = DROPPED_CODE
        errors[row] = [f"{key} {planned.column(key)[row].as_py()} is no longer in the CSV"]
        for name in failed_rows:
            failed_rows[name].pop(row, None)
    table = table.append_column("status_labels", names_column(label_status, names))
    table = table.append_column("status", names_column(overall, names))
    error = sparse_string_column(n, {row: "; ".join(reasons) for row, reasons in errors.items()})
    return table.append_column("error", error), failed_rows


def write_labels_if_changed(url: str, table: pa.Table, planned_columns=(), say=None) -> None:
    """labels.parquet follows the build state: (re)written whenever it is missing, unreadable or differs
    (a build killed after its last chunk, before this write, is completed by the next one). `say` gets a
    line when what it held of `planned_columns` (the CSV's lines, targets, folds: no build changes those
    for rows it keeps) differed: an edited file, not a build moving on."""
    old = read_labels_if_readable(url)
    if old is not None and table.equals(old):
        return
    if say is not None and old is not None and old.num_rows == table.num_rows:
        edited = [c for c in planned_columns if c in old.column_names and not _same(old.column(c), table.column(c))]
        if edited:
            say(f"{url}/labels.parquet: {', '.join(edited)} differed from the store's rows (edited by hand?); "
                "rewritten")
    write_labels(url, table)


def _same(a, b) -> bool:
    a, b = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))
    return bool(np.array_equal(a, b))
