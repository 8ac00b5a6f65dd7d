"""`hms-prep build`, top to bottom: check, plan, execute, record.

Incremental and resumable by construction: an array is identified by its parameters' digest; a chunk is
skipped when its done flag is set and none of its rows failed; rows that failed are retried alone, once
a file they are cut from has changed (or with --retry-failed). Nothing is rewritten when nothing is
missing. The parts: config.py (the options), plan.py (what to compute: reads only), execute.py (where
the tasks run), task.py (one chunk), record.py (labels.parquet, the summary).
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import contextmanager, suppress

import fsspec
import pyarrow as pa
import zarr

from hms_prep.building.config import DEFAULT_CHUNK_ROWS, BuildConfig
from hms_prep.building.execute import Executor, Executors
from hms_prep.building.interrupts import interrupt_deferred
from hms_prep.building.plan import BuildPlan, check_params, plan_build
from hms_prep.building.record import BuildSummary, record_build
from hms_prep.building.placement import commit_rows, fit_arrays, place_rows, stored_raw_index, stored_row_table
from hms_prep.building.task import ChunkReport
from hms_prep.sources.kaggle import read_labels
from hms_prep.sources.rows import csv_rows, plan_raw_segments
from hms_prep.store.codecs import AUTO
from hms_prep.store.arrays import STORAGE_SEGMENT, remove_array, store_problems, survey_arrays
from hms_prep.store.build_state import create_build_state
from hms_prep.store.labels import DROPPED
from hms_prep.store.layout import (StoreError, StoreLayout, create_store, open_store, read_metadata_bytes, store_exists,
                                   unfinished_store, write_metadata)
from hms_prep.store.lock import build_lock, is_local

log = logging.getLogger("hms_prep")


def run_build(config: BuildConfig, progress=None, say=None) -> BuildSummary:
    """Build or complete the store; `progress(done_rows, total_rows, seconds)` is called as chunks finish,
    `seconds` since the build started (the clock the summary's rows/s uses, so the two agree), and
    `say(line)` gets notices (what it is planning, a cluster starting, the dashboard address, chunks found
    damaged and recomputed).

    Every option, the CSV, the store path, the scheduler and the compiled parts where the tasks run are
    checked before the store is created or changed; a store this call created is removed again if the
    build fails before computing. A build holds the store's lock (hms_prep/store/lock.py) from before it
    touches the store to the end.
    """
    started, started_at = time.perf_counter(), time.time()
    say = say or log.info
    config.check()
    url, requested = config.store_url, config.arrays()
    csv = csv_rows(read_labels(config.data_dir, config.split), config.split)
    with Executors(config, say) as executors:  # a remote scheduler is reached first (in seconds) or refused
        # the first line once nothing can be refused for the scheduler (a refusal stays one line): the
        # store's survey can take half a minute (a local cluster's start says so itself)
        say(f"planning {csv.num_rows} rows of {config.split}.csv into {url}: {', '.join(requested)}")
        fresh = not store_exists(url) or unfinished_store(url)
        if fresh:
            executors.for_rows(csv.num_rows).require_parts(requested.values())  # else nothing is created
            if is_local(url):
                os.makedirs(url, exist_ok=True)  # the lock file lives in the store
        with build_lock(url):
            with _removed_on_failure(url, fresh):
                with interrupt_deferred():
                    group, layout = open_or_create(config)
                    stored = stored_row_table(url, layout, csv, say)
                    rewrite_damaged_metadata(config, group, layout, requested, stored, say)
                rows = place_rows(url, group, layout, csv, stored, requested, config.n_folds)
                if rows.commit:
                    if stored is not None and rows.assignment.changes:
                        executors.for_rows(csv.num_rows).require_parts(requested.values())  # before any change
                        say(f"{url}: {config.split}.csv changed since the store was built: "
                            f"{rows.assignment.line(config.split)}; computing those rows, reusing the rest")
                    with interrupt_deferred():
                        layout = commit_rows(url, group, layout, rows)
                else:
                    with interrupt_deferred():
                        fit_arrays(group, rows.described, layout, rows.raw_length, grow=False)
                plan = plan_build(config, group, layout, requested, rows, say)
                executor = executors.for_rows(plan.rows_to_compute)
                if plan.rows_to_compute:
                    executor.require_parts(requested.values())  # before this build changes the store
                create_arrays(group, layout, plan)
            planned = rows.planned
            if layout.layout_version < 2:  # its labels.parquet as that layout wrote it: no `dropped` column
                planned = planned.drop_columns([DROPPED])
            reports = _computed(executor, plan.chunk_jobs(config, planned, layout), plan.rows_to_compute, progress,
                                started)
            return record_build(config, group, planned, plan, reports, started, started_at, say)


def _computed(executor: Executor, jobs, total: int, progress, started: float) -> list[ChunkReport]:
    """Every job's report; Ctrl-C cancels the rest (their chunks stay not done: the next build does them)."""
    reports, done_rows = [], 0
    if not jobs:
        return reports
    try:
        for report in executor.run(jobs):
            reports.append(report)
            done_rows += max(report.rows_computed.values(), default=0)
            if progress:
                progress(done_rows, total, time.perf_counter() - started)
    except BaseException:
        executor.cancel()
        raise
    return reports


# --- the store's creation: the build's only metadata writes ---------------------------------------------

def open_or_create(config: BuildConfig) -> tuple:
    """(group, layout) of the existing store, checked against the config, or of a new one without rows
    (`commit_rows` gives it its rows)."""
    url = config.store_url
    if store_exists(url) and not unfinished_store(url):
        group, layout = open_store(url, mode="r+")
        if layout.split != config.split:
            raise StoreError(f"{url}: a {layout.split} store, asked for --split {config.split}; use a new --store path")
        if layout.n_folds != config.n_folds:
            raise StoreError(f"{url}: built with {layout.n_folds} folds, asked for {config.n_folds}")
        for option, have, asked in (("--chunk-rows", layout.chunk_rows, config.chunk_rows),
                                    ("--codec", layout.codec, config.codec)):
            if asked is not None and asked != have:
                raise StoreError(f"{url}: created with {option} {have}, asked for {asked}; it is fixed when a "
                                 f"store is created: leave {option} out, or build into a new --store")
        return group, layout
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)  # any fsspec URL: local paths, file://, memory://, s3://, ...
    layout = StoreLayout(
        split=config.split, n_rows=0, chunk_rows=config.chunk_rows or DEFAULT_CHUNK_ROWS,
        rows_digest="", n_folds=config.n_folds, codec=config.codec or AUTO,
        raw_chunk_samples=config.raw_chunk_samples,
    )
    if store_exists(url):  # an unfinished creation: only its root zarr.json exists
        fs.rm_file(f"{path.rstrip('/')}/zarr.json")
    return create_store(url, layout), layout


