"""Compose the model's one-channel image from the store's per-row arrays, on the batch's device.

Where each part goes is an `hms_train.image.layout.ImageLayout`. Every part of the store is (4 chains, F
frequency bins, T time columns) in chain order LL, RL, LP, RP, frequency ascending; a part stacks its 4
chains vertically (chain c on rows c*F .. (c+1)*F - 1 of the part). Today's default sets the parts side
by side, left to right in the order of `inputs`:

    ┌ eeg_10s ┬ eeg_30s ┬ kaggle ┐
    │   LL    │   LL    │   LL   │
    │   RL    │   RL    │   RL   │
    │   LP    │   LP    │   LP   │
    │   RP    │   RP    │   RP   │
    └─────────┴─────────┴────────┘

Normalisation: EEG parts are used as stored (already (dB + 40) / 40, about [-1, 1]); a part of kind
"kaggle" (log1p power, 0 where the recording had no data) is z-scored per sample over its whole (4, F, T)
block before it is cropped, as the seed solution did, so training crops and evaluation crops share a scale.

The image is one preallocated tensor and each part is copied into it once, the whole batch at a time;
per-sample random crop starts come from one `torch.Generator` (None: torch's default generator).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from hms_prep.domain import CHAINS, standardise
from hms_train.image.layout import KAGGLE_KIND, ImageLayout, PartSource, crop_start, resolve_layout, side_by_side

N_CHAINS = len(CHAINS)
KAGGLE_PART = "kaggle"  # the default store's Kaggle array, for callers that know names only


def standardise_per_sample(part: torch.Tensor) -> torch.Tensor:
    """Z-score each sample of a (B, ...) tensor over all its other axes (`domain.standardise`)."""
    return standardise(part, axes=tuple(range(1, part.ndim)))


def random_crop(values: torch.Tensor, width: int, starts: torch.Tensor) -> torch.Tensor:
    """Cut each sample's last axis to `width` beginning at its own `starts[b]` ((B,) integer offsets)."""
    batch = values.shape[0]
    index = starts.reshape(-1, 1) + torch.arange(width, device=values.device)  # (B, width)
    index = index.reshape(batch, *[1] * (values.ndim - 2), width).expand(*values.shape[:-1], width)
    return torch.gather(values, values.ndim - 1, index)


