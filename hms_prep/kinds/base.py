"""What every array kind of the store declares, and the registry that build, chunk, audit and show
loop over.

An array kind (a mel window, the Kaggle crop, the raw signals, the next one) is one module holding a
frozen params dataclass (`to_dict`, `digest`) and an `ArrayKind` subclass registered with
`@register_kind`. The array's name follows from its params (`variant_name`), so variants of one kind
live side by side in a store. The kind says which file it is cut from (`source`), how one file's rows
become values (`cut`), what is done once per chunk on all of them (`finish`: the batched part), and how
its array is created and written. A kind also writes its read half: the attributes a reader needs
(`role`, `normalise`, `axes` and the geometry of its role) go onto the array when it is created, in the
same metadata write as `kind`, `params` and `params_digest`. They are the store format: readers (hms_train,
show, verify) learn what an array is from them through `hms_prep.store.arrays.describe_arrays`, never
from its name or from this registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import zarr

from hms_prep.domain import CHAINS
from hms_prep.registry import Registry, RegistryError
from hms_prep.sources.recordings import EEG, SOURCES, SPECTROGRAM  # noqa: F401 (a kind's `source`)
from hms_prep.sources.rows import RawSegment
from hms_prep.store.codecs import AUTO, CODECS, FAST, write_rows
from hms_prep.store.coords import store_dimension_names
from hms_prep.store.arrays import IMAGE_AXES, NORMALISE_NONE, ROLE_IMAGE, STORAGE_ROW
from hms_prep.store.layout import StoreLayout, digest


class KindParams:
    """Base of a kind's frozen params dataclass: `digest()` is the stable hash of its `to_dict()`."""

    def to_dict(self) -> dict:
        raise NotImplementedError

    def digest(self) -> str:
        return digest(self.to_dict())


@dataclass(frozen=True)
class Cut:
    """What one kind made of one file's rows: values by row (by segment position for a kind stored in
    segments), and per-row failure reasons and repaired fractions."""

    values: dict[int, np.ndarray] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    repaired: dict[int, float] = field(default_factory=dict)

    @staticmethod
    def merge(cuts) -> Cut:
        merged = Cut()
        for cut in cuts:
            merged.values.update(cut.values)
            merged.errors.update(cut.errors)
            merged.repaired.update(cut.repaired)
        return merged


@dataclass(frozen=True)
class ArrayKind:
    """One array of the store, defined by its kind (the subclass) and its params."""

    params: Any

    kind: ClassVar[str]  # attrs["kind"]
    params_type: ClassVar[type]
    source: ClassVar[str]  # EEG or SPECTROGRAM
    default_codec: ClassVar[str]  # a name in hms_prep.store.codecs.CODECS, used when the store's codec is "auto"
    fast_codec: ClassVar[str | None] = None  # used when it is "fast" (None: the default codec)
    stage: ClassVar[str]  # the build's timing stage its computation counts under
    # STORAGE_ROW: one item (`item_shape`) per row; STORAGE_SEGMENT: (signals, samples) stored per recording
    # segment along axis 1 (hms_prep/sources/rows.py lays the segments out; params need `margin_s`).
    storage: ClassVar[str] = STORAGE_ROW
    # The model input it feeds, an open name: ROLE_IMAGE (a (4 chains, F, T) part the trainer's layout
    # composes), ROLE_SIGNALS (the raw kind's), or a plug-in's own ("features": a model kind declaring that
    # input gets the array's rows as they are; tests/plugins/feature_kind.py).
    role: ClassVar[str] = ROLE_IMAGE
    # NORMALISE_ZSCORE: the values are not scaled (log power): readers z-score each sample's block.
    normalise: ClassVar[str] = NORMALISE_NONE

    @property
    def needs_midline(self) -> bool:
        """EEG kinds: whether it uses the midline pairs Fz-Cz, Cz-Pz (18 bipolar signals, not 16)."""
        return False

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def digest(self) -> str:
        return self.params.digest()

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one row's values (per-row kinds)."""
        raise NotImplementedError

    def attrs(self) -> dict:
        """The array's attributes: what made it (kind, params, digest) and how to read it (storage,
        role, normalise, axes and the geometry of its role)."""
        return {"kind": self.kind, "params": self.params.to_dict(), "params_digest": self.digest,
                "storage": self.storage, "role": self.role, "normalise": self.normalise, **self.geometry()}

    def geometry(self) -> dict:
        """The attributes that say how the array's axes are laid out (a per-row image part's)."""
        return {"axes": list(IMAGE_AXES), "chains": list(CHAINS)}

    def coordinates(self) -> dict[str, tuple[np.ndarray, str]]:
        """xarray's labels of the kind's own axes: {axis: (values, units)}, stored as `{array}_{axis}`
        (hms_prep/store/coords.py); the per-row and chain axes are the store's. None by default."""
        return {}

    def shape_and_chunks(self, layout: StoreLayout, segments_length: int) -> tuple[tuple, tuple]:
        """The array's shape and chunks: one item per row, one chunk per `layout.chunk_rows` rows."""
        return (layout.n_rows, *self.item_shape), (layout.chunk_rows, *self.item_shape)

    def create(self, group: zarr.Group, layout: StoreLayout, segments_length: int) -> zarr.Array:
        """The empty, zero-filled float16 array with all its attributes and its dimension names in one
        metadata write: a build killed meanwhile leaves either no array or a whole one (never
        params_digest without axes)."""
        shape, chunks = self.shape_and_chunks(layout, segments_length)
        attrs = self.attrs()
        return group.create_array(self.name, shape=shape, chunks=chunks, attributes=attrs,
                                  dimension_names=store_dimension_names(self.name, attrs["axes"], layout.split),
                                  **self.encoding(layout))

    def encoding(self, layout: StoreLayout) -> dict:
        """dtype, fill value and compressor (the kind's own codec when the store's choice is a policy)."""
        return dict(dtype="float16", fill_value=0.0, compressors=CODECS[self.codec_for(layout.codec)].write())

    def codec_for(self, choice: str) -> str:
        """The codec this kind's array is written with when the store's `--codec` is `choice`."""
        return {AUTO: self.default_codec, FAST: self.fast_codec or self.default_codec}.get(choice, choice)

    def cut(self, source, rows: frozenset[int]) -> Cut:
        """Values of `rows` (those of this file that this array computes) from one opened file: an
        `EegRecording` or a `SpectrogramFile` (hms_prep/sources/recordings.py)."""
        raise NotImplementedError

    def finish(self, cut: Cut, device: str) -> Cut:
        """Once per chunk, on the merged cuts of all its files (batched work goes here; torch work on
        `device`, "cpu" or "cuda[:N]", returning numpy values)."""
        return cut

    def write(self, target: zarr.Array, rows: tuple[int, ...], whole: bool, cut: Cut,
              segments: tuple[RawSegment, ...]) -> None:
        """Write the rows' values (zeros for failed rows); `whole`: the rows are the whole chunk."""
        values = stacked_float16([cut.values.get(row) for row in rows], target.shape[1:])
        if whole:
            write_rows(target, rows[0], values)
        else:
            target.oindex[np.asarray(rows)] = values

    @staticmethod
    def title(params: dict) -> str:
        """A short human description of an array of this kind from its stored params (hms-prep show)."""
        raise NotImplementedError


