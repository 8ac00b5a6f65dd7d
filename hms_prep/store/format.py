"""The on-disk format of a cache store: one Zarr v3 group plus `labels.parquet` beside its arrays.

This module is the format's single definition. It holds no preprocessing math, so the trainer's
reader may import it. See docs/store-format.md for the format in prose.

    STORE/zarr.json                 root attributes["hms_cache"]: layout version, split, rows, chunking
    STORE/labels.parquet            one row per label row, in array order (column `row`)
    STORE/eeg_{W}s[_variant]        (rows, 4, n_mels, frames) float16  EEG mel spectrogram windows
    STORE/kaggle[_{S}s]             (rows, 4, 100, S/2) float16        Kaggle spectrogram crops, log1p
    STORE/raw[_variant]             (signals, samples) float16         bipolar signals, segments per chunk
    STORE/_build/{array}/done       (chunks,) uint8   1 = the chunk's data, status and errors are written
    STORE/_build/{array}/status     (rows,) uint8     0 not computed, 1 ok, 2 failed
    STORE/_build/{array}/error      (rows,) string    failure reason ("" when ok)
    STORE/_build/{array}/repaired   (rows,) float32   fraction of the row's values repaired (NaN) or padded

A reader sees an array only once its creation is complete (`data_array_names`): its attributes hold
`params_digest` and its build state exists. The build creates the build state first and the array last,
so a build killed while creating one leaves nothing a reader lists, and the next build redoes it.

Each array's attributes say what it is (`kind`, `params`, `params_digest`, `axes`); its name follows from
its params (hms_prep/kinds/), so variants of a kind sit side by side. `describe_arrays` gives a reader
what it needs to know of them without importing the kinds (which hold preprocessing math).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from hms_prep.store.codecs import read_whole
from hms_prep.domain import TARGET_COLUMNS  # noqa: F401 (hms_train.data.reader's import; new code: hms_prep.domain)

# labels.parquet sits beside the arrays by design; zarr warns about any non-zarr object it lists.
warnings.filterwarnings("ignore", message=r"Object at (labels\.parquet(\.tmp)?|build\.lock) is not recognized")

LAYOUT_VERSION = 1
ROOT_KEY = "hms_cache"
LABELS_FILE = "labels.parquet"
BUILD_GROUP = "_build"

STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
# labels.parquet's index of each row into the arrays stored per segment: its label window's first sample,
# and the bounds of its recording's stored segment (a jittered window never leaves them).
RAW_INDEX_COLUMNS = ("raw_start", "raw_lo", "raw_hi")

IMAGE_AXES = ("row", "chain", "frequency", "time")  # a per-row image part: (rows, 4 chains, F, T)
SIGNAL_AXES = ("signal", "sample")  # signals stored per recording segment (rows index them via labels)
# Axes that index the same thing in every array of a store: their zarr dimension names are shared.
SHARED_AXES = ("row", "chain", "sample")


def dimension_names(name: str, axes: tuple[str, ...]) -> tuple[str, ...]:
    """Array `name`'s zarr v3 `dimension_names` (xarray's dimensions): `row`, `chain` and `sample` as they
    are (one row, chain order and segment layout for the whole store, so labels.parquet joins on `row`);
    the other axes prefixed with the name (`eeg_10s_frequency`): their sizes and meanings differ between
    arrays, and xarray allows one size per dimension name."""
    return tuple(axis if axis in SHARED_AXES else f"{name}_{axis}" for axis in axes)


class StoreError(RuntimeError):
    """The store is missing, of an unknown layout, or inconsistent with what was asked."""


@dataclass(frozen=True)
class StoreLayout:
    """Facts fixed when a store is created; every later build must agree with them."""

    split: str
    n_rows: int
    chunk_rows: int
    rows_digest: str  # hash of the label rows in array order: a different train.csv is refused
    n_folds: int
    codec: str
    raw_chunk_samples: int
    layout_version: int = LAYOUT_VERSION

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def chunk_slice(self, chunk: int) -> slice:
        return slice(chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.n_rows))


def digest(obj: Any) -> str:
    """Stable short hash of a JSON-able object (keys sorted)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


