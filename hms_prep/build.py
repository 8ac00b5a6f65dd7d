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
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
import dask
import fsspec
import numpy as np
import pyarrow as pa

from hms_prep.codecs import check_codec_choice
from hms_prep.chunk import ArrayJob, ChunkJob, ChunkReport, build_chunk
from hms_prep.kaggle import CHAINS, SPEC_FREQ_NAMES, read_labels
from hms_prep.kaggle_crop import KAGGLE_TRANSFORM
from hms_prep.montage import pair_names
from hms_prep.plan import EEG_OFFSET, SPEC_OFFSET, plan_raw_segments, plan_rows, rows_digest
from hms_prep.signal_filter import RawParams
from hms_prep.spectrogram import MelParams
from hms_prep.store import (
    DEFAULT_CODEC,
    STATUS_FAILED,
    STATUS_OK,
    StoreError,
    StoreLayout,
    codec_for,
    create_build_state,
    create_store,
    data_array_names,
    digest,
    normalize_url,
    open_build_state,
    open_store,
    read_errors,
    store_exists,
    store_nbytes,
    write_labels,
)

log = logging.getLogger("hms_prep")

KAGGLE_SHAPE = (len(CHAINS), len(SPEC_FREQ_NAMES), 300)
DEFAULT_STORES = {"train": "cache/specs.zarr", "test": "cache/test.zarr"}


@dataclass
class BuildConfig:
    data_dir: str
    store: str | None = None  # default: DEFAULT_STORES[split]
    split: str = "train"
    windows: tuple[int, ...] = (10, 30)
    mel: MelParams = field(default_factory=lambda: MelParams(window_s=10))  # window_s replaced per window
    kaggle: bool = True
    raw: RawParams | None = field(default_factory=RawParams)
    n_folds: int = 5
    chunk_rows: int = 32
    raw_chunk_samples: int = 20_000
    codec: str = DEFAULT_CODEC
    workers: int | None = None  # local cluster size; default: one per core
    scheduler: str | None = None  # address of an existing Dask scheduler

    @property
    def store_url(self) -> str:
        return normalize_url(self.store or DEFAULT_STORES[self.split])


