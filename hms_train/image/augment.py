"""Batched training augmentations of composed images, on the batch's device, per-sample random parameters.

Each augmentation is a small pure function of the images and its already-drawn parameters (a mask of the
samples it applies to, factors, positions, an affine matrix), so it can be tested on its own. Each is
also a registered step (`register_augmentation`): a name, a settings dataclass (`p`, its probability,
and its strengths; the defaults are the seed recipe), whether it changes the image alone (`image_only`:
refused for models that also take the signals), its place in the chain (`order`), and a function that
draws its parameters for the whole batch from one `torch.Generator` (through `Draws`) and applies them.
`Augmenter` chains the steps a config turns on; nothing loops over the samples in Python, and the same
code runs on CPU and CUDA. An augmentation from outside the package is one registered function.

Images are (B, 1, H, W) composed by `hms_train.image.compose` from an image layout: each part's chain
blocks LL, RL, LP, RP stacked top to bottom. Targets are (B, 6) vote fractions summing to 1. Geometric
augmentations act on the whole image except the hemisphere swap, which mirrors each part's own chain
blocks.

The config (TOML) has one table per step, `[augment.time_flip] p = 0.5`; the flat keys of earlier
configs (`augment.hflip_p`, `augment.brightness`, ...) are read as the same settings (`LEGACY_KEYS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from hms_prep.domain import CHAINS, MIRRORED_CHAINS
from hms_prep.registry import Registry, RegistryError

N_CHAINS = len(CHAINS)
# "time": stripes of whole columns only (Richard's XYMasking had its y masks commented out).
MASK_AXES = ("both", "time")


# --- the augmentations, each given its drawn parameters -------------------------------------------------


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast one value per sample over its image."""
    return values.reshape(-1, 1, 1, 1)