def create_arrays(group, layout: StoreLayout, plan: BuildPlan) -> None:
    """Each array to create: build state first, the array (with all its attributes) last, so that a
    reader lists it only once it is whole; an unfinished creation (a killed build) is redone."""
    for name in plan.create:
        with interrupt_deferred():
            remove_array(group, name)
            create_build_state(group, name, layout)
            plan.kinds[name].create(group, layout, plan.raw_length)


def rewrite_damaged_metadata(config: BuildConfig, group, layout: StoreLayout, requested: dict,
                             stored: pa.Table | None, say) -> None:
    """With --repair, every damaged metadata file of the asked arrays (their own, their build state's, the
    `_build` group's) rewritten as their creation writes it, from their params; their chunks are then read
    back by the repair, the damaged ones recomputed. StoreError naming the files otherwise (a plain build,
    or an array not asked for, whose params only its name hints at)."""
    states = survey_arrays(group)
    damaged = {name: state for name, state in states.items() if state.damaged}
    problems = [*store_problems(group), *(p for state in damaged.values() for p in state.problems)]
    if not problems:
        return
    check_params(config.store_url, group, requested)  # before anything is written
    listed = "; ".join(problem.line() for problem in problems)
    if not config.repair:
        raise StoreError(f"{config.store_url}: {listed}; run the same build with --repair to rewrite it")
    unknown = sorted(set(damaged) - set(requested))
    if unknown:
        raise StoreError(f"{config.store_url}: {listed}; --repair rewrites an array's metadata from its parameters, "
                         f"so ask for {', '.join(unknown)} too (the options or --array that made it)")
    files = {}
    for name in damaged or requested:  # `_build/zarr.json` alone: any asked array's creation writes it
        files.update(expected_metadata(group, requested[name], layout, stored, damaged.get(name)))
    for problem in problems:
        write_metadata(group, problem.file, files[problem.file])
    say(f"rewrote {', '.join(p.file for p in problems)} from the arrays' parameters; their chunks are read back "
        "and the damaged ones recomputed")


def expected_metadata(group, kind, layout: StoreLayout, stored: pa.Table | None, state) -> dict[str, bytes]:
    """Each metadata file (by its path in the store) that creating `kind`'s array and its build state writes,
    made by the same calls in memory. StoreError when what is left of a damaged one shows other params."""
    for problem in state.problems if state is not None else ():
        left = read_metadata_bytes(group, problem.file) or b""
        found = re.search(rb'"params_digest"\s*:\s*"([0-9a-f]{16})"', left)
        if found and found.group(1).decode() != kind.digest:
            raise StoreError(f"{problem.file}: {problem.reason}, and what is left of it names params_digest "
                             f"{found.group(1).decode()}, not {kind.digest} ({kind.name}'s): build into another --store, "
                             f"or delete {kind.name} and _build/{kind.name} to recompute it")
    raw_length = 0
    if kind.storage == STORAGE_SEGMENT and stored is not None:  # the length the store's row table lays out
        margin = kind.params.margin_s
        raw_length = plan_raw_segments(stored, layout.chunk_rows, margin, layout.raw_chunk_samples,
                                       stored_raw_index(stored, layout, margin))[2]
    written: dict = {}
    memory = zarr.open_group(zarr.storage.MemoryStore(written), mode="w")
    create_build_state(memory, kind.name, layout)
    kind.create(memory, layout, raw_length)
    return {key: value.to_bytes() for key, value in written.items() if key.endswith("/zarr.json")}


@contextmanager
def _removed_on_failure(url: str, fresh: bool):
    """A store this build created is removed again if the block fails: a failed creation leaves nothing
    behind. If removing it fails too (a Ctrl-C racing the creation), the unfinished store is redone by
    the next build: never mask the cause."""
    try:
        yield
    except BaseException:
        if fresh:
            with suppress(OSError):
                fs, path = fsspec.core.url_to_fs(url)
                if fs.exists(path):
                    fs.rm(path, recursive=True)
        raise
