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

Normalisation, as each array's `normalise` attribute says: EEG mel parts are used as stored (already
(dB + 40) / 40, about [-1, 1]); a "zscore" part (the Kaggle crop: log1p power, 0 where the recording had
no data) is z-scored per sample over its whole (4, F, T) block before it is cropped, as the seed solution
did, so training crops and evaluation crops share a scale.

The image is one preallocated tensor and each part is copied into it once, the whole batch at a time;
per-sample random crop starts come from one `torch.Generator` (None: torch's default generator).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from hms_prep.domain import CHAINS, standardise
from hms_prep.store.arrays import NORMALISE_NONE, NORMALISE_ZSCORE
from hms_train.image.layout import ImageLayout, LayoutConfig, PartConfig, PartSource, crop_start, resolve_layout

N_CHAINS = len(CHAINS)


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
        if part.normalise == NORMALISE_ZSCORE:
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


# --- a side-by-side image from names and shapes alone (show, benchmarks, tests) --------------------------


def side_by_side_layout(
    parts_shapes: Mapping[str, Sequence[int]],
    inputs: Sequence[str],
    normalise: Mapping[str, str] | None = None,
    widths: Mapping[str, int] | None = None,
) -> ImageLayout:
    """`inputs` side by side from their shapes (per row (4, F, T) or per batch (B, 4, F, T)); `normalise`
    names the parts to z-score per sample ({"kaggle": "zscore"}); `widths` keeps a part's first columns."""
    sources = {name: PartSource.image_part(parts_shapes[name], (normalise or {}).get(name, NORMALISE_NONE))
               for name in inputs}
    parts = [PartConfig(array=name, width=None if widths is None or name not in widths
                        else min(widths[name], sources[name].times)) for name in inputs]
    return resolve_layout(LayoutConfig(parts=tuple(parts)), sources)


def compose_image(
    parts: Mapping[str, torch.Tensor],
    inputs: Sequence[str],
    normalise: Mapping[str, str] | None = None,
    widths: Mapping[str, int] | None = None,
) -> torch.Tensor:
    """The evaluation image of `inputs` side by side (B, 1, 4*F, sum of widths), the parts named in
    `normalise` z-scored per sample over their whole block first (see `side_by_side_layout`).
    Raises ValueError if a part is missing, is not (B, 4, F, T), or the parts disagree on B or F."""
    if not inputs:
        raise ValueError("compose_image needs at least one input part")
    missing = [name for name in inputs if name not in parts]
    if missing:
        raise ValueError(f"parts missing from the batch: {missing} (have {sorted(parts)})")
    layout = side_by_side_layout({name: parts[name].shape for name in inputs}, inputs, normalise, widths)
    return compose(layout, parts, train=False)
