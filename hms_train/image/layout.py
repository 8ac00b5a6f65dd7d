"""Image layouts as data: which store arrays make the model's image, where each goes, how it is cropped.

A layout is written in the training config (TOML `[layout]`, the recipes' own); omitted, the image is
the `inputs` whose role is "image" side by side, each whole. Every part is a store array whose
attributes say it is an image part (`role` "image", hms_prep.store.arrays.describe_arrays), shaped
(4 chains, F, T) per row; it fills 4 * F image rows (chain c on rows c*F .. (c+1)*F - 1 of the part) and
`width` columns cut from its T time columns; the array's `normalise` attribute says whether each
sample's part is z-scored first (log power: the Kaggle crops). The layout never goes by an array's name:

    [layout]
    parts = [                                        # David's 400 x 768 image
      { array = "eeg_10s_m50", row = 0,   col = 0 },
      { array = "eeg_14s_m50", row = 0,   col = 256 },
      { array = "eeg_30s_m50", row = 200, col = 0 },
      { array = "eeg_44s_m50", row = 200, col = 256 },
      { array = "kaggle", row = 0, col = 512, width = 256, train_crop = "random", eval_crop = "first" },
    ]

Part keys: `array` (required); `row` (default 0); `col` (default: right after the previous part, so a
list of bare arrays sits side by side); `width` (default: all T columns); `train_crop` / `eval_crop`,
where the `width` columns start: "first", "center" or (training only) "random", per sample.

Whole-image keys (all optional): `width` makes the image exactly that wide, zeros when the parts are
narrower (`pad` "right", or "center": both sides, the left getting the smaller half, as albumentations'
PadIfNeeded), a crop when they are wider: `train_crop` "first" | "center" | "random", `eval_crop`
"first" | "center" | "sliding" (windows `stride` columns apart, the last one flush with the right edge;
`forward.predict_probabilities` averages the model's probabilities over them). Richard's image:

    [layout]
    parts = [{ array = "eeg_10s" }, { array = "eeg_30s" }, { array = "kaggle" }]
    width = 912
    pad = "center"
    train_crop = "random"
    eval_crop = "sliding"
    stride = 684

The parts must tile the image: no overlaps, no gaps (a gap is nearly always a typo in a row or col).
`ImageLayout.image_size` is the model's input size, for training and evaluation alike. This module is
pure data (no torch); `hms_train.image.compose` does the tensor work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hms_prep.domain import CHAINS, MIRRORED_CHAINS
from hms_prep.store.arrays import NORMALISE_NONE, NORMALISE_ZSCORE, ROLE_IMAGE, ArrayDescription

N_CHAINS = len(CHAINS)
PART_TRAIN_CROPS = ("first", "center", "random")
PART_EVAL_CROPS = ("first", "center")
IMAGE_TRAIN_CROPS = PART_TRAIN_CROPS
IMAGE_EVAL_CROPS = ("first", "center", "sliding")
PADS = ("right", "center")


class LayoutError(ValueError):
    """A layout that cannot be built; the message names the key (e.g. `layout.parts[2].width`)."""


# --- the config: what the TOML says, checked on its own --------------------------------------------------


@dataclass(frozen=True)
class PartConfig:
    array: str
    row: int = 0
    col: int | None = None  # None: right after the previous part
    width: int | None = None  # None: all of the array's time columns
    train_crop: str = "first"
    eval_crop: str = "first"


@dataclass(frozen=True)
class LayoutConfig:
    parts: tuple[PartConfig, ...] = ()
    width: int | None = None  # the whole image's width; None: as wide as the parts
    pad: str = "right"  # where the zeros go when the parts are narrower than `width`
    train_crop: str = "first"
    eval_crop: str = "first"
    stride: int | None = None  # between sliding evaluation windows

    @classmethod
    def parse(cls, value: LayoutConfig | Mapping[str, Any] | None) -> LayoutConfig | None:
        """A checked LayoutConfig from the config's `layout` value (a TOML table, a LayoutConfig or None)."""
        if value is None:
            return None
        values = _checked_keys(cls, _as_dict(value), "layout")
        parts = values.pop("parts", None)
        if not isinstance(parts, (list, tuple)) or not parts:
            raise LayoutError("layout.parts must be a non-empty list of parts, e.g. [{ array = \"eeg_10s\" }]")
        layout = cls(parts=tuple(_part(p, i) for i, p in enumerate(parts)), **values)
        _check_choice(layout.train_crop, IMAGE_TRAIN_CROPS, "layout.train_crop")
        _check_choice(layout.eval_crop, IMAGE_EVAL_CROPS, "layout.eval_crop")
        _check_choice(layout.pad, PADS, "layout.pad")
        _check_count(layout.width, "layout.width", minimum=1)
        _check_count(layout.stride, "layout.stride", minimum=1)
        cropping = layout.train_crop != "first" or layout.eval_crop != "first"
        if cropping and layout.width is None:
            raise LayoutError("layout.train_crop / layout.eval_crop crop the whole image to layout.width; set it")
        if (layout.eval_crop == "sliding") != (layout.stride is not None):
            raise LayoutError("layout.stride is needed with layout.eval_crop = \"sliding\", and only then")
        if layout.stride is not None and layout.stride > layout.width:
            raise LayoutError(f"layout.stride {layout.stride} is wider than layout.width {layout.width}: "
                              "windows would skip columns")
        return layout