BUILD_STATE_ARRAYS = ("done", "status", "error", "repaired")


def data_array_names(group: zarr.Group) -> list[str]:
    """The data arrays whose creation is complete (eeg_{W}s and their variants by window, then kaggle*,
    raw*), in a stable order: array_keys() follows the filesystem."""
    names = [n for n in group.array_keys() if not n.startswith("_") and array_complete(group, n)]
    return sorted(names, key=lambda n: (not n.startswith("eeg_"), _window_of(n), n))


def array_complete(group: zarr.Group, name: str) -> bool:
    """Whether the creation of array `name` finished: its build state exists (created first) and its
    attributes were written (last)."""
    try:
        state = group[f"{BUILD_GROUP}/{name}"]
        have = set(state.array_keys())
        return set(BUILD_STATE_ARRAYS) <= have and "params_digest" in group[name].attrs
    except (KeyError, ValueError, OSError):
        return False


def remove_array(group: zarr.Group, name: str) -> None:
    """Delete an array and its build state (an unfinished creation, to be redone)."""
    for path in (name, f"{BUILD_GROUP}/{name}"):
        if path in group:
            del group[path]


def _window_of(name: str) -> int:
    match = re.match(r"eeg_(\d+)s(_|$)", name)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class ArrayDescription:
    """What a reader needs to know of one data array, from its attributes: what made it (`kind`, `params`)
    and how to read it (`role`, `normalise`, `shape`), so that a reader never goes by its name."""

    name: str
    kind: str  # "eeg_mel", "kaggle", "raw", ...
    axes: tuple[str, ...]
    params: dict
    params_digest: str
    role: str  # ROLE_IMAGE or ROLE_SIGNALS
    normalise: str  # NORMALISE_NONE or NORMALISE_ZSCORE
    shape: tuple[int, ...] = ()

    @property
    def image(self) -> bool:
        """A per-row (4, F, T) image part (axes IMAGE_AXES); otherwise signals in segments (SIGNAL_AXES)."""
        return self.role == ROLE_IMAGE


# How a reader uses an array (its `role` attribute): a per-row image part (rows, 4 chains, F, T), or
# signals stored per recording segment (signals, samples) whose rows labels.parquet's raw_* columns index.
ROLE_IMAGE, ROLE_SIGNALS = "image", "signals"
ROLES = (ROLE_IMAGE, ROLE_SIGNALS)
# What a reader does to each sample's values first (its `normalise` attribute): nothing (the values are
# scaled already), or a z-score over the sample's whole block (log power: the Kaggle crops).
NORMALISE_NONE, NORMALISE_ZSCORE = "none", "zscore"
# Arrays written before the kinds recorded how to read them (layout v1 stores): by their kind.
READ_HALF_OF_V1_KINDS = {"eeg_mel": (ROLE_IMAGE, NORMALISE_NONE), "kaggle": (ROLE_IMAGE, NORMALISE_ZSCORE),
                         "raw": (ROLE_SIGNALS, NORMALISE_NONE)}


def describe_arrays(group: zarr.Group) -> dict[str, ArrayDescription]:
    """Every data array of the store by name, in `data_array_names` order."""
    described = {}
    for name in data_array_names(group):
        array = group[name]
        attrs = array.attrs.asdict()
        axes = tuple(attrs.get("axes", ()))
        role, normalise = READ_HALF_OF_V1_KINDS.get(
            attrs.get("kind"), (ROLE_IMAGE if axes == IMAGE_AXES else ROLE_SIGNALS, NORMALISE_NONE))
        described[name] = ArrayDescription(name, attrs.get("kind"), axes, attrs.get("params", {}),
                                           attrs.get("params_digest"), attrs.get("role", role),
                                           attrs.get("normalise", normalise), tuple(array.shape))
    return described


