"""`hms-prep build`: plan the rows, decide what is missing from the store, compute it on Dask.

Incremental and resumable by construction: an array is identified by its parameters' digest; a
chunk is skipped when its done flag is set and none of its rows failed; rows that failed are
retried alone, once a file they are cut from has changed (or with --retry-failed): a failure that
would only repeat itself is not recomputed. Nothing is rewritten when nothing is missing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa

from hms_prep import doctor
from hms_prep.build.task import UNEXPECTED, ArrayJob, ChunkJob, ChunkReport, Failure, build_chunk
from hms_prep.store.codecs import AUTO, check_codec_choice
from hms_prep.domain import SPEC_WINDOW_S
from hms_prep.sources.kaggle import read_labels
from hms_prep.kinds import ArrayKind, KaggleParams, MelParams, RawParams, kind_for
from hms_prep.store.lock import build_lock, is_local
from hms_prep.sources.rows import RAW_INDEX_COLUMNS, plan_raw_segments, plan_rows, planned_rows, rows_digest
from hms_prep.sources.recordings import source_path
from hms_prep.store.format import (
    ROLE_SIGNALS,
    STATUS_FAILED,
    STATUS_OK,
    StoreError,
    StoreLayout,
    array_complete,
    create_build_state,
    create_store,
    data_array_names,
    describe_arrays,
    failures_tried_at,
    normalize_url,
    open_build_state,
    open_store,
    read_errors,
    read_labels_if_readable,
    read_state,
    record_failures_tried,
    remove_array,
    store_exists,
    store_nbytes,
    unfinished_store,
    write_labels,
)

log = logging.getLogger("hms_prep")

DEFAULT_STORES = {"train": "cache/specs.zarr", "test": "cache/test.zarr"}
DEFAULT_CHUNK_ROWS = 32
SCHEDULER_TIMEOUT_S = 10  # an unreachable scheduler fails in this many seconds, not Dask's 30
# Up to this many rows to compute, one process computing them itself finishes before a local cluster
# has started (docs/performance.md measures the crossover).
IN_PROCESS_ROWS = 400


@dataclass
class BuildConfig:
    data_dir: str
    store: str | None = None  # default: DEFAULT_STORES[split]
    split: str = "train"
    windows: tuple[int, ...] = (10, 30)
    mel: MelParams = field(default_factory=lambda: MelParams(window_s=10))  # window_s replaced per window
    kaggle: bool = True
    kaggle_window_s: int = SPEC_WINDOW_S  # 600: the `kaggle` array; other S: `kaggle_{S}s`
    raw: RawParams | None = field(default_factory=RawParams)
    extra_arrays: tuple = ()  # params of further arrays, of any registered kind (hms_prep/kinds/)
    n_folds: int = 5
    chunk_rows: int | None = None  # None: the store's, or DEFAULT_CHUNK_ROWS for a new store
    raw_chunk_samples: int = 20_000
    codec: str | None = None  # None: the store's, or AUTO for a new store
    workers: int | None = None  # local cluster size (threads of a --device build); default: one per core
    scheduler: str | None = None  # address of an existing Dask scheduler
    repair: bool = False  # also verify every data chunk's checksum and recompute the damaged ones
    retry_failed: bool = False  # compute failed rows again even if none of their files changed
    # None: Dask workers on CPU; "cpu", "cuda", "cuda:N": this process computes, its threads read and
    # write, the mel windows of a chunk are batched on that device.
    device: str | None = None
    in_process: bool | None = None  # None: in this process when at most IN_PROCESS_ROWS rows are to compute

    @property
    def store_url(self) -> str:
        """The store's URL; a local path made absolute, so workers on any machine get the same path."""
        url = normalize_url(self.store or DEFAULT_STORES[self.split])
        return os.path.abspath(url) if is_local(url) else url

    def check(self) -> None:
        """Every option that can be checked without the store; ValueError naming the option."""
        if self.split not in DEFAULT_STORES:
            raise ValueError(f"--split must be one of {sorted(DEFAULT_STORES)}, got {self.split!r}")
        for option, value, least in (("--chunk-rows", self.chunk_rows, 1), ("--folds", self.n_folds, 2),
                                     ("raw_chunk_samples", self.raw_chunk_samples, 1), ("--workers", self.workers, 1)):
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"{option} must be an integer >= {least}, got {value!r}")
        if self.codec is not None:
            check_codec_choice(self.codec)
        if not self.arrays():
            raise ValueError("nothing to build: no windows, --no-kaggle and --no-raw")
        if self.scheduler and self.store_url.startswith("memory://"):
            raise ValueError(f"{self.store_url}: an in-process memory:// store cannot be reached by the workers of "
                             f"--scheduler {self.scheduler}; use a path or URL every worker can reach")
        if is_local(self.store_url):
            _check_local_store_path(self.store_url)

    def arrays(self) -> dict[str, ArrayKind]:
        """The requested arrays by name (names follow from params; params are checked here)."""
        params = [replace(self.mel, window_s=int(window)) for window in sorted(set(self.windows))]
        params += [KaggleParams(self.kaggle_window_s)] if self.kaggle else []
        params += [self.raw] if self.raw is not None else []
        kinds = [kind_for(p) for p in [*params, *self.extra_arrays]]
        return {kind.name: kind for kind in kinds}