def _part(value: PartConfig | Mapping[str, Any], index: int) -> PartConfig:
    key = f"layout.parts[{index}]"
    values = _checked_keys(PartConfig, _as_dict(value), key)
    if not isinstance(values.get("array"), str):
        raise LayoutError(f"{key}.array is required: the name of a store array, e.g. \"eeg_10s\"")
    part = PartConfig(**values)
    _check_count(part.row, f"{key}.row", minimum=0)
    _check_count(part.col, f"{key}.col", minimum=0)
    _check_count(part.width, f"{key}.width", minimum=1)
    _check_choice(part.train_crop, PART_TRAIN_CROPS, f"{key}.train_crop")
    _check_choice(part.eval_crop, PART_EVAL_CROPS, f"{key}.eval_crop")
    return part


def _as_dict(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, Mapping):
        raise LayoutError(f"expected a table of layout keys, got {value!r}")
    return dict(value)


def _checked_keys(cls, values: dict[str, Any], key: str) -> dict[str, Any]:
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise LayoutError(f"unknown key(s) {unknown} in {key}; known: {known}")
    return values


def _check_choice(value: Any, allowed: Sequence[str], key: str) -> None:
    if value not in allowed:
        raise LayoutError(f"{key} = {value!r}; allowed: {list(allowed)}")