@dataclass
class BuildSummary:
    store: str
    rows: int
    computed: list[str]
    reused: list[str]
    rows_computed: int
    failures: list[tuple[int, int, str, str]]
    seconds: float
    stage_seconds: dict[str, float]
    store_bytes: int

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def rows_per_s(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0

    def failed_rows(self) -> dict[tuple[int, int, str], list[str]]:
        """(row, label_id, reason) -> the arrays that failed for that reason."""
        grouped: dict[tuple[int, int, str], list[str]] = defaultdict(list)
        for row, label_id, array, reason in self.failures:
            grouped[(row, label_id, reason)].append(array)
        return dict(grouped)

    def line(self) -> str:
        what = f"computed {', '.join(self.computed)}" if self.computed else "nothing to compute"
        reused = f"; reused {', '.join(self.reused)}" if self.reused else ""
        return (
            f"{self.store}: {self.rows} rows; {what}{reused}; {self.rows_computed} rows in "
            f"{self.seconds:.1f} s ({self.rows_per_s:.1f} rows/s); {len(self.failed_rows())} rows failed; "
            f"{self.store_bytes / 2**20:.1f} MiB on disk"
        )


def array_specs(config: BuildConfig) -> dict[str, tuple[MelParams | RawParams | None, dict]]:
    """Requested arrays: name -> (params for the worker, attributes recorded on the array)."""
    specs = {}
    for window in sorted(set(config.windows)):
        params = replace(config.mel, window_s=int(window)).resolved()
        specs[f"eeg_{window}s"] = (params, {"kind": "eeg_mel", "params": params.to_dict()})
    if config.kaggle:
        params = {"transform": KAGGLE_TRANSFORM, "nan_power": 0.0, "pad_value": 0.0, "window_s": 600,
                  "columns": KAGGLE_SHAPE[2], "freqs_hz": list(SPEC_FREQ_NAMES)}
        specs["kaggle"] = (None, {"kind": "kaggle", "params": params})
    if config.raw is not None:
        specs["raw"] = (config.raw, {"kind": "raw", "params": config.raw.to_dict(),
                                     "signals": list(pair_names(config.raw.midline))})
    for _, attrs in specs.values():
        attrs["params_digest"] = digest(attrs["params"])
    return specs


def run_build(config: BuildConfig, progress=None) -> BuildSummary:
    """Build or complete the store; `progress(done_rows, total_rows)` is called as chunks finish."""
    started = time.perf_counter()
    url = config.store_url
    planned = plan_rows(read_labels(config.data_dir, config.split), config.split, config.n_folds)
    group, layout, created = _open_or_create(config, planned)
    margin = config.raw.margin_s if config.raw else 0
    segments, raw_index, raw_length = plan_raw_segments(planned, layout.chunk_rows, margin, layout.raw_chunk_samples)

    specs = array_specs(config)
    computed, reused = [], []
    jobs: dict[int, list[ArrayJob]] = defaultdict(list)
    for name, (params, attrs) in specs.items():
        if name in group:
            _check_same_params(url, group[name], name, attrs)
        else:
            _create_array(group, name, attrs, layout, raw_length)
        pending = _pending_rows(group, name, layout)
        (computed if pending else reused).append(name)
        for chunk, (rows, whole) in pending.items():
            jobs[chunk].append(ArrayJob(name, params, rows, whole))

    reports = _run_jobs(config, layout, planned, segments, jobs, progress) if jobs else []
    if jobs or created:
        write_labels(url, _labels_with_status(group, planned, raw_index if config.raw else None))
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


def _check_same_params(url, array, name, attrs) -> None:
    have = array.attrs.asdict()
    if have.get("params_digest") == attrs["params_digest"]:
        return
    old, new = have.get("params", {}), attrs["params"]
    diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
    raise StoreError(
        f"{url}: array {name} exists with other parameters ({changes}); its values are never mixed. "
        f"Build into another --store, or delete {name} and _build/{name} from this store to replace it"
    )


def _create_array(group, name: str, attrs: dict, layout: StoreLayout, raw_length: int) -> None:
    compressor = codec_for(layout.codec, attrs["kind"])
    common = dict(dtype="float16", fill_value=0.0, compressors=compressor)
    if attrs["kind"] == "raw":
        n_signals = len(attrs["signals"])
        array = group.create_array(name, shape=(n_signals, raw_length),
                                   chunks=(n_signals, layout.raw_chunk_samples), **common)
        attrs = {**attrs, "axes": ["signal", "sample"], "sample_rate": 200,
                 "index_columns": ["raw_start", "raw_lo", "raw_hi"]}
    else:
        if attrs["kind"] == "kaggle":
            item = KAGGLE_SHAPE
        else:
            p = attrs["params"]
            item = (len(CHAINS), p["n_mels"], p["frames"])
        array = group.create_array(name, shape=(layout.n_rows, *item), chunks=(layout.chunk_rows, *item), **common)
        attrs = {**attrs, "axes": ["row", "chain", "frequency", "time"], "chains": list(CHAINS)}
    array.attrs.update(attrs)
    create_build_state(group, name, layout)


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


def _run_jobs(config, layout, planned, segments, jobs, progress) -> list[ChunkReport]:
    columns = {c: planned.column(c).to_numpy() for c in ("eeg_id", EEG_OFFSET, "spectrogram_id", SPEC_OFFSET)}
    label_ids = (planned.column("label_id").to_numpy() if "label_id" in planned.column_names
                 else planned.column("eeg_id").to_numpy())
    chunk_jobs = []
    for chunk in sorted(jobs):
        rows = layout.chunk_slice(chunk)
        chunk_jobs.append(ChunkJob(
            store_url=config.store_url, data_dir=str(config.data_dir), split=config.split, chunk=chunk,
            first_row=rows.start, eeg_ids=columns["eeg_id"][rows], eeg_offsets=columns[EEG_OFFSET][rows],
            spectrogram_ids=columns["spectrogram_id"][rows], spectrogram_offsets=columns[SPEC_OFFSET][rows],
            label_ids=label_ids[rows], raw_segments=tuple(segments[chunk]), arrays=tuple(jobs[chunk]),
        ))
    total = sum(max(len(a.rows) for a in job.arrays) for job in chunk_jobs)
    reports = []
    with _dask_client(config) as client:
        from distributed import as_completed

        futures = client.map(build_chunk, chunk_jobs, pure=False)
        done_rows = 0
        job_of = {future.key: job for future, job in zip(futures, chunk_jobs)}
        for future in as_completed(futures):
            try:
                report = future.result()
            except Exception as err:  # a crashed task: its chunk stays not-done and is redone next build
                report = _crashed(job_of[future.key], err)
            reports.append(report)
            done_rows += max(report.rows_computed.values(), default=0)
            if progress:
                progress(done_rows, total)
    return reports


def _crashed(job: ChunkJob, err: Exception) -> ChunkReport:
    report = ChunkReport(job.chunk)
    for array in job.arrays:
        for row in array.rows:
            label = int(job.label_ids[row - job.first_row])
            report.failures.append((row, label, array.name, f"chunk {job.chunk} task crashed: {err!r}"))
    return report


@contextmanager
def _dask_client(config: BuildConfig):
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
        for j, column in enumerate(("raw_start", "raw_lo", "raw_hi")):
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