def cut_columns(
    values: torch.Tensor, width: int, crop: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`width` columns of the last axis: the "first", the "center" ones, or a "random" span per sample."""
    length = values.shape[-1]
    if width == length:
        return values
    if crop != "random":
        start = crop_start(crop, length, width)
        return values[..., start : start + width]
    starts = torch.randint(0, length - width + 1, (values.shape[0],), generator=generator, device=values.device)
    return random_crop(values, width, starts)


def compose(
    layout: ImageLayout,
    parts: Mapping[str, torch.Tensor],
    train: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Float32 image (B, 1, H, W) from `parts[name]` (B, 4, F, T), placed and cropped as `layout` says
    (training or evaluation crops). With `layout.eval_crop == "sliding"` the evaluation image is the whole
    canvas; `eval_windows` cuts it into the model's windows.
    Raises ValueError if a part is missing or not shaped as the layout expects, or batch sizes differ.
    """
    _check_parts(layout, parts)
    reference = parts[layout.parts[0].array]
    batch = reference.shape[0]
    image = torch.empty((batch, 1, layout.height, layout.canvas_width), dtype=torch.float32, device=reference.device)
    left = layout.pad_left  # the parts tile columns left .. left + composed_width (checked by the layout)
    image[..., :left] = 0
    image[..., left + layout.composed_width :] = 0
    for part in layout.parts:
        values = parts[part.array]
        if part.kind == KAGGLE_KIND:
            values = standardise_per_sample(values.float())
        values = cut_columns(values, part.width, part.crop(train), generator)
        # (B, 4, F, w) -> (B, 1, 4*F, w): chain c lands on rows c*F .. (c+1)*F - 1 of the part
        col = left + part.col
        image[..., part.row : part.row + part.height, col : col + part.width] = values.reshape(
            batch, 1, part.height, part.width
        )
    if not train and layout.eval_crop == "sliding":
        return image
    return cut_columns(image, layout.width, layout.train_crop if train else layout.eval_crop, generator)


def eval_windows(layout: ImageLayout, image: torch.Tensor) -> Iterator[torch.Tensor]:
    """The model-sized windows of an evaluation image from `compose`: several when sliding, else itself."""
    if layout.eval_crop != "sliding":
        yield image
        return
    for start in layout.window_starts():
        yield image[..., start : start + layout.width]


def _check_parts(layout: ImageLayout, parts: Mapping[str, torch.Tensor]) -> None:
    missing = [name for name in layout.arrays if name not in parts]
    if missing:
        raise ValueError(f"parts missing from the batch: {missing} (have {sorted(parts)})")
    for part in layout.parts:
        shape = tuple(parts[part.array].shape)
        expected = (N_CHAINS, part.freqs, part.times)
        if shape[1:] != expected:
            raise ValueError(f"part {part.array!r} has shape {shape}; expected (B, {', '.join(map(str, expected))})")
    batch_sizes = {name: parts[name].shape[0] for name in layout.arrays}
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(f"parts must share the batch size: {batch_sizes}")


# --- today's side-by-side image from names and shapes alone (show, bench, tests) -----------------------


def default_sources(
    parts_shapes: Mapping[str, Sequence[int]], inputs: Sequence[str], kinds: Mapping[str, str] | None = None
) -> dict[str, PartSource]:
    """PartSources from shapes (per row (4, F, T) or per batch (B, 4, F, T)); `kinds` defaults to the
    default store's names (`kaggle` is the Kaggle crop, every other part a mel window)."""
    sources = {}
    for name in inputs:
        shape = tuple(parts_shapes[name])
        if len(shape) < 3 or shape[-3] != N_CHAINS:
            raise ValueError(f"part {name!r} has shape {shape}; expected (B, {N_CHAINS}, F, T)")
        kind = kinds[name] if kinds is not None else (KAGGLE_KIND if name == KAGGLE_PART else "eeg_mel")
        sources[name] = PartSource(kind=kind, freqs=shape[-2], times=shape[-1])
    return sources


def default_layout(
    parts_shapes: Mapping[str, Sequence[int]],
    inputs: Sequence[str],
    kaggle_width: int | None = None,
    kinds: Mapping[str, str] | None = None,
) -> ImageLayout:
    """The side-by-side layout of `inputs` (see `default_sources` for `kinds`)."""
    sources = default_sources(parts_shapes, inputs, kinds)
    return resolve_layout(side_by_side(inputs, sources, kaggle_width=kaggle_width), sources)


def image_layout(
    parts_shapes: Mapping[str, Sequence[int]],
    inputs: Sequence[str],
    kaggle_width: int | None = None,
) -> list[tuple[str, int, int]]:
    """Each part's (name, start column, end column) in the side-by-side image, in `inputs` order."""
    layout = default_layout(parts_shapes, inputs, kaggle_width)
    return [(part.array, part.col, part.col + part.width) for part in layout.parts]


def compose_image(
    parts: Mapping[str, torch.Tensor],
    inputs: Sequence[str],
    kaggle_width: int | None = None,
    kinds: Mapping[str, str] | None = None,
) -> torch.Tensor:
    """The evaluation image of `inputs` side by side (B, 1, 4*F, sum of widths); the Kaggle part
    z-scored per sample over its whole block, then cut to its first `kaggle_width` columns if given.
    Raises ValueError if a part is missing, is not (B, 4, F, T), or the parts disagree on B or F."""
    if not inputs:
        raise ValueError("compose_image needs at least one input part")
    missing = [name for name in inputs if name not in parts]
    if missing:
        raise ValueError(f"parts missing from the batch: {missing} (have {sorted(parts)})")
    layout = default_layout({name: parts[name].shape for name in inputs}, inputs, kaggle_width, kinds)
    return compose(layout, parts, train=False)