def _check_count(value: Any, key: str, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LayoutError(f"{key} = {value!r}; expected an integer >= {minimum}")


# --- the resolved layout: the config placed against the store's arrays ----------------------------------


@dataclass(frozen=True)
class PartSource:
    """What a layout needs to know of a store array, from its attributes: its role, how each sample is
    normalised, and its per-row (4, F, T) shape."""

    role: str
    normalise: str
    freqs: int
    times: int

    @classmethod
    def of(cls, array: ArrayDescription) -> PartSource:
        """From the store's description of an array (`describe_arrays`)."""
        freqs, times = array.shape[-2:] if len(array.shape) >= 2 else (0, 0)
        return cls(role=array.role, normalise=array.normalise, freqs=freqs, times=times)

    @classmethod
    def image_part(cls, shape, normalise: str = NORMALISE_NONE) -> PartSource:
        """An image part of per-row or per-batch shape (..., 4, F, T): for callers without a store."""
        shape = tuple(shape)
        if len(shape) < 3 or shape[-3] != N_CHAINS:
            raise LayoutError(f"an image part has shape (B, {N_CHAINS}, F, T), got {shape}")
        if normalise not in (NORMALISE_NONE, NORMALISE_ZSCORE):
            raise LayoutError(f"normalise {normalise!r}; allowed: {[NORMALISE_NONE, NORMALISE_ZSCORE]}")
        return cls(role=ROLE_IMAGE, normalise=normalise, freqs=shape[-2], times=shape[-1])


def side_by_side(names: Sequence[str], sources: Mapping[str, PartSource]) -> LayoutConfig:
    """The image parts among `names` side by side, each whole, in that order (a config without [layout])."""
    parts = [name for name in names if sources[name].role == ROLE_IMAGE]
    if not parts:
        raise LayoutError(f"the model takes an image but none of the inputs {list(names)} is an image part")
    freqs = {name: sources[name].freqs for name in parts}
    if len(set(freqs.values())) > 1:
        raise LayoutError(f"parts side by side must share the number of frequency rows F: {freqs}; "
                          "tile parts of other heights with a [layout]")
    return LayoutConfig(parts=tuple(PartConfig(array=name) for name in parts))


@dataclass(frozen=True)
class Placement:
    """One part placed: its array's rows of chains fill rows row .. row + height, columns col .. col + width."""

    array: str
    normalise: str  # NORMALISE_ZSCORE: each sample's part is z-scored over its whole block first
    row: int
    col: int
    freqs: int  # F: rows per chain block
    times: int  # T: the array's time columns, of which `width` are kept
    width: int
    train_crop: str
    eval_crop: str

    @property
    def height(self) -> int:
        return N_CHAINS * self.freqs

    def crop(self, train: bool) -> str:
        return self.train_crop if train else self.eval_crop


@dataclass(frozen=True)
class ImageLayout:
    parts: tuple[Placement, ...]
    height: int
    composed_width: int  # the parts' extent; the image is `width` wide
    width: int
    train_crop: str = "first"
    eval_crop: str = "first"
    stride: int | None = None
    pad: str = "right"

    @property
    def pad_left(self) -> int:
        """Zero columns left of the parts on the canvas: half the padding (rounded down) when centred."""
        room = max(self.width - self.composed_width, 0)
        return room // 2 if self.pad == "center" else 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model's input image, in training and evaluation alike."""
        return self.height, self.width

    @property
    def arrays(self) -> list[str]:
        return list(dict.fromkeys(part.array for part in self.parts))

    @property
    def canvas_width(self) -> int:
        """Columns of the composed image before the whole-image crop (zero-padded up to `width`)."""
        return max(self.composed_width, self.width)

    def window_starts(self) -> list[int]:
        """Start columns of the evaluation windows on the canvas: one, or several when sliding."""
        room = self.canvas_width - self.width
        if self.eval_crop != "sliding":
            return [crop_start(self.eval_crop, self.canvas_width, self.width)]
        starts = list(range(0, room + 1, self.stride))
        return starts if starts[-1] == room else [*starts, room]

    def mirror_rows(self) -> np.ndarray:
        """Source row of each image row (H,) or pixel (H, W) for the hemisphere swap: LL <-> RL and
        LP <-> RP inside every part, whatever its place. Raises LayoutError where no fixed map exists."""
        uniform = len({(part.row, part.freqs) for part in self.parts}) == 1
        if uniform:  # one band of parts of equal F: a row permutation, the same in every column
            return _chain_mirror(self.parts[0].freqs) + self.parts[0].row
        if self.width != self.composed_width:
            raise LayoutError("the hemisphere swap needs a fixed map of the chain blocks, but a tiled layout "
                              "cropped or padded to layout.width moves them; set augment.hemisphere_swap_p = 0 "
                              "or drop layout.width")
        rows = np.repeat(np.arange(self.height)[:, None], self.width, axis=1)
        for part in self.parts:
            mirrored = _chain_mirror(part.freqs) + part.row
            rows[part.row : part.row + part.height, part.col : part.col + part.width] = mirrored[:, None]
        return rows


    def part_flip_columns(self) -> np.ndarray:
        """(H, W) source column of each pixel when every part is time-flipped in place (David's flip: each
        part reversed where it sits, the parts' places kept). Raises LayoutError where the parts move
        (a whole-image crop or padding to layout.width)."""
        if self.width != self.composed_width:
            raise LayoutError("a time flip of each part in place needs the parts where the layout puts them; "
                              "this layout crops or pads the image to layout.width: flip the whole image "
                              "(augment.time_flip.per_part = false) or drop layout.width")
        columns = np.repeat(np.arange(self.width)[None, :], self.height, axis=0)
        for part in self.parts:
            flipped = np.arange(part.col + part.width - 1, part.col - 1, -1)
            columns[part.row : part.row + part.height, part.col : part.col + part.width] = flipped[None, :]
        return columns


    def chain_blocks(self) -> np.ndarray:
        """(H, W) int: which chain sub-image each pixel belongs to (part index x 4 + chain; -1 where no part
        is, the padding), for steps that act on each chain of each part apart (David's autocontrast).
        Raises LayoutError where the parts move (a whole-image crop or padding to layout.width)."""
        if self.width != self.composed_width:
            raise LayoutError("a step on each chain sub-image needs the parts where the layout puts them; this "
                              "layout crops or pads the image to layout.width: set augment.autocontrast.p = 0 "
                              "or drop layout.width")
        blocks = np.full((self.height, self.width), -1, dtype=np.int64)
        for index, part in enumerate(self.parts):
            chain = np.repeat(np.arange(N_CHAINS), part.freqs) + N_CHAINS * index
            blocks[part.row : part.row + part.height, part.col : part.col + part.width] = chain[:, None]
        return blocks


def _chain_mirror(freqs: int) -> np.ndarray:
    """(4 * F,) source row of each row of one part when its chain blocks are mirrored."""
    blocks = np.arange(N_CHAINS * freqs).reshape(N_CHAINS, freqs)
    return blocks[list(MIRRORED_CHAINS)].reshape(-1)


def crop_start(crop: str, length: int, width: int) -> int:
    """The fixed start of a "first" or "center" crop of `width` out of `length` columns."""
    return 0 if crop == "first" else (length - width) // 2


def resolve_layout(config: LayoutConfig, sources: Mapping[str, PartSource]) -> ImageLayout:
    """Place `config`'s parts on the store's arrays `sources` (name -> PartSource); checks every part
    against its array (present, an image part, crop widths that fit) and the whole (no overlap, no gap)."""
    placed = []
    next_col = 0
    for index, part in enumerate(config.parts):
        key = f"layout.parts[{index}]"
        if part.array not in sources:
            raise LayoutError(f"{key}.array {part.array!r} is not an array of the store; have {sorted(sources)}")
        source = sources[part.array]
        if source.role != ROLE_IMAGE:
            raise LayoutError(f"{key}.array {part.array!r} is not an image part (its role is {source.role!r})")
        width = source.times if part.width is None else part.width
        if width > source.times:
            raise LayoutError(f"{key}.width {width} is wider than {part.array!r}, which has {source.times} "
                              "time columns")
        col = next_col if part.col is None else part.col
        placed.append(Placement(part.array, source.normalise, part.row, col, source.freqs, source.times, width,
                                part.train_crop, part.eval_crop))
        next_col = col + width
    _check_tiling(placed)
    height = max(p.row + p.height for p in placed)
    composed = max(p.col + p.width for p in placed)
    return ImageLayout(tuple(placed), height, composed, config.width or composed,
                       config.train_crop, config.eval_crop, config.stride, config.pad)


def _check_tiling(parts: Sequence[Placement]) -> None:
    def box(i: int) -> str:
        p = parts[i]
        return f"layout.parts[{i}] ({p.array!r}: rows {p.row}..{p.row + p.height}, cols {p.col}..{p.col + p.width})"

    for i, a in enumerate(parts):
        for j in range(i):
            b = parts[j]
            if a.row < b.row + b.height and b.row < a.row + a.height and a.col < b.col + b.width and b.col < a.col + a.width:
                raise LayoutError(f"{box(i)} overlaps {box(j)}")
    height = max(p.row + p.height for p in parts)
    width = max(p.col + p.width for p in parts)
    covered = sum(p.height * p.width for p in parts)
    if covered != height * width:
        boxes = "; ".join(box(i) for i in range(len(parts)))
        raise LayoutError(f"the parts cover {covered} of the {height} x {width} image's pixels; they must tile it "
                          f"without gaps: {boxes}")
