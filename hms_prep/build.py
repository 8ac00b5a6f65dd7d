"""`hms-prep build`: plan the rows, decide what is missing from the store, compute it on Dask.

Incremental and resumable by construction: an array is identified by its parameters' digest; a
chunk is skipped when its done flag is set and none of its rows failed; rows that failed are
retried alone. Nothing is rewritten when nothing is missing.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import fsspec
import numpy as np
import pyarrow as pa

from hms_prep.chunk import ArrayJob, ChunkJob, ChunkReport, Failure, build_chunk
from hms_prep.codecs import AUTO, check_codec_choice
from hms_prep.domain import SPEC_WINDOW_S
from hms_prep.kaggle import read_labels
from hms_prep.kinds import ArrayKind, KaggleParams, MelParams, RawParams, kind_for
from hms_prep.plan import RAW_INDEX_COLUMNS, plan_raw_segments, plan_rows, planned_rows, rows_digest
from hms_prep.store import (
    STATUS_FAILED,
    STATUS_OK,
    StoreError,
    StoreLayout,
    create_build_state,
    create_store,
    data_array_names,
    describe_arrays,
    normalize_url,
    open_build_state,
    open_store,
    read_errors,
    store_exists,
    store_nbytes,
    write_labels,
)

log = logging.getLogger("hms_prep")

DEFAULT_STORES = {"train": "cache/specs.zarr", "test": "cache/test.zarr"}
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
    chunk_rows: int = 32
    raw_chunk_samples: int = 20_000
    codec: str = AUTO
    workers: int | None = None  # local cluster size (threads of a --device build); default: one per core
    scheduler: str | None = None  # address of an existing Dask scheduler
    # None: Dask workers on CPU; "cpu", "cuda", "cuda:N": this process computes, its threads read and
    # write, the mel windows of a chunk are batched on that device.
    device: str | None = None
    in_process: bool | None = None  # None: in this process when at most IN_PROCESS_ROWS rows are to compute

    @property
    def store_url(self) -> str:
        return normalize_url(self.store or DEFAULT_STORES[self.split])

    def arrays(self) -> dict[str, ArrayKind]:
        """The requested arrays by name (names follow from params; params are checked here)."""
        params = [replace(self.mel, window_s=int(window)) for window in sorted(set(self.windows))]
        params += [KaggleParams(self.kaggle_window_s)] if self.kaggle else []
        params += [self.raw] if self.raw is not None else []
        kinds = [kind_for(p) for p in [*params, *self.extra_arrays]]
        return {kind.name: kind for kind in kinds}


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

    @property
    def ok(self) -> bool:
        return not self.failures

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


def run_build(config: BuildConfig, progress=None) -> BuildSummary:
    """Build or complete the store; `progress(done_rows, total_rows)` is called as chunks finish."""
    started = time.perf_counter()
    url = config.store_url
    requested = config.arrays()
    if config.device is not None:
        from hms_prep.spectrogram import check_device

        check_device(config.device)
    planned = plan_rows(read_labels(config.data_dir, config.split), config.split, config.n_folds)
    group, layout, created = _open_or_create(config, planned)
    for name, kind in requested.items():  # every refusal before anything is written
        if name in group:
            _check_same_params(url, group[name], kind)
    margin = _segment_margin(url, group, requested)
    segments, raw_index, raw_length = plan_raw_segments(planned, layout.chunk_rows, margin or 0,
                                                        layout.raw_chunk_samples)

    computed, reused = [], []
    jobs: dict[int, list[ArrayJob]] = defaultdict(list)
    for name, kind in requested.items():
        if name not in group:
            kind.create(group, layout, raw_length)
            create_build_state(group, name, layout)
        pending = _pending_rows(group, name, layout)
        (computed if pending else reused).append(name)
        for chunk, (rows, whole) in pending.items():
            jobs[chunk].append(ArrayJob(kind, rows, whole))

    reports = _run_jobs(config, planned, layout, segments, jobs, progress) if jobs else []
    if jobs or created:
        write_labels(url, _labels_with_status(group, planned, raw_index if margin is not None else None))
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
        failures=sorted(f for r in reports for f in r.failures),
        seconds=time.perf_counter() - started,
        stage_seconds=dict(stages),
        store_bytes=store_nbytes(url),
    )


def _open_or_create(config: BuildConfig, planned: pa.Table):
    url = config.store_url
    digest = rows_digest(planned)
    if store_exists(url):
        group, layout = open_store(url, mode="r+")
        if layout.split != config.split or layout.rows_digest != digest:
            raise StoreError(
                f"{url}: built from a different {layout.split}.csv (other rows or offsets); "
                "use a new --store path for this data"
            )
        if layout.n_folds != config.n_folds:
            raise StoreError(f"{url}: built with {layout.n_folds} folds, asked for {config.n_folds}")
        return group, layout, False
    check_codec_choice(config.codec)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)  # any fsspec URL: local paths, file://, memory://, s3://, ...
    layout = StoreLayout(
        split=config.split, n_rows=planned.num_rows, chunk_rows=config.chunk_rows, rows_digest=digest,
        n_folds=config.n_folds, codec=config.codec, raw_chunk_samples=config.raw_chunk_samples,
    )
    return create_store(url, layout), layout, True


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
    margins.update({name: k.params.margin_s for name, k in requested.items() if not k.per_row})
    if len(set(margins.values())) > 1:
        listed = ", ".join(f"{name} margin_s={m}" for name, m in margins.items())
        raise StoreError(f"{url}: raw arrays of one store share one segment layout, so one margin_s ({listed}); "
                         "build the other margin into another --store")
    return next(iter(margins.values()), None)


def _pending_rows(group, name: str, layout: StoreLayout) -> dict[int, tuple[tuple[int, ...], bool]]:
    """chunk -> (rows to compute, whether that is the whole chunk)."""
    state = open_build_state(group, name)
    done = state.done[:]
    status = state.status[:]
    pending = {}
    for chunk in range(layout.n_chunks):
        rows = layout.chunk_slice(chunk)
        if not done[chunk]:
            pending[chunk] = (tuple(range(rows.start, rows.stop)), True)
        else:
            failed = np.flatnonzero(status[rows] == STATUS_FAILED) + rows.start
            if failed.size:
                pending[chunk] = (tuple(int(r) for r in failed), False)
    return pending


def _run_jobs(config, planned, layout, segments, jobs, progress) -> list[ChunkReport]:
    chunk_jobs = [
        ChunkJob(store_url=config.store_url, data_dir=str(config.data_dir), split=config.split, chunk=chunk,
                 rows=planned_rows(planned, layout.chunk_slice(chunk)), raw_segments=tuple(segments[chunk]),
                 arrays=tuple(jobs[chunk]), device=config.device or "cpu")
        for chunk in sorted(jobs)
    ]
    total = sum(max(len(a.rows) for a in job.arrays) for job in chunk_jobs)
    reports, done_rows = [], 0
    with _finished_tasks(config, chunk_jobs, total) as finished:
        for job, future in finished:
            try:
                report = future.result()
            except Exception as err:  # a crashed task: its chunk stays not-done and is redone next build
                report = _crashed(job, err)
            reports.append(report)
            done_rows += max(report.rows_computed.values(), default=0)
            if progress:
                progress(done_rows, total)
    return reports


@contextmanager
def _finished_tasks(config: BuildConfig, chunk_jobs: list[ChunkJob], rows: int):
    """(job, future) pairs as the tasks finish: on threads of this process (a --device build, or a
    small one) or on Dask."""
    in_process = config.in_process if config.in_process is not None else rows <= IN_PROCESS_ROWS
    if config.scheduler is None and (config.device is not None or in_process):
        # Threads overlap the reads and writes with the device's work; a CPU build here runs serially.
        threads = (config.workers or os.cpu_count() or 1) if config.device is not None else 1
        with ThreadPoolExecutor(threads) as pool:
            job_of = {pool.submit(build_chunk, job): job for job in chunk_jobs}
            yield ((job_of[future], future) for future in as_completed(job_of))
        return
    with _dask_client(config) as client:
        from distributed import as_completed as dask_completed

        futures = client.map(build_chunk, chunk_jobs, pure=False)
        job_of = {future.key: job for future, job in zip(futures, chunk_jobs)}
        yield ((job_of[future.key], future) for future in dask_completed(futures))


def _crashed(job: ChunkJob, err: Exception) -> ChunkReport:
    reason = f"chunk {job.chunk} task crashed: {err!r}"
    failures = tuple(Failure(row, job.planned(row).label_id, array.name, reason)
                     for array in job.arrays for row in array.rows)
    return ChunkReport(job.chunk, {}, failures, {})


@contextmanager
def _dask_client(config: BuildConfig):
    import dask
    from distributed import Client, LocalCluster

    if config.scheduler:
        with Client(config.scheduler) as client:
            yield client
        return
    workers = config.workers or os.cpu_count() or 1
    # In-memory stores live in this process only, so their workers must be threads here.
    processes = not config.store_url.startswith("memory://")
    # The nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers by default, which sends every large
    # numpy/torch allocation through mmap: the build ran 3x slower with it (docs/performance.md).
    allocator = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(allocator), LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client


def _labels_with_status(group, planned: pa.Table, raw_index: np.ndarray | None) -> pa.Table:
    """planned + per-array repaired fractions + overall status and error, as labels.parquet."""
    table = planned
    if raw_index is not None:
        for j, column in enumerate(RAW_INDEX_COLUMNS):
            table = table.append_column(column, pa.array(raw_index[:, j]))
    n = planned.num_rows
    overall = np.full(n, STATUS_OK, dtype=np.uint8)
    errors = [[] for _ in range(n)]
    for name in data_array_names(group):  # a stable order: array_keys() follows the filesystem
        state = open_build_state(group, name)
        status = state.status[:]
        overall = np.where(status == STATUS_FAILED, STATUS_FAILED,
                           np.where((status != STATUS_OK) & (overall == STATUS_OK), 0, overall))
        failed = np.flatnonzero(status == STATUS_FAILED)
        if failed.size:
            reasons = read_errors(state)  # one read of the whole error array
            for row in failed:
                errors[row].append(f"{name}: {reasons[row]}")
        table = table.append_column(f"repaired_{name}", pa.array(state.repaired[:]))
    labels = np.array(["pending", "ok", "failed"])[overall]
    table = table.append_column("status", pa.array(labels))
    return table.append_column("error", pa.array(["; ".join(e) for e in errors], pa.string()))
