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
import signal
import threading
import time
from contextlib import contextmanager, suppress

import fsspec
import pyarrow as pa

from hms_prep.build.config import DEFAULT_CHUNK_ROWS, BuildConfig
from hms_prep.build.execute import Executor, Executors
from hms_prep.build.plan import BuildPlan, plan_build
from hms_prep.build.record import BuildSummary, record_build
from hms_prep.build.task import ChunkReport
from hms_prep.sources.kaggle import read_labels
from hms_prep.sources.rows import plan_rows, rows_digest
from hms_prep.store.codecs import AUTO
from hms_prep.store.format import (
    StoreError,
    StoreLayout,
    create_build_state,
    create_store,
    open_store,
    remove_array,
    store_exists,
    unfinished_store,
)
from hms_prep.store.lock import build_lock, is_local

log = logging.getLogger("hms_prep")


def run_build(config: BuildConfig, progress=None, say=None) -> BuildSummary:
    """Build or complete the store; `progress(done_rows, total_rows)` is called as chunks finish and
    `say(line)` gets notices (the dashboard address, chunks found damaged and recomputed).

    Every option, the CSV, the store path, the scheduler and the compiled parts where the tasks run are
    checked before the store is created or changed; a store this call created is removed again if the
    build fails before computing. A build holds the store's lock (hms_prep/store/lock.py) from before it
    touches the store to the end.
    """
    started, started_at = time.perf_counter(), time.time()
    say = say or log.info
    config.check()
    url, requested = config.store_url, config.arrays()
    planned = plan_rows(read_labels(config.data_dir, config.split), config.split, config.n_folds)
    with Executors(config, say) as executors:  # a remote scheduler is reached first (in seconds) or refused
        fresh = not store_exists(url) or unfinished_store(url)
        if fresh:
            executors.for_rows(planned.num_rows).require_parts(requested.values())  # else nothing is created
            if is_local(url):
                os.makedirs(url, exist_ok=True)  # the lock file lives in the store
        with build_lock(url):
            with _removed_on_failure(url, fresh):
                with _interrupt_deferred():
                    group, layout = open_or_create(config, planned)
                plan = plan_build(config, group, layout, requested, planned, say)
                executor = executors.for_rows(plan.rows_to_compute)
                if plan.rows_to_compute:
                    executor.require_parts(requested.values())  # before this build changes the store
                create_arrays(group, layout, plan)
            reports = _computed(executor, plan.chunk_jobs(config, planned, layout), plan.rows_to_compute, progress)
            return record_build(config, group, planned, plan, reports, started, started_at)


def _computed(executor: Executor, jobs, total: int, progress) -> list[ChunkReport]:
    """Every job's report; Ctrl-C cancels the rest (their chunks stay not done: the next build does them)."""
    reports, done_rows = [], 0
    if not jobs:
        return reports
    try:
        for report in executor.run(jobs):
            reports.append(report)
            done_rows += max(report.rows_computed.values(), default=0)
            if progress:
                progress(done_rows, total)
    except BaseException:
        executor.cancel()
        raise
    return reports


# --- the store's creation: the build's only metadata writes ---------------------------------------------

def open_or_create(config: BuildConfig, planned: pa.Table) -> tuple:
    """(group, layout) of the existing store, checked against the config, or of a new one."""
    url = config.store_url
    digest = rows_digest(planned)
    if store_exists(url) and not unfinished_store(url):
        group, layout = open_store(url, mode="r+")
        if layout.split != config.split or layout.rows_digest != digest:
            raise StoreError(
                f"{url}: built from a different {layout.split}.csv (other rows or offsets); "
                "use a new --store path for this data"
            )
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
        split=config.split, n_rows=planned.num_rows, chunk_rows=config.chunk_rows or DEFAULT_CHUNK_ROWS,
        rows_digest=digest, n_folds=config.n_folds, codec=config.codec or AUTO,
        raw_chunk_samples=config.raw_chunk_samples,
    )
    if store_exists(url):  # an unfinished creation: only its root zarr.json exists
        fs.rm_file(f"{path.rstrip('/')}/zarr.json")
    return create_store(url, layout), layout


def create_arrays(group, layout: StoreLayout, plan: BuildPlan) -> None:
    """Each array to create: build state first, the array (with all its attributes) last, so that a
    reader lists it only once it is whole; an unfinished creation (a killed build) is redone."""
    for name in plan.create:
        with _interrupt_deferred():
            remove_array(group, name)
            create_build_state(group, name, layout)
            plan.kinds[name].create(group, layout, plan.raw_length)


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


@contextmanager
def _interrupt_deferred():
    """A Ctrl-C during the block takes effect when it ends. Creating the store or an array is a few
    metadata writes that zarr's own IO thread goes on with after the main thread is interrupted: cleaning
    up meanwhile raced it and left a root without its attributes, which the next build refused (found by
    tests/test_reliability.py under load). A kill is safe anyway: the next build redoes an unfinished
    creation."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; Ctrl-C reaches only it
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
