"""What a build is asked for: `BuildConfig` and the checks of every option that need no store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from hms_prep.domain import SPEC_WINDOW_S
from hms_prep.kinds import ArrayKind, KaggleParams, MelParams, RawParams, kind_for
from hms_prep.store.codecs import check_codec_choice
from hms_prep.store.layout import normalize_url
from hms_prep.store.lock import is_local

DEFAULT_STORES = {"train": "cache/specs.zarr", "test": "cache/test.zarr"}
DEFAULT_CHUNK_ROWS = 32
SCHEDULER_TIMEOUT_S = 10  # an unreachable --scheduler fails in this many seconds by default, not Dask's 30


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
    # params of further arrays, of any registered kind (hms_prep/kinds/; `--array KIND:key=value,...`)
    extra_arrays: tuple = ()
    n_folds: int = 5
    chunk_rows: int | None = None  # None: the store's, or DEFAULT_CHUNK_ROWS for a new store
    raw_chunk_samples: int = 20_000
    codec: str | None = None  # None: the store's, or AUTO for a new store
    workers: int | None = None  # local cluster size (threads of a --device build); default: one per core
    scheduler: str | None = None  # address of an existing Dask scheduler
    connect_timeout_s: float = SCHEDULER_TIMEOUT_S  # --connect-timeout: the bound on reaching --scheduler
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

    @property
    def data_url(self) -> str:
        """The data folder; a local one made absolute (workers may run elsewhere, in other directories)."""
        return self.data_dir if "://" in str(self.data_dir) else os.path.abspath(self.data_dir)

    def check(self) -> None:
        """Every option that can be checked without the store; ValueError naming the option."""
        if self.split not in DEFAULT_STORES:
            raise ValueError(f"--split must be one of {sorted(DEFAULT_STORES)}, got {self.split!r}")
        for option, value, least in (("--chunk-rows", self.chunk_rows, 1), ("--folds", self.n_folds, 2),
                                     ("raw_chunk_samples", self.raw_chunk_samples, 1), ("--workers", self.workers, 1)):
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"{option} must be an integer >= {least}, got {value!r}")
        if isinstance(self.connect_timeout_s, bool) or not isinstance(self.connect_timeout_s, (int, float)) \
                or not 0 < self.connect_timeout_s < float("inf"):
            raise ValueError(f"--connect-timeout must be a number of seconds > 0, got {self.connect_timeout_s!r}")
        if self.codec is not None:
            check_codec_choice(self.codec)
        if not self.arrays():
            raise ValueError("nothing to build: no windows, --no-kaggle, --no-raw and no --array")
        if self.device is not None and self.in_process is False:
            raise ValueError("--on-dask and --device exclude each other: a --device build computes in this process")
        if self.device is not None:
            from hms_prep.kinds.mel import check_device  # torch: only for a --device build

            check_device(self.device)
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