def _check_local_store_path(path: str) -> None:
    """A local store path must be a directory (or not exist yet) that this user may write."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{path}: --store is a file, not a store directory")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{existing}: is a file, so the store {path} cannot be created under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing}: not writable (read-only directory or filesystem); "
                         f"the store {path} cannot be {'built' if existing == target else 'created'}")
    for sub in (target / "_build", *target.glob("*/c")):
        if sub.exists() and not os.access(sub, os.W_OK | os.X_OK):
            raise ValueError(f"{sub}: not writable (read-only); the store {path} cannot be built")


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

    @property
    def ok(self) -> bool:
        return not self.failures and not self.crashed

    @property
    def complete(self) -> bool:
        """Every chunk of every asked array is done (rows may have failed): the store is usable."""
        return not self.crashed

    @property
    def rows_per_s(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0

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


def run_build(config: BuildConfig, progress=None, say=None) -> BuildSummary:
    """Build or complete the store; `progress(done_rows, total_rows)` is called as chunks finish and
    `say(line)` gets notices (the dashboard address, chunks found damaged and recomputed).

    Every option, the CSV, the store path and the scheduler are checked before the store is created or
    changed; a store this call created is removed again if the build fails before computing. A build
    holds the store's lock (hms_prep/store/lock.py) from before it touches the store to the end.
    """
    started, started_at = time.perf_counter(), time.time()
    say = say or log.info
    config.check()
    url = config.store_url
    requested = config.arrays()
    if config.device is not None:
        from hms_prep.kinds.mel import check_device

        check_device(config.device)
    planned = plan_rows(read_labels(config.data_dir, config.split), config.split, config.n_folds)
    with _dask_client(config, say) as client:  # a remote scheduler is reached first (in seconds) or refused
        fresh = not store_exists(url) or unfinished_store(url)
        if fresh:
            _require_compute_parts(client, config, planned.num_rows)  # a build that cannot compute creates nothing
        if fresh and is_local(url):
            os.makedirs(url, exist_ok=True)  # the lock file lives in the store
        with build_lock(url):
            try:
                with _interrupt_deferred():
                    group, layout, created = _open_or_create(config, planned)
                jobs, computed, reused, margin, segments, raw_index = _plan_jobs(client, config, group, layout,
                                                                                 requested, planned, say)
            except BaseException:
                if fresh:
                    # a failed creation leaves nothing behind; if removing it fails too (a Ctrl-C racing
                    # the creation), the unfinished store is redone by the next build: never mask the cause
                    with suppress(OSError):
                        _remove_store(url)
                raise
            reports = _run_jobs(client, config, planned, layout, segments, jobs, progress) if jobs else []
            for name in computed:  # not before the last chunk: a killed build leaves the older time
                record_failures_tried(group, name, started_at)
            label_failures = _label_failures(config, planned)
            labels, failed = _labels_with_status(group, planned, raw_index if margin is not None else None,
                                                 label_failures)
            _write_labels_if_changed(url, labels)
    stages: dict[str, float] = defaultdict(float)
    for report in reports:
        for stage, seconds in report.seconds.items():
            stages[stage] += seconds
    return BuildSummary(
        store=url,
        rows=layout.n_rows,
        computed=computed,
        reused=reused,
        rows_computed=sum(max(r.rows_computed.values(), default=0) for r in reports),
        # every row of the asked arrays that stands failed, retried or not, as the store records it
        failures=sorted({*(Failure(row, planned_rows(planned, slice(row, row + 1))[0].label_id, name, reason)
                           for name in requested for row, reason in failed.get(name, {}).items()),
                         *label_failures, *(f for r in reports if r.crashed for f in r.failures)}),
        seconds=time.perf_counter() - started,
        stage_seconds=dict(stages),
        store_bytes=store_nbytes(url),
        crashed=[r.crashed for r in reports if r.crashed],
    )


def _plan_jobs(client, config: BuildConfig, group, layout: StoreLayout, requested: dict[str, ArrayKind], planned,
               say):
    """Create the missing arrays (redoing unfinished creations) and list the chunks to compute."""
    url = config.store_url
    for name, kind in requested.items():  # every refusal before anything is written
        if name in group and array_complete(group, name):
            _check_same_params(url, group[name], kind)
    margin = _segment_margin(url, group, requested)
    segments, raw_index, raw_length = plan_raw_segments(planned, layout.chunk_rows, margin or 0,
                                                        layout.raw_chunk_samples)
    damaged = _damaged_data_chunks(url, group, layout, raw_index) if config.repair else {}
    every_chunk = {chunk: (tuple(range(layout.chunk_slice(chunk).start, layout.chunk_slice(chunk).stop)), True)
                   for chunk in range(layout.n_chunks)}
    missing = [name for name in requested if not array_complete(group, name)]
    pending = {name: every_chunk if name in missing else
               _pending_rows(group, name, layout, damaged.get(name, set()), say,
                             _changed_rows(config, planned, kind, failures_tried_at(group, name)))
               for name, kind in requested.items()}
    rows_to_compute = sum(max((len(pending[name][chunk][0]) for name in requested if chunk in pending[name]), default=0)
                          for chunk in range(layout.n_chunks))
    if rows_to_compute:
        _require_compute_parts(client, config, rows_to_compute)  # before this build changes the store
    for name in missing:
        with _interrupt_deferred():
            remove_array(group, name)  # an unfinished creation (a killed build): redo it
            create_build_state(group, name, layout)  # first: the array is listed once it exists
            requested[name].create(group, layout, raw_length)
    computed = [name for name in requested if pending[name]]
    reused = [name for name in requested if not pending[name]]
    jobs: dict[int, list[ArrayJob]] = defaultdict(list)
    for name, kind in requested.items():
        for chunk, (rows, whole) in pending[name].items():
            jobs[chunk].append(ArrayJob(kind, rows, whole))
    return jobs, computed, reused, margin, segments, raw_index


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


def _damaged_data_chunks(url: str, group, layout: StoreLayout, raw_index: np.ndarray) -> dict[str, set[int]]:
    """Row chunks of each array whose stored data fails its checksum or is missing (--repair)."""
    from hms_prep.audit import damaged_chunks

    bounds = raw_index[:, 1:3]  # raw_lo, raw_hi: which rows a chunk of a segment-stored array holds
    return {name: {c for d in damaged_chunks(url, group, name, layout, None if a.image else bounds)
                   for c in d.row_chunks}
            for name, a in describe_arrays(group).items()}


def _remove_store(url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _open_or_create(config: BuildConfig, planned: pa.Table):
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
        return group, layout, False
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)  # any fsspec URL: local paths, file://, memory://, s3://, ...
    layout = StoreLayout(
        split=config.split, n_rows=planned.num_rows, chunk_rows=config.chunk_rows or DEFAULT_CHUNK_ROWS,
        rows_digest=digest, n_folds=config.n_folds, codec=config.codec or AUTO,
        raw_chunk_samples=config.raw_chunk_samples,
    )
    if store_exists(url):  # an unfinished creation: only its root zarr.json exists
        fs.rm_file(f"{path.rstrip('/')}/zarr.json")
    return create_store(url, layout), layout, True


def _write_labels_if_changed(url: str, table: pa.Table) -> None:
    """labels.parquet follows the build state: (re)written whenever it is missing, unreadable or differs
    (a build killed after its last chunk, before this write, is completed by the next one)."""
    if not table.equals(read_labels_if_readable(url) or pa.table({})):
        write_labels(url, table)


def _check_same_params(url: str, array, kind: ArrayKind) -> None:
    """Refuse to add to an array whose recorded params differ from the ones its name stands for
    (only a hand-edited store can have that: names follow from params)."""
    name, have = kind.name, array.attrs.asdict()
    if have.get("params_digest") == kind.digest:
        return
    old, new = have.get("params", {}), kind.params.to_dict()
    diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
    raise StoreError(
        f"{url}: array {name} exists with other parameters ({changes}); its values are never mixed. "
        f"Build into another --store, or delete {name} and _build/{name} from this store to replace it"
    )


def _segment_margin(url: str, group, requested: dict[str, ArrayKind]) -> int | None:
    """The margin_s of the store's raw segment layout (None: no array is stored in segments). Every
    raw array of a store shares one layout, so their margins must agree."""
    margins = {name: d.params.get("margin_s") for name, d in describe_arrays(group).items() if not d.image}
    margins.update({name: k.params.margin_s for name, k in requested.items() if k.role == ROLE_SIGNALS})
    if len(set(margins.values())) > 1:
        listed = ", ".join(f"{name} margin_s={m}" for name, m in margins.items())
        raise StoreError(f"{url}: raw arrays of one store share one segment layout, so one margin_s ({listed}); "
                         "build the other margin into another --store")
    return next(iter(margins.values()), None)


def _changed_rows(config: BuildConfig, planned: pa.Table, kind: ArrayKind, tried_at: float | None):
    """A filter of failed rows, given their recorded reasons: those to compute again. A failure of the data
    whose file of the kind's source is unchanged since the build that failed it started (its inode change
    time, which copying, editing or restoring a file sets and no tool sets back) would only repeat; a file
    still missing likewise. An unexpected error (not the data's) is always retried, and every failed row is
    with --retry-failed, for arrays built before the time was recorded, and when the data folder is not
    local files (no change times to trust)."""
    if config.retry_failed or tried_at is None or not is_local(config.data_dir):
        return lambda rows, reasons: rows

    def changed(row: int) -> bool:
        path = source_path(kind.source, config.data_dir, config.split, planned_rows(planned, slice(row, row + 1))[0])
        try:
            return os.stat(path).st_ctime >= tried_at
        except FileNotFoundError:
            return False

    return lambda rows, reasons: [row for row in rows if UNEXPECTED in reasons[row] or changed(row)]


def _pending_rows(group, name: str, layout: StoreLayout, damaged: set[int], say,
                  retry=lambda rows, reasons: rows) -> dict[int, tuple[tuple[int, ...], bool]]:
    """chunk -> (rows to compute, whether that is the whole chunk). A chunk is recomputed whole when its
    done flag is unset, or its build state or (with --repair) its data is damaged; failed rows of a done
    chunk are computed again when `retry` (a filter of row numbers, given every row's failure reason)
    keeps them."""
    state = open_build_state(group, name)
    done, bad_done = read_state(state.done)
    status, bad_status = read_state(state.status)
    for what, chunks in (("done flag", bad_done), ("status", bad_status), ("data", sorted(damaged))):
        if chunks:
            say(f"{name}: {what} of chunks {', '.join(map(str, chunks))} damaged; recomputing them")
    redo = set(bad_done) | set(bad_status) | damaged
    reasons = read_errors(state, np.flatnonzero(status == STATUS_FAILED))
    pending = {}
    for chunk in range(layout.n_chunks):
        rows = layout.chunk_slice(chunk)
        if not done[chunk] or chunk in redo or (status[rows] == 0).any():  # a done chunk has no pending row
            pending[chunk] = (tuple(range(rows.start, rows.stop)), True)
        else:
            failed = retry([int(r) for r in np.flatnonzero(status[rows] == STATUS_FAILED) + rows.start], reasons)
            if failed:
                pending[chunk] = (tuple(failed), False)
    return pending


def _run_jobs(client, config, planned, layout, segments, jobs, progress) -> list[ChunkReport]:
    chunk_jobs = [
        ChunkJob(store_url=config.store_url, data_dir=_absolute(config.data_dir), split=config.split, chunk=chunk,
                 rows=planned_rows(planned, layout.chunk_slice(chunk)), raw_segments=tuple(segments[chunk]),
                 arrays=tuple(jobs[chunk]), device=config.device or "cpu")
        for chunk in sorted(jobs)
    ]
    total = sum(max(len(a.rows) for a in job.arrays) for job in chunk_jobs)
    reports, done_rows = [], 0
    with _finished_tasks(client, config, chunk_jobs, total) as finished:
        for job, future in finished:
            try:
                report = future.result()
            except Exception as err:  # a crashed task: counted, reported, its chunk redone by the next build
                report = _crashed(job, err)
            reports.append(report)
            done_rows += max(report.rows_computed.values(), default=0)
            if progress:
                progress(done_rows, total)
    return reports


def _absolute(path: str) -> str:
    """A local data folder as an absolute path (workers may run elsewhere, in other directories)."""
    return path if "://" in str(path) else os.path.abspath(path)


@contextmanager
def _finished_tasks(client, config: BuildConfig, chunk_jobs: list[ChunkJob], rows: int):
    """(job, future) pairs as the tasks finish: on threads of this process (a --device build, or a small
    one: no cluster is started) or on Dask. Ctrl-C stops the tasks quietly; their chunks stay not-done
    and are redone by the next build."""
    if _runs_here(config, rows):
        # Threads overlap the reads and writes with the device's work; a CPU build here runs serially.
        threads = (config.workers or os.cpu_count() or 1) if config.device is not None else 1
        with ThreadPoolExecutor(threads) as pool:
            job_of = {pool.submit(build_chunk, job): job for job in chunk_jobs}
            try:
                yield ((job_of[future], future) for future in as_completed(job_of))
            except BaseException:
                for future in job_of:
                    future.cancel()
                raise
        return
    from distributed import as_completed as dask_completed

    futures = client.map(build_chunk, chunk_jobs, pure=False)
    job_of = {future.key: job for future, job in zip(futures, chunk_jobs)}
    try:
        yield ((job_of[future.key], future) for future in dask_completed(futures))
    except BaseException:
        client.cancel(futures, force=True)
        raise


def _runs_here(config: BuildConfig, rows: int) -> bool:
    """Whether the chunk tasks run on threads of this process (a --device build, or a small one: no
    cluster is started) rather than on Dask workers."""
    in_process = config.in_process if config.in_process is not None else rows <= IN_PROCESS_ROWS
    return config.scheduler is None and (config.device is not None or in_process)


def _require_compute_parts(client, config: BuildConfig, rows: int) -> None:
    """BrokenInstall unless the compiled parts a build computes with (hms_prep/doctor.py) load where the
    tasks will run: in this process, or on every Dask worker (a cluster's workers may have another
    environment than this driver, which then imports none of them)."""
    if _runs_here(config, rows):
        doctor.require(doctor.BUILD_PARTS)
        return
    client = client.start() if isinstance(client, _LazyLocalClient) else client
    try:
        client.wait_for_workers(1, timeout=SCHEDULER_TIMEOUT_S)
    except TimeoutError:
        raise BuildError(f"--scheduler {config.scheduler}: no Dask worker connected within {SCHEDULER_TIMEOUT_S} s; "
                         "start `dask worker` processes there") from None
    broken = client.run(doctor.broken_lines, doctor.BUILD_PARTS)
    lines = [f"Dask worker {worker}: {line}" for worker, found in sorted(broken.items()) for line in found]
    if lines:
        raise doctor.BrokenInstall(lines)


def _crashed(job: ChunkJob, err: BaseException) -> ChunkReport:
    """The report of a task that raised (in a Dask worker, or a worker that died: KilledWorker): every row
    it was to compute failed with the first line of the reason. Its chunk stays not done: the next build
    computes it again."""
    text = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    failures = tuple(Failure(row, job.planned(row).label_id, array.name, f"chunk {job.chunk} task crashed: {reason}")
                     for array in job.arrays for row in array.rows)
    return ChunkReport(job.chunk, {}, failures, {}, crashed=reason)


@contextmanager
def _dask_client(config: BuildConfig, say):
    """A client of the given scheduler (refused in SCHEDULER_TIMEOUT_S when unreachable), or of a
    LocalCluster started when first needed."""
    if config.scheduler:
        from distributed import Client

        try:
            _probe_scheduler(config.scheduler)  # a closed port answers at once; Dask would retry until its timeout
            client = Client(config.scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError) as err:
            raise BuildError(f"--scheduler {config.scheduler}: cannot reach the Dask scheduler within "
                             f"{SCHEDULER_TIMEOUT_S} s ({type(err).__name__}: {err}); is `dask scheduler` running "
                             "there, and is the port open?") from None
        with client:
            _announce_dashboard(client, say)
            yield client
        return
    with _LazyLocalClient(config, say) as client:
        yield client


class BuildError(RuntimeError):
    """The build cannot start (e.g. the scheduler cannot be reached)."""


def _announce_dashboard(client, say) -> None:
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        say("Dask dashboard: not available (pip install 'hms-cache[dashboard]' for it)")
    else:
        say(f"Dask dashboard: {client.dashboard_link}")


def _probe_scheduler(address: str) -> None:
    """Open (and close) a TCP connection to a tcp:// scheduler address; OSError when nothing listens."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        socket.create_connection((parts.hostname, parts.port), timeout=SCHEDULER_TIMEOUT_S).close()


class _LazyLocalClient:
    """Starts the LocalCluster on first use (`map`, `cancel`): a build with nothing to compute starts none."""

    def __init__(self, config: BuildConfig, say):
        self.config, self.say, self.client, self.cluster = config, say, None, None

    def __enter__(self):
        return self

    def start(self):
        """The distributed Client, its cluster started now if it was not yet."""
        if self.client is None:
            self._start()
        return self.client

    def _start(self):
        import dask
        from distributed import Client, LocalCluster

        workers = self.config.workers or os.cpu_count() or 1
        # In-memory stores live in this process only, so their workers must be threads here.
        processes = not self.config.store_url.startswith("memory://")
        # The nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers by default, which sends every large
        # numpy/torch allocation through mmap: the build ran 3x slower with it (docs/performance.md).
        allocator = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
        with dask.config.set(allocator):
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                        dashboard_address=":8787", silence_logs=logging.CRITICAL)
        self.client = Client(self.cluster)
        _announce_dashboard(self.client, self.say)

    def map(self, *args, **kwargs):
        return self.start().map(*args, **kwargs)

    def cancel(self, *args, **kwargs):
        return self.client.cancel(*args, **kwargs) if self.client is not None else None

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
            self.cluster.close()
        return False


def _label_failures(config: BuildConfig, planned: pa.Table) -> list[Failure]:
    """Rows whose train.csv line cannot be a training target (no votes): failed alone, never the build."""
    if "total_votes" not in planned.column_names:
        return []
    path = Path(config.data_dir) / f"{config.split}.csv"
    total = planned.column("total_votes").to_numpy()
    rows = planned.select(["row", "label_id", "source_index"]).to_pylist()
    return [Failure(r["row"], r["label_id"], "labels",
                    f"{path}: line {r['source_index'] + 2} (label_id {r['label_id']}) has no votes, so no target")
            for r in (rows[i] for i in np.flatnonzero(total == 0))]


def _labels_with_status(group, planned: pa.Table, raw_index: np.ndarray | None,
                        label_failures: list[Failure] = ()) -> tuple[pa.Table, dict[str, dict[int, str]]]:
    """planned + per array its status and repaired fraction, the label-level status (a row without votes
    fails there), and the overall status and error, as labels.parquet; and each array's failed rows with
    their reasons. Per-array statuses let a reader of some arrays use a row that failed only in another
    (a 2D model needs no raw signal)."""
    table = planned
    if raw_index is not None:
        for j, column in enumerate(RAW_INDEX_COLUMNS):
            table = table.append_column(column, pa.array(raw_index[:, j]))
    n = planned.num_rows
    overall = np.full(n, STATUS_OK, dtype=np.uint8)
    errors = [[] for _ in range(n)]
    failed_rows: dict[str, dict[int, str]] = {}
    names = ("pending", "ok", "failed")
    for name in data_array_names(group):  # a stable order: array_keys() follows the filesystem
        state = open_build_state(group, name)
        status, _ = read_state(state.status)
        overall = np.where(status == STATUS_FAILED, STATUS_FAILED,
                           np.where((status != STATUS_OK) & (overall == STATUS_OK), 0, overall))
        failed = np.flatnonzero(status == STATUS_FAILED)
        if failed.size:
            failed_rows[name] = read_errors(state, failed)
            for row, reason in failed_rows[name].items():
                errors[row].append(f"{name}: {reason}")
        table = table.append_column(f"repaired_{name}", pa.array(read_state(state.repaired)[0]))
        table = table.append_column(f"status_{name}", pa.array(np.array(names)[status]))
    label_status = np.full(n, "ok", dtype=object)
    for failure in label_failures:
        overall[failure.row] = STATUS_FAILED
        label_status[failure.row] = "failed"
        errors[failure.row].append(failure.reason)
    table = table.append_column("status_labels", pa.array(label_status.tolist(), pa.string()))
    table = table.append_column("status", pa.array(np.array(names)[overall]))
    return table.append_column("error", pa.array(["; ".join(e) for e in errors], pa.string())), failed_rows
