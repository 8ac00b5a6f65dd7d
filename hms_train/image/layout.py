"""Image layouts as data: which store arrays make the model's image, where each goes, how it is cropped.

A layout is written in the training config (TOML `[layout]`); omitted, the image is today's: the
spectrogram `inputs` side by side. Every part is a store array of kind "eeg_mel" or "kaggle", shaped
(4 chains, F, T) per row; it fills 4 * F image rows (chain c on rows c*F .. (c+1)*F - 1 of the part) and
`width` columns cut from its T time columns:

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

N_CHAINS = len(CHAINS)
KAGGLE_KIND = "kaggle"  # z-scored per sample over its whole block before cropping (hms_prep.domain.standardise)
IMAGE_KINDS = ("eeg_mel", KAGGLE_KIND)  # store array kinds (attrs["kind"]) that can be image parts
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
    """What a layout needs to know of a store array: its kind and per-row (4, F, T) shape."""

    kind: str
    freqs: int
    times: int

    @classmethod
    def of(cls, array) -> PartSource:
        """From a zarr array of the store (rows, 4, F, T) with attrs["kind"]."""
        return cls(kind=array.attrs.get("kind"), freqs=array.shape[-2], times=array.shape[-1])


def side_by_side(
    names: Sequence[str],
    sources: Mapping[str, PartSource],
    kaggle_width: int | None = None,
    random_crop_width: int | None = None,
) -> LayoutConfig:
    """Today's image as a layout: `names` side by side; the config aliases `kaggle_width` (keep the first
    N columns of every Kaggle part, fewer if it has fewer) and `augment.random_crop_width` (a random N
    of them in training, the first N at evaluation) set the Kaggle parts' width and crops."""
    if not names:
        raise LayoutError("the model takes an image but no spectrogram array is among inputs")
    if kaggle_width is not None and random_crop_width is not None and kaggle_width != random_crop_width:
        raise LayoutError(f"kaggle_width {kaggle_width} and augment.random_crop_width {random_crop_width} "
                          "disagree: both set the Kaggle part's width; set one")
    freqs = {name: sources[name].freqs for name in names}
    if len(set(freqs.values())) > 1:
        raise LayoutError(f"parts side by side must share the number of frequency rows F: {freqs}; "
                          "tile parts of other heights with a [layout]")
    kaggle = [name for name in names if sources[name].kind == KAGGLE_KIND]
    if random_crop_width is not None and not kaggle:
        raise LayoutError("augment.random_crop_width crops the Kaggle part; add 'kaggle' to inputs")
    too_narrow = {name: sources[name].times for name in kaggle if random_crop_width and random_crop_width > sources[name].times}
    if too_narrow:
        raise LayoutError(f"augment.random_crop_width {random_crop_width} does not fit in {too_narrow} (time columns)")
    parts = []
    for name in names:
        part = PartConfig(array=name)
        if name in kaggle and random_crop_width is not None:
            part = PartConfig(array=name, width=random_crop_width, train_crop="random")
        elif name in kaggle and kaggle_width is not None:
            part = PartConfig(array=name, width=min(kaggle_width, sources[name].times))
        parts.append(part)
    return LayoutConfig(parts=tuple(parts))


@dataclass(frozen=True)
class Placement:
    """One part placed: its array's rows of chains fill rows row .. row + height, columns col .. col + width."""

    array: str
    kind: str
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


def _chain_mirror(freqs: int) -> np.ndarray:
    """(4 * F,) source row of each row of one part when its chain blocks are mirrored."""
    blocks = np.arange(N_CHAINS * freqs).reshape(N_CHAINS, freqs)
    return blocks[list(MIRRORED_CHAINS)].reshape(-1)


def crop_start(crop: str, length: int, width: int) -> int:
    """The fixed start of a "first" or "center" crop of `width` out of `length` columns."""
    return 0 if crop == "first" else (length - width) // 2


def resolve_layout(config: LayoutConfig, sources: Mapping[str, PartSource]) -> ImageLayout:
    """Place `config`'s parts on the store's arrays `sources` (name -> PartSource); checks every part
    against its array (present, an image kind, crop widths that fit) and the whole (no overlap, no gap)."""
    placed = []
    next_col = 0
    for index, part in enumerate(config.parts):
        key = f"layout.parts[{index}]"
        if part.array not in sources:
            raise LayoutError(f"{key}.array {part.array!r} is not an array of the store; have {sorted(sources)}")
        source = sources[part.array]
        if source.kind not in IMAGE_KINDS:
            raise LayoutError(f"{key}.array {part.array!r} is a {source.kind!r} array; image parts must be "
                              f"one of the kinds {list(IMAGE_KINDS)}")
        width = source.times if part.width is None else part.width
        if width > source.times:
            raise LayoutError(f"{key}.width {width} is wider than {part.array!r}, which has {source.times} "
                              "time columns")
        col = next_col if part.col is None else part.col
        placed.append(Placement(part.array, source.kind, part.row, col, source.freqs, source.times, width,
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