def stacked_float16(items: list, shape: tuple[int, ...]) -> np.ndarray:
    """The items stacked as float16 (zeros where an item is None). Converted by torch, which does
    float32 -> float16 about 7x faster than numpy (9.6 vs 1.3 ms for a 32-row chunk of eeg_10s)."""
    import torch  # only where values are written: the driver never imports it for this

    out = torch.zeros((len(items), *shape), dtype=torch.float16)
    for i, item in enumerate(items):
        if item is not None:
            out[i].copy_(torch.as_tensor(item))
    return out.numpy()


KINDS: Registry[type[ArrayKind]] = Registry("array kind", "kinds")  # kind -> class; settings: its params


def register_kind(cls: type[ArrayKind]) -> type[ArrayKind]:
    """Class decorator: make `cls` a kind of the store, found by its `kind` and its `params_type`."""
    for other in (entry.factory for entry in KINDS.entries(load=False)):
        if cls.params_type is other.params_type:
            raise RegistryError(f"array kind {cls.__name__} clashes with {other.__name__} "
                                f"(both take params {cls.params_type.__name__})")
    if cls.source not in SOURCES:
        raise RegistryError(f"array kind {cls.__name__}: source {cls.source!r} is not one of {list(SOURCES)}")
    return KINDS.register(cls.kind, cls, settings=cls.params_type, source=cls.source, storage=cls.storage,
                          role=cls.role)


def kind_for(params) -> ArrayKind:
    """The array made with `params` (e.g. `MelParams(10)` -> the `eeg_10s` array)."""
    for cls in KINDS.values():
        if isinstance(params, cls.params_type):
            return cls(params)
    known = ", ".join(cls.params_type.__name__ for cls in KINDS.values())
    raise TypeError(f"no array kind takes {type(params).__name__} parameters; known: {known}")


def kind_of_stored(kind: str, params: dict) -> ArrayKind:
    """The array made with an array's stored attributes (`kind`, `params`): `params.to_dict()` read back
    (its fixed recipe entries, which are not fields, are left out)."""
    cls = kind_named(kind)
    names = {f.name for f in fields(cls.params_type)}
    return cls(cls.params_type(**{key: value for key, value in params.items() if key in names}))


def kind_named(kind: str | None) -> type[ArrayKind]:
    """The registered kind of an array's attrs["kind"]; KeyError naming the known kinds otherwise."""
    if kind not in KINDS:
        raise KeyError(f"unknown array kind {kind!r}; this hms-prep knows {sorted(KINDS)}")
    return KINDS[kind]


def variant_name(stem: str, params, default, readable: dict[str, str]) -> str:
    """The array name of `params`: `stem` for the default params; `stem_{readable}` when exactly one
    field in `readable` differs (its format string gets the value: {"n_mels": "m{}"} -> eeg_10s_m50);
    otherwise `stem_{first 8 hex digits of the params digest}`. Hex digits never form the readable
    suffixes (they all hold a letter beyond f), so names stay distinct."""
    if params == default:
        return stem
    differ = [f.name for f in fields(params) if getattr(params, f.name) != getattr(default, f.name)]
    if len(differ) == 1 and differ[0] in readable:
        return f"{stem}_{readable[differ[0]].format(getattr(params, differ[0]))}"
    return f"{stem}_{params.digest()[:8]}"
