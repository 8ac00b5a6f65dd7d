"""The store's data arrays: which ones a store holds (each metadata file read on its own, so a damaged
one is named, never skipped), their axes and dimension names, and what a reader needs to know of each
(`describe_arrays` -> `ArrayDescription`: how it is stored, its role for a model, its normalisation),
from its attributes alone, never from its name or from the kinds' code (hms_prep/kinds/).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import zarr
from zarr.core.sync import sync  # zarr's own bridge to its async stores: the one way to reach any store's files

from hms_prep.store.build_state import BUILD_GROUP, BUILD_STATE_ARRAYS
from hms_prep.store.layout import StoreError, is_node_name, read_metadata_bytes, store_entries, store_key, store_label


IMAGE_AXES = ("row", "chain", "frequency", "time")  # a per-row image part: (rows, 4 chains, F, T)
SIGNAL_AXES = ("signal", "sample")  # signals stored per recording segment (rows index them via labels)
TIME_AXES = ("time", "sample")  # an array whose last axis is one of these runs along time (a flip reverses it)
# Axes that index the same thing in every array of a store: their zarr dimension names are shared.
SHARED_AXES = ("row", "chain", "sample")
# Marks a coordinate array (hms_prep/store/coords.py: label_id, chain, Hz, s), which is no data array.
COORDINATE_ATTRIBUTE = "hms_cache_coordinate"


def dimension_names(name: str, axes: tuple[str, ...]) -> tuple[str, ...]:
    """Array `name`'s zarr v3 `dimension_names` (xarray's dimensions): `row`, `chain` and `sample` as they
    are (one row, chain order and segment layout for the whole store, so labels.parquet joins on `row`);
    the other axes prefixed with the name (`eeg_10s_frequency`): their sizes and meanings differ between
    arrays, and xarray allows one size per dimension name."""
    return tuple(axis if axis in SHARED_AXES else f"{name}_{axis}" for axis in axes)


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
        sync(group.store.delete_dir(store_key(group, path)))


# --- which arrays a store holds, each metadata file read on its own --------------------------------------
# zarr parses every member's zarr.json when it lists or indexes a group, so one damaged file raised from
# deep inside zarr (a 103-line traceback) or, deleted, made its array vanish without a word.

# Attributes every data array has (since the one-write creation, all or none); signals arrays also these:
REQUIRED_ATTRIBUTES = ("kind", "params", "params_digest", "axes")
REQUIRED_SIGNAL_ATTRIBUTES = ("signals",)


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
    names = {n for n in store_entries(group, "") if not n.startswith("_") and is_node_name(n)}
    names |= {n for n in store_entries(group, BUILD_GROUP) if is_node_name(n)}
    states = (_array_state(group, name) for name in sorted(names))
    return {state.name: state for state in states if state is not None}


def store_problems(group: zarr.Group) -> list[MetadataProblem]:
    """Metadata of the store itself beyond the root: the `_build` group's (xarray's open_datatree reads it)."""
    if not store_entries(group, BUILD_GROUP):
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
    if attrs is not None and attrs.get(COORDINATE_ATTRIBUTE):  # xarray's labels of an axis (store/coords.py)
        return None
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
    created = any(store_entries(group, f"{path}/c") for path in chunk_folders)
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