def hemisphere_swap(images: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Swap chain blocks LL <-> RL and LP <-> RP where `mask` (B,) is True; the label is kept.

    `rows` is the image's mirror map from its layout (`ImageLayout.mirror_rows`): the source row of each
    row (H,) or of each pixel (H, W), so every part's own chain blocks swap wherever the part sits.
    None: the whole image is one part, 4 blocks of H / 4 rows (rows block 0 <-> 1, 2 <-> 3).
    """
    height = images.shape[-2]
    if rows is None:
        blocks = torch.arange(height, device=images.device).reshape(N_CHAINS, height // N_CHAINS)
        rows = blocks[list(MIRRORED_CHAINS)].reshape(-1)
    rows = rows.to(images.device)
    if rows.ndim == 1:
        swapped = images.index_select(-2, rows)
    else:
        swapped = torch.gather(images, -2, rows.expand_as(images))
    return torch.where(_per_sample(mask), swapped, images)


def time_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the column (time) order where `mask` (B,) is True."""
    return torch.where(_per_sample(mask), images.flip(-1), images)


def part_time_flip(images: torch.Tensor, mask: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Reverse each part's columns in place where `mask` (B,) is True; `columns` (H, W) is the source
    column of every pixel (`ImageLayout.part_flip_columns`)."""
    flipped = torch.gather(images, -1, columns.to(images.device).expand_as(images))
    return torch.where(_per_sample(mask), flipped, images)


def vertical_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the row order of the whole image where `mask` (B,) is True."""
    return torch.where(_per_sample(mask), images.flip(-2), images)


def block_autocontrast(images: torch.Tensor, blocks: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """torchvision's `autocontrast` of each chosen (sample, block): the block's pixels rescaled by its own
    min and max to [0, 1] (a constant block: only clamped); `blocks` (H, W) numbers the blocks 0..K-1
    (-1: left alone), `chosen` (B, K) bool. One batched pass: per-block min and max by scatter_reduce."""
    batch, count = chosen.shape
    flat = images.reshape(batch, -1)
    ids = blocks.reshape(-1)
    inside = ids >= 0
    index = ids.clamp(min=0).expand(batch, -1)
    big = torch.finfo(flat.dtype).max
    minimum = flat.new_full((batch, count), big).scatter_reduce(1, index, torch.where(inside, flat, big), "amin")
    maximum = flat.new_full((batch, count), -big).scatter_reduce(1, index, torch.where(inside, flat, -big), "amax")
    constant = maximum == minimum  # torchvision: minimum 0 and scale 1, so the block is only clamped
    span = torch.where(constant, torch.ones_like(maximum), maximum - minimum)
    minimum = torch.where(constant, torch.zeros_like(minimum), minimum)
    rescaled = ((flat - minimum.gather(1, index)) / span.gather(1, index)).clamp(0.0, 1.0)
    apply = chosen.gather(1, index) & inside
    return torch.where(apply, rescaled, flat).reshape(images.shape)


def brightness_contrast(images: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """`images * contrast + brightness` with one factor and one offset per sample ((B,) each)."""
    return images * _per_sample(contrast) + _per_sample(brightness)


def stripe_mask(
    batch: int,
    length: int,
    stripes: tuple[int, int],
    width: tuple[int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B, length) bool: per sample a random count in `stripes` of stripes, each of a random width in
    `width` (both inclusive ranges) at a random position wholly inside `length`; True = masked."""
    most = stripes[1]
    count = torch.randint(stripes[0], stripes[1] + 1, (batch, 1), generator=generator, device=device)
    active = torch.arange(most, device=device) < count  # (B, most): the first `count` stripes are used
    widths = torch.randint(width[0], width[1] + 1, (batch, most), generator=generator, device=device)
    widths = widths.clamp(max=length)
    room = (length - widths + 1).float()
    starts = (torch.rand(batch, most, generator=generator, device=device) * room).long()
    position = torch.arange(length, device=device)
    covered = (position >= starts[..., None]) & (position < (starts + widths)[..., None])
    return (covered & active[..., None]).any(dim=1)


def xy_mask(images: torch.Tensor, column_mask: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """Set to 0 the columns where `column_mask` (B, W) and the rows where `row_mask` (B, H) is True."""
    masked = column_mask[:, None, None, :] | row_mask[:, None, :, None]
    return images.masked_fill(masked, 0.0)


def affine_theta(
    angle_rad: torch.Tensor,
    zoom: torch.Tensor,
    shift_x: torch.Tensor,
    shift_y: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """(B, 2, 3) `affine_grid` matrices: rotate by `angle_rad` and zoom by `zoom` about the centre, then
    move content right by `shift_x` * width and down by `shift_y` * height (all (B,)).

    The rotation is done in pixel units, so a non-square image is rotated, not sheared. The matrix maps
    output to input coordinates (normalised to [-1, 1]), hence the inverse rotation and zoom.
    """
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    # inverse rotation and zoom in pixels, conjugated by the pixel -> normalised scaling diag(2/W, 2/H)
    m00, m01 = cos / zoom, sin * (height / width) / zoom
    m10, m11 = -sin * (width / height) / zoom, cos / zoom
    tx, ty = 2 * shift_x, 2 * shift_y  # shifts in normalised units
    row0 = torch.stack([m00, m01, -(m00 * tx + m01 * ty)], dim=-1)
    row1 = torch.stack([m10, m11, -(m10 * tx + m11 * ty)], dim=-1)
    return torch.stack([row0, row1], dim=1)


def shift_scale_rotate(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each sample by its (B, 2, 3) `theta` (bilinear; pixels from outside the image are 0)."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mixup(
    images: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each sample with its partner `perm[b]` with weight `lam[b]` (B,) on both image and soft label:
    lam * own + (1 - lam) * partner. lam = 1 leaves a sample as it is; labels still sum to 1."""
    # lerp(partner, own, lam) = lam * own + (1 - lam) * partner in one pass; exact at lam = 1
    mixed_images = torch.lerp(images[perm], images, _per_sample(lam).to(images.dtype))
    mixed_targets = torch.lerp(targets[perm], targets, lam.reshape(-1, 1).to(targets.dtype))
    return mixed_images, mixed_targets


def sample_symmetric_beta(
    batch: int, alpha: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B,) draws from Beta(alpha, alpha) using `generator`.

    torch.distributions.Beta cannot take a generator; its own sampler (a 2-component Dirichlet) can, so
    it is called directly to keep augmentation reproducible from the Augmenter's generator.
    """
    concentration = torch.full((batch, 2), float(alpha), device=device)
    return torch._sample_dirichlet(concentration, generator=generator)[:, 0]


# --- the registry: each augmentation a step with its settings ------------------------------------------


# The maps of the image's layout a step may ask for (`register_augmentation(needs=...)`); the run plan
# makes those the active steps ask for (hms_train/run/inputs.py augment_geometry), no step named there.
MIRROR_ROWS = "mirror_rows"  # the source row of each row (H,) or pixel (H, W): LL <-> RL, LP <-> RP per part
FLIP_COLUMNS = "flip_columns"  # the source column of each pixel (H, W): each part's time reversed in place
CHAIN_BLOCKS = "chain_blocks"  # the chain sub-image of each pixel (H, W), part index x 4 + chain; -1 on padding
GEOMETRY = (MIRROR_ROWS, FLIP_COLUMNS, CHAIN_BLOCKS)


class Draws:
    """Per-sample random draws for one batch, from one generator (None: torch's default), on the images'
    device; and what the steps may need to know of the image (`geometry`: the layout's maps, by name)."""

    def __init__(self, images: torch.Tensor, generator: torch.Generator | None,
                 geometry: Mapping[str, torch.Tensor | None] | None = None):
        self.batch, self.device = images.shape[0], images.device
        self.generator, self.geometry = generator, dict(geometry or {})

    @property
    def mirror_rows(self) -> torch.Tensor | None:
        return self.geometry.get(MIRROR_ROWS)

    @property
    def flip_columns(self) -> torch.Tensor | None:
        return self.geometry.get(FLIP_COLUMNS)

    @property
    def chain_blocks(self) -> torch.Tensor | None:
        return self.geometry.get(CHAIN_BLOCKS)

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """(B,) uniform draws in [low, high)."""
        u = torch.rand(self.batch, generator=self.generator, device=self.device)
        return low + (high - low) * u

    def chosen(self, p: float) -> torch.Tensor:
        """(B,) bool: which samples a step of probability `p` applies to."""
        return self.uniform(0.0, 1.0) < p


Apply = Callable[[Draws, torch.Tensor, torch.Tensor, Any], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class Augmentation:
    """A registered step: `apply(draws, images, targets, settings) -> (images, targets)`."""

    name: str
    settings: type  # a dataclass whose field `p` is the probability; its defaults are the seed recipe's
    apply: Apply
    image_only: bool  # moves image content in time or across chains, or mixes samples
    order: int  # steps run in ascending order
    needs: Callable[[Any], tuple[str, ...]] = lambda settings: ()  # the layout maps (GEOMETRY) it reads


AUGMENTATIONS: Registry[Apply] = Registry("augmentation", "augmentations")  # details: order, image_only


def register_augmentation(name: str, settings: type, *, order: int, image_only: bool,
                          needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()):
    """Decorator: register `apply(draws, images, targets, settings)` as the augmentation `name`, configured
    by the dataclass `settings` (a field `p` and the step's strengths), run at `order` in the chain.
    `needs`: the layout maps of GEOMETRY it reads from `draws.geometry` (or a function of its settings
    giving them); the run plan makes them from the layout, or refuses the layout, before any work."""
    wanted = needs if callable(needs) else (lambda _settings, fixed=tuple(needs): fixed)

    def register(apply: Apply) -> Apply:
        if not dataclasses.is_dataclass(settings) or "p" not in {f.name for f in dataclasses.fields(settings)}:
            raise RegistryError(f"augmentation {name!r}: its settings {settings.__name__} need a field `p`")
        unknown = [n for n in (() if callable(needs) else needs) if n not in GEOMETRY]
        if unknown:
            raise RegistryError(f"augmentation {name!r}: needs {unknown}; the layout gives {list(GEOMETRY)}")
        return AUGMENTATIONS.register(name, apply, settings, order=order, image_only=image_only, needs=wanted)

    return register


def augmentation(name: str) -> Augmentation:
    """The registered step `name`."""
    entry = AUGMENTATIONS.entry(name)
    details = entry.details
    return Augmentation(name, entry.settings, entry.factory, details["image_only"], details["order"], details["needs"])


def _built_in(name: str) -> bool:
    return AUGMENTATIONS.entry(name).origin.startswith("hms_train.")


def in_chain_order() -> list[Augmentation]:
    """Every registered step, in the order they run (ties by name)."""
    return sorted(map(augmentation, AUGMENTATIONS), key=lambda aug: (aug.order, aug.name))


@dataclass
class HemisphereSwapSettings:
    p: float = 0.5  # LL <-> RL and LP <-> RP; the label is kept


@dataclass
class TimeFlipSettings:
    p: float = 0.5  # time reversal of the whole image
    per_part: bool = False  # each part reversed in place instead (David's flip; needs the layout's map)


@dataclass
class VerticalFlipSettings:
    p: float = 0.0  # whole-image vertical flip (reverses chain order and frequency axis)


@dataclass
class AutocontrastSettings:
    p: float = 0.0  # per chain sub-image of each part, drawn apart (David: RandomApply(p=.5) of RandomAutocontrast(p=.5))


@dataclass
class BrightnessContrastSettings:
    p: float = 0.6
    brightness: float = 0.2  # offset drawn from U(-brightness, brightness) and added
    contrast: float = 0.2  # factor drawn from 1 + U(-contrast, contrast) and multiplied


@dataclass
class ShiftScaleRotateSettings:
    p: float = 0.7
    shift: float = 0.15  # fraction of the image's width / height
    scale: float = 0.05  # zoom factor drawn from 1 + U(-scale, scale)
    rotate_deg: float = 15.0


@dataclass
class XYMaskSettings:
    p: float = 0.5
    axes: Literal[MASK_AXES] = "both"  # time stripes and frequency stripes, or time stripes only
    stripes: tuple[int, int] = (1, 10)  # stripes per axis, inclusive range
    width: tuple[int, int] = (5, 10)  # stripe width in pixels, inclusive range


@dataclass
class MixupSettings:
    p: float = 0.3
    alpha: float = 0.5  # lam ~ Beta(alpha, alpha)


@register_augmentation("hemisphere_swap", HemisphereSwapSettings, order=10, image_only=True, needs=(MIRROR_ROWS,))
def _hemisphere_swap(draws: Draws, images, targets, settings: HemisphereSwapSettings):
    return hemisphere_swap(images, draws.chosen(settings.p), draws.mirror_rows), targets


@register_augmentation("time_flip", TimeFlipSettings, order=20, image_only=True,
                       needs=lambda settings: (FLIP_COLUMNS,) if settings.per_part else ())
def _time_flip(draws: Draws, images, targets, settings: TimeFlipSettings):
    chosen = draws.chosen(settings.p)
    if not settings.per_part:
        return time_flip(images, chosen), targets
    if draws.flip_columns is None:
        raise ValueError("augment.time_flip.per_part needs the layout's map of the parts (Augmenter(geometry=))")
    return part_time_flip(images, chosen, draws.flip_columns), targets


@register_augmentation("vertical_flip", VerticalFlipSettings, order=30, image_only=True)
def _vertical_flip(draws: Draws, images, targets, settings: VerticalFlipSettings):
    return vertical_flip(images, draws.chosen(settings.p)), targets


@register_augmentation("autocontrast", AutocontrastSettings, order=35, image_only=False, needs=(CHAIN_BLOCKS,))
def _autocontrast(draws: Draws, images, targets, settings: AutocontrastSettings):
    """David's "contrast" (D/utils.py get_transform: RandomApply([RandomChoice([v2.RandomAutocontrast()])],
    p=0.5) on every chain sub-image the data loader reads, D/data_loader.py get_data_by_id)."""
    if draws.chain_blocks is None:
        raise ValueError("augment.autocontrast needs the layout's map of the chain sub-images (the run plan's chain_blocks geometry)")
    count = int(draws.chain_blocks.max()) + 1
    u = torch.rand(draws.batch, count, generator=draws.generator, device=draws.device)
    return block_autocontrast(images, draws.chain_blocks, u < settings.p), targets


@register_augmentation("brightness_contrast", BrightnessContrastSettings, order=40, image_only=False)
def _brightness_contrast(draws: Draws, images, targets, settings: BrightnessContrastSettings):
    chosen = draws.chosen(settings.p)
    contrast = draws.uniform(1 - settings.contrast, 1 + settings.contrast)
    brightness = draws.uniform(-settings.brightness, settings.brightness)
    # unchosen samples get factor 1 and offset 0: exactly unchanged
    images = brightness_contrast(images, torch.where(chosen, contrast, 1.0), torch.where(chosen, brightness, 0.0))
    return images, targets


@register_augmentation("shift_scale_rotate", ShiftScaleRotateSettings, order=50, image_only=True)
def _shift_scale_rotate(draws: Draws, images, targets, settings: ShiftScaleRotateSettings):
    chosen = draws.chosen(settings.p)
    max_angle = math.radians(settings.rotate_deg)
    theta = affine_theta(
        angle_rad=draws.uniform(-max_angle, max_angle),
        zoom=draws.uniform(1 - settings.scale, 1 + settings.scale),
        shift_x=draws.uniform(-settings.shift, settings.shift),
        shift_y=draws.uniform(-settings.shift, settings.shift),
        height=images.shape[-2],
        width=images.shape[-1],
    )
    # bilinear resampling with an identity matrix is only identical up to rounding: keep the
    # unchosen samples' pixels exactly
    return torch.where(_per_sample(chosen), shift_scale_rotate(images, theta), images), targets


@register_augmentation("xy_mask", XYMaskSettings, order=60, image_only=False)  # after the warp: stripes stay straight
def _xy_mask(draws: Draws, images, targets, settings: XYMaskSettings):
    batch, _, height, width = images.shape
    chosen = draws.chosen(settings.p)[:, None]
    columns = stripe_mask(batch, width, settings.stripes, settings.width, draws.generator, images.device)
    if settings.axes == "time":
        rows = torch.zeros(batch, height, dtype=torch.bool, device=images.device)
    else:
        rows = stripe_mask(batch, height, settings.stripes, settings.width, draws.generator, images.device)
    return xy_mask(images, columns & chosen, rows & chosen), targets


@register_augmentation("mixup", MixupSettings, order=90, image_only=True)
def _mixup(draws: Draws, images, targets, settings: MixupSettings):
    chosen = draws.chosen(settings.p)
    lam = sample_symmetric_beta(draws.batch, settings.alpha, draws.generator, images.device)
    lam = torch.where(chosen, lam, 1.0)
    perm = torch.randperm(draws.batch, generator=draws.generator, device=images.device)
    return mixup(images, targets, lam, perm)


# The flat keys of configs written before the registry: key -> (step, setting).
LEGACY_KEYS = {
    "hemisphere_swap_p": ("hemisphere_swap", "p"), "hflip_p": ("time_flip", "p"), "vflip_p": ("vertical_flip", "p"),
    "brightness_contrast_p": ("brightness_contrast", "p"), "brightness": ("brightness_contrast", "brightness"),
    "contrast": ("brightness_contrast", "contrast"), "ssr_p": ("shift_scale_rotate", "p"),
    "shift": ("shift_scale_rotate", "shift"), "scale": ("shift_scale_rotate", "scale"),
    "rotate_deg": ("shift_scale_rotate", "rotate_deg"), "xy_mask_p": ("xy_mask", "p"), "mask_axes": ("xy_mask", "axes"),
    "mask_stripes": ("xy_mask", "stripes"), "mask_width": ("xy_mask", "width"), "mixup_p": ("mixup", "p"),
    "mixup_alpha": ("mixup", "alpha"),
}
REMOVED_KEYS = {"random_crop_width": "the Kaggle part's width and crop are now set in the recipe's [layout] "
                                    "(layout.parts: width, train_crop = \"random\", eval_crop = \"first\")"}


class AugmentError(ValueError):
    """An augment setting that cannot be used; the message names the key."""


class AugmentConfig:
    """Every registered augmentation's settings by name (registered defaults where the config is silent)."""

    def __init__(self, steps: Mapping[str, Any] | None = None):
        steps = dict(steps or {})
        unknown = sorted(set(steps) - set(AUGMENTATIONS))
        if unknown:
            raise AugmentError(f"unknown augmentation(s) {['augment.' + n for n in unknown]}; registered: "
                               f"{sorted(AUGMENTATIONS)} (a plugin registers more: docs/architecture.md)")
        self.steps = {aug.name: steps.get(aug.name) or aug.settings() for aug in in_chain_order()}

    @classmethod
    def from_values(cls, values: Mapping[str, Any], prefix: str = "augment", build=None) -> AugmentConfig:
        """From a config's `augment` table: `{step: {setting: value}}`, or the flat legacy keys.
        `build(settings_type, values, key_prefix)` checks a step's settings (hms_train.run.config)."""
        build = build or (lambda settings, given, _: settings(**given))
        nested: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key in REMOVED_KEYS:
                if value is not None:
                    raise AugmentError(f"{prefix}.{key} was removed: {REMOVED_KEYS[key]}")
                continue
            if key in LEGACY_KEYS:
                step, setting = LEGACY_KEYS[key]
                nested.setdefault(step, {})[setting] = value
            elif isinstance(value, Mapping):
                nested.setdefault(key, {}).update(value)
            elif key in AUGMENTATIONS:
                raise AugmentError(f"{prefix}.{key}: expected a table of its settings, e.g. [{prefix}.{key}] p = 0.5")
            else:
                raise AugmentError(f"unknown augmentation {prefix}.{key}; registered: {sorted(AUGMENTATIONS)}")
        unknown = sorted(set(nested) - set(AUGMENTATIONS))
        if unknown:
            raise AugmentError(f"unknown augmentation(s) {[f'{prefix}.{n}' for n in unknown]}; registered: "
                               f"{sorted(AUGMENTATIONS)} (a plugin registers more: docs/architecture.md)")
        return cls({name: build(augmentation(name).settings, given, f"{prefix}.{name}.")
                    for name, given in nested.items()})

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (every probability 0): for benchmarks and ablations."""
        return cls({aug.name: dataclasses.replace(aug.settings(), p=0.0) for aug in in_chain_order()})

    def active(self) -> list[tuple[Augmentation, Any]]:
        """The steps that can fire (p > 0), in chain order."""
        return [(augmentation(name), settings) for name, settings in self.steps.items() if settings.p > 0]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every built-in step's settings, and a plug-in's where they differ from its defaults: a plug-in
        loaded earlier in the same process (a notebook, a test worker) must not enter a run's config.json,
        which a fresh process without that plug-in could then not read back (--resume, predict)."""
        return {name: dataclasses.asdict(settings) for name, settings in self.steps.items()
                if _built_in(name) or settings != augmentation(name).settings()}

    def __eq__(self, other) -> bool:
        return isinstance(other, AugmentConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"AugmentConfig({self.to_dict()})"


class Augmenter:
    """Training augmentation of a batch: the config's active steps in order, each applied to a random
    subset of samples with per-sample parameters, all drawn from `generator` (on the images' device;
    None = torch's default generator).

    `geometry` holds the layout's maps the steps need (GEOMETRY, by name; the run plan makes them):
    `mirror_rows`, the hemisphere swap's map of the chain blocks (absent: the whole image is one part of
    4 equal blocks), `flip_columns`, a time flip of each part in place, and `chain_blocks`, the chain
    sub-image of each pixel. Crops are
    not here: they belong to the layout and happen when the image is composed (`hms_train.image.compose`).
    """

    def __init__(self, config: AugmentConfig, generator: torch.Generator | None = None,
                 geometry: Mapping[str, torch.Tensor | None] | None = None):
        self.config = config
        self.steps = config.active()
        self.generator = generator
        self.geometry = dict(geometry or {})

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, train: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (images, targets) in train mode; the inputs unchanged when `train` is False."""
        if not train:
            return images, targets
        draws = Draws(images, self.generator, self.geometry)
        for augmentation, settings in self.steps:
            images, targets = augmentation.apply(draws, images, targets, settings)
        return images, targets
