"""The on-disk format of a cache store: one Zarr v3 group plus `labels.parquet` beside its arrays.

This module is the format's single definition. It holds no preprocessing math, so the trainer's
reader may import it. See docs/store-format.md for the format in prose.

    STORE/zarr.json                 root attributes["hms_cache"]: layout version, split, rows, chunking
    STORE/labels.parquet            one row per label row, in array order (column `row`)
    STORE/_rows/{digest}.parquet    the row table: each row's last CSV line, whether it is dropped, its raw index
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
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync  # zarr's own bridge to its async stores: the one way to reach any store's files

from hms_prep.store.codecs import checksum_failures, read_whole
from hms_prep.domain import TARGET_COLUMNS  # noqa: F401 (hms_train.data.reader's import; new code: hms_prep.domain)

# labels.parquet sits beside the arrays by design; zarr warns about any non-zarr object it lists.
warnings.filterwarnings("ignore", message=r"Object at (labels\.parquet(\.tmp)?|build\.lock|_rows) is not recognized")

# 2: rows keep their position by label_id across train.csv changes (the row table in _rows/). Version 1
# stores (rows fixed at creation) are read as they are, and become version 2 when their rows change.
LAYOUT_VERSION = 2
READABLE_VERSIONS = (1, 2)
ROOT_KEY = "hms_cache"
LABELS_FILE = "labels.parquet"
ROWS_FOLDER = "_rows"
BUILD_GROUP = "_build"

STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
# labels.parquet's index of each row into the arrays stored per segment: its label window's first sample,
# and the bounds of its recording's stored segment (a jittered window never leaves them).
RAW_INDEX_COLUMNS = ("raw_start", "raw_lo", "raw_hi")
# labels.parquet: true for a row whose key (label_id; test: eeg_id) has left the CSV since the store took it.
# The row keeps its place and values; no reader uses it (`live_rows`). Absent in older stores: none is.
DROPPED = "dropped"

IMAGE_AXES = ("row", "chain", "frequency", "time")  # a per-row image part: (rows, 4 chains, F, T)
SIGNAL_AXES = ("signal", "sample")  # signals stored per recording segment (rows index them via labels)
TIME_AXES = ("time", "sample")  # an array whose last axis is one of these runs along time (a flip reverses it)
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
    rows_digest: str  # names the row table (_rows/{rows_digest}.parquet); "" while the store has no rows
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
    """The data arrays whose creation is complete, in `data_array_order`. StoreError naming every metadata file that is
    damaged (`survey_arrays`): an array never silently disappears from its readers."""
    states = survey_arrays(group)
    damaged = [problem.line() for state in states.values() if state.damaged for problem in state.problems]
    if damaged:
        raise StoreError(f"{store_label(group)}: {'; '.join(damaged)}; `hms-prep build --repair` with the "
                         "arrays asked for rewrites their metadata from their parameters")
    return data_array_order(name for name, state in states.items() if state.complete)


def data_array_order(names) -> list[str]:
    """eeg_{W}s and their variants by window, then kaggle*, raw*: a stable order (the filesystem's is not)."""
    return sorted(names, key=lambda n: (not n.startswith("eeg_"), _window_of(n), n))


def array_complete(group: zarr.Group, name: str) -> bool:
    """Whether the creation of array `name` finished: its build state exists (created first) and its
    attributes were written (last), every metadata file readable."""
    state = _array_state(group, name)
    return state is not None and state.complete


def remove_array(group: zarr.Group, name: str) -> None:
    """Delete an array and its build state (an unfinished creation, to be redone), whatever their metadata
    holds (zarr's own `del` parses it first)."""
    for path in (name, f"{BUILD_GROUP}/{name}"):
        sync(group.store.delete_dir(_key(group, path)))


# --- which arrays a store holds, each metadata file read on its own --------------------------------------
# zarr parses every member's zarr.json when it lists or indexes a group, so one damaged file raised from
# deep inside zarr (a 103-line traceback) or, deleted, made its array vanish without a word.

# Attributes every data array has (since the one-write creation, all or none); signals arrays also these:
REQUIRED_ATTRIBUTES = ("kind", "params", "params_digest", "axes")
REQUIRED_SIGNAL_ATTRIBUTES = ("signals",)
NOT_ARRAYS = ("zarr.json", LABELS_FILE, f"{LABELS_FILE}.tmp", "build.lock")  # files beside the arrays


@dataclass(frozen=True)
class MetadataProblem:
    """A metadata file of the store (`file`, relative to it) that is missing, unreadable or incomplete."""

    file: str
    reason: str

    def line(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class ArrayState:
    """What the metadata of one array and its build state says: complete (no problems), an unfinished
    creation (problems, nothing of it written yet: a build redoes it), or damaged (problems, though chunks
    were written: its creation had finished)."""

    name: str
    problems: tuple[MetadataProblem, ...]
    created: bool  # its creation finished once: complete now, or a chunk of it or of its build state exists

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def damaged(self) -> bool:
        return bool(self.problems) and self.created


def survey_arrays(group: zarr.Group) -> dict[str, ArrayState]:
    """Every array the store has a metadata file of (its own or its build state's), by name."""
    names = {n for n in _entries(group, "") if not n.startswith("_") and _is_node_name(n)}
    names |= {n for n in _entries(group, BUILD_GROUP) if _is_node_name(n)}
    states = (_array_state(group, name) for name in sorted(names))
    return {state.name: state for state in states if state is not None}


def store_problems(group: zarr.Group) -> list[MetadataProblem]:
    """Metadata of the store itself beyond the root: the `_build` group's (xarray's open_datatree reads it)."""
    if not _entries(group, BUILD_GROUP):
        return []
    problems: list[MetadataProblem] = []
    _read_metadata(group, f"{BUILD_GROUP}/zarr.json", "group", problems)
    if [p.reason for p in problems] == ["missing"] and not any(s.created for s in survey_arrays(group).values()):
        # An unfinished creation: zarr writes the group's metadata and its first array's build state group's
        # in no fixed order, and a build killed between them left the latter alone. The next build creates
        # the arrays again, and the group with them.
        return []
    return problems


def _array_state(group: zarr.Group, name: str) -> ArrayState | None:
    """None when the store has no metadata file of the name (nothing of ours)."""
    problems: list[MetadataProblem] = []
    attrs = _read_metadata(group, f"{name}/zarr.json", "array", problems)
    if attrs is not None:
        required = REQUIRED_ATTRIBUTES + (REQUIRED_SIGNAL_ATTRIBUTES if tuple(attrs.get("axes", ())) == SIGNAL_AXES
                                          else ())
        missing = [key for key in required if key not in attrs]
        if missing:
            problems.append(MetadataProblem(f"{name}/zarr.json", f"lacks the attributes {', '.join(missing)}"))
    _read_metadata(group, f"{BUILD_GROUP}/{name}/zarr.json", "group", problems)
    for part in BUILD_STATE_ARRAYS:
        _read_metadata(group, f"{BUILD_GROUP}/{name}/{part}/zarr.json", "array", problems)
    if not problems:
        return ArrayState(name, (), True)
    chunk_folders = (name, *(f"{BUILD_GROUP}/{name}/{part}" for part in BUILD_STATE_ARRAYS))
    created = any(_entries(group, f"{path}/c") for path in chunk_folders)
    if not created and all(problem.reason == "missing" for problem in problems):
        return None
    return ArrayState(name, tuple(problems), created)


def _read_metadata(group: zarr.Group, path: str, node_type: str, problems: list) -> dict | None:
    """The attributes of the zarr v3 `node_type` whose metadata is `path`; None, with a problem added, when
    it is missing, not JSON, or not such a node that zarr can open."""
    data = read_metadata_bytes(group, path)
    if data is None:
        problems.append(MetadataProblem(path, "missing"))
        return None
    try:
        metadata = json.loads(data)
        if not isinstance(metadata, dict) or metadata.get("node_type") != node_type or metadata.get("zarr_format") != 3:
            raise ValueError(f"not the metadata of a zarr v3 {node_type}")
        group[path.rsplit("/", 1)[0]]  # what zarr makes of it: codecs, shape, data type
    except Exception as err:  # JSON, zarr's own checks: any reason is the file's
        problems.append(MetadataProblem(path, f"unreadable ({type(err).__name__}: {err})"))
        return None
    attributes = metadata.get("attributes", {})
    return attributes if isinstance(attributes, dict) else {}


def read_metadata_bytes(group: zarr.Group, path: str) -> bytes | None:
    """The bytes of a file of the store (a `zarr.json`), None when it is missing."""
    data = sync(group.store.get(_key(group, path), prototype=default_buffer_prototype()))
    return None if data is None else data.to_bytes()


def write_metadata(group: zarr.Group, path: str, data: bytes) -> None:
    """Replace a metadata file of the store (`build --repair`), atomically where the store allows (local
    stores: a temporary file, then a rename, as zarr writes its own)."""
    sync(group.store.set(_key(group, path), default_buffer_prototype().buffer.from_bytes(data)))


def _entries(group: zarr.Group, path: str) -> list[str]:
    """Names directly under `path` (files and folders), without parsing anything."""

    async def listed():
        return [entry async for entry in group.store.list_dir(_key(group, path))]

    return sync(listed())


def _key(group: zarr.Group, path: str) -> str:
    return "/".join(part for part in (group.path, path) if part)


def _is_node_name(name: str) -> bool:
    return name not in NOT_ARRAYS and not name.endswith(".partial")  # zarr's temporary files of a write


def store_label(group: zarr.Group) -> str:
    """How messages name a store: its path (a local folder, or a path behind fsspec)."""
    store = group.store
    return str(getattr(store, "root", None) or getattr(store, "path", None) or store)


def _window_of(name: str) -> int:
    match = re.match(r"eeg_(\d+)s(_|$)", name)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class ArrayDescription:
    """What a reader needs to know of one data array, from its attributes: what made it (`kind`, `params`)
    and how to read it (`storage`, `role`, `normalise`, `shape`), so that a reader never goes by its name."""

    name: str
    kind: str  # "eeg_mel", "kaggle", "raw", ...
    axes: tuple[str, ...]
    params: dict
    params_digest: str
    role: str  # the model input it feeds: ROLE_IMAGE, ROLE_SIGNALS or a plug-in's own (open)
    normalise: str  # NORMALISE_NONE or NORMALISE_ZSCORE
    shape: tuple[int, ...] = ()
    storage: str = "row"  # STORAGE_ROW or STORAGE_SEGMENT: how its values are laid out (closed)

    @property
    def image(self) -> bool:
        """A per-row (4, F, T) image part (axes IMAGE_AXES), which the trainer's layout composes."""
        return self.role == ROLE_IMAGE

    @property
    def per_row(self) -> bool:
        """One item per row (chunks of `chunk_rows` rows); otherwise stored per recording segment."""
        return self.storage == STORAGE_ROW


# How an array is stored (its `storage` attribute), which its readers must know and which is therefore a
# closed set: one item per row (rows, ...), or per recording segment along its last axis (signals,
# samples), whose rows labels.parquet's raw_* columns index.
STORAGE_ROW, STORAGE_SEGMENT = "row", "segment"
STORAGES = (STORAGE_ROW, STORAGE_SEGMENT)
# What an array is to a model (its `role` attribute), an open set: the trainer composes the arrays whose
# role is "image" into one image by its layout, and hands any other role's array to a model kind that
# declares that input (hms_train/model/models.py). These two are the roles of the bundled kinds.
ROLE_IMAGE, ROLE_SIGNALS = "image", "signals"
# What a reader does to each sample's values first (its `normalise` attribute): nothing (the values are
# scaled already), or a z-score over the sample's whole block (log power: the Kaggle crops).
NORMALISE_NONE, NORMALISE_ZSCORE = "none", "zscore"
# Arrays written before the kinds recorded how to read them (layout v1 stores): by their kind.
READ_HALF_OF_V1_KINDS = {"eeg_mel": (ROLE_IMAGE, NORMALISE_NONE), "kaggle": (ROLE_IMAGE, NORMALISE_ZSCORE),
                         "raw": (ROLE_SIGNALS, NORMALISE_NONE)}


def describe_arrays(group: zarr.Group, names: list[str] | None = None) -> dict[str, ArrayDescription]:
    """Every data array of the store by name, in `data_array_names` order (or those of `names`, complete
    arrays: `survey_arrays`)."""
    described = {}
    for name in data_array_names(group) if names is None else names:
        array = group[name]
        attrs = array.attrs.asdict()
        axes = tuple(attrs.get("axes", ()))
        role, normalise = READ_HALF_OF_V1_KINDS.get(
            attrs.get("kind"), (ROLE_IMAGE if axes == IMAGE_AXES else ROLE_SIGNALS, NORMALISE_NONE))
        role = attrs.get("role", role)
        # arrays written before `storage` was recorded: the signals role was the one stored per segment
        storage = attrs.get("storage", STORAGE_SEGMENT if role == ROLE_SIGNALS else STORAGE_ROW)
        described[name] = ArrayDescription(name, attrs.get("kind"), axes, attrs.get("params", {}),
                                           attrs.get("params_digest"), role, attrs.get("normalise", normalise),
                                           tuple(array.shape), storage)
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
    except Exception as err:  # JSON or zarr's own checks of the root metadata: the file's fault
        raise StoreError(f"{url}/zarr.json: unreadable ({type(err).__name__}: {err}); the store's layout is lost "
                         "with it") from None
    attrs = group.attrs.asdict().get(ROOT_KEY)
    if attrs is None:
        raise StoreError(f"{url}: a Zarr group, but not an hms cache store (no '{ROOT_KEY}' attributes)")
    version = attrs.get("layout_version") if isinstance(attrs, dict) else None
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{url}: store layout version {version}, this program reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild the store with this version of hms-prep"
        )
    try:
        return group, StoreLayout(**attrs)
    except TypeError as err:
        raise StoreError(f"{url}/zarr.json: its '{ROOT_KEY}' attributes are not a store layout ({err})") from None


def commit_layout(group: zarr.Group, layout: StoreLayout) -> None:
    """Replace the root's layout attributes in one metadata write: the moment a change of rows takes effect."""
    group.update_attributes({ROOT_KEY: asdict(layout)})


def row_table_file(digest: str) -> str:
    return f"{ROWS_FOLDER}/{digest}.parquet"


def write_row_table(url: str, table: pa.Table, digest: str) -> None:
    """The row table under the name its digest gives, atomically where the filesystem allows; the root
    names it only afterwards (`commit_layout`), so a reader never sees a table half written."""
    fs, path = fsspec.core.url_to_fs(url)
    final = f"{path.rstrip('/')}/{row_table_file(digest)}"
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(final + ".tmp", "wb") as f:
        pq.write_table(table, f, compression="zstd")
    fs.mv(final + ".tmp", final)


def read_row_table(url: str, digest: str) -> pa.Table | None:
    """The row table named `digest`; None when it is missing or unreadable."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(f"{path.rstrip('/')}/{row_table_file(digest)}", "rb") as f:
            return pq.read_table(f)
    except (OSError, pa.ArrowException):
        return None


def remove_other_row_tables(url: str, digest: str) -> None:
    """Every row table but the one the root names (left by earlier row changes, or a killed one)."""
    fs, path = fsspec.core.url_to_fs(url)
    folder = f"{path.rstrip('/')}/{ROWS_FOLDER}"
    if fs.exists(folder):
        for file in fs.ls(folder, detail=False):
            if file.rstrip("/").rsplit("/", 1)[-1] != f"{digest}.parquet":
                fs.rm_file(file)


def remove_labels(url: str) -> None:
    """labels.parquet gone until the build that changes the rows has written it again from them."""
    fs, path = fsspec.core.url_to_fs(url)
    target = f"{path.rstrip('/')}/{LABELS_FILE}"
    if fs.exists(target):
        fs.rm_file(target)


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


def live_rows(labels: pa.Table) -> np.ndarray:
    """(rows,) bool: the rows of labels.parquet still in the CSV (not `dropped`)."""
    if DROPPED not in labels.column_names:
        return np.ones(labels.num_rows, dtype=bool)
    return ~labels.column(DROPPED).to_numpy(zero_copy_only=False).astype(bool)


def read_labels_if_readable(url: str) -> pa.Table | None:
    """labels.parquet, or None when it is missing or unreadable (a build rewrites it then)."""
    try:
        return read_labels(url)
    except StoreError:
        return None


def read_labels(url: str) -> pa.Table:
    """labels.parquet; StoreError naming it when it is missing or unreadable (every build rewrites it from
    train.csv and the build state)."""
    fs, path = fsspec.core.url_to_fs(url)
    target = f"{path.rstrip('/')}/{LABELS_FILE}"
    if not fs.exists(target):
        raise StoreError(f"{url}: {LABELS_FILE} is missing (the build has not finished); run hms-prep build")
    try:
        with fs.open(target, "rb") as f:
            return pq.read_table(f)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{url}/{LABELS_FILE}: unreadable ({err}); hms-prep build rewrites it") from None


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


def damaged_state_chunks(array: zarr.Array) -> list[int]:
    """The chunks of a build-state array that cannot be trusted (checksum, truncation): by their checksums
    alone where the store allows, which the error strings need (read whole through zarr, they would cost a
    no-op build of the real data seconds)."""
    damaged = checksum_failures(array)
    return read_state(array)[1] if damaged is None else damaged


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
