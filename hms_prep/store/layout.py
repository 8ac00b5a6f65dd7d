"""The on-disk format of a cache store: one Zarr v3 group plus `labels.parquet` beside its arrays.

The format is defined once, in four modules by concern, none holding preprocessing math (the trainer's
reader imports them). See docs/store-format.md for the format in prose.
    layout.py        this file: the root's layout attributes, creating and opening a store, its files
    arrays.py        which data arrays a store holds (metadata surveyed file by file) and how to read
                     each one (`describe_arrays`: storage, role, normalise, axes)
    labels.py        labels.parquet and the row table (_rows/)
    build_state.py   each array's per-chunk and per-row build state (_build/)

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
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync  # zarr's own bridge to its async stores: the one way to reach any store's files


# labels.parquet sits beside the arrays by design; zarr warns about any non-zarr object it lists.
warnings.filterwarnings("ignore", message=r"Object at (labels\.parquet(\.tmp)?|build\.lock|_rows) is not recognized")

# 2: rows keep their position by label_id across train.csv changes (the row table in _rows/). Version 1
# stores (rows fixed at creation) are read as they are, and become version 2 when their rows change.
LAYOUT_VERSION = 2
READABLE_VERSIONS = (1, 2)
ROOT_KEY = "hms_cache"
LABELS_FILE = "labels.parquet"
ROWS_FOLDER = "_rows"


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
NOT_ARRAYS = ("zarr.json", LABELS_FILE, f"{LABELS_FILE}.tmp", "build.lock")  # files beside the arrays


def read_metadata_bytes(group: zarr.Group, path: str) -> bytes | None:
    """The bytes of a file of the store (a `zarr.json`), None when it is missing."""
    data = sync(group.store.get(store_key(group, path), prototype=default_buffer_prototype()))
    return None if data is None else data.to_bytes()


def write_metadata(group: zarr.Group, path: str, data: bytes) -> None:
    """Replace a metadata file of the store (`build --repair`), atomically where the store allows (local
    stores: a temporary file, then a rename, as zarr writes its own)."""
    sync(group.store.set(store_key(group, path), default_buffer_prototype().buffer.from_bytes(data)))


def store_entries(group: zarr.Group, path: str) -> list[str]:
    """Names directly under `path` (files and folders), without parsing anything."""

    async def listed():
        return [entry async for entry in group.store.list_dir(store_key(group, path))]

    return sync(listed())


def store_key(group: zarr.Group, path: str) -> str:
    return "/".join(part for part in (group.path, path) if part)


def is_node_name(name: str) -> bool:
    return name not in NOT_ARRAYS and not name.endswith(".partial")  # zarr's temporary files of a write


def store_label(group: zarr.Group) -> str:
    """How messages name a store: its path (a local folder, or a path behind fsspec)."""
    store = group.store
    return str(getattr(store, "root", None) or getattr(store, "path", None) or store)


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


def store_exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path.rstrip('/')}/zarr.json")


def store_nbytes(url: str) -> int:
    """Bytes of every file of the store. A local store is walked with os.scandir: fsspec's `du` costs about
    25 us of CPU a file, and a store of the real data has about 84,000 (2 s of every no-op build and `info`,
    docs/performance.md); this about 5."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return 0
    if isinstance(fs, LocalFileSystem):
        return _local_nbytes(path)
    return int(sum(fs.du(path, total=False).values()))


def _local_nbytes(root: str) -> int:
    total, folders = 0, [root]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except FileNotFoundError:  # removed meanwhile (a build's temporary folder)
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    folders.append(entry.path)
                else:
                    total += entry.stat().st_size
            except FileNotFoundError:  # a temporary file renamed meanwhile (a build writing beside `info`)
                continue
    return total