def normalize_url(url: str) -> str:
    """file:// URLs become plain paths: zarr's LocalStore creates folders as it writes chunks, while
    fsspec's local filesystem (behind zarr's file:// support) does not."""
    return url[len("file://"):] if url.startswith("file://") else url


def create_store(url: str, layout: StoreLayout) -> zarr.Group:
    """The root group with its layout attributes in one metadata write: a reader never sees a root
    without them."""
    return zarr.create_group(normalize_url(url), attributes={ROOT_KEY: asdict(layout)})


def unfinished_store(url: str) -> bool:
    """A store whose creation was interrupted: a root zarr.json without (readable) hms_cache attributes
    and nothing else beside it, so it can be created again without losing anything."""
    fs, path = fsspec.core.url_to_fs(url)
    root = path.rstrip("/")
    if not fs.exists(f"{root}/zarr.json"):
        return False
    if any(p.rstrip("/").rsplit("/", 1)[-1] != "zarr.json" for p in fs.ls(root, detail=False)):
        return False
    try:
        attrs = json.loads(fs.cat_file(f"{root}/zarr.json")).get("attributes", {})
    except ValueError:
        return True
    return ROOT_KEY not in attrs


def open_store(url: str, mode: str = "r") -> tuple[zarr.Group, StoreLayout]:
    """Open a store and check its layout version; raises StoreError with the reason."""
    try:
        group = zarr.open_group(normalize_url(url), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise StoreError(f"{url}: no store here ({err})") from None
    attrs = group.attrs.asdict().get(ROOT_KEY)
    if attrs is None:
        raise StoreError(f"{url}: a Zarr group, but not an hms cache store (no '{ROOT_KEY}' attributes)")
    version = attrs.get("layout_version")
    if version != LAYOUT_VERSION:
        raise StoreError(
            f"{url}: store layout version {version}, this program reads version {LAYOUT_VERSION}; "
            "rebuild the store with this version of hms-prep"
        )
    return group, StoreLayout(**attrs)


def store_exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path.rstrip('/')}/zarr.json")


def write_labels(url: str, table: pa.Table) -> None:
    """Write labels.parquet atomically where the filesystem allows (temp file, then rename)."""
    fs, path = fsspec.core.url_to_fs(url)
    final = f"{path.rstrip('/')}/{LABELS_FILE}"
    temp = final + ".tmp"
    with fs.open(temp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    fs.mv(temp, final)


def read_labels_if_readable(url: str) -> pa.Table | None:
    """labels.parquet, or None when it is missing or unreadable (a build rewrites it then)."""
    try:
        return read_labels(url)
    except (StoreError, OSError, pa.ArrowException):
        return None


def read_labels(url: str) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(url)
    target = f"{path.rstrip('/')}/{LABELS_FILE}"
    if not fs.exists(target):
        raise StoreError(f"{url}: {LABELS_FILE} is missing; run hms-prep build")
    with fs.open(target, "rb") as f:
        return pq.read_table(f)


def store_nbytes(url: str) -> int:
    fs, path = fsspec.core.url_to_fs(url)
    return int(sum(fs.du(path, total=False).values())) if fs.exists(path) else 0


@dataclass(frozen=True)
class BuildState:
    """Per-array completion bookkeeping, each piece chunked so a task only writes chunks it owns."""

    done: zarr.Array
    status: zarr.Array
    error: zarr.Array
    repaired: zarr.Array


def create_build_state(group: zarr.Group, name: str, layout: StoreLayout) -> BuildState:
    """The array's build state, checksummed like the data: a damaged flag or status chunk is found
    (`read_state`) and its chunk recomputed, never trusted."""
    sub = group.require_group(f"{BUILD_GROUP}/{name}")
    checked = dict(compressors=(ZstdCodec(level=0), Crc32cCodec()))
    # dimensions named, so that xarray's open_datatree opens the whole store (open_zarr skips this group)
    per_row = dict(shape=(layout.n_rows,), chunks=(layout.chunk_rows,), dimension_names=("row",), **checked)
    return BuildState(
        done=sub.create_array("done", shape=(layout.n_chunks,), chunks=(1,), dimension_names=("chunk",),
                              dtype="uint8", fill_value=0, **checked),
        status=sub.create_array("status", dtype="uint8", fill_value=STATUS_PENDING, **per_row),
        error=sub.create_array("error", dtype=str, **per_row),
        repaired=sub.create_array("repaired", dtype="float32", fill_value=0.0, **per_row),
    )


# Attribute of `_build/{name}`: when (unix seconds) the last build that computed rows of the array started.
# A failed row is computed again only when a file it is cut from changed after that (hms_prep/build/plan.py).
FAILURES_TRIED_AT = "failures_tried_at"


def failures_tried_at(group: zarr.Group, name: str) -> float | None:
    """None for arrays built before this was recorded: their failed rows are all retried once."""
    value = group[f"{BUILD_GROUP}/{name}"].attrs.get(FAILURES_TRIED_AT)
    return float(value) if value is not None else None


def record_failures_tried(group: zarr.Group, name: str, started: float) -> None:
    group[f"{BUILD_GROUP}/{name}"].attrs[FAILURES_TRIED_AT] = started


def open_build_state(group: zarr.Group, name: str) -> BuildState:
    sub = group[f"{BUILD_GROUP}/{name}"]
    return BuildState(done=sub["done"], status=sub["status"], error=sub["error"], repaired=sub["repaired"])


def chunks_not_done(group: zarr.Group, name: str) -> tuple[list[int], int]:
    """The chunks of array `name` whose done flag is unset or unreadable (a build has still to compute
    them), and how many chunks it has."""
    done, damaged = read_state(open_build_state(group, name).done)
    return sorted({*np.flatnonzero(done == 0).tolist(), *damaged}), len(done)


def require_finished(url: str, group: zarr.Group, names) -> None:
    """StoreError naming every array of `names` with chunks not done (a build crashed, was killed or is
    still running): a reader never takes their unwritten values for data."""
    unfinished = []
    for name in names:
        missing, total = chunks_not_done(group, name)
        if missing:
            unfinished.append(f"{name} {len(missing)} of {total}")
    if unfinished:
        raise StoreError(f"{url}: not finished, chunks not done in {', '.join(unfinished)}; run `hms-prep build` "
                         "(the command that made it) again to finish it")


def read_errors(state: BuildState, rows) -> dict[int, str]:
    """The error string of each of `rows` ("" for a row without one, or in a damaged chunk). Only the
    chunks holding them are read: a store of the real data has thousands, a handful with failures."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    step, n = state.error.chunks[0], state.error.shape[0]
    reasons = {}
    for chunk in np.unique(rows // step).tolist():
        try:
            values = state.error[chunk * step : min((chunk + 1) * step, n)]
        except Exception:  # zarr raises plain ValueError/RuntimeError for a bad chunk
            values = None
        for row in rows[rows // step == chunk].tolist():
            value = None if values is None else values[row - chunk * step]
            reasons[row] = "" if value is None else str(value)
    return reasons


def read_state(array: zarr.Array) -> tuple[np.ndarray, list[int]]:
    """All values of a build-state array and the chunks that could not be read (damaged: checksum
    mismatch or truncated), read as the fill value. Local stores: every chunk file read directly, on
    threads (`codecs.read_whole`); otherwise one zarr read when nothing is damaged."""
    fast = read_whole(array)
    if fast is not None:
        return fast
    try:
        return array[:], []
    except Exception:  # zarr raises plain ValueError/RuntimeError for a bad chunk; find which
        pass
    values = np.full(array.shape, array.fill_value, dtype=array.dtype)
    step, damaged = array.chunks[0], []
    for chunk, start in enumerate(range(0, array.shape[0], step)):
        try:
            values[start : start + step] = array[start : start + step]
        except Exception:
            damaged.append(chunk)
    return values, damaged
